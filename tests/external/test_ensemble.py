"""An ensemble of K external ONNX models (``segqc train --segmenter A --segmenter B ... --method ensemble``):
train, predict and export on it, its map checked against the members run directly with onnxruntime."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from segqc.bundle import load_bundle, save_bundle
from segqc.cli.export import export
from segqc.cli.train import train
from segqc.data.synthetic import write_synthetic
from segqc.errors import BundleError
from segqc.external import ExternalSegmenter
from segqc.runtime import load_model
from tests.external.conftest import (
    assert_serve_agrees,
    assert_torch_free_predict_agrees,
    predict_rows,
    trained_unet,
)
from tests.external.conftest import export as export_net

S = 32
MEMBERS = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ens-data")
    write_synthetic(root, 60, S, seed=5)
    return root


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> tuple[list[Path], Path]:
    """Three ONNX files that differ: one trained U-Net with seeded noise on its weights, and the SPEC."""
    root = tmp_path_factory.mktemp("ens-members")
    net, spec_data = trained_unet(S)
    files = []
    for k in range(MEMBERS):
        member = copy.deepcopy(net)
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in member.parameters():
                p.add_(0.1 * p.std().nan_to_num() * torch.randn(p.shape, generator=gen))
        files.append(export_net(member, root / f"member {k}.onnx", (1, 3, S, S), dynamic_size=True))
    spec = root / "SPEC.json"
    spec.write_text(json.dumps({k: list(map(float, v)) for k, v in spec_data.items()}))
    return files, spec


def _train(files: list[Path], spec: Path, data: Path, out: Path, *extra: str) -> object:
    args = [arg for f in files for arg in ("--segmenter", str(f))]
    args += ["--segmenter-spec", str(spec), "--data", str(data), "--out", str(out), "--image-size", str(S),
             "--quality-epochs", "4", "--device", "cpu", "--quiet", "--force", *extra]  # fmt: skip
    return CliRunner().invoke(train, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def bundle_dir(members, data_dir, tmp_path_factory) -> Path:
    files, spec = members
    out = tmp_path_factory.mktemp("ens-model") / "bundle"
    result = _train(files, spec, data_dir, out, "--method", "ensemble")
    assert result.exit_code == 0, result.output
    return out


def _direct(files: list[Path], spec: Path, images: np.ndarray) -> np.ndarray:
    """Each member's foreground probability ``(K, N, S, S)``, run directly with onnxruntime."""
    import onnxruntime

    data = json.loads(spec.read_text())
    mean = np.asarray(data["mean"], np.float32)[None, :, None, None]
    std = np.asarray(data["std"], np.float32)[None, :, None, None]
    x = ((images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - mean) / std).astype(np.float32)
    out = []
    for file in files:
        logits = onnxruntime.InferenceSession(str(file)).run(None, {"input": x})[0].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out.append((e / e.sum(axis=1, keepdims=True))[:, 1])
    return np.stack(out)


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def _images(data_dir: Path, n: int = 4) -> np.ndarray:
    from PIL import Image

    files = sorted((data_dir / "images").glob("*.png"))[:n]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def test_bundle_holds_the_members(bundle_dir, members, data_dir):
    files, spec = members
    config = json.loads((bundle_dir / "bundle.json").read_text())
    names = [f"segmenter-{k}.onnx" for k in range(MEMBERS)]
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "g.safetensors", *names]
    assert set(config["sha256"]) == {"g.safetensors", *names}
    external = config["segmenter"]["external"]
    assert external["members"] == [{"file": n, "source": f.name} for n, f in zip(names, files, strict=True)]
    assert config["method"] == "ensemble" and config["method_params"]["members"] == MEMBERS
    for name, file in zip(names, files, strict=True):
        assert (bundle_dir / name).read_bytes() == file.read_bytes()

    bundle = load_bundle(bundle_dir, device="cpu")
    assert isinstance(bundle.segmenter, ExternalSegmenter) and len(bundle.segmenter.models) == MEMBERS
    images = _images(data_dir)
    p = _direct(files, spec, images)
    assert np.abs(p[0] - p[1]).max() > 1e-3  # the members differ
    pred = bundle.segment(images)
    np.testing.assert_allclose(pred.probs, p.mean(0), atol=1e-5)
    np.testing.assert_allclose(pred.uncertainty, _entropy(p.mean(0)), atol=1e-4)


def test_mutual_information_map_of_two_members(members, data_dir, tmp_path):
    files, spec = members
    out = tmp_path / "mi"
    result = _train(files[:2], spec, data_dir, out, "--method", "ensemble", "--method-param",
                    "map=mutual_information")  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out, device="cpu")
    assert bundle.config["method_params"] == {"members": 2, "map": "mutual_information"}
    images = _images(data_dir)
    p = _direct(files[:2], spec, images)
    mi = _entropy(p.mean(0)) - _entropy(p).mean(0)
    assert mi.max() > 1e-4
    np.testing.assert_allclose(bundle.segment(images).uncertainty, np.maximum(mi, 0), atol=1e-4)


def test_predict_and_export(bundle_dir, data_dir, tmp_path):
    images = sorted((data_dir / "images").glob("*.png"))[:5]
    inputs, torch_rows = predict_rows(bundle_dir, images, tmp_path)
    runner = CliRunner()

    assert (tmp_path / "p" / "report.html").is_file()  # the review page

    assert_serve_agrees(bundle_dir, images[0], torch_rows, "ensemble")

    out = tmp_path / "onnx"
    args = ["--model", str(bundle_dir), "--out", str(out), "--exporter", "torchscript"]
    result = runner.invoke(export, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    names = [f"segmenter-{k}.onnx" for k in range(MEMBERS)]
    assert sorted(p.name for p in out.glob("*.onnx")) == ["g.onnx", *names]
    for name in names:
        assert (out / name).read_bytes() == (bundle_dir / name).read_bytes()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["parity"]["passed"] and len(manifest["segmenter"]["external"]["members"]) == MEMBERS

    assert_torch_free_predict_agrees(out, inputs, tmp_path / "q", torch_rows)

    copy_dir = Path(shutil.copytree(out, tmp_path / "onnx-missing"))
    (copy_dir / "segmenter-1.onnx").unlink()
    with pytest.raises(BundleError, match="segmenter-1.onnx: external segmentation model not found"):
        load_model(copy_dir, device="cpu")


@pytest.mark.parametrize(
    ("count", "extra", "message"),
    [
        (2, ["--method", "msp"], "'msp' reads out one model, not an ensemble of 2 external models"),
        (1, ["--method", "ensemble"], "give at least 2 segmentation model files, or use --predictions"),
        (2, ["--method", "ensemble", "--method-param", "members=3"], "members=3 disagrees with the 2"),
        (2, ["--method", "mcdropout"], "'mcdropout' needs segqc's own network"),
    ],
)
def test_refusals(members, data_dir, tmp_path, count, extra, message):
    files, spec = members
    result = _train(files[:count], spec, data_dir, tmp_path / "b", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "use one of:" in result.output or "members=" in message
    assert not (tmp_path / "b").exists()


def test_tampered_or_missing_member_is_refused(bundle_dir, tmp_path):
    tampered = Path(shutil.copytree(bundle_dir, tmp_path / "t"))
    blob = bytearray((tampered / "segmenter-2.onnx").read_bytes())
    blob[-4:] = b"\0\0\0\0"
    (tampered / "segmenter-2.onnx").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="segmenter-2.onnx: checksum mismatch"):
        load_bundle(tampered, device="cpu")
    missing = Path(shutil.copytree(bundle_dir, tmp_path / "m"))
    (missing / "segmenter-1.onnx").unlink()
    with pytest.raises(BundleError, match="segmenter-1.onnx: external segmentation model not found"):
        load_model(missing, device="cpu")

    from segqc.integrity import seal

    renamed = Path(shutil.copytree(bundle_dir, tmp_path / "r"))  # resealed: only the names are wrong
    config = json.loads((renamed / "bundle.json").read_text())
    config["segmenter"]["external"]["members"][1]["file"] = "../segmenter-0.onnx"
    (renamed / "bundle.json").write_text(json.dumps(seal(config)))
    with pytest.raises(BundleError, match="'segmenter.external.members' must list"):
        load_bundle(renamed, device="cpu")
    config["segmenter"]["external"]["members"] = config["segmenter"]["external"]["members"][:1]
    (renamed / "bundle.json").write_text(json.dumps(seal(config)))
    with pytest.raises(BundleError, match="K >= 2"):
        load_bundle(renamed, device="cpu")


def test_single_model_keeps_the_old_layout(bundle_dir, members, tmp_path):
    """A bundle of one external model is written as before (segmenter.onnx, 'file' and 'source'), and
    replacing an ensemble bundle by it removes the members."""
    bundle = load_bundle(bundle_dir, device="cpu")
    out = Path(shutil.copytree(bundle_dir, tmp_path / "single"))
    single = ExternalSegmenter(bundle.segmenter.models[0], "msp", source="mine.onnx")
    save_bundle(out, single, bundle.predictor, image_size=S, gate=bundle.config["gate"],
                threshold=bundle.threshold)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "g.safetensors", "segmenter.onnx"]
    config = json.loads((out / "bundle.json").read_text())
    assert set(config["segmenter"]["external"]) == {"file", "spec", "source"}
    assert config["segmenter"]["external"]["file"] == "segmenter.onnx"
    assert set(config["sha256"]) == {"segmenter.onnx", "g.safetensors"}
    loaded = load_bundle(out, device="cpu")
    assert len(loaded.segmenter.models) == 1 and loaded.segmenter.sources == ["mine.onnx"]
