"""The CLI's one error convention: a one-line ``error:`` on stderr, the documented exit code, no traceback."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import segqc.cli
from segqc.cli import cli
from segqc.cli.options import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, method_param_option

ALL_COMMANDS = [
    ["demo"],
    ["train"],
    ["predict"],
    ["experiment"],
    ["export"],
    ["serve"],
    ["synth"],
    ["list-methods"],
    ["download"],
    ["download", "isic2017"],
]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_help_of_every_command(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_group_help_documents_the_exit_codes():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for line in ("0    success", "1    an error", "2    bad usage", "3    segqc predict", "130  interrupted"):
        assert line in result.output
    for code in ("0: success", "1: an error", "2: bad usage", "3: ``segqc predict``", "130: interrupted"):
        assert code in segqc.cli.__doc__


def test_help_texts_list_every_registered_name():
    from segqc.quality import PREDICTORS
    from segqc.uncertainty import METHODS

    runner = CliRunner()
    for command in ("demo", "train", "experiment"):
        text = " ".join(
            runner.invoke(cli, [command, "--help"], terminal_width=400, max_content_width=400).output.split()
        )
        for name in METHODS.names():
            assert name in text, (command, name)
    text = " ".join(
        runner.invoke(cli, ["experiment", "--help"], terminal_width=400, max_content_width=400).output.split()
    )
    for name in PREDICTORS.names():
        if not PREDICTORS.get(name).uses_uncertainty:
            assert name in text, name
    listed = runner.invoke(cli, ["list-methods"]).output
    assert all(name in listed for name in [*METHODS.names(), *PREDICTORS.names()])


def _cases(tmp: Path) -> list[tuple[list[str], int, str]]:
    """(arguments, exit code, text the message must contain) for user errors of every command."""
    missing = str(tmp / "missing")
    empty = tmp / "empty"
    a_file = tmp / "a-file"
    unwritable = str(a_file / "out")  # a folder under a regular file cannot be created, even by root
    out = str(tmp / "out")
    return [
        (["demo", "--out", out, "--data", missing], EXIT_USAGE, "does not exist"),
        (["demo", "--out", out, "--method", "nope"], EXIT_ERROR, "unknown uncertainty method 'nope'"),
        (["demo", "--out", out, "--method-param", "samples"], EXIT_USAGE, "--method-param"),
        (["demo", "--out", out, "--method-param", "bogus=1"], EXIT_ERROR, "no setting 'bogus'"),
        (["demo", "--out", unwritable], EXIT_ERROR, "is a file"),
        (["train", "--out", out, "--data", missing], EXIT_USAGE, "does not exist"),
        (["train", "--out", out, "--data", str(empty)], EXIT_ERROR, "not a data folder"),
        (["train", "--out", out, "--method", "nope"], EXIT_ERROR, "unknown uncertainty method 'nope'"),
        (["train", "--out", out, "--method-param", "=3"], EXIT_USAGE, "--method-param"),
        (["train", "--out", unwritable], EXIT_ERROR, "is a file"),
        (["train"], EXIT_USAGE, "--out"),
        (["predict", "--model", str(empty), "--out", out, str(tmp)], EXIT_ERROR, "not a segqc model"),
        (["predict", "--model", missing, "--out", out, str(tmp)], EXIT_USAGE, "no such model folder"),
        (["predict", "--model", str(empty), "--out", unwritable, str(tmp)], EXIT_ERROR, "is a file"),
        (["experiment", "--out", out, "--data", missing], EXIT_USAGE, "does not exist"),
        (["experiment", "--out", out, "--data", str(empty)], EXIT_ERROR, "not a data folder"),
        (["experiment", "--out", out, "--methods", "msp,nope"], EXIT_ERROR, "unknown uncertainty method"),
        (["experiment", "--out", out, "--method-param", "samples=3"], EXIT_USAGE, "METHOD.KEY=VALUE"),
        (["experiment", "--out", out, "--method-param", "nope.x=3"], EXIT_ERROR, "unknown uncertainty"),
        (["experiment", "--out", unwritable], EXIT_ERROR, "is a file"),
        (["export", "--model", str(empty), "--out", out], EXIT_ERROR, str(empty)),
        (["export", "--model", str(empty), "--out", unwritable], EXIT_ERROR, "is a file"),
        (["serve", "--model", str(empty)], EXIT_ERROR, str(empty)),
        (["serve", "--model", missing], EXIT_ERROR, "missing"),
        (["synth", "--out", unwritable], EXIT_ERROR, "is a file"),
        (["synth", "--out", out, "--n", "0"], EXIT_USAGE, "Invalid value for '--n'"),
        (["download", "isic2017", "--to", unwritable], EXIT_ERROR, "is a file"),
        (["download", "nope"], EXIT_USAGE, "No such command"),
        (["nope"], EXIT_USAGE, "No such command"),
    ]


CASE_IDS = [" ".join(a[:1] + [w for w in a[1:] if w.startswith("--")]) + f" #{i}" for i, (a, _, _) in
            enumerate(_cases(Path("/t")))]  # fmt: skip


@pytest.mark.parametrize("index", range(len(CASE_IDS)), ids=CASE_IDS)
def test_user_errors_are_one_line(index, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    args, code, text = _cases(tmp_path)[index]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    "raised, code, text",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "x.png"),
            EXIT_ERROR,
            "x.png: No space left on device",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/out"), EXIT_ERROR, "/out: Permission denied"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted"),
    ],
)
def test_os_errors_and_interrupts_at_the_edge(raised, code, text, tmp_path, monkeypatch):
    import segqc.data.synthetic

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(segqc.data.synthetic, "write_synthetic", fail)
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "s"), "--n", "2"])
    assert result.exit_code == code
    assert result.stderr.strip() == f"error: {text}" and "Traceback" not in result.output


def test_folds_without_crossfit_is_a_usage_error(tmp_path, monkeypatch):
    """--folds alone would be ignored: g trained the paper's way for someone who asked for folds."""
    import segqc.training

    def train_bundle(*args, **kwargs):
        raise AssertionError("trained despite the bad usage")

    monkeypatch.setattr(segqc.training, "train_bundle", train_bundle)
    for args in (["--folds", "5"], ["--quality-train", "paper", "--folds", "3"]):
        result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "m"), *args])
        assert result.exit_code == EXIT_USAGE, result.output
        assert "--folds needs --quality-train crossfit" in result.stderr and "Traceback" not in result.output
    seen = {}
    monkeypatch.setattr(segqc.training, "train_bundle", lambda *a, **kw: seen.update(kw) or 1 / 0)
    CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "m"), "--quality-train", "crossfit"])
    assert seen["quality_train"] == "crossfit" and seen["folds"] == 3


def test_method_param_values_are_json_when_they_parse():
    seen = {}

    @click.command()
    @method_param_option()
    def one(method_params):
        seen.update(method_params)

    args = ["samples=30", "budget=0.25", "flag=true", "none=null", "name=abc", "text=1e", "eq=a=b"]
    result = CliRunner().invoke(one, [x for a in args for x in ("--method-param", a)])
    assert result.exit_code == 0, result.output
    assert seen == {"samples": 30, "budget": 0.25, "flag": True, "none": None, "name": "abc", "text": "1e",
                    "eq": "a=b"}  # fmt: skip

    @click.command()
    @method_param_option(qualified=True)
    def per_method(method_params):
        seen.clear()
        seen.update(method_params)

    args = ["mcdropout.samples=30", "lce.budget=0.3", "mcdropout.max_batch=4"]
    result = CliRunner().invoke(per_method, [x for a in args for x in ("--method-param", a)])
    assert result.exit_code == 0, result.output
    assert seen == {"mcdropout": {"samples": 30, "max_batch": 4}, "lce": {"budget": 0.3}}
    for bad in ("samples=1", "a.b.c=1", ".x=1", "x.=1"):
        result = CliRunner().invoke(per_method, ["--method-param", bad])
        assert result.exit_code == 2 and "--method-param" in result.output, bad


def test_cli_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, segqc.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_a_console_that_cannot_show_the_output_gets_question_marks(tmp_path):
    # the report's "−" and "±", or a folder name's letters, on a Latin-1 console: "?", not a traceback
    out = tmp_path / "résultats-αβ"
    shutil.copytree(Path(__file__).parents[2] / "docs/results/isic2017-600-crossfit", out)
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    done = subprocess.run(
        [sys.executable, "-m", "segqc", "experiment", "--report-only", "--out", str(out)],
        capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert "résultats-??".encode("latin-1") in done.stdout
