"""Test-time augmentation (e.g. Wang et al. 2019, "Aleatoric uncertainty estimation with test-time
augmentation for medical image segmentation"): f is read out on transformed copies of each image.

f is ``msp``'s: the plain U-Net trained with cross-entropy (and with random flips and 90-degree
rotations, so every view is one it has seen). At test time each image is seen in ``V`` views of the
square's symmetry group, each view's foreground probability is transformed back onto the image, and::

    p = 1/V sum_v T_v^-1 f(T_v x)[1],    z = H(p) = -p ln p - (1 - p) ln(1 - p)  in [0, ln 2].

The views of a batch are stacked along the batch axis and run through the one graph ``f``, as many
views per call as ``max_batch`` allows (by default, the cache-friendly batch of a CPU). Nothing is
drawn at random, so the method is deterministic; all of it is NumPy in ``read_out``, so both backends
share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segqc.errors import SegQCError
from segqc.postprocess import binary_entropy, pixel_batch
from segqc.uncertainty.base import Runner, UncertaintyMethod, register_method
from segqc.uncertainty.msp import MaxSoftmax

if TYPE_CHECKING:
    from torch import Tensor

#: The 8 views (the dihedral group of the square), in the order a count ``views=k`` takes them: the
#: first 2 are the usual flip-TTA, the first 4 the flips (a subgroup), all 8 every symmetry.
VIEWS = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose")
#: Each view's inverse (the others undo themselves).
INVERSE = {"rot90": "rot270", "rot270": "rot90"}


def transform(view: str, x: np.ndarray, axes: tuple[int, int] = (1, 2)) -> np.ndarray:
    """``x`` seen in ``view``: its two square spatial ``axes`` (rows, columns) flipped, rotated (``rot90``:
    anticlockwise, as ``np.rot90``) or transposed. Returns a view of ``x`` where NumPy can."""
    rows, cols = axes
    if view == "identity":
        return x
    if view == "hflip":
        return np.flip(x, cols)
    if view == "vflip":
        return np.flip(x, rows)
    if view.startswith("rot"):
        return np.rot90(x, int(view[3:]) // 90, axes=axes)
    if view == "transpose":
        return np.swapaxes(x, rows, cols)
    if view == "antitranspose":
        return np.rot90(np.swapaxes(x, rows, cols), 2, axes=axes)
    raise SegQCError(f"unknown view {view!r}; the views are {', '.join(VIEWS)}")


def undo(view: str, x: np.ndarray, axes: tuple[int, int] = (1, 2)) -> np.ndarray:
    """The inverse of :func:`transform`: ``undo(v, transform(v, x)) == x``."""
    return transform(INVERSE.get(view, view), x, axes)


def parse_views(views: int | str | Sequence[str]) -> tuple[str, ...]:
    """``views`` as names: a count ``1..8`` (the first of :data:`VIEWS`), a list of names, or the names
    in one comma-separated string (as ``--method-param views=identity,hflip`` gives them)."""
    if isinstance(views, str) and views.strip().isdigit():
        views = int(views)
    if isinstance(views, (int, np.integer)) and not isinstance(views, bool):
        if not 1 <= views <= len(VIEWS):
            raise SegQCError(f"views must be a count from 1 to {len(VIEWS)} or a list of names, got {views}")
        return VIEWS[: int(views)]
    names = views.split(",") if isinstance(views, str) else views
    if not isinstance(names, (list, tuple)) or not all(isinstance(v, str) for v in names):
        raise SegQCError(f"views must be a count from 1 to {len(VIEWS)} or a list of names, got {views!r}")
    names = tuple(v.strip() for v in names)
    unknown = [v for v in names if v not in VIEWS]
    if unknown or not names or len(set(names)) != len(names):
        raise SegQCError(
            f"views must be distinct names among {', '.join(VIEWS)} (at least one), got {list(names)}"
        )
    return names


@register_method("tta")
class TTA(UncertaintyMethod):
    """Mean foreground probability over flipped and rotated views; uncertainty is its entropy (nats).

    Args:
        views: which views of :data:`VIEWS`: a count ``1..8`` (the first ones) or a list of names
            (or one comma-separated string of them). ``1`` is ``msp``'s prediction. Defaults to 8 (all).
        max_batch: most images (views x batch images) in one call of f; bounds memory and keeps the
            activations in the caches. At least one view of the batch is always run at a time.
            Defaults to about 2**16 pixels per call (``postprocess.pixel_batch``): on a CPU, all 8
            views of a 16-image batch in one call cost 9-11x one pass of f, one view per call 7.5-8.2x
            (``docs/performance.md``, "Cost of the uncertainty methods"); a GPU may gain from more.
    """

    def __init__(
        self, *, views: int | str | Sequence[str] = len(VIEWS), max_batch: int | None = None
    ) -> None:
        if max_batch is not None and (type(max_batch) is not int or max_batch < 1):
            raise SegQCError(f"max_batch must be at least 1 (or null: by pixels), got {max_batch}")
        self._views = parse_views(views)
        self.views = list(views) if isinstance(views, tuple) else views  # stored as given, JSON-able
        self.max_batch = max_batch

    def training_key(self) -> str:
        return MaxSoftmax().training_key()  # msp's f: only the read-out differs

    def passes(self) -> float:
        return float(len(self._views))

    def head(self, output: Tensor) -> tuple[Tensor, Tensor]:
        return MaxSoftmax().head(output)  # the graph f is msp's; read_out uses its probabilities only

    def read_out(
        self, run: Runner, images: np.ndarray, rng: np.random.Generator, layout: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(images)
        limit = self.max_batch or pixel_batch(*images.shape[1:3])
        per_call = max(1, limit // max(n, 1))  # views per call of f
        total = None
        for start in range(0, len(self._views), per_call):
            views = self._views[start : start + per_call]
            # (k n, S, S, 3), view-major; C order, as onnxruntime wants it (concatenate keeps a view's layout)
            stacked = np.ascontiguousarray(np.concatenate([transform(v, images) for v in views]))
            probs = run("f", {"images": stacked})[0][:, 1]  # (k n, S, S) foreground
            for i, v in enumerate(views):
                back = undo(v, probs[i * n : (i + 1) * n])
                total = back.copy() if total is None else total + back  # copy: no alias of run's output
        mean = total / np.float32(len(self._views))
        return mean, binary_entropy(mean)
