"""U-Net segmentation network f (Ronneberger et al. 2015), as used by DeVries & Taylor (2018).

Four down-sampling levels, two 3x3 conv + BatchNorm + ReLU per block. Element-wise dropout
(p=0.5 by default, as in Bayesian SegNet) sits on central blocks only, where
``dropout_placement`` says (:data:`DROPOUT_PLACEMENTS`):

- ``"center"``: after the bottleneck block and after the first decoder block (two layers);
- ``"segnet"``: Bayesian SegNet's placement (Kendall et al. 2017), after every central encoder and
  decoder block: after the two deepest encoder blocks (on their output, before pooling, so the skip
  connection and the next level both see the dropped-out features), after the bottleneck and after
  the first two decoder blocks (five layers).

Everything before the first dropout is deterministic, which MC dropout exploits (``encode`` once,
``decode`` T times). :class:`UNetEnsemble` holds several U-Nets side by side (deep ensembles).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segqc.errors import SettingsError


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


#: Where dropout goes: ``(encoder levels, decoder blocks)`` followed by a dropout layer, counted from the
#: top of the encoder (level 0 = full resolution) and from the bottom of the decoder (block 0 = the
#: first one after the bottleneck). Every placement has "center"'s two layers, after the bottleneck
#: (``center_dropout``) and after decoder block 0 (``decoder_dropout``), under the names old bundles know.
DROPOUT_PLACEMENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "center": ((), (0,)),
    "segnet": ((2, 3), (0, 1)),
}


class UNet(nn.Module):
    """U-Net with raw (pre-activation) outputs.

    Args:
        in_channels: image channels. Defaults to 3.
        out_channels: output maps: 2 class logits plus any extra head channels a method needs
            (a variance for ``hcnn``, a confidence for ``lce``). Defaults to 2.
        base_width: channels of the first block; level ``i`` has ``base_width * 2**i``. Defaults to 16.
        dropout: dropout probability on the central encoder and decoder blocks. Defaults to 0.5.
        dropout_placement: which blocks dropout follows, ``"center"`` (the bottleneck and the first
            decoder block) or ``"segnet"`` (Bayesian SegNet's: also the two deepest encoder blocks and
            the second decoder block); see :data:`DROPOUT_PLACEMENTS`. Dropout layers hold no
            weights, so the state_dict keys (and the initial weights for a seed) are the same for
            both. Defaults to ``"center"``.

    Input ``(N, in_channels, H, W)`` with H and W divisible by 16; output ``(N, out_channels, H, W)``.

    ``forward(x) == decode(encode(x))``: ``encode`` is the deterministic prefix, up to the input of the
    first dropout layer, and returns ``[*skips, x]``: the skip features of the levels it finished and
    ``x``, the output of the block it stopped after (encoder level ``len(skips)``, or the bottleneck when
    ``len(skips) == levels``), before any dropout. ``decode`` takes such a list and does the rest.
    """

    levels = 4

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        base_width: int = 16,
        dropout: float = 0.5,
        dropout_placement: str = "center",
    ):
        super().__init__()
        if dropout_placement not in DROPOUT_PLACEMENTS:
            raise SettingsError(
                f"dropout_placement must be one of {', '.join(DROPOUT_PLACEMENTS)}, got {dropout_placement!r}"
            )
        self.dropout_placement = dropout_placement
        encoder_levels, decoder_blocks = DROPOUT_PLACEMENTS[dropout_placement]
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
        self.decoder_dropout = nn.Dropout(dropout)  # after decoders[0], in every placement
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        # The layers beyond "center"'s two, only where used (none for "center", which keeps its modules).
        self._encoder_levels = tuple(encoder_levels)
        if encoder_levels:
            self.encoder_dropouts = nn.ModuleDict({str(i): nn.Dropout(dropout) for i in encoder_levels})
        if len(decoder_blocks) > 1:
            self.decoder_dropouts = nn.ModuleDict({str(i): nn.Dropout(dropout) for i in decoder_blocks[1:]})

    def _block(self, level: int, x: Tensor) -> Tensor:
        """Encoder block ``level`` (the bottleneck for ``level == levels``) on its input."""
        return self.encoders[level](x) if level < self.levels else self.bottleneck(x)

    def _after_encoder(self, level: int, x: Tensor) -> Tensor:
        """The dropout after encoder block ``level < levels``, if that block has one."""
        return self.encoder_dropouts[str(level)](x) if level in self._encoder_levels else x

    def _after_decoder(self, block: int, x: Tensor) -> Tensor:
        """The dropout after decoder block ``block``, if that block has one."""
        if block == 0:
            return self.decoder_dropout(x)
        drops = getattr(self, "decoder_dropouts", None)
        return drops[str(block)](x) if drops is not None and str(block) in drops else x

    def encode(self, x: Tensor) -> list[Tensor]:
        """The deterministic prefix, up to the first dropout: ``[*skips, x]`` (see the class doc).

        ``"center"``: the four skip features plus the bottleneck output; ``"segnet"``: the skip features
        of levels 0 and 1 plus the output of encoder block 2.
        """
        feats = []
        for level in range(self.levels + 1):
            x = self._block(level, x)
            if level == self.levels or level in self._encoder_levels:
                break  # x feeds a dropout layer: the stochastic part starts here
            feats.append(x)
            x = self.pool(x)
        feats.append(x)
        return feats

    def decode(self, feats: list[Tensor]) -> Tensor:
        """The stochastic rest from ``encode``'s features: the remaining encoder levels, the bottleneck
        and the decoder with their dropout layers, and the 1x1 head."""
        *skips, x = feats
        for level in range(len(skips), self.levels):
            x = self._after_encoder(level, x)
            skips.append(x)
            x = self._block(level + 1, self.pool(x))
        x = self.center_dropout(x)
        for i, (up, dec, skip) in enumerate(zip(self.ups, self.decoders, reversed(skips))):
            x = self._after_decoder(i, dec(torch.cat([up(x), skip], dim=1)))
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
        dropout_placement: str = "center",
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            UNet(in_channels, out_channels, base_width, dropout, dropout_placement) for _ in range(members)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members], dim=1)
