"""Train/test splits: the embedded synthetic default, or a data folder split by a protocol (or 80/20)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segqc.data.dataset import SegData, load_split
from segqc.data.readers import read_protocol
from segqc.data.synthetic import make_synthetic

#: Sizes of the embedded synthetic default (training and test images).
DEMO_TRAIN, DEMO_TEST = 320, 160
#: Share of a data folder without a protocol that goes to training.
TRAIN_FRACTION = 0.8

#: What ``load_train_test`` accepts: a data folder, ``None`` for the synthetic default, or in-memory data.
DataSource = str | Path | SegData | tuple[SegData, SegData] | None


def synthetic_split(
    n_train: int, n_test: int, size: int, seed: int
) -> tuple[SegData, SegData, dict[str, Any]]:
    """Synthetic train and test sets; the test images come from a disjoint stream of the generator."""
    images, masks, ids = make_synthetic(n_train + n_test, size, seed=seed)
    data = SegData(images, masks, ids)
    info = {"source": "synthetic", "generator_seed": seed, "n_train": n_train, "n_test": n_test}
    return data.subset(range(n_train)), data.subset(range(n_train, n_train + n_test)), info


def load_train_test(
    data: DataSource,
    protocol: str | Path | None = None,
    *,
    size: int,
    seed: int = 0,
    n_train: int = DEMO_TRAIN,
    n_test: int = DEMO_TEST,
) -> tuple[SegData, SegData | None, dict[str, Any]]:
    """The training and test sets of a run, and a JSON-able description of where they came from.

    Args:
        data: a data folder (ISIC 2017 or ``images/`` + ``masks/``); ``None`` for the embedded synthetic
            set (``n_train`` + ``n_test`` images, generator seed ``seed``); in-memory ``SegData``
            (training only); or a ``(train, test)`` pair.
        protocol: JSON file with a ``train`` id list and optionally a ``test`` one. Without a protocol
            a data folder is split ``TRAIN_FRACTION`` / rest, seeded by ``seed``. A protocol without
            a ``test`` list gives no test set.
        size: side of the square images.
        seed: seed of the synthetic generator and of the 80/20 split.

    Returns:
        ``(train, test or None, info)``; ``info`` names the data as given (no absolute paths).
    """
    if isinstance(data, SegData):
        return data, None, {"source": "in-memory"}
    if isinstance(data, tuple):
        return data[0], data[1], {"source": "in-memory"}
    if data is None:
        return synthetic_split(n_train, n_test, size, seed)
    info = {"source": str(data), "protocol": str(protocol) if protocol else None}
    if protocol is None:
        (full,) = load_split(data, None, size=size)
        order = np.random.default_rng(seed).permutation(len(full))
        cut = int(round(TRAIN_FRACTION * len(full)))
        return full.subset(np.sort(order[:cut])), full.subset(np.sort(order[cut:])), info
    if "test" not in read_protocol(protocol):
        (train,) = load_split(data, protocol, size=size, splits=("train",))
        return train, None, info
    train, test = load_split(data, protocol, size=size)
    return train, test, info
