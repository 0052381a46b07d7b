"""A fake model for the output-folder tests: no training, and its predicted Jaccard is chosen by the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segqc.types import SegPrediction


def accept_all_gate(threshold: float):
    """A gate whose detector calls every input in-distribution (so only the other checks decide)."""
    from segqc.gate import Gate
    from segqc.ood import FEATURES, OODDetector

    d = len(FEATURES)
    detector = OODDetector(np.zeros(d), np.ones(d), np.zeros((d, d)), limit=1e6, image_size=16)
    return Gate(threshold, detector, {"confidence": 0.9, "margin": 0.1, "n_heldout": 100, "guaranteed": True})


class FakeModel:
    """Follows the :class:`segqc.runtime.Model` protocol. Predicted Jaccard = the image's mean red / 255,
    so a test picks each decision by the colour of the image it writes (threshold 0.5)."""

    backend, method, image_size, threshold, uncertainty_vmax = "fake", "msp", 16, 0.5, 0.5
    manifest_sha256 = "f" * 64

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = {"sha256": {"f": "0" * 64}, "threshold_rule": {"description": "fixed"}}
        self.gate = accept_all_gate(self.threshold)

    def segment(self, images: np.ndarray) -> SegPrediction:
        n, s = len(images), images.shape[1]
        probs = np.zeros((n, s, s), np.float32)
        probs[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 0.9
        return SegPrediction(probs, (probs > 0.5).astype(np.uint8), np.full((n, s, s), 0.1, np.float32))

    def predict_quality(self, samples) -> np.ndarray:
        return samples.images[..., 0].mean(axis=(1, 2)) / 255.0


@pytest.fixture()
def fake_model(tmp_path) -> FakeModel:
    return FakeModel(tmp_path / "fake-model")


def write_image(path: Path, red: int = 200, size: tuple[int, int] = (20, 24)) -> Path:
    """A flat image of (height, width) ``size``; ``red`` >= 128 passes the fake model, below refers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((*size, 3), np.uint8)
    arr[..., 0], arr[..., 1] = red, 90
    Image.fromarray(arr).save(path)
    return path
