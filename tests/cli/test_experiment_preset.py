"""``segqc experiment --preset paper`` and ``--time-budget``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from segqc.cli import cli
from segqc.cli.experiment import TIME_BUDGET_EXIT
from segqc.errors import SegQCError
from segqc.experiment import ExperimentConfig

TINY = ["--image-size", "32", "--base-width", "4", "--quality-width", "4", "--n-train", "8", "--n-test", "4"]


def test_the_paper_preset_is_the_papers_setup():
    """DeVries & Taylor 2018, section 4: 224 x 224, f 120 epochs, g 30, batches of 16, Adam 1e-3, 5 runs."""
    cfg = ExperimentConfig.preset("paper")
    assert (cfg.image_size, cfg.seg_epochs, cfg.quality_epochs) == (224, 120, 30)
    assert (cfg.batch_size, cfg.lr, cfg.seeds) == (16, 1e-3, [0, 1, 2, 3, 4])
    assert cfg.dropout == 0.5 and cfg.threshold == 0.7
    paper_rows = {"msp", "mcdropout", "hcnn", "lce", "no-uncertainty", "qualitynet", "rca"}
    assert paper_rows <= set(cfg.methods) | set(cfg.baselines)
    assert cfg.quality_train == "paper"
    assert cfg.method_params == {"mcdropout": {"placement": "segnet"}}  # Bayesian SegNet's placement
    with pytest.raises(SegQCError, match="unknown preset"):
        ExperimentConfig.preset("nature")


@pytest.mark.slow
def test_a_one_epoch_smoke_run_of_the_paper_preset(tmp_path):
    """Every row of the preset at 224 px, one epoch each, on 8 + 4 synthetic images; explicit options
    override the preset."""
    out = tmp_path / "paper"
    args = ["experiment", "--preset", "paper", "--seg-epochs", "1", "--quality-epochs", "1"]
    args += ["--seed-list", "0", "--n-train", "8", "--n-test", "4", "--rca-references", "2", "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--method-param", "mcdropout.samples=2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    cfg = results["config"]
    assert (cfg["image_size"], cfg["seg_epochs"], cfg["quality_epochs"], cfg["seeds"]) == (224, 1, 1, [0])
    assert [r["method"] for r in results["rows"]] == [*cfg["methods"], *cfg["baselines"]]
    # a --method-param adds to the preset's settings of that method, not replacing them
    assert cfg["method_params"]["mcdropout"] == {"placement": "segnet", "samples": 2}
    assert (out / "table1.md").is_file()


def test_a_time_budget_stops_cleanly_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    base = ["experiment", *TINY, "--methods", "msp", "--baselines", "none", "--seed-list", "0", "--quiet"]
    stopped = CliRunner().invoke(cli, [*base, "--time-budget", "0.001", "--out", str(out)])
    assert stopped.exit_code == TIME_BUDGET_EXIT, stopped.output
    assert "rerun the same command to resume" in stopped.output
    assert not (out / "results.json").exists()
    done = CliRunner().invoke(cli, [*base, "--time-budget", "600", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert json.loads((out / "results.json").read_text())["rows"][0]["method"] == "msp"


BAD_SEED_LISTS = ["0,0", "-1", "0,,1", "a", "", "1_0", "+3", "\u0663", "18446744073709551616"]


@pytest.mark.parametrize("value", BAD_SEED_LISTS)
def test_a_bad_seed_list_is_a_usage_error(tmp_path, value):
    result = CliRunner().invoke(cli, ["experiment", "--seed-list", value, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "--seed-list" in result.output and "distinct integers from 0 to 4294967295" in result.output
    assert not (tmp_path / "o").exists()


def test_report_only_refuses_options_it_would_ignore(tmp_path):
    args = ["--report-only", "--out", str(tmp_path), "--seeds", "2", "--quality-epochs", "3"]
    result = CliRunner().invoke(cli, ["experiment", *args])
    assert result.exit_code == 2, result.output
    assert (
        "takes only --out, --paper-table, --note and --quiet; drop --seeds, --quality-epochs" in result.output
    )


@pytest.mark.parametrize(
    ("methods", "expected"), [("msp", {}), ("msp,mcdropout", {"mcdropout": {"placement": "segnet"}})]
)
def test_the_presets_method_settings_are_kept_for_the_methods_run(tmp_path, methods, expected):
    out = tmp_path / "run"
    args = ["experiment", "--preset", "paper", *TINY, "--methods", methods, "--baselines", "none"]
    args += ["--seed-list", "0", "--quiet", "--time-budget", "0.001", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == TIME_BUDGET_EXIT, result.output
    assert json.loads((out / "config.json").read_text())["method_params"] == expected
