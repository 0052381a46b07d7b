"""Shared fixtures: tiny synthetic data, tiny settings, paths to the real ISIC 2017 copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segqc.config import PipelineConfig
from segqc.data.dataset import SegData
from segqc.data.synthetic import make_synthetic

ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic2017"

# The test models are tiny: one thread is as fast, and far faster when the cores are busy.
torch.set_num_threads(1)


@pytest.fixture()
def one_thread():
    """One torch thread for this test, whatever an earlier test set: runs compared bit for bit (a
    resumed training against an uninterrupted one) need the same float sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def isic_root() -> Path:
    if not (ISIC / "split.json").is_file():
        pytest.skip(f"real ISIC 2017 data not found at {ISIC}")
    return ISIC


@pytest.fixture(scope="session")
def tiny_data() -> tuple[SegData, SegData]:
    """48 training and 24 test synthetic images at 32x32."""
    images, masks, ids = make_synthetic(72, 32, seed=3)
    data = SegData(images, masks, ids)
    return data.subset(range(48)), data.subset(range(48, 72))


#: The smallest settings that still train f and g: shared by the pipeline and experiment tests.
TINY_SETTINGS = dict(
    image_size=32, base_width=4, quality_width=4, seg_epochs=1, quality_epochs=1, batch_size=16, device="cpu"
)


@pytest.fixture()
def tiny_config() -> PipelineConfig:
    return PipelineConfig(**TINY_SETTINGS)


def write_rgb(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, fmt: str | None = None) -> Path:
    """A random RGB image of (width, height) ``size``."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def write_mask(path: Path, size: tuple[int, int] = (40, 30), values: tuple[int, int] = (0, 255)) -> Path:
    """A binary mask of (width, height) ``size``: a filled rectangle of ``values[1]`` on ``values[0]``."""
    arr = np.full((size[1], size[0]), values[0], np.uint8)
    arr[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = values[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


#: Python source that makes every ``import torch`` fail: the preamble of :func:`run_without_torch`.
BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (imported as {name!r})")

    sys.meta_path.insert(0, NoTorch())
    """
)


def run_without_torch(script: str, *args: str, timeout: float = 300) -> tuple[dict, str]:
    """Run ``script`` with ``args`` in a fresh interpreter where importing torch fails.

    Returns the JSON object of the last line the script prints that starts with ``RESULT ``, and the
    process's whole output (for assertion messages).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(script), *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    output = proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, output
    return json.loads(lines[-1][len("RESULT ") :]), output


@pytest.fixture(scope="session")
def fit_bundle_dir(tmp_path_factory) -> Path:
    """A small bundle that passes its fitness check (6 epochs each on 120 synthetic 32x32 images; ~4 s)."""
    from segqc.training import train_bundle

    images, masks, ids = make_synthetic(160, 32, seed=8)
    data = SegData(images, masks, ids)
    cfg = PipelineConfig(**{**TINY_SETTINGS, "seg_epochs": 6, "quality_epochs": 6})
    out = tmp_path_factory.mktemp("fit") / "model"
    train_bundle((data.subset(range(120)), data.subset(range(120, 160))), None, cfg, out, progress=False)
    return out
