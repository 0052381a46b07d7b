"""CNN quality predictors: the paper's g(x, y^, z) ("uncertainty") and its ablation g(x, y^)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from segqc.data.dataset import channel_stats, to_input
from segqc.data.transforms import random_dihedral
from segqc.engine import train_loop
from segqc.networks.inference import cached_inference_copy
from segqc.networks.quality_cnn import QualityCNN
from segqc.postprocess import batches, pixel_batch
from segqc.quality.base import QualityPredictor, check_training_samples, register_predictor
from segqc.types import Graph, QualitySamples
from segqc.utils import resolve_device, seed_everything


class CNNQualityPredictor(QualityPredictor):
    """A VGG-style CNN regressing the Jaccard index, trained with MSE (Adam, batch 16).

    Subclasses choose the input by overriding :meth:`compose` and ``in_channels``.

    Args:
        base_width: width of the first VGG block. Defaults to 16.
        epochs: training epochs (paper: 30). Defaults to 15.
        batch_size: Defaults to 16 (paper).
        lr: Adam learning rate. Defaults to 1e-3 (paper).
        seed: Defaults to 0.
        device: ``auto``, ``cpu`` or ``cuda``. Defaults to ``auto``.
        progress: show a progress bar. Defaults to True.
    """

    in_channels: ClassVar[int]

    def __init__(
        self,
        *,
        base_width: int = 16,
        epochs: int = 15,
        batch_size: int = 16,
        lr: float = 1e-3,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        self.base_width = base_width
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.progress = progress

    def compose(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """Network input from normalised image ``(N,3,H,W)``, mask and standardised map ``(N,1,H,W)``."""
        return torch.cat([x, y, z], dim=1)

    def _inputs(self, images: Tensor, masks: Tensor, uncertainty: Tensor) -> Tensor:
        x = to_input(images, self.image_mean_, self.image_std_)
        y = masks[:, None].float() * 2.0 - 1.0
        z = (uncertainty[:, None].float() - self.z_mean_) / self.z_std_
        return self.compose(x, y, z)

    def graph(self, example: tuple[Tensor, Tensor, Tensor]) -> Graph:
        self._check_fitted("model_")
        module = QualityGraph(self._inputs, self.model_.cpu().eval())
        return Graph(module, ["images", "masks", "uncertainty"], ["quality"], example)

    def fit(self, samples: QualitySamples) -> CNNQualityPredictor:
        target = check_training_samples(samples)
        generator = seed_everything(self.seed)
        device = resolve_device(self.device)
        self.image_mean_, self.image_std_ = channel_stats(samples.images)
        self.z_mean_ = float(samples.uncertainty.mean())
        self.z_std_ = float(max(samples.uncertainty.std(), 1e-6))
        model = QualityCNN(self.in_channels, self.base_width).to(device)
        loss_fn = nn.MSELoss()

        def step(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
            images, masks, uncertainty, jaccard = batch
            (x,) = random_dihedral(self._inputs(images, masks, uncertainty), generator=generator)
            # The concatenation comes out NCHW; channels_last makes a step 1.35-1.5x faster on a CPU
            # (benchmarks/bench_training.py, table 3).
            return loss_fn(model(x.contiguous(memory_format=torch.channels_last)), jaccard)

        tensors = (
            torch.from_numpy(samples.images),
            torch.from_numpy(samples.masks),
            torch.from_numpy(samples.uncertainty.astype(np.float32)),
            torch.from_numpy(target),
        )
        self.history_ = train_loop(
            model,
            tensors,
            step,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            generator=generator,
            device=device,
            desc=f"g ({self.name})",
            progress=self.progress,
        )
        self.model_ = model.cpu().eval()
        return self

    def predict(self, samples: QualitySamples, *, batch_size: int | None = None) -> np.ndarray:
        """Predicted Jaccard ``(N,)``, from a BatchNorm-folded channels_last copy of g (see
        :mod:`segqc.networks.inference`); ``batch_size`` defaults to ~2**16 pixels on a CPU."""
        self._check_fitted("model_")
        device = resolve_device(self.device)
        model = cached_inference_copy(self, self.model_, device)
        if batch_size is None:
            batch_size = 64 if device.type == "cuda" else pixel_batch(*samples.images.shape[1:3])
        out = []
        with torch.inference_mode():
            for part in batches(len(samples), batch_size):
                x = self._inputs(
                    torch.from_numpy(samples.images[part]),
                    torch.from_numpy(samples.masks[part]),
                    torch.from_numpy(np.asarray(samples.uncertainty[part], dtype=np.float32)),
                ).to(device, memory_format=torch.channels_last)  # as the inference copy's weights
                out.append(model(x).float().cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        self._check_fitted("model_")
        params = self.get_params()
        params.pop("progress", None)
        config = {
            "params": params,
            "image_mean": self.image_mean_,
            "image_std": self.image_std_,
            "z_mean": self.z_mean_,
            "z_std": self.z_std_,
        }
        return {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}, config

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any]) -> CNNQualityPredictor:
        pred = cls(**config["params"], progress=False)
        pred.model_ = QualityCNN(cls.in_channels, pred.base_width)
        pred.model_.load_state_dict(tensors)
        pred.model_.eval()
        pred.image_mean_, pred.image_std_ = list(config["image_mean"]), list(config["image_std"])
        pred.z_mean_, pred.z_std_ = float(config["z_mean"]), float(config["z_std"])
        return pred


@register_predictor("uncertainty")
class UncertaintyCNN(CNNQualityPredictor):
    """The paper's g(x, y^, z): image, predicted mask and uncertainty map, 5 channels."""

    uses_uncertainty = True
    in_channels = 5


@register_predictor("no-uncertainty")
class NoUncertaintyCNN(CNNQualityPredictor):
    """Ablation g(x, y^): the same network without the uncertainty map, 4 channels."""

    in_channels = 4

    def compose(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return torch.cat([x, y], dim=1)


class QualityGraph(nn.Module):
    """g with its input composition: uint8 images, uint8 masks, float32 maps -> predicted Jaccard ``(N,)``."""

    def __init__(self, inputs: Callable[[Tensor, Tensor, Tensor], Tensor], model: nn.Module) -> None:
        super().__init__()
        self.inputs, self.model = inputs, model

    def forward(self, images: Tensor, masks: Tensor, uncertainty: Tensor) -> Tensor:
        return self.model(self.inputs(images, masks, uncertainty))
