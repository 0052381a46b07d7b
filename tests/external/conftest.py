"""Tiny plain PyTorch networks exported to ONNX: stand-ins for a user's own segmentation model."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


class ConvNet(nn.Module):
    """One 3x3 convolution with fixed random weights; ``nhwc`` takes and gives channels last."""

    def __init__(self, out_channels: int, *, nhwc: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, out_channels, 3, padding=1)
        self.nhwc = nhwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.conv(x)


def trained_unet(size: int) -> tuple[nn.Module, dict]:
    """A small U-Net trained on other synthetic images than the tests use, as a plain PyTorch module
    (normalised NCHW input -> two-channel logits), with the SPEC that feeds it."""
    from segqc.data.dataset import SegData
    from segqc.data.synthetic import make_synthetic
    from segqc.segmenter import Segmenter

    seg = Segmenter("msp", base_width=8, epochs=20, device="cpu", progress=False, seed=1)
    seg.fit(SegData(*make_synthetic(160, size, seed=6)))  # ~10 s
    return seg.model_.eval(), {"mean": seg.mean_, "std": seg.std_}


class Squeeze(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def export(
    net: nn.Module,
    path: Path,
    shape: tuple[int, ...],
    *,
    dynamic_size: bool = False,
    outputs: tuple[str, ...] = ("output",),
) -> Path:
    """``net`` as an ONNX file (legacy exporter: fast) with a dynamic batch axis (and H, W); ``outputs``
    names its outputs."""
    net.eval()
    axes = {0: "batch"}
    if dynamic_size:
        axes.update({1: "h", 2: "w"} if shape[-1] == 3 else {2: "h", 3: "w"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        torch.onnx.export(
        net, (torch.rand(shape),), str(path), dynamo=False, input_names=["input"], output_names=list(outputs),
        dynamic_axes={"input": axes, **{o: {0: "batch"} for o in outputs}}, opset_version=17,
    )  # fmt: skip
    return path


def quality_rows(folder: Path) -> dict[str, dict[str, str]]:
    """The rows of ``quality.csv`` that ``segqc predict`` wrote in ``folder``, by id."""
    with open(folder / "quality.csv", newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def predict_rows(model: Path, images: list[Path], tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """``segqc predict`` of ``model`` on copies of ``images`` (in ``tmp_path / "in"``): that folder and
    the rows of ``quality.csv``, by id."""
    from click.testing import CliRunner

    from segqc.cli.predict import predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    for file in images:
        (inputs / file.name).write_bytes(file.read_bytes())
    result = CliRunner().invoke(predict, ["--model", str(model), str(inputs), "--out", str(tmp_path / "p"),
                                          "--device", "cpu", "--quiet"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = quality_rows(tmp_path / "p")
    assert len(rows) == len(images)
    return inputs, rows


def assert_serve_agrees(model: Path, image: Path, rows: dict, method: str) -> None:
    """``segqc serve`` of ``model`` answers ``image`` as ``segqc predict`` did (``rows``) and names
    ``method``; skipped without the service's packages."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from segqc.service import create_app

    with TestClient(create_app(model)) as client:
        answer = client.post("/v1/assess", files={"file": (image.name, image.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predicted_jaccard"] == pytest.approx(
            float(rows[image.stem]["predicted_jaccard"]), abs=1e-5
        )
        assert client.get("/v1/model").json()["method"] == method


def assert_torch_free_predict_agrees(export_dir: Path, inputs: Path, out: Path, rows: dict) -> None:
    """``segqc predict`` on the export, where torch cannot be imported, gives the bundle's ``rows``."""
    from tests.conftest import run_without_torch

    script = """
        from click.testing import CliRunner
        from segqc.cli.predict import predict
        args = ["--model", sys.argv[1], sys.argv[2], "--out", sys.argv[3], "--quiet"]
        r = CliRunner().invoke(predict, args)
        torch_modules = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("RESULT", json.dumps({"code": r.exit_code, "torch": torch_modules, "out": r.output[-500:]}))
    """
    result_json, output = run_without_torch(script, str(export_dir), str(inputs), str(out))
    assert result_json["code"] == 0 and result_json["torch"] == [], output
    onnx_rows = quality_rows(out)
    assert set(onnx_rows) == set(rows)
    for key, row in rows.items():
        assert float(onnx_rows[key]["predicted_jaccard"]) == pytest.approx(
            float(row["predicted_jaccard"]), abs=1e-4
        )
        assert onnx_rows[key]["decision"] == row["decision"]
