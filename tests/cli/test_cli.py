from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.cli import cli

COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_synth_writes_folder_layout(tmp_path):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path), "--n", "5", "--size", "32"])
    assert result.exit_code == 0, result.output
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(list((tmp_path / "images").glob("*.png"))) == 5 and len(masks) == 5
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}


def test_synth_bad_argument(tmp_path):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path), "--n", "0"])
    assert result.exit_code == 2 and "n" in result.output


TINY = [
    "--image-size",
    "32",
    "--seg-epochs",
    "1",
    "--quality-epochs",
    "1",
    "--base-width",
    "4",
    "--quiet",
    "--device",
    "cpu",
]


@pytest.mark.slow
def test_demo_on_a_data_folder(tmp_path):
    """The demo pointed at real files: a generic folder written by `segqc synth`, split by a protocol."""
    runner = CliRunner()
    assert (
        runner.invoke(cli, ["synth", "--out", str(tmp_path / "d"), "--n", "30", "--size", "40"]).exit_code
        == 0
    )
    ids = sorted(p.stem for p in (tmp_path / "d" / "images").glob("*.png"))
    (tmp_path / "split.json").write_text(json.dumps({"train": ids[:20], "test": ids[20:]}))
    result = runner.invoke(
        cli,
        [
            "demo",
            "--data",
            str(tmp_path / "d"),
            "--protocol",
            str(tmp_path / "split.json"),
            "--out",
            str(tmp_path / "out"),
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["data"]["test_ids"] == ids[20:] and res["config"]["image_size"] == 32


def test_demo_bad_data_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_text("junk")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.png").write_text("junk")
    result = CliRunner().invoke(cli, ["demo", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *TINY])
    assert result.exit_code == 1
    assert "error:" in result.output and "a.jpg" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_python_m_segqc_demo(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segqc",
            "demo",
            "--out",
            str(out),
            "--n-train",
            "32",
            "--n-test",
            "16",
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").is_file() and (out / "figures" / "overlays.png").is_file()
    assert "mean Jaccard" in proc.stdout
