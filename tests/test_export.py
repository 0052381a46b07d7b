"""ONNX export: parity with PyTorch for every method, the torch-free ONNX predict path, the commands."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import segqc.runtime.export
from segqc.assess import assess_images
from segqc.bundle import Bundle
from segqc.cli.export import export
from segqc.cli.predict import predict
from segqc.config import PipelineConfig
from segqc.data.dataset import SegData
from segqc.data.synthetic import make_synthetic
from segqc.errors import BundleError, SegQCError
from segqc.postprocess import upsample_probs
from segqc.quality import create_predictor
from segqc.runtime import load_model
from segqc.runtime.export import TOLERANCE, export_onnx
from segqc.runtime.onnx_backend import MANIFEST, OnnxModel, load_onnx_model
from segqc.training import train_bundle
from segqc.types import QualitySamples
from segqc.uncertainty import METHODS
from tests.conftest import run_without_torch

ATOL = 1e-4  # onnxruntime vs PyTorch, float32 graphs (measured: ~1e-7)


def torch_upsample_probs(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """The PyTorch reference of :func:`segqc.postprocess.upsample_probs` (what ``segmenter`` used)."""
    t = torch.from_numpy(np.ascontiguousarray(probs))[:, None]
    return torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[
        :, 0
    ].numpy()


def tiny_bundle(out: Path, method: str, method_params: dict | None = None) -> Bundle:
    """24 synthetic 32x32 images, width 4, one epoch each: a couple of seconds."""
    images, masks, ids = make_synthetic(24, 32, seed=5)
    data = SegData(images, masks, ids)
    cfg = PipelineConfig(image_size=32, base_width=4, quality_width=4, seg_epochs=1, quality_epochs=1,
                         batch_size=8, device="cpu", method=method,
                         method_params=method_params or {})  # fmt: skip
    # One epoch leaves g near constant (unfit): forced, since these tests are about the export.
    return train_bundle(
        (data.subset(range(18)), data.subset(range(18, 24))), None, cfg, out, progress=False, force=True
    )


#: Every method with its default settings, plus the settings that change f's graphs.
EXPORT_CASES = {name: (name, {}) for name in METHODS.names()} | {
    "mcdropout-segnet": ("mcdropout", {"placement": "segnet"})
}


@pytest.fixture(scope="module", params=list(EXPORT_CASES))
def exported(request, tmp_path_factory) -> tuple[Bundle, Path]:
    """A tiny bundle of each method, exported with the fast (legacy) exporter."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    bundle = tiny_bundle(root / "model", *EXPORT_CASES[request.param])
    return bundle, export_onnx(bundle, root / "onnx", exporter="torchscript")


@pytest.fixture(scope="module")
def msp_export(tmp_path_factory) -> tuple[Bundle, Path]:
    root = tmp_path_factory.mktemp("export-msp")
    bundle = tiny_bundle(root / "model", "msp")
    return bundle, export_onnx(bundle, root / "onnx", exporter="torchscript")


def test_export_writes_checked_graphs_and_manifest(exported):
    bundle, out = exported
    manifest = json.loads((out / MANIFEST).read_text())
    mc = bundle.method == "mcdropout"
    assert set(manifest["graphs"]) == ({"f_encode", "f_decode", "g"} if mc else {"f", "g"})
    files = [spec["file"] for spec in manifest["graphs"].values()]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *files])
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert manifest["method"] == bundle.method and manifest["threshold"] == bundle.threshold
    assert manifest["quality_train"] == bundle.config.get("quality_train")
    assert manifest["image_size"] == 32 and manifest["opset"] == 18 and "onnxruntime" in manifest["versions"]
    assert manifest["normalisation"]["f"]["mean"] == pytest.approx(bundle.segmenter.mean_)
    assert manifest["normalisation"]["g"]["z_std"] == pytest.approx(bundle.predictor.z_std_)
    parity = manifest["parity"]
    assert parity["passed"] and parity["tolerance"] == TOLERANCE
    assert set(parity["max_abs_diff"]) == {"probs", "uncertainty", "predicted_jaccard"}
    assert all(0 <= d <= ATOL for d in parity["max_abs_diff"].values()), parity
    if mc:
        placement = manifest["method_params"]["placement"]
        assert placement == bundle.config["method_params"].get("placement", "center")
        assert manifest["method_params"]["samples"] == 20
        assert len(manifest["layout"]["dropout"]) == {"center": 2, "segnet": 5}[placement]
        assert len(manifest["graphs"]["f_encode"]["outputs"]) == {"center": 5, "segnet": 3}[placement]


def test_onnx_matches_torch_on_new_images(exported):
    """f's probabilities and uncertainty and g's Jaccard agree on images the export never saw.

    Both backends run the method's own read-out with the same seed, so for mcdropout the whole MC
    readout (dropout masks, sample order, chunks, mean, entropy) must agree, not just one decoder pass.
    """
    bundle, out = exported
    onnx = load_onnx_model(out, device="cpu", threads=1)
    images = make_synthetic(3, 32, seed=99)[0]
    want = bundle.segmenter.predict(images, rng=11)
    got = onnx.segmenter.predict(images, rng=11)
    loaded = load_model(bundle.path, device="cpu").segmenter.predict(images, rng=11)  # from disk, PyTorch
    np.testing.assert_array_equal(loaded.probs, want.probs)
    np.testing.assert_array_equal(loaded.mask, want.mask)
    np.testing.assert_array_equal(loaded.uncertainty, want.uncertainty)
    np.testing.assert_allclose(got.probs, want.probs, atol=ATOL)
    np.testing.assert_allclose(got.uncertainty, want.uncertainty, atol=ATOL, rtol=1e-4)
    assert (got.mask != want.mask).mean() < 0.01  # only pixels with p within ~1e-7 of 0.5 could differ
    samples = QualitySamples(images, want.mask, want.uncertainty)
    np.testing.assert_allclose(onnx.predictor.predict(samples), bundle.predictor.predict(samples), atol=ATOL)


def test_dynamic_batch_and_two_channel_probs(exported):
    bundle, out = exported
    onnx = load_onnx_model(out, device="cpu", threads=1)
    images = make_synthetic(5, 32, seed=7)[0]
    if not METHODS.get(bundle.method).stochastic:  # MC samples differ between calls by design
        one = onnx.segmenter.predict(images, batch_size=1)
        five = onnx.segmenter.predict(images, batch_size=5)
        np.testing.assert_allclose(one.probs, five.probs, atol=1e-6)
        np.testing.assert_allclose(one.uncertainty, five.uncertainty, atol=1e-6)
        runner = onnx.segmenter.runner
        outputs = dict(
            zip(runner.graphs["f"]["outputs"], runner.sessions["f"].run(None, {"images": images[:2]}))
        )
        assert all(o.shape[0] == 2 for o in outputs.values())
        if "probs" in outputs:  # a head's graph: two-channel probabilities and a map
            assert outputs["probs"].shape == (2, 2, 32, 32) and outputs["uncertainty"].shape == (2, 32, 32)
            np.testing.assert_allclose(outputs["probs"].sum(1), 1.0, atol=1e-5)
    pred = onnx.segmenter.predict(images)
    q = onnx.predictor.predict(QualitySamples(images, pred.mask, pred.uncertainty), batch_size=2)
    assert q.shape == (5,) and q.dtype == np.float64 and np.all((q >= 0) & (q <= 1))


def test_numpy_upsampling_matches_torch():
    maps = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    for h, w in [(32, 32), (45, 70), (300, 17), (7, 9), (64, 64), (1, 1)]:
        want = F.interpolate(
            torch.from_numpy(maps)[:, None], size=(h, w), mode="bilinear", align_corners=False
        )
        np.testing.assert_allclose(upsample_probs(maps, h, w), want[:, 0].numpy(), atol=1e-5)


def test_assess_images_with_an_onnx_export_matches_torch(msp_export):
    bundle, out = msp_export
    onnx = load_onnx_model(out, device="cpu", threads=1)
    assert isinstance(onnx, OnnxModel) and onnx.threshold == bundle.threshold
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(32, 32, 3), (45, 70, 3), (20, 300, 3)]]
    for a, b in zip(assess_images(onnx, images, batch_size=2), assess_images(bundle, images, batch_size=2)):
        assert a.decision == b.decision and a.predicted_jaccard == pytest.approx(
            b.predicted_jaccard, abs=1e-4
        )
        assert a.mask.shape == b.mask.shape and (a.mask != b.mask).mean() < 0.01
        np.testing.assert_allclose(a.uncertainty, b.uncertainty, atol=1e-4)


def test_re_export_replaces_its_own_graphs_and_keeps_other_files(tmp_path):
    """An export removes the graphs of an earlier export in its folder (listed in its manifest), never
    other ONNX files there (a user's own model), nor files a tampered manifest names outside it."""
    mcd = tiny_bundle(tmp_path / "mcd", "mcdropout", {"samples": 2})
    out = export_onnx(mcd, tmp_path / "onnx", exporter="torchscript")
    assert {"f_encode.onnx", "f_decode.onnx"} <= {p.name for p in out.glob("*.onnx")}
    (out / "mine.onnx").write_bytes(b"the user's own model")
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"not the export's")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["sha256"]["../outside.onnx"] = "0" * 64
    (out / MANIFEST).write_text(json.dumps(manifest))
    export_onnx(tiny_bundle(tmp_path / "msp", "msp"), out, exporter="torchscript")
    assert sorted(p.name for p in out.glob("*.onnx")) == ["f.onnx", "g.onnx", "mine.onnx"]
    assert outside.read_bytes() == b"not the export's"
    assert load_onnx_model(out, device="cpu").method == "msp"


def test_export_refuses_bad_bundles_and_failed_parity(msp_export, tmp_path, monkeypatch):
    bundle, _ = msp_export
    with pytest.raises(BundleError, match="bundle.json"):
        export_onnx(tmp_path, tmp_path / "out")  # an empty folder is no bundle
    no_cnn = dataclasses.replace(
        bundle, predictor=create_predictor("rca"), config={**bundle.config, "predictor": "rca"}
    )
    with pytest.raises(BundleError, match="'rca' predictor has no graph to export"):
        export_onnx(no_cnn, tmp_path / "out")
    with pytest.raises(SegQCError, match="exporter must be"):
        export_onnx(bundle, tmp_path / "out", exporter="tf")
    monkeypatch.setattr(segqc.runtime.export, "TOLERANCE", {"atol": -1.0, "rtol": 0.0})  # nothing can pass
    with pytest.raises(SegQCError, match="disagree with PyTorch"):
        export_onnx(bundle, tmp_path / "failed", exporter="torchscript")
    assert not (tmp_path / "failed" / MANIFEST).exists()


def test_loading_refuses_damaged_exports(msp_export, tmp_path):
    bundle, out = msp_export
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in out.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    load_onnx_model(copy, device="cpu")
    g = copy / "g.onnx"
    g.write_bytes(g.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_onnx_model(copy, device="cpu")
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(BundleError, match="format 99"):
        load_onnx_model(copy, device="cpu")
    (copy / MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if k != "graphs"}))
    with pytest.raises(BundleError, match="lacks the key 'graphs'"):
        load_onnx_model(copy, device="cpu")
    with pytest.raises(BundleError, match="not an ONNX export"):
        load_onnx_model(bundle.path, device="cpu")
    assert load_model(bundle.path, device="cpu").backend == "torch"  # load_model tells the two apart


def _write_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = make_synthetic(4, 48, seed=21)[0]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i}.png")
    Image.fromarray(images[0][:30, :41]).save(folder / "odd.jpg", quality=95)
    (folder / "junk.png").write_bytes(b"not a png")
    return folder


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "quality.csv", encoding="utf-8", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


NO_TORCH = """
    from segqc.cli import main

    sys.argv = ["segqc", *sys.argv[1:]]
    try:
        main()
    except SystemExit as done:
        code = done.code
    torch_modules = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
    print("RESULT", json.dumps({"exit": code, "torch_modules": torch_modules}))
"""


def test_onnx_predict_runs_without_torch(msp_export, tmp_path):
    """`segqc predict --backend onnx` in a fresh interpreter where importing torch fails."""
    _, export_dir = msp_export
    inputs = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = ["predict", "--backend", "onnx", "--model", str(export_dir), str(inputs), "--out", str(out),
            "--quiet", "--device", "cpu"]  # fmt: skip
    result, output = run_without_torch(NO_TORCH, *args)
    assert result == {"exit": 3, "torch_modules": []}, output  # 3: junk.png unreadable
    assert set(_rows(out)) == {"img0", "img1", "img2", "img3", "odd"}
    assert (out / "report.html").is_file() and json.loads((out / "run.json").read_text())["backend"] == "onnx"


@pytest.mark.slow
def test_export_and_predict_commands_match_the_torch_backend(msp_export, tmp_path):
    """`segqc export` (default dynamo exporter), then both backends on the same files."""
    bundle, _ = msp_export
    runner = CliRunner()
    export_dir = tmp_path / "onnx"
    result = runner.invoke(
        export, ["--model", str(bundle.path), "--format", "onnx", "--out", str(export_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "largest difference from PyTorch" in result.output and (export_dir / "f.onnx").is_file()
    assert json.loads((export_dir / MANIFEST).read_text())["exporter"] == "dynamo"

    inputs = _write_inputs(tmp_path / "in")
    outs = {}
    for backend, model in (("torch", bundle.path), ("onnx", export_dir)):
        outs[backend] = tmp_path / f"out-{backend}"
        args = ["--backend", backend, "--model", str(model), str(inputs), "--out", str(outs[backend]),
                "--quiet", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
        result = runner.invoke(predict, args)
        assert result.exit_code == 3, result.output  # junk.png
    layout = {o: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name != "run.json")
              for o, d in outs.items()}  # fmt: skip
    assert layout["torch"] == layout["onnx"] and "report.html" in layout["onnx"]
    torch_rows, onnx_rows = _rows(outs["torch"]), _rows(outs["onnx"])
    assert set(torch_rows) == set(onnx_rows) == {"img0", "img1", "img2", "img3", "odd"}
    for id_, row in torch_rows.items():
        assert onnx_rows[id_]["decision"] == row["decision"]
        assert float(onnx_rows[id_]["predicted_jaccard"]) == pytest.approx(
            float(row["predicted_jaccard"]), abs=1e-3
        )
        a = np.asarray(Image.open(outs["onnx"] / "masks" / f"{id_}.png"))
        b = np.asarray(Image.open(outs["torch"] / "masks" / f"{id_}.png"))
        assert a.shape == b.shape and (a != b).mean() < 0.01
    errors = [(outs[o] / "errors.csv").read_text() for o in outs]
    assert errors[0] == errors[1] and "junk.png" in errors[0]


def test_export_command_usage_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        export, ["--model", str(tmp_path), "--format", "tflite", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "tflite" in result.output
    result = runner.invoke(export, ["--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "not a model bundle" in result.output
    result = runner.invoke(predict, ["--backend", "onnx", "--model", str(tmp_path), str(tmp_path),
                                     "--out", str(tmp_path / "p")])  # fmt: skip
    assert result.exit_code == 1 and "not an ONNX export" in result.output
