"""`segqc predict` loses and duplicates nothing: shared and busy output folders, bad --out, odd inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segqc
from segqc.cli.options import EXIT_ERROR, EXIT_PARTIAL
from tests.cli.test_predict import model, read_csv, run_predict  # noqa: F401 (model is a fixture)


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _env() -> dict[str, str]:
    src = str(Path(segqc.__file__).resolve().parents[1])  # the segqc under test, not an installed one
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}


# A predict run that stops after its first image until the file GO exists: it holds OUT meanwhile.
HELD_RUN = textwrap.dedent(
    """
    import os, sys, time
    import segqc.assess.outputs as outputs
    real, go = outputs._png_bytes, sys.argv[1]
    def held(array):
        while not os.path.exists(go):
            time.sleep(0.05)
        return real(array)
    outputs._png_bytes = held
    from segqc.cli import main
    sys.argv = ["segqc", "predict", *sys.argv[2:]]
    main()
    """
)


def test_a_second_run_into_a_busy_out_is_refused_and_nothing_is_lost(model, tmp_path):  # noqa: F811
    first = [_image(tmp_path / "in1" / f"a{i}.png", i) for i in range(6)]
    _image(tmp_path / "in2" / "b0.png", 10)
    out, go = tmp_path / "out", tmp_path / "go"
    args = ["--model", str(model), "--out", str(out), "--quiet", "--batch-size", "2"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HELD_RUN, str(go), *args, str(tmp_path / "in1")],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lock = out / ".segqc-predict.lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(holder.pid)):
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "segqc", "predict", *args, str(tmp_path / "in2")],
            env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode == EXIT_ERROR, second.stderr
        # The tiny test model is unfit (forced): predict warns first, then the one error line.
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: {out} is in use by another segqc predict run (pid {holder.pid})"
        )
    finally:
        go.touch()
        stdout, stderr = holder.communicate(timeout=300)
    assert holder.returncode == 0, stderr
    assert sorted(r["id"] for r in read_csv(out / "quality.csv")) == [p.stem for p in first]
    # The refused run, run again now, adds its image; nothing is lost or doubled.
    again = run_predict(model, out, str(tmp_path / "in2"), str(tmp_path / "in1"))
    assert again.exit_code == 0 and "assessed 1 image, skipped 6" in again.output
    assert sorted(r["id"] for r in read_csv(out / "quality.csv")) == [*(p.stem for p in first), "b0"]


@pytest.mark.parametrize("where", ["a file", "under a file", "quality.csv is a folder"])
def test_invalid_out_is_one_line_error(model, tmp_path, where):  # noqa: F811
    image = _image(tmp_path / "x.png")
    (tmp_path / "f").write_text("x")
    places = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "o"}
    out = places.get(where, tmp_path / "o")
    (tmp_path / "o" / "quality.csv").mkdir(parents=True)
    result = run_predict(model, out, str(image))
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "is a file" in lines[0] or "is not a file" in lines[0]
    assert not (tmp_path / "o" / "masks").exists()


def test_an_earlier_output_folder_in_the_inputs_is_not_graded(model, tmp_path):  # noqa: F811
    scans = tmp_path / "scans"
    for i in range(3):
        _image(scans / f"p{i}.png", i)
    assert run_predict(model, scans / "results", str(scans)).exit_code == 0  # --out inside the inputs
    result = run_predict(model, tmp_path / "elsewhere", str(scans))
    assert result.exit_code == 0, result.output
    assert sorted(r["id"] for r in read_csv(tmp_path / "elsewhere" / "quality.csv")) == ["p0", "p1", "p2"]


def test_long_odd_and_multi_frame_inputs(model, tmp_path):  # noqa: F811
    d = tmp_path / "in"
    long_name = _image(d / ("L" * 244 + ".png"))
    _image(d / "=cmd.png", 1)
    _image(d / "a" / "same.png", 2)
    _image(d / "b" / "same.png", 3)
    frames = [Image.new("RGB", (16, 16), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(d / "stack.tiff", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    result = run_predict(model, out, str(d))
    assert result.exit_code == EXIT_PARTIAL and "Traceback" not in result.output, result.output
    rows = read_csv(out / "quality.csv")
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    assert {r["source"] for r in rows} >= {str(long_name.resolve())}
    (error,) = read_csv(out / "errors.csv")
    assert error["id"] == "stack" and "3 frames" in error["reason"]
    text = (out / "quality.csv").read_text()
    assert "\n=" not in text and ",=" not in text  # no cell a spreadsheet would run
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert sorted(r["decision"] for r in audit) == sorted([r["decision"] for r in rows] + ["error"])
    again = run_predict(model, out, str(d))  # every re-run used to abort on the long name
    assert again.exit_code == EXIT_PARTIAL and "assessed 0 images, skipped 4" in again.output
    assert read_csv(out / "quality.csv") == rows
