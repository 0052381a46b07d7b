"""VGG-style quality network g: (image, predicted mask, uncertainty map) -> predicted Jaccard."""

from __future__ import annotations

from torch import Tensor, nn


class QualityCNN(nn.Module):
    """VGG-style regressor (Simonyan & Zisserman 2015) with a sigmoid output in [0, 1].

    Blocks of two 3x3 conv + BatchNorm + ReLU followed by 2x2 max-pooling, widths doubling per
    block, then global average pooling and a small fully connected head.

    Args:
        in_channels: input channels, e.g. 5 for (RGB image, mask, uncertainty). Defaults to 5.
        base_width: channels of the first block. Defaults to 16.
        blocks: number of conv blocks (each halves the resolution). Defaults to 4.

    Input ``(N, in_channels, H, W)``; output ``(N,)``.
    """

    def __init__(self, in_channels: int = 5, base_width: int = 16, blocks: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i in range(blocks):
            w = base_width * 2**i
            for _ in range(2):
                layers += [
                    nn.Conv2d(prev, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                ]
                prev = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(prev, prev),
            nn.ReLU(inplace=True),
            nn.Linear(prev, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(1).sigmoid()
