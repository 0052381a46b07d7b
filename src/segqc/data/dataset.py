"""In-memory data sets: decoded once, resized, cached on disk as arrays."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from segqc.data.readers import Pair, check_splits, find_pairs, missing_masks_hint, read_pair, read_protocol
from segqc.errors import DataError, SegQCWarning
from segqc.utils import atomic_write, canonical

_CACHE_VERSION = 1


@dataclass
class SegData:
    """Images ``(N, H, W, 3)`` uint8 RGB, masks ``(N, H, W)`` uint8 in {0, 1}, and their ids."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [f"{i:05d}" for i in range(len(self.images))]
        if not (len(self.images) == len(self.masks) == len(self.ids)):
            raise DataError("images, masks and ids must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: Sequence[int] | np.ndarray) -> SegData:
        index = np.asarray(index, dtype=np.int64)
        return SegData(self.images[index], self.masks[index], [self.ids[i] for i in index])

    def select(self, ids: Sequence[str]) -> SegData:
        """The items with these ids, in this order; unknown ids are an error listing a few."""
        position = {id_: i for i, id_ in enumerate(self.ids)}
        missing = [i for i in ids if i not in position]
        if missing:
            raise DataError(f"{len(missing)} ids not in the data, e.g. {', '.join(missing[:5])}")
        return self.subset([position[i] for i in ids])


def _digest(ids: Sequence[str], *arrays: np.ndarray) -> str:
    h = hashlib.sha256(canonical(list(ids)).encode())
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def data_digest(data: SegData) -> str:
    """Hash of a data set's ids, images and masks (keys of cached and resumable work)."""
    return _digest(data.ids, data.images, data.masks)


def masks_digest(data: SegData) -> str:
    """Hash of a data set's ids and masks: the truth a referral threshold is chosen on (images are left
    out, as their decoding may change in the last bits with the image library's version)."""
    return _digest(data.ids, data.masks)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SEGQC_CACHE", Path.home() / ".cache" / "segqc"))


def load_folder(
    root: str | Path,
    *,
    size: int,
    ids: Sequence[str] | None = None,
    mask_pattern: str | None = None,
    cache_dir: str | Path | None = "default",
    pairs: dict[str, Pair] | None = None,
) -> SegData:
    """Load image/mask pairs from a data folder (ISIC 2017 or generic layout), resized to ``size``.

    Decoded arrays are cached under ``cache_dir`` keyed by the files' paths, sizes and modification
    times, so later runs (and every epoch) skip JPEG decoding. Every unreadable item is reported
    in one :class:`DataError`.

    Args:
        root: data folder.
        size: side of the square the images and masks are resized to.
        ids: ids to load, in this order. Defaults to every labelled pair.
        mask_pattern: see :func:`~segqc.data.readers.find_folder`.
        cache_dir: cache folder; ``None`` disables the cache. Defaults to ``$SEGQC_CACHE`` or
            ``~/.cache/segqc``.
        pairs: the folder's pairs if already found (:func:`~segqc.data.readers.find_pairs` with
            ``mask_pattern``), so a caller loading several splits lists the folder once.
    """
    if pairs is None:
        pairs = find_pairs(root, mask_pattern)
    if ids is None:
        ids = [i for i, p in pairs.items() if p.mask is not None]
        if not ids:
            raise DataError(f"{root}: no image has a ground-truth mask: {missing_masks_hint(root)}")
        unlabelled = [i for i, p in pairs.items() if p.mask is None]
        if unlabelled:  # left out by design, but a forgotten mask should not go unnoticed
            warnings.warn(
                f"{root}: {len(unlabelled)} image{'s' if len(unlabelled) > 1 else ''} without a "
                f"ground-truth mask {'are' if len(unlabelled) > 1 else 'is'} left out, e.g. "
                + ", ".join(str(pairs[i].image) for i in unlabelled[:5]),
                SegQCWarning,
                stacklevel=2,
            )
    missing = [i for i in ids if i not in pairs]
    if missing:
        raise DataError(
            f"{root}: {len(missing)} id{'s' if len(missing) > 1 else ''} of the protocol "
            f"{'are' if len(missing) > 1 else 'is'} not in the data, e.g. {', '.join(missing[:5])}"
        )
    chosen = [pairs[i] for i in ids]

    cache_file = None
    if cache_dir is not None:
        cache_dir = default_cache_dir() if cache_dir == "default" else Path(cache_dir)
        key = hashlib.sha256(
            repr((_CACHE_VERSION, size, [_stat(p.image) + _stat(p.mask) for p in chosen])).encode()
        )
        cache_file = cache_dir / f"data-{key.hexdigest()[:24]}.npz"
        if cache_file.is_file():
            try:
                with np.load(cache_file) as z:
                    return SegData(z["images"], z["masks"], list(ids))
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is rebuilt below

    images = np.empty((len(chosen), size, size, 3), np.uint8)
    masks = np.empty((len(chosen), size, size), np.uint8)
    errors = []
    for i, pair in enumerate(chosen):
        try:
            images[i], masks[i] = read_pair(pair, size)
        except DataError as err:
            errors.append(str(err))
    if errors:
        more = f"; ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DataError(
            f"{len(errors)} of {len(chosen)} items cannot be used: " + "; ".join(errors[:20]) + more
        )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache_file) as tmp:
            np.savez(tmp, images=images, masks=masks)
    return SegData(images, masks, list(ids))


def _stat(path: Path | None) -> tuple:
    if path is None:
        return ()
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def load_split(
    root: str | Path,
    protocol: str | Path | None,
    *,
    size: int,
    splits: Sequence[str] = ("train", "test"),
    **kw,
) -> list[SegData]:
    """Load the named splits of a protocol file; without a protocol, every labelled pair as one set."""
    if protocol is None:
        return [load_folder(root, size=size, **kw)]
    named = read_protocol(protocol)
    absent = [s for s in splits if s not in named]
    if absent:
        raise DataError(f"{protocol}: no split named {', '.join(absent)} (has {', '.join(named)})")
    check_splits(protocol, {s: named[s] for s in splits})  # only the lists this run reads
    pairs = find_pairs(root, kw.get("mask_pattern"))
    problems = []  # every split's at once, before anything is decoded
    for what, absent in (
        ("not in the data", lambda i: i not in pairs),
        ("without a ground-truth mask", lambda i: i in pairs and pairs[i].mask is None),
    ):
        found = {s: [i for i in named[s] if absent(i)] for s in splits}
        n = sum(map(len, found.values()))
        if n:
            listed = "; ".join(
                f"{s}: {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}"
                for s, ids in found.items()
                if ids
            )
            problems.append(
                f"{n} id{'s' if n > 1 else ''} of the protocol {'are' if n > 1 else 'is'} {what}: {listed}"
            )
    if problems:
        raise DataError(f"{root}: " + "; and ".join(problems))
    return [load_folder(root, size=size, ids=named[s], pairs=pairs, **kw) for s in splits]


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale."""
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return flat.mean(0).tolist(), np.maximum(flat.std(0), 1e-3).tolist()


def to_input(images: np.ndarray | Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(N, H, W, 3)`` uint8 images -> ``(N, 3, H, W)`` float32 network input, normalised."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s
