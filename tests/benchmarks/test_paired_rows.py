"""``benchmarks/paired_rows.py`` on the committed MC dropout placement runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "docs" / "results" / "isic2017-600-mcdropout-placement"


@pytest.fixture(scope="module")
def paired():
    spec = importlib.util.spec_from_file_location("paired_rows", REPO / "benchmarks" / "paired_rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_row_against_itself_differs_by_exactly_zero(paired, capsys):
    row = f"{RUNS / 'center' / 'results.json'}:msp"
    assert paired.main([row, row, "--label-a", "x", "--label-b", "y"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("| x − y |") and "*" not in last
    assert last.count("0.000 [0.000, 0.000]") + last.count("0.0 [0.0, 0.0]") == 7


def test_the_committed_placement_comparison_is_what_the_script_prints(paired, capsys):
    a, b = f"{RUNS / 'segnet' / 'results.json'}:mcdropout", f"{RUNS / 'center' / 'results.json'}:mcdropout"
    paired.main([a, b, "--label-a", "mcdropout, segnet", "--label-b", "mcdropout, center"])
    assert capsys.readouterr().out == (RUNS / "paired.md").read_text()


def test_rows_on_different_images_are_refused(paired, tmp_path):
    import json

    results = json.loads((RUNS / "center" / "results.json").read_text())
    results["data"]["test_ids"] = results["data"]["test_ids"][::-1]
    other = tmp_path / "results.json"
    other.write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="not on the same test images"):
        paired.main([f"{RUNS / 'center' / 'results.json'}:msp", f"{other}:msp"])


def test_mistakes_are_one_error_line(paired, tmp_path):
    center = RUNS / "center" / "results.json"
    for args, message in (
        ([f"{center}:msq", f"{center}:msp"], r"has no row 'msq' \(it has msp, "),
        ([str(center), f"{center}:msp"], "is not RESULTS.json:ROW"),
        ([f"{tmp_path / 'none.json'}:msp", f"{center}:msp"], "not a results.json of segqc experiment"),
        ([f"{center}:msp", f"{RUNS.parent / 'isic2017-600-e50' / 'results.json'}:msp"], "different seeds"),
    ):
        with pytest.raises(SystemExit, match=message):
            paired.main(args)


def test_partial_results_files_are_one_error_line(paired, tmp_path):
    import json

    results = json.loads((RUNS / "center" / "results.json").read_text())
    for name, damage in (
        ("no-data", lambda r: r.pop("data")),
        ("no-threshold", lambda r: r["config"].pop("threshold")),
        ("list-rows", lambda r: r.update(per_image_by_row=[1, 2])),
        ("short", lambda r: r["per_image_by_row"]["msp"]["per_seed"][0]["predicted_jaccard"].pop()),
    ):
        bad = json.loads(json.dumps(results))
        damage(bad)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(SystemExit, match="^error: "):
            paired.main([f"{path}:msp", f"{RUNS / 'center' / 'results.json'}:msp"])


def test_runs_with_different_failure_thresholds_are_refused(paired, tmp_path):
    import json

    results = json.loads((RUNS / "center" / "results.json").read_text())
    results["config"]["threshold"] = 0.8
    other = tmp_path / "results.json"
    other.write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="different failure thresholds"):
        paired.main([f"{RUNS / 'center' / 'results.json'}:msp", f"{other}:msp"])


def test_seeds_select_the_same_seeds_on_both_sides(paired, capsys):
    row = f"{RUNS / 'center' / 'results.json'}:msp"
    assert paired.main([row, row, "--seeds", "1"]) == 0
    assert capsys.readouterr().out.startswith("600 test images, seeds [1],")
    with pytest.raises(SystemExit, match="has no seed 7"):
        paired.main([row, row, "--seeds", "0,7"])
