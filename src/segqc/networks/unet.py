"""U-Net segmentation network f (Ronneberger et al. 2015), as used by DeVries & Taylor (2018).

Four down-sampling levels, two 3x3 conv + BatchNorm + ReLU per block. Element-wise dropout
(p=0.5 by default, as in Bayesian SegNet) sits on the central blocks only: after the bottleneck
block and after the first decoder block. Everything before the first dropout is deterministic,
which MC dropout exploits (``encode`` once, ``decode`` T times). :class:`UNetEnsemble` holds several
U-Nets side by side (deep ensembles).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, BatchNorm, ReLU) layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with raw (pre-activation) outputs.

    Args:
        in_channels: image channels. Defaults to 3.
        out_channels: output maps: 2 class logits plus any extra head channels a method needs
            (a variance for ``hcnn``, a confidence for ``lce``). Defaults to 2.
        base_width: channels of the first block; level ``i`` has ``base_width * 2**i``. Defaults to 16.
        dropout: dropout probability on the central encoder and decoder blocks. Defaults to 0.5.

    Input ``(N, in_channels, H, W)`` with H and W divisible by 16; output ``(N, out_channels, H, W)``.
    """

    levels = 4

    def __init__(
        self, in_channels: int = 3, out_channels: int = 2, base_width: int = 16, dropout: float = 0.5
    ):
        super().__init__()
        widths = [base_width * 2**i for i in range(self.levels + 1)]
        self.encoders = nn.ModuleList()
        prev = in_channels
        for w in widths[:-1]:
            self.encoders.append(ConvBlock(prev, w))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1])
        self.center_dropout = nn.Dropout(dropout)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_in, w_out in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.ups.append(nn.ConvTranspose2d(w_in, w_out, 2, stride=2))
            self.decoders.append(ConvBlock(2 * w_out, w_out))
        self.decoder_dropout = nn.Dropout(dropout)
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The deterministic prefix: skip features of each level plus the bottleneck (before dropout)."""
        feats = []
        for enc in self.encoders:
            x = enc(x)
            feats.append(x)
            x = self.pool(x)
        feats.append(self.bottleneck(x))
        return feats

    def decode(self, feats: list[Tensor]) -> Tensor:
        """The stochastic rest: dropout on the centre, the decoder and the 1x1 head."""
        *skips, x = feats
        x = self.center_dropout(x)
        for i, (up, dec, skip) in enumerate(zip(self.ups, self.decoders, reversed(skips))):
            x = dec(torch.cat([up(x), skip], dim=1))
            if i == 0:
                x = self.decoder_dropout(x)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


class UNetEnsemble(nn.Module):
    """``members`` U-Nets with the same settings, trained together, each with its own initialisation.

    The members are built one after the other from torch's global generator, so they start from
    different weights, and the same ones under the same seed (``Segmenter.fit`` seeds it first).
    Other arguments as :class:`UNet`. Output ``(N, members, out_channels, H, W)``.
    """

    def __init__(
        self,
        members: int,
        in_channels: int = 3,
        out_channels: int = 2,
        base_width: int = 16,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            UNet(in_channels, out_channels, base_width, dropout) for _ in range(members)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members], dim=1)
