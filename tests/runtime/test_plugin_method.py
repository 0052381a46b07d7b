"""A new stochastic uncertainty method, written here and nowhere in ``src/``, runs end to end.

It declares its own graph (with the random draws as an input), its own NumPy read-out, and goes through
training, predict on PyTorch, ONNX export and predict on ONNX Runtime with no change to segqc: the proof
that the plug-in interface is honest.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segqc.assess.folder import assess_files
from segqc.config import PipelineConfig
from segqc.data.dataset import SegData
from segqc.data.synthetic import make_synthetic
from segqc.postprocess import entropy
from segqc.runtime import load_model
from segqc.runtime.export import export_onnx
from segqc.training import train_bundle
from segqc.types import Graph
from segqc.uncertainty import METHODS, UncertaintyMethod

NAME = "test-input-noise"


class NoisyGraph(nn.Module):
    """uint8 images plus a noise input (in normalised units) -> softmax of f on the noisy images."""

    def __init__(self, normalize: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.normalize, self.net = normalize, net

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images) + noise.permute(0, 3, 1, 2)
        return torch.softmax(self.net(x)[:, :2], dim=1)


class InputNoise(UncertaintyMethod):
    """Entropy of the mean softmax over ``samples`` Gaussian perturbations of the input."""

    stochastic = True

    def __init__(self, *, samples: int = 4, sigma: float = 0.5) -> None:
        self.samples, self.sigma = samples, sigma

    def passes(self) -> float:
        return float(self.samples)

    def graphs(self, net, normalize, images):
        noise = torch.zeros(*images.shape, dtype=torch.float32)
        graph = Graph(NoisyGraph(normalize, net), ["images", "noise"], ["probs"], (images, noise))
        return {"f_noisy": graph}, {"channels": int(images.shape[-1])}

    def read_out(self, run, images, rng, layout):
        shape = (*images.shape[:3], layout["channels"])
        total = sum(
            run(
                "f_noisy",
                {"images": images, "noise": (self.sigma * rng.standard_normal(shape)).astype("float32")},
            )[0]
            for _ in range(self.samples)
        )
        mean = total / np.float32(self.samples)
        return mean[:, 1], entropy(mean)


@pytest.fixture()
def registered():
    METHODS.register(NAME)(InputNoise)
    yield NAME
    METHODS.unregister(NAME)


def read_quality(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "quality.csv", newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def test_a_stochastic_method_from_outside_src_trains_predicts_and_exports(registered, tmp_path):
    images, masks, ids = make_synthetic(24, 32, seed=3)
    data = SegData(images, masks, ids)
    cfg = PipelineConfig(
        method=registered, method_params={"samples": 3}, image_size=32, base_width=4, quality_width=4,
        seg_epochs=1, quality_epochs=1, batch_size=8, device="cpu",
    )  # fmt: skip
    train_bundle(
        (data.subset(range(18)), data.subset(range(18, 24))),
        None,
        cfg,
        tmp_path / "model",
        progress=False,
        force=True,  # one epoch: g is near constant, and this test is about the plug-in
    )
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i, image in enumerate(make_synthetic(3, 40, seed=9)[0]):
        Image.fromarray(image).save(inputs / f"case{i}.png")
    paths = sorted(inputs.iterdir())

    torch_model = load_model(tmp_path / "model", device="cpu")
    assert torch_model.backend == "torch" and torch_model.method == registered
    summary = assess_files(torch_model, paths, tmp_path / "out-torch", progress=False, report=False)
    assert len(summary.assessed) == 3

    export = export_onnx(tmp_path / "model", tmp_path / "onnx", exporter="torchscript")
    onnx_model = load_model(export, device="cpu")
    assert onnx_model.backend == "onnx" and set(onnx_model.config["graphs"]) == {"f_noisy", "g"}
    assert onnx_model.config["parity"]["passed"]
    assess_files(onnx_model, paths, tmp_path / "out-onnx", progress=False, report=False)

    # Both backends run this file's read-out with the same seed: the same noise, the same answers.
    torch_rows, onnx_rows = read_quality(tmp_path / "out-torch"), read_quality(tmp_path / "out-onnx")
    assert torch_rows.keys() == onnx_rows.keys() and len(torch_rows) == 3
    for key, row in torch_rows.items():
        assert float(onnx_rows[key]["predicted_jaccard"]) == pytest.approx(
            float(row["predicted_jaccard"]), abs=1e-4
        )
        assert onnx_rows[key]["decision"] == row["decision"]
    # ...and the method really is stochastic on each backend.
    batch = make_synthetic(2, 32, seed=4)[0]
    for model in (torch_model, onnx_model):
        a, b = model.segment(batch), model.segment(batch)
        assert np.abs(a.uncertainty - b.uncertainty).max() > 0
