"""Augmentation as in the paper: random flips and 90-degree rotations, identical on aligned inputs."""

from __future__ import annotations

import torch
from torch import Tensor


def random_dihedral(*tensors: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """Apply one random element of the square's symmetry group per sample, the same to every tensor.

    Each tensor has the batch first and the two spatial axes last (``(N, C, H, W)`` or ``(N, H, W)``),
    with H == W. Returns new tensors; the inputs are not modified.
    """
    n = tensors[0].shape[0]
    codes = torch.randint(0, 8, (n,), generator=generator)
    out = [t.clone() for t in tensors]
    for code in codes.unique().tolist():
        idx = (codes == code).nonzero().squeeze(1)
        k, flip = code % 4, code >= 4
        for src, dst in zip(tensors, out):
            part = torch.rot90(src[idx], k, dims=(-2, -1))
            dst[idx] = part.flip(-1) if flip else part
    return tuple(out)
