"""`segqc predict` and `segqc train` end to end on real files: odd formats, junk, re-runs, interruptions."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.cli.options import EXIT_PARTIAL
from segqc.cli.predict import predict
from segqc.cli.train import train
from tests.test_bundle import train_tiny_bundle

# id -> (height, width) the outputs must have (the displayed, EXIF-rotated size).
GOOD = {
    "plain": (30, 40),
    "été_ü": (50, 50),
    "sixteen": (20, 36),
    "rgba": (33, 21),
    "palette": (24, 24),
    "grey": (19, 45),
    "tiff": (28, 31),
    "rotated": (60, 40),
}
JUNK = ["empty.jpg", "text.jpg", "cut.jpg", "cut.png"]


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3), np.uint8) + rng.integers(60, 200, 3, dtype=np.uint8)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _jpeg_bytes(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(h, w, 9)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict") / "model"
    train_tiny_bundle(path)
    return path


@pytest.fixture()
def inputs(tmp_path) -> Path:
    """A folder of good images of many kinds and a few junk files."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(30, 40, 0)).save(d / "plain.png")
    Image.fromarray(_rgb(50, 50, 1)).save(d / "été_ü.jpg", quality=90)
    arr16 = (np.random.default_rng(2).integers(0, 65535, (20, 36))).astype(np.uint16)
    Image.fromarray(arr16).save(d / "sixteen.png")
    assert Image.open(d / "sixteen.png").mode.startswith("I")
    rgba = np.dstack([_rgb(33, 21, 3), np.full((33, 21), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(_rgb(24, 24, 4)).convert("P", palette=Image.ADAPTIVE).save(d / "sub" / "palette.png")
    Image.fromarray(_rgb(19, 45, 5)[..., 0]).save(d / "sub" / "grey.bmp")
    Image.fromarray(_rgb(28, 31, 6)).save(d / "tiff.tif")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(_rgb(40, 60, 7)).save(d / "rotated.jpg", exif=exif)  # stored 60 wide x 40 high
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not a JPEG\n")
    jpeg = _jpeg_bytes(64, 64)
    (d / "sub" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64, 8)).save(buf, format="PNG")
    (d / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return d


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def run_predict(model: Path, out: Path, *args: str):
    return CliRunner().invoke(
        predict, ["--model", str(model), "--out", str(out), "--quiet", "--batch-size", "3", *args]
    )


def check_complete(out: Path, ids: set[str]) -> None:
    rows = read_csv(out / "quality.csv")
    assert {r["id"] for r in rows} == ids
    for row in rows:
        for folder in ("masks", "uncertainty", "overlays"):
            with Image.open(out / folder / f"{row['id']}.png") as img:
                img.load()  # a half-written PNG would fail here


def no_temporaries(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_predict_mixed_folder(model, inputs, tmp_path):
    out = tmp_path / "out"
    result = run_predict(model, out, str(inputs))
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "4 inputs could not be assessed" in result.output

    errors = read_csv(out / "errors.csv")
    assert sorted(Path(e["source"]).name for e in errors) == sorted(JUNK)
    assert all(e["reason"] for e in errors)

    rows = read_csv(out / "quality.csv")
    assert list(rows[0]) == [
        "id", "predicted_jaccard", "decision", "reason", "jaccard_lower", "threshold", "mean_uncertainty",
        "source", "input_sha256",
    ]  # fmt: skip
    assert {r["id"] for r in rows} == set(GOOD)
    for row in rows:
        assert 0 <= float(row["predicted_jaccard"]) <= 1 and row["decision"] in ("pass", "refer")
        assert row["decision"] == (
            "refer" if float(row["predicted_jaccard"]) < float(row["threshold"]) else "pass"
        )
        assert Path(row["source"]).is_absolute() and Path(row["source"]).is_file()
        h, w = GOOD[row["id"]]
        mask = np.asarray(Image.open(out / "masks" / f"{row['id']}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / "uncertainty" / f"{row['id']}.png").convert("RGB")).shape == (
            h,
            w,
            3,
        )
        assert np.asarray(Image.open(out / "overlays" / f"{row['id']}.png").convert("RGB")).shape == (h, w, 3)
    assert json.loads((out / "run.json").read_text())["threshold"] == float(rows[0]["threshold"])
    assert no_temporaries(out)

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('class="case ') == len(GOOD) and "été_ü" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert '<b data-count="errors">4</b>' in page

    # A second run skips everything already done and still reports the junk.
    before = (out / "masks" / "plain.png").stat().st_mtime_ns
    again = run_predict(model, out, str(inputs))
    assert again.exit_code == EXIT_PARTIAL and "assessed 0 images, skipped 8" in again.output
    assert (out / "masks" / "plain.png").stat().st_mtime_ns == before
    assert read_csv(out / "quality.csv") == rows


def test_all_good_exits_0_and_html_escapes_ids(model, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_rgb(20, 20, 1)).save(d / "<b>&x.png")
    Image.fromarray(_rgb(20, 20, 2)).save(d / "twin.png")
    (d / "other").mkdir()
    Image.fromarray(_rgb(20, 20, 3)).save(d / "other" / "twin.png")
    result = run_predict(
        model, tmp_path / "out", str(d / "*.png"), str(d / "other")
    )  # a quoted glob and a folder
    assert result.exit_code == 0, result.output
    ids = {r["id"] for r in read_csv(tmp_path / "out" / "quality.csv")}
    assert "_b__x" in ids and "twin" in ids and len(ids) == 3  # unsafe characters become _
    assert len([i for i in ids if i.startswith("twin-")]) == 1  # the later twin gets a hash
    assert read_csv(tmp_path / "out" / "errors.csv") == []
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;&amp;x.png" in page and "<b>&x" not in page  # the source, escaped


def test_interrupted_run_leaves_whole_files_and_resumes(model, inputs, tmp_path, monkeypatch):
    import segqc.assess.outputs

    real = segqc.assess.outputs._png_bytes
    calls = {"n": 0}

    def failing(array):
        calls["n"] += 1
        if calls["n"] == 11:  # the 2nd file of the 4th image, in the 2nd batch of 3
            raise KeyboardInterrupt
        return real(array)

    monkeypatch.setattr(segqc.assess.outputs, "_png_bytes", failing)
    out = tmp_path / "out"
    result = run_predict(model, out, str(inputs))
    assert result.exit_code != 0 and calls["n"] == 11
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert no_temporaries(out)
    done = {r["id"] for r in read_csv(out / "quality.csv")}
    assert 0 < len(done) < len(GOOD)
    check_complete(out, done)
    for png in out.rglob("*.png"):
        Image.open(png).load()
    page = (out / "report.html").read_text()  # the review page shows what was finished
    assert all(id_ in page for id_ in done) and not any(id_ in page for id_ in set(GOOD) - done)

    monkeypatch.setattr(segqc.assess.outputs, "_png_bytes", real)
    again = run_predict(model, out, str(inputs))
    assert again.exit_code == EXIT_PARTIAL, again.output
    assert f"skipped {len(done)}" in again.output
    check_complete(out, set(GOOD))
    assert no_temporaries(out)


def test_usage_and_model_errors(model, tmp_path):
    missing = run_predict(model, tmp_path / "o", str(tmp_path / "nothing.png"))
    assert missing.exit_code == 2 and "no such file" in missing.output
    (tmp_path / "empty").mkdir()
    nothing = run_predict(model, tmp_path / "o", str(tmp_path / "empty"))
    assert nothing.exit_code == 2 and "no image files" in nothing.output
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "bundle.json").write_text("{}")
    Image.fromarray(_rgb(20, 20, 1)).save(tmp_path / "x.png")
    broken = run_predict(bad, tmp_path / "o", str(tmp_path / "x.png"))
    assert broken.exit_code == 1 and "lacks the key 'format'" in broken.output


def test_out_folder_of_another_model_is_refused(model, tmp_path):
    Image.fromarray(_rgb(20, 20, 1)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    assert run_predict(model, out, str(tmp_path / "x.png")).exit_code == 0
    run = json.loads((out / "run.json").read_text())
    run["weights_sha256"]["f.safetensors"] = "0" * 64
    (out / "run.json").write_text(json.dumps(run))
    result = run_predict(model, out, str(tmp_path / "x.png"))
    assert result.exit_code == 1 and "another model" in result.output


def test_train_command_on_a_data_folder_writes_a_bundle_that_predict_uses(tmp_path, monkeypatch):
    from segqc.data.synthetic import write_synthetic

    monkeypatch.setenv("SEGQC_CACHE", str(tmp_path / "cache"))

    ids = sorted(write_synthetic(tmp_path / "d", 40, 32, seed=2))
    (tmp_path / "split.json").write_text(json.dumps({"train": ids[:30], "test": ids[30:]}))
    result = CliRunner().invoke(train, [
        "--data", str(tmp_path / "d"), "--protocol", str(tmp_path / "split.json"),
        "--out", str(tmp_path / "m"),
        "--image-size", "32", "--seg-epochs", "1", "--quality-epochs", "1", "--base-width", "4", "--quiet",
        "--device", "cpu", "--target-failure-recall", "0.9", "--force",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "bundle.json").read_text())
    assert (
        config["threshold_rule"]["kind"] == "target_failure_recall"
        and config["threshold_rule"]["achieved_recall"] >= 0.9
    )
    assert config["data"]["test_ids"] == ids[30:] and config["data"]["n_calibration"] == 6
    assert set(config["data"]["train_ids"]) | set(config["data"]["calibration_ids"]) == set(ids[:30])
    assert config["test_metrics"]["segmentation"]["n_images"] == 10 and "threshold" in result.output
    Image.fromarray(_rgb(20, 20, 1)).save(tmp_path / "x.png")
    assert run_predict(tmp_path / "m", tmp_path / "out", str(tmp_path / "x.png")).exit_code == 0


def test_train_bad_recall_is_usage_error(tmp_path):
    result = CliRunner().invoke(train, ["--out", str(tmp_path / "m"), "--target-failure-recall", "0"])
    assert result.exit_code == 2


def test_backend_is_optional_and_checked_against_the_folder(model, tmp_path):
    Image.fromarray(_rgb(20, 20, 1)).save(tmp_path / "x.png")
    wrong = run_predict(model, tmp_path / "o", str(tmp_path / "x.png"), "--backend", "onnx")
    assert wrong.exit_code == 1 and "--backend onnx" in wrong.output and "Traceback" not in wrong.output
    assert not (tmp_path / "o" / "quality.csv").exists()
    right = run_predict(model, tmp_path / "o", str(tmp_path / "x.png"), "--backend", "torch")
    assert right.exit_code == 0, right.output


def test_interrupt_is_exit_130(model, tmp_path, monkeypatch):
    import segqc.assess

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segqc.assess, "assess_files", interrupted)
    Image.fromarray(_rgb(20, 20, 1)).save(tmp_path / "x.png")
    result = run_predict(model, tmp_path / "o", str(tmp_path / "x.png"))
    # The tiny test model is unfit (forced), so a warning line comes first.
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == "error: interrupted"


def test_threads_on_a_pytorch_bundle_is_said_to_have_no_effect(model, tmp_path):
    Image.fromarray(_rgb(20, 20, 1)).save(tmp_path / "x.png")
    result = run_predict(model, tmp_path / "o", str(tmp_path / "x.png"), "--threads", "2")
    assert result.exit_code == 0, result.output
    assert "warning: --threads is for ONNX exports" in result.stderr
