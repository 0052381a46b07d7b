"""``benchmarks/interval_coverage.py``: the coverage simulation runs and writes what it prints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "interval_coverage.py"


def test_a_small_simulation_reports_coverage_of_both_intervals(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("interval_coverage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "coverage.json"
    assert module.main(["--trials", "2", "--resamples", "20", "--seeds", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(module.SCENARIOS) * len(module.KEYS)
    for r in rows:
        assert r["t_interval"] in (0.0, 0.5, 1.0) and r["both_redrawn"] in (0.0, 0.5, 1.0)
        assert r["seed_sd"] > 0
    printed = capsys.readouterr().out
    assert printed.count("\n| ") == len(rows) + 1  # header and one line per row
