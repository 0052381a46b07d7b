"""Manifest checksums and Ed25519 signatures (segqc.integrity), through the library and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.cli import cli
from segqc.errors import BundleError, SegQCError
from segqc.integrity import check_seal, generate_key, manifest_digest, seal, sign_model, verify_signature
from segqc.runtime import load_model


@pytest.fixture()
def model_dir(fit_bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(fit_bundle_dir, tmp_path / "model"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_key(tmp_path_factory.mktemp("keys") / "signing")


def test_seal_covers_every_field_and_ignores_key_order(tmp_path):
    config = {"b": [1, 2.5, {"c": None}], "a": "x", "n": np.float32(0.5)}
    sealed = seal(config)
    assert sealed["n"] == 0.5 and check_seal(sealed, tmp_path) == sealed["manifest_sha256"]
    reordered = dict(reversed(list(sealed.items())))
    assert manifest_digest(reordered) == sealed["manifest_sha256"]
    for change in ({"a": "y"}, {"b": [1, 2.5, {"c": 0}]}, {"extra": 1}):
        with pytest.raises(BundleError, match="checksum mismatch"):
            check_seal({**sealed, **change}, tmp_path)
    with pytest.raises(BundleError, match="has no 'manifest_sha256'"):
        check_seal(config, tmp_path)
    assert seal({"x": float("nan")})["x"] is None  # written as null, digested as null


def test_sign_and_verify(model_dir, keys):
    private, public = keys
    with pytest.raises(BundleError, match="not signed"):
        verify_signature(model_dir, public)
    sign_model(model_dir, private)
    assert verify_signature(model_dir, public) == load_model(model_dir).manifest_sha256
    assert load_model(model_dir, trusted_key=public).fit


def test_a_signature_by_another_key_or_of_another_model_is_refused(model_dir, keys, tmp_path):
    private, public = keys
    other_private, other_public = generate_key(tmp_path / "other")
    sign_model(model_dir, other_private)
    with pytest.raises(BundleError, match="does not verify with the trusted key"):
        load_model(model_dir, trusted_key=public)
    sign_model(model_dir, private)
    # A change re-sealed by someone without the private key: the checksum holds, the signature does not.
    config = json.loads((model_dir / "bundle.json").read_text())
    config["threshold"] = 0.3
    (model_dir / "bundle.json").write_text(json.dumps(seal(config)))
    with pytest.raises(BundleError, match="does not verify"):
        load_model(model_dir, trusted_key=public)
    (model_dir / "signature.json").write_text('{"signature": "!!"}')
    with pytest.raises(BundleError, match="unreadable signature"):
        verify_signature(model_dir, public)


def test_bad_keys_are_clear_errors(model_dir, keys, tmp_path):
    private, public = keys
    (tmp_path / "junk.pem").write_text("junk")
    for key, pattern in ((public, "not a PEM private key"), (tmp_path / "junk.pem", "not a PEM private key")):
        with pytest.raises(SegQCError, match=pattern):
            sign_model(model_dir, key)
    with pytest.raises(SegQCError, match="not a PEM public key"):
        verify_signature(model_dir, private)
    with pytest.raises(SegQCError, match="refusing to overwrite"):
        generate_key(private)


def test_cli_keygen_sign_predict_and_serve_with_a_trusted_key(model_dir, tmp_path):
    runner = CliRunner()
    key = tmp_path / "k"
    assert runner.invoke(cli, ["keygen", str(key)]).exit_code == 0
    assert (key.stat().st_mode & 0o777) == 0o600 and Path(f"{key}.pub").is_file()
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tmp_path / "x.png")
    predict = ["predict", "--model", str(model_dir), "--trusted-key", f"{key}.pub", "--quiet"]
    unsigned = runner.invoke(cli, [*predict, "--out", str(tmp_path / "o1"), str(tmp_path / "x.png")])
    assert (
        unsigned.exit_code == 1 and unsigned.stderr.startswith("error:") and "not signed" in unsigned.stderr
    )
    assert not (tmp_path / "o1" / "quality.csv").exists()
    signed = runner.invoke(cli, ["sign", "--key", str(key), str(model_dir)])
    assert signed.exit_code == 0 and (model_dir / "signature.json").is_file()
    ok = runner.invoke(cli, [*predict, "--out", str(tmp_path / "o2"), str(tmp_path / "x.png")])
    assert ok.exit_code == 0, ok.output

    from segqc.service import create_app

    assert create_app(model_dir, trusted_key=f"{key}.pub").state.model.fit
    other = generate_key(tmp_path / "other")[1]
    with pytest.raises(BundleError, match="does not verify"):
        create_app(model_dir, trusted_key=other)


def test_export_carries_the_gate_and_its_own_seal(model_dir, tmp_path, keys):
    pytest.importorskip("onnxruntime")
    from segqc.runtime.export import export_onnx

    out = export_onnx(model_dir, tmp_path / "onnx", exporter="torchscript")
    manifest = json.loads((out / "export.json").read_text())
    bundle = load_model(model_dir)
    assert manifest["gate"] == bundle.config["gate"]
    assert manifest["source"]["manifest_sha256"] == bundle.manifest_sha256
    onnx = load_model(out)
    assert onnx.gate.ood.limit == bundle.gate.ood.limit and onnx.fit
    sign_model(out, keys[0])
    assert verify_signature(out, keys[1]) == onnx.manifest_sha256
    manifest["gate"]["ood"]["limit"] = 1e5  # make everything "in distribution", without re-sealing
    (out / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest checksum mismatch"):
        load_model(out)


def test_a_planted_export_beside_a_signed_bundle_is_refused(model_dir, tmp_path, keys):
    # load_model opens export.json before bundle.json; the signature used to be checked on bundle.json,
    # so an unsigned, re-sealed export dropped into a signed bundle's folder was loaded as "signed".
    pytest.importorskip("onnxruntime")
    from segqc.runtime.export import export_onnx

    private, public = keys
    sign_model(model_dir, private)
    onnx = export_onnx(model_dir, tmp_path / "onnx", exporter="torchscript")
    manifest = json.loads((onnx / "export.json").read_text())
    manifest["gate"]["ood"]["limit"] = 1e5  # everything "in distribution"
    (onnx / "export.json").write_text(json.dumps(seal(manifest)))
    for file in onnx.glob("*.onnx"):
        shutil.copy(file, model_dir / file.name)
    shutil.copy(onnx / "export.json", model_dir / "export.json")
    assert load_model(model_dir).gate.ood.limit == 1e5  # sealed: loads without a key
    with pytest.raises(BundleError, match="signs 'bundle.json', but the model here is export.json"):
        load_model(model_dir, trusted_key=public)
    with pytest.raises(BundleError, match="signs 'bundle.json'"):
        verify_signature(model_dir, public)


def test_a_manifest_swapped_after_the_signature_check_is_refused(model_dir, keys, monkeypatch):
    import segqc.integrity

    private, public = keys
    sign_model(model_dir, private)
    real = segqc.integrity.verify_signature

    def verify_then_swap(folder, key):
        digest = real(folder, key)
        config = json.loads((model_dir / "bundle.json").read_text())
        config["gate"]["ood"]["limit"] = 1e5
        (model_dir / "bundle.json").write_text(json.dumps(seal(config)))
        return digest

    monkeypatch.setattr(segqc.integrity, "verify_signature", verify_then_swap)
    with pytest.raises(BundleError, match="changed after its signature was checked"):
        load_model(model_dir, trusted_key=public)
