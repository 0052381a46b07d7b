"""g trained on an external ONNX model with the CLI, then predict, serve and export on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from segqc.bundle import load_bundle
from segqc.cli.export import export
from segqc.cli.train import train
from segqc.data.synthetic import write_synthetic
from segqc.external import ExternalSegmenter
from segqc.runtime import load_model
from tests.external.conftest import (
    ConvNet,
    assert_serve_agrees,
    assert_torch_free_predict_agrees,
    predict_rows,
    trained_unet,
)
from tests.external.conftest import export as export_net

S = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ext-data")
    write_synthetic(root, 100, S, seed=5)
    return root


@pytest.fixture(scope="module")
def bundle_dir(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ext-model")
    net, spec_data = trained_unet(S)
    model = export_net(net, root / "my unet.onnx", (1, 3, S, S), dynamic_size=True)
    spec = root / "SPEC.json"
    spec.write_text(json.dumps(spec_data))
    out = root / "bundle"
    args = ["--segmenter", str(model), "--segmenter-spec", str(spec), "--method", "msp",
            "--data", str(data_dir), "--out", str(out), "--image-size", str(S), "--quality-epochs", "6",
            "--device", "cpu", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    return out


def test_bundle_holds_the_model_and_its_spec(bundle_dir):
    config = json.loads((bundle_dir / "bundle.json").read_text())
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "g.safetensors", "segmenter.onnx"]
    external = config["segmenter"]["external"]
    assert external["source"] == "my unet.onnx" and external["spec"]["scale"] == 255
    assert config["gate"]["fitness"]["fit"]
    assert set(config["sha256"]) == {"segmenter.onnx", "g.safetensors"}
    bundle = load_bundle(bundle_dir, device="cpu")
    assert isinstance(bundle.segmenter, ExternalSegmenter) and bundle.method == "msp"
    seg = config["test_metrics"]["segmentation"]
    assert 0.5 < seg["jaccard_mean"] < 0.95 and seg["failure_rate"] > 0, seg  # it segments, not perfectly


def test_tampered_model_is_refused(bundle_dir, tmp_path):
    import shutil

    from segqc.errors import BundleError

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "b"))
    blob = bytearray((copy / "segmenter.onnx").read_bytes())
    blob[-4:] = b"\0\0\0\0"
    (copy / "segmenter.onnx").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="segmenter.onnx: checksum mismatch"):
        load_model(copy, device="cpu")


def test_swapped_and_resealed_model_loads_but_fails_its_signature(bundle_dir, tmp_path):
    """The seal is an integrity check, not authenticity: a segmenter.onnx swapped in with bundle.json's
    sha256 and seal redone loads (the swapped model must still fit the SPEC), but a signed bundle then
    fails --trusted-key verification. External data in the swapped file is refused at load."""
    import hashlib
    import shutil

    pytest.importorskip("cryptography")
    from segqc.errors import BundleError
    from segqc.integrity import generate_key, seal, sign_model, verify_signature

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "b"))
    private, public = generate_key(tmp_path / "key")
    sign_model(copy, private)
    verify_signature(copy, public)
    other = export_net(ConvNet(2, seed=5), tmp_path / "other.onnx", (1, 3, S, S))
    (copy / "segmenter.onnx").write_bytes(other.read_bytes())
    config = json.loads((copy / "bundle.json").read_text())
    config["sha256"]["segmenter.onnx"] = hashlib.sha256(other.read_bytes()).hexdigest()
    (copy / "bundle.json").write_text(json.dumps(seal(config)))
    load_model(copy, device="cpu")  # what the seal alone cannot tell
    with pytest.raises(BundleError, match="signature"):
        verify_signature(copy, public)


def test_predict_serve_and_export(bundle_dir, data_dir, tmp_path):
    images = sorted((data_dir / "images").glob("*.png"))[:6]
    inputs, torch_rows = predict_rows(bundle_dir, images, tmp_path)
    runner = CliRunner()

    assert_serve_agrees(bundle_dir, images[0], torch_rows, "msp")

    out = tmp_path / "onnx"
    args = ["--model", str(bundle_dir), "--out", str(out), "--exporter", "torchscript"]
    result = runner.invoke(export, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.onnx")) == ["g.onnx", "segmenter.onnx"]
    assert (out / "segmenter.onnx").read_bytes() == (bundle_dir / "segmenter.onnx").read_bytes()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["parity"]["passed"] and manifest["segmenter"]["external"]["spec"]["scale"] == 255

    assert_torch_free_predict_agrees(out, inputs, tmp_path / "q", torch_rows)


def test_methods_that_need_f_insides_are_refused(data_dir, tmp_path):
    model = export_net(ConvNet(2), tmp_path / "m.onnx", (1, 3, S, S))
    args = ["--segmenter", str(model), "--method", "mcdropout", "--data", str(data_dir), "--out",
            str(tmp_path / "b"), "--image-size", str(S), "--device", "cpu", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 2  # a usage error, before any model is loaded
    assert "'mcdropout' needs segqc's own network" in result.output
    assert not (tmp_path / "b").exists()
    result = CliRunner().invoke(train, ["--segmenter-spec", str(model), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--segmenter-spec needs --segmenter" in result.output


def test_bad_model_file_is_one_line(data_dir, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(train, ["--segmenter", str(bad), "--data", str(data_dir), "--out",
                                        str(tmp_path / "b"), "--image-size", str(S), "--quiet"])  # fmt: skip
    assert result.exit_code == 1 and "onnxruntime cannot load this model" in result.output
    assert len(result.output.strip().splitlines()) == 1
