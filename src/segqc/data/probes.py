"""Images that are not dermoscopy at all: the probe set every gate must refer as out-of-distribution.

Blank frames, noise, gradients, patterns, rendered text, and two real photographs that ship with
matplotlib (a portrait, and a shaded terrain map), at any size. Used by the tests and by
``benchmarks/bench_gate.py`` to measure the out-of-distribution detector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _sample_data(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


def _photo(size: int) -> np.ndarray:
    with Image.open(_sample_data("grace_hopper.jpg")) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def _terrain(size: int) -> np.ndarray:
    from matplotlib import colormaps

    with np.load(_sample_data("jacksboro_fault_dem.npz")) as data:
        elevation = np.asarray(data["elevation"], np.float64)
    norm = (elevation - elevation.min()) / max(np.ptp(elevation), 1e-9)
    rgb = (colormaps["gist_earth"](norm)[..., :3] * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def _text(size: int) -> np.ndarray:
    page = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(page)
    for row in range(0, size, 12):
        draw.text((4, row), "Patient report: lesion 4 mm, margins clear. " * 2, fill="black")
    return np.asarray(page)


def make_probes(size: int = 224, seed: int = 0) -> dict[str, np.ndarray]:
    """Non-dermoscopy ``(size, size, 3)`` uint8 RGB images by name."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    stripes = ((np.indices((size, size)).sum(0) // max(size // 14, 1)) % 2).astype(np.uint8) * 255
    checker = ((np.indices((size, size)) // max(size // 8, 1)).sum(0) % 2).astype(np.uint8) * 255
    return {
        "black": np.zeros((size, size, 3), np.uint8),
        "white": np.full((size, size, 3), 255, np.uint8),
        "mid-gray": np.full((size, size, 3), 128, np.uint8),
        "skin-colour": np.tile(np.array([205, 150, 125], np.uint8), (size, size, 1)),
        "uniform-noise": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "gaussian-noise": np.clip(rng.normal(128, 40, (size, size, 3)), 0, 255).astype(np.uint8),
        "rgb-gradient": (np.stack([xx, yy, 1 - xx], -1) * 255).astype(np.uint8),
        "gray-gradient": np.repeat((xx * 255).astype(np.uint8)[..., None], 3, 2),
        "checkerboard": np.repeat(checker[..., None], 3, 2),
        "stripes": np.repeat(stripes[..., None], 3, 2),
        "text": _text(size),
        "photo-portrait": _photo(size),
        "terrain-map": _terrain(size),
    }
