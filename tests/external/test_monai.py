"""Interoperability with the field's own library: a MONAI network, exported to ONNX with another
normalisation and output than segqc's, gated by segqc through a SPEC.json (train, predict, serve)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.cli import cli
from segqc.data.synthetic import make_synthetic, write_synthetic

monai = pytest.importorskip("monai")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

SIZE = 32
MEAN, STD = [0.4, 0.3, 0.2], [0.3, 0.25, 0.2]  # on the [0, 1] scale, in BGR order: applied by segqc


class WithSoftmax(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def _preprocess(images: np.ndarray) -> torch.Tensor:
    """What the SPEC tells segqc to do: BGR, / 255, - mean, / std, NCHW."""
    x = images[..., ::-1].astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def monai_model(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(
        spatial_dims=2, in_channels=3, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1
    )
    images, masks, _ = make_synthetic(64, SIZE, seed=1)
    x, y = _preprocess(images), torch.from_numpy(masks.astype(np.int64))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(30):  # a few steps: the test is about plumbing, not accuracy
        batch = slice((step * 16) % 64, (step * 16) % 64 + 16)
        loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model = WithSoftmax(net).eval()
    root = tmp_path_factory.mktemp("monai")
    axes = {"x": {0: "n"}, "p": {0: "n"}}
    torch.onnx.export(model, (x[:2],), root / "model.onnx", input_names=["x"], output_names=["p"],
                      dynamic_axes=axes, opset_version=18, dynamo=False)  # fmt: skip
    spec = {"layout": "NCHW", "channel_order": "BGR", "scale": 255, "mean": MEAN, "std": STD,
            "output": "probabilities", "foreground_channel": 1}  # fmt: skip
    (root / "SPEC.json").write_text(json.dumps(spec))
    return root / "model.onnx", root / "SPEC.json", model


def test_train_predict_and_serve_a_monai_model(monai_model, tmp_path, monkeypatch):
    onnx_file, spec, model = monai_model
    monkeypatch.setenv("SEGQC_CACHE", str(tmp_path / "cache"))
    write_synthetic(tmp_path / "d", 40, SIZE, seed=2)
    runner = CliRunner()
    trained = runner.invoke(cli, [
        "train", "--segmenter", str(onnx_file), "--segmenter-spec", str(spec), "--method", "msp",
        "--data", str(tmp_path / "d"), "--image-size", str(SIZE), "--quality-epochs", "3", "--quiet",
        "--device", "cpu", "--force", "--out", str(tmp_path / "bundle"),
    ])  # fmt: skip
    assert trained.exit_code == 0, trained.output

    images, _, _ = make_synthetic(5, SIZE, seed=7)
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "in" / f"case{i}.png")
    predicted = runner.invoke(cli, ["predict", "--model", str(tmp_path / "bundle"), "--out",
                                    str(tmp_path / "out"), "--quiet", str(tmp_path / "in")])  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    with torch.no_grad():
        own = (model(_preprocess(images))[:, 1] > 0.5).numpy()
    for i in range(len(images)):
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"case{i}.png")) > 0
        np.testing.assert_array_equal(mask, own[i])
    with open(tmp_path / "out" / "quality.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5

    from fastapi.testclient import TestClient

    from segqc.service import create_app

    upload = ("case0.png", (tmp_path / "in" / "case0.png").read_bytes(), "image/png")
    with TestClient(create_app(tmp_path / "bundle")) as client:
        answer = client.post("/v1/assess", files={"file": upload}).json()
    by_id = {r["id"]: r for r in rows}
    assert answer["decision"] == by_id["case0"]["decision"]
    assert answer["predicted_jaccard"] == pytest.approx(float(by_id["case0"]["predicted_jaccard"]), abs=1e-5)
