"""Networks: the segmentation U-Net (f) and the VGG-style quality CNN (g)."""

from segqc.networks.quality_cnn import QualityCNN
from segqc.networks.unet import UNet

__all__ = ["QualityCNN", "UNet"]
