"""``segqc experiment``: Table 1 end to end, the unit cache, resuming, and the CLI command."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import segqc.checkpoint as checkpoint
import segqc.experiment.units as units
from segqc.data.dataset import SegData
from segqc.data.synthetic import make_synthetic, write_synthetic
from segqc.errors import SegQCError, SegQCWarning, UnknownNameError
from segqc.experiment import ExperimentConfig, Payload, Planner, Unit, UnitStore, run_experiment, training_key
from segqc.experiment.report import (
    code_span,
    interval_cell,
    load_paper_table,
    render_report,
    table1_markdown,
    write_experiment_report,
)
from segqc.experiment.run import warn_if_few_failures_or_passes
from segqc.metrics import QUALITY_KEYS
from segqc.quality.rca import PRIOR_STRENGTHS as RCA_PRIOR_STRENGTHS
from segqc.segmenter import Segmenter
from segqc.uncertainty import METHODS
from segqc.utils import json_ready
from tests.conftest import TINY_SETTINGS

PAPER_METHODS = [m for m in ("msp", "mcdropout", "hcnn", "lce") if m in METHODS.names()]
BASELINES = ["no-uncertainty", "qualitynet", "rca"]
TINY = dict(
    **TINY_SETTINGS,
    folds=2,
    rca_references=4,
    method_params={"hcnn": {"samples": 2}, "mcdropout": {"samples": 2}},
)
PNG = b"\x89PNG\r\n\x1a\n"
RUN_UNIT = units.run_unit  # the real one, before any test wraps it


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one torch thread. On a shared, loaded 2-core machine two OpenMP threads made a
    1-epoch fit of f take 4.5 s instead of 0.06 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Interrupted(Exception):
    pass


def count_units(monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> list[str]:
    """Wrap ``units.run_unit``: record each computed unit; raise after ``fail_after`` of them."""
    calls: list[str] = []

    def wrapped(unit: Unit, scratch: Path | None = None) -> tuple[Payload, float]:
        if fail_after is not None and len(calls) >= fail_after:
            raise Interrupted(unit.label)
        calls.append(unit.label)
        return RUN_UNIT(unit, scratch)

    monkeypatch.setattr(units, "run_unit", wrapped)
    return calls


def strict_json(path: Path) -> dict:
    def no_constant(name: str) -> None:
        raise AssertionError(f"{path} is not strict JSON: {name}")

    return json.loads(path.read_text(), parse_constant=no_constant)


def comparable(results: dict) -> dict:
    """The parts of results.json that must not depend on caching or timing."""
    keep = ("rows", "segmentation", "per_image", "per_image_by_row", "data", "config")
    return json.loads(json.dumps({k: results[k] for k in keep}, default=str))


# -- end to end on a generic data folder --------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path, list[str], list[str]]:
    root = tmp_path_factory.mktemp("folder")
    ids = write_synthetic(root / "data", 26, 32, seed=5)
    train_ids, test_ids = ids[:16], ids[16:]
    (root / "split.json").write_text(json.dumps({"train": train_ids, "test": test_ids}))
    return root / "data", root / "split.json", train_ids, test_ids


@pytest.fixture(scope="module")
def full_run(folder, tmp_path_factory):
    data, protocol, _, _ = folder
    out = tmp_path_factory.mktemp("full")
    cfg = ExperimentConfig(
        methods=PAPER_METHODS, baselines=BASELINES, seeds=[0, 1], quality_train="both", **TINY
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGQC_CACHE", str(out.parent / "data-cache"))
        calls = count_units(mp)
        results = run_experiment(
            cfg, out, data=data, protocol=protocol, progress=False, command=["segqc", "test"]
        )
    return cfg, out, results, calls


def expected_rows() -> list[str]:
    rows = []
    for name in [*PAPER_METHODS, *BASELINES]:
        rows += [name] if name == "rca" else [name, f"{name} (crossfit)"]
    return rows


@pytest.mark.slow
def test_end_to_end_results_json(full_run, folder):
    cfg, out, results, calls = full_run
    _, _, train_ids, test_ids = folder
    res = strict_json(out / "results.json")
    assert [r["method"] for r in res["rows"]] == expected_rows()
    assert res["units"] == {"total": len(calls), "computed": len(calls), "cached": 0}
    assert ExperimentConfig.from_dict(res["config"]) == cfg
    assert res["data"]["train_ids"] == train_ids and res["data"]["test_ids"] == test_ids
    assert res["data"]["protocol"].endswith("split.json")
    assert res["command"] == ["segqc", "test"] and res["wall_time_s"] > 0
    assert {"platform", "cpu_count"} <= set(res["machine"]) and "torch" in res["versions"]
    for row in res["rows"]:
        assert list(row["metrics"]) == list(QUALITY_KEYS) and list(row["std"]) == list(QUALITY_KEYS)
        assert [s["seed"] for s in row["per_seed"]] == [0, 1]
        assert all(set(s["metrics"]) == set(QUALITY_KEYS) for s in row["per_seed"])
        rmse = [s["metrics"]["rmse"] for s in row["per_seed"]]
        assert row["metrics"]["rmse"] == pytest.approx(np.mean(rmse))
        assert row["std"]["rmse"] == pytest.approx(np.std(rmse, ddof=1))
        assert row["segmentation_jaccard"] == pytest.approx(
            res["segmentation"][row["uncertainty_method"]]["jaccard_mean"]
        )
        expected_variant = (
            "reference"
            if row["predictor"] == "rca"
            else ("crossfit" if row["method"].endswith("(crossfit)") else "paper")
        )
        assert row["quality_train"] == expected_variant
    baselines = [r for r in res["rows"] if r["predictor"] in BASELINES]
    assert {r["uncertainty_method"] for r in baselines} == {PAPER_METHODS[0]}
    assert set(res["segmentation"]) == set(PAPER_METHODS)
    for seg in res["segmentation"].values():
        assert (
            0 <= seg["jaccard_mean"] <= 1 and seg["n_images"] == len(test_ids) and len(seg["per_seed"]) == 2
        )
    assert [p["id"] for p in res["per_image"]] == test_ids
    assert set(res["per_image"][0]) == {"id", "true_jaccard", "predicted_jaccard"}
    assert set(res["per_image_by_row"]) == set(expected_rows())
    for name, entry in res["per_image_by_row"].items():  # every seed's per-image values
        assert [s["seed"] for s in entry["per_seed"]] == [0, 1]
        assert entry["per_seed"][0]["predicted_jaccard"] == entry["predicted_jaccard"]
        row = next(r for r in res["rows"] if r["method"] == name)
        t1, q1 = (np.array(entry["per_seed"][1][k]) for k in ("true_jaccard", "predicted_jaccard"))
        assert np.sqrt(np.mean((q1 - t1) ** 2)) == pytest.approx(row["per_seed"][1]["metrics"]["rmse"])
        assert row["n_seeds"]["rmse"] == 2
    # what a g learned on training images is kept per seed and named under the table: RCA's prior
    rca = next(r for r in res["rows"] if r["method"] == "rca")
    fitted = [s["fitted"] for s in rca["per_seed"]]
    assert all(f["prior_strength_"] in RCA_PRIOR_STRENGTHS for f in fitted)
    assert set(fitted[0]["validation_spearman_"]) == {f"{v:g}" for v in RCA_PRIOR_STRENGTHS}
    values = [f"{f['prior_strength_']:g} (seed {seed})" for f, seed in zip(fitted, (0, 1))]
    note = f"(a fixed value as given): prior_strength {', '.join(values)}."
    assert note in (out / "table1.md").read_text()
    assert all("fitted" not in s for r in res["rows"] if r["method"] != "rca" for s in r["per_seed"])
    # intervals for every row and metric, paired differences to the no-uncertainty rows
    stats = res["statistics"]
    assert stats["seeds"] == [0, 1] and stats["n_images"] == len(test_ids)
    assert set(stats["rows"]) == set(expected_rows())
    assert set(stats["difference"]) == set(expected_rows()) - {"no-uncertainty", "no-uncertainty (crossfit)"}
    assert stats["difference_to"]["msp (crossfit)"] == "no-uncertainty (crossfit)"
    assert stats["difference_to"]["rca"] == "no-uncertainty"
    assert set(stats["crossfit_difference"]) == {n for n in expected_rows() if n.endswith("(crossfit)")}
    # the per-image values of the first row are its seed-0 predictions
    first = res["rows"][0]["per_seed"][0]["metrics"]
    t = np.array([p["true_jaccard"] for p in res["per_image"]])
    q = np.array([p["predicted_jaccard"] for p in res["per_image"]])
    assert np.sqrt(np.mean((q - t) ** 2)) == pytest.approx(first["rmse"])


def write_paper_table(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "source": "the paper, Table 1",
                "units": {"rmse": "fraction", "auroc": "percent"},
                "paper_names": {"msp": "Max Probability"},
                "rows": {"msp": {"rmse": {"mean": 0.123, "std": 0.01}, "auroc": {"mean": 87.6, "std": 2.0}}},
            }
        )
    )
    return path


def test_paper_lines_from_the_json_and_a_note_without_it(full_run, tmp_path):
    results = full_run[2]
    paper = load_paper_table(write_paper_table(tmp_path / "table1.json"))
    assert paper["rows"]["msp"]["auroc"] == pytest.approx((0.876, 0.02))  # percent -> fraction
    table = table1_markdown(results, paper, results["statistics"])
    assert table.count("| paper: ") == 1  # msp only; none under crossfit rows
    assert "| | paper: Max Probability | 0.123 ± 0.010 | – | 87.6 ± 2.0 | – |" in table
    msp = next(r for r in results["rows"] if r["method"] == "msp")["metrics"]
    diff = f"{(msp['rmse'] - 0.123):+.3f}".replace("-", "−")
    assert f"| | ours − paper | {diff} | – |" in table
    assert "table1.json" in table.split("## Notes")[1]
    without = table1_markdown(results, None, results["statistics"])
    assert "| paper: " not in without and "No paper lines" in without


def test_report_writes_paper_lines_only_when_the_file_exists(full_run, tmp_path):
    results = json.loads(json.dumps(full_run[2]))
    write_experiment_report(tmp_path, results, paper_table=tmp_path / "missing.json")
    assert "| paper: " not in (tmp_path / "table1.md").read_text()
    assert "No paper lines" in (tmp_path / "report.md").read_text() and results["paper_table"] is None
    write_experiment_report(tmp_path, results, paper_table=write_paper_table(tmp_path / "t.json"))
    assert "| | paper: Max Probability |" in (tmp_path / "table1.md").read_text()
    assert "| | paper: Max Probability |" in (tmp_path / "report.md").read_text()


def test_nan_seeds_are_counted_in_cells(full_run):
    results = json.loads(json.dumps(full_run[2]))
    row = results["rows"][0]
    for i, seed in enumerate(row["per_seed"]):  # finite everywhere, then NaN where a seed had one class
        seed["metrics"] = {k: 0.5 + 0.1 * i for k in QUALITY_KEYS}
    row["per_seed"][1]["metrics"]["auroc"] = None
    for seed in row["per_seed"]:
        seed["metrics"]["aupr_pass"] = None
    row["metrics"] = {k: 0.55 for k in QUALITY_KEYS} | {"auroc": 0.5, "aupr_pass": None}
    row["std"] = {k: 0.07 for k in QUALITY_KEYS} | {"auroc": None, "aupr_pass": None}
    table = table1_markdown(results, None, results["statistics"])
    line = next(x for x in table.splitlines() if x.startswith(f"| {row['method']} | ours |"))
    assert "(1 of 2 seeds)" in line and "(0 of 2 seeds)" in line
    assert line.count("seeds)") == 2  # the other cells average both seeds


def test_report_only_rebuilds_from_results_json_with_portable_paths(full_run, tmp_path, monkeypatch):
    from segqc.cli.experiment import experiment as command

    _, out, results, _ = full_run
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "figures").mkdir()
    (folder / "figures" / "fig2.png").write_bytes((out / "figures" / "fig2.png").read_bytes())
    old = json.loads(json.dumps(results))
    old["command"] = ["segqc", "experiment", "--data", "rel/data", "--out", str(tmp_path / "abs-out")]
    old["data"]["source"] = str(tmp_path / "data")
    for entry in old["per_image_by_row"].values():  # as written before per-seed values were kept
        del entry["per_seed"]
    del old["statistics"]
    for row in old["rows"]:  # nor the seed counts
        del row["n_seeds"]
    (folder / "results.json").write_text(json.dumps(old))
    monkeypatch.chdir(tmp_path)
    paper = str(write_paper_table(tmp_path / "p.json"))
    result = CliRunner().invoke(command, ["--report-only", "--out", "copy", "--paper-table", paper])
    assert result.exit_code == 0, result.output
    new = strict_json(folder / "results.json")
    assert new["command"][-3:] == ["rel/data", "--out", "abs-out"]  # relative kept, absolute made relative
    assert new["data"]["source"] == "data" and new["paper_table"] == "p.json"
    assert new["statistics"]["seeds"] == [0]
    assert new["rows"] == json_ready(results["rows"])  # the seed counts are back, from per_seed
    for name in ("table1.md", "report.md", "results.json"):
        assert str(tmp_path) not in (folder / name).read_text(), name
    table = (folder / "table1.md").read_text()
    assert "95% CI, seed 0 only" in table and "| | paper: Max Probability |" in table
    report = (folder / "report.md").read_text()
    assert "figures/fig2.png" in report and "report re-rendered from results.json" in report
    assert render_report(folder, paper_table=tmp_path / "none.json")["paper_table"] is None
    # notes: given ones replace the stored ones, none given keeps them
    note = ["--report-only", "--out", "copy", "--note", "Row rca: superseded.", "--note", "Second."]
    assert CliRunner().invoke(command, note).exit_code == 0
    assert CliRunner().invoke(command, ["--report-only", "--out", "copy"]).exit_code == 0
    assert strict_json(folder / "results.json")["notes"] == ["Row rca: superseded.", "Second."]
    assert "## Notes\n\n- Row rca: superseded.\n- Second.\n" in (folder / "table1.md").read_text()
    # a note is one line (a newline would start a heading), a backtick cannot end the command's code
    odd = "two\n## lines `x` | y"
    assert CliRunner().invoke(command, ["--report-only", "--out", "copy", "--note", odd]).exit_code == 0
    assert "- two ## lines `x` | y\n" in (folder / "table1.md").read_text()
    report = (folder / "report.md").read_text()
    assert "\n## lines" not in report and "\n- two ## lines `x` | y\n" in report
    render_report(folder, command=["segqc", "experiment", "--note", "a `b`"])
    assert "by ``segqc experiment --note 'a `b`'``" in (folder / "report.md").read_text()
    # --note '' clears them; notes that are not a list of strings are one error
    assert CliRunner().invoke(command, ["--report-only", "--out", "copy", "--note", ""]).exit_code == 0
    assert strict_json(folder / "results.json")["notes"] == []
    broken = {**strict_json(folder / "results.json"), "notes": "abc"}
    (folder / "results.json").write_text(json.dumps(broken))
    with pytest.raises(SegQCError, match="'notes' must be a list of strings"):
        render_report(folder)
    assert render_report(folder, notes=["# kept as text"])["notes"] == ["\\# kept as text"]  # replaced
    # a seed whose RCA unit was cached before chosen settings were kept says so
    done = strict_json(folder / "results.json")
    rca = next(r for r in done["rows"] if r["method"] == "rca")
    del rca["per_seed"][1]["fitted"]
    (folder / "results.json").write_text(json.dumps(done))
    render_report(folder)
    assert "not recorded (seed 1)." in (folder / "table1.md").read_text()


def test_an_out_folder_of_a_run_with_other_settings_is_named_before_it_is_replaced(tmp_path):
    import warnings

    from segqc.experiment.run import check_earlier_run

    cfg = ExperimentConfig(seeds=[0, 1], quality_epochs=4)

    def images(*ids: str) -> SegData:
        n = len(ids)
        return SegData(np.zeros((n, 16, 16, 3), np.uint8), np.zeros((n, 16, 16), np.uint8), list(ids))

    train, test = images("a", "b", "c"), images("d", "e")
    data = {"train_ids": list(train.ids), "test_ids": list(test.ids)}
    notes = ["prior_strength 64 was chosen on test images."]
    earlier = {"config": cfg.to_dict(), "data": data, "notes": notes}
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the same run resumed: no warning, and its notes are kept
        assert check_earlier_run(tmp_path, cfg, train, test) == notes
        check_earlier_run(tmp_path, cfg.replace(device="cpu"), train, test)  # same results
        check_earlier_run(tmp_path / "new", cfg, train, test)  # a new folder: no warning
        for odd in ('{"config": [[1, 2]], "data": {}}', "[]", "{", "[" * 100_000):
            (tmp_path / "odd").mkdir(exist_ok=True)
            (tmp_path / "odd" / "results.json").write_text(odd)
            check_earlier_run(tmp_path / "odd", cfg, train, test)  # replaced without a word
    other = cfg.replace(seeds=[0], quality_epochs=2)
    expected = r"other settings \(quality_epochs 4 -> 2; seeds \[0, 1\] -> \[0\]; other test images\)"
    with pytest.warns(SegQCWarning, match=expected):  # another run's notes are not carried over
        assert check_earlier_run(tmp_path, other, train, images("d", "f")) == []


@pytest.mark.parametrize("content", ["[]", '{"config": {}}', "{", "[" * 100_000])
def test_report_only_on_a_file_that_is_not_an_experiments_results_is_one_error(tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(SegQCError, match="results.json: (cannot read it|not a results.json written by)"):
        render_report(tmp_path)


def test_an_interval_resting_on_fewer_seeds_says_how_many():
    entry = {"estimate": -0.25, "low": -0.4, "high": -0.1, "n_seeds": 1}
    assert interval_cell(entry, True, 2) == "[−40.0, −10.0] (1 of 2 seeds)"
    assert interval_cell(entry, True, 2, signed=True) == "−25.0 [−40.0, −10.0] (1 of 2 seeds)"
    assert interval_cell({**entry, "n_seeds": 2}, False, 2) == "[−0.400, −0.100]"


def test_rows_with_seeds_in_another_order_are_refused(full_run, tmp_path):
    _, _, results, _ = full_run
    bad = json.loads(json.dumps(results))
    first = next(iter(bad["per_image_by_row"].values()))
    if len(first["per_seed"]) < 2:
        pytest.skip("the run has one seed")
    last = list(bad["per_image_by_row"].values())[-1]
    last["per_seed"] = last["per_seed"][::-1]  # compared seed by seed, so the order must agree
    (tmp_path / "results.json").write_text(json.dumps(bad))
    with pytest.raises(SegQCError, match="has seeds"):
        render_report(tmp_path)


@pytest.mark.slow
def test_end_to_end_table_figures_and_units(full_run):
    cfg, out, results, calls = full_run
    table = (out / "table1.md").read_text()
    for name in expected_rows():
        assert f"| {name} | ours |" in table
    # with ../shared/paper/table1.json (the default): a paper line under each row it reports, none
    # under crossfit rows; without it, none
    if results["paper_table"]:
        paper = load_paper_table(results["paper_table"])
        expected = sum(name in paper["rows"] for name in [*PAPER_METHODS, *BASELINES])
    else:
        expected = 0
    assert table.count("| paper: ") == expected
    assert "95% CI |" in table and "## Paired differences to the no-uncertainty baseline" in table
    assert "Detection Error (%)" in table and "AUPR-Fail (%)" in table and "Spearman" in table
    for method in PAPER_METHODS:
        assert f"| {method} | " in table.split("## Segmentation")[1]
    report = (out / "report.md").read_text()
    assert "table1.md" in report and "figures/fig2.png" in report and "segqc test" in report
    for fig in ("fig2.png", "fig3.png"):
        path = out / "figures" / fig
        assert path.read_bytes()[:8] == PNG
        with Image.open(path) as im:
            im.verify()
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.pkl"))
    folders = sorted(p.name for p in (out / "units").iterdir())
    assert len(folders) == len(calls) == results["units"]["total"]
    # msp and mcdropout share one f per seed and fold; other methods train their own
    f_units = [f for f in folders if f.startswith("f-")]
    keys = sorted({training_key(m) for m in PAPER_METHODS})
    assert len(f_units) == len(keys) * 2 * (1 + cfg.folds)
    assert not any(f.startswith(("f-msp-", "f-mcdropout-")) for f in f_units)
    for name in folders:
        unit = out / "units" / name
        assert json.loads((unit / "unit.json").read_text())["label"] == name.rsplit("-", 1)[0]
        if name.startswith("f-"):
            from safetensors.torch import load_file

            assert load_file(unit / "weights.safetensors")
        if name.startswith("pred-"):
            with np.load(unit / "arrays.npz", allow_pickle=False) as z:
                assert z["mask"].dtype == np.uint8 and z["uncertainty"].dtype == np.float16


@pytest.mark.slow
def test_rerun_reuses_every_unit(full_run, folder, monkeypatch):
    cfg, out, results, _ = full_run
    data, protocol, _, _ = folder
    monkeypatch.setenv("SEGQC_CACHE", str(out.parent / "data-cache"))
    calls = count_units(monkeypatch)
    again = run_experiment(cfg, out, data=data, protocol=protocol, progress=False, command=["segqc", "test"])
    assert calls == []
    assert again["units"]["computed"] == 0 and again["units"]["cached"] == results["units"]["total"]
    assert comparable(again) == comparable(results)


# -- resuming ------------------------------------------------------------------------------------

SMALL = ExperimentConfig(
    methods=["msp"],
    baselines=["no-uncertainty"],
    seeds=[0],
    quality_train="both",
    n_train=16,
    n_test=12,
    **TINY,
)


def test_more_folds_than_training_images_is_refused(tmp_path):
    """Empty folds used to run: an extra f on every training image per empty fold, and a report of
    "(8 folds)" over 6 images; segqc train refuses these folds, so does the experiment."""
    import dataclasses

    cfg = dataclasses.replace(SMALL, quality_train="crossfit", n_train=6, n_test=4, folds=8)
    with pytest.raises(SegQCError, match="8 folds of 6 training images"):
        run_experiment(cfg, tmp_path / "o", progress=False)


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
    reference_calls = count_units(monkeypatch)
    reference = run_experiment(SMALL, tmp_path / "a", progress=False)
    total = reference["units"]["total"]
    assert len(reference_calls) == total == 1 + 2 + 2 * 2 + 4  # f, 2 preds, 2 folds x (f, pred), 4 g

    k = 7
    count_units(monkeypatch, fail_after=k)
    with pytest.raises(Interrupted):
        run_experiment(SMALL, tmp_path / "b", progress=False)
    finished = list((tmp_path / "b" / "units").glob("*/unit.json"))
    assert len(finished) == k
    assert not (tmp_path / "b" / "results.json").exists()

    resumed_calls = count_units(monkeypatch)
    resumed = run_experiment(SMALL, tmp_path / "b", progress=False)
    assert len(resumed_calls) == total - k
    assert not set(resumed_calls) & {json.loads(p.read_text())["label"] for p in finished}
    assert resumed["units"] == {"total": total, "computed": total - k, "cached": k}
    assert comparable(resumed) == comparable(reference)

    # a changed setting of g recomputes exactly the learned g units; f and its predictions are reused
    changed_calls = count_units(monkeypatch)
    with pytest.warns(SegQCWarning, match=r"other settings \(quality_epochs 1 -> 2\)"):
        changed = run_experiment(SMALL.replace(quality_epochs=2), tmp_path / "b", progress=False)
    assert sorted(changed_calls) == sorted(
        f"g-{row}-s0" for row in ("msp", "msp-crossfit", "no-uncertainty", "no-uncertainty-crossfit")
    )
    assert changed["rows"][0]["metrics"] != resumed["rows"][0]["metrics"]


def test_a_unit_killed_mid_training_resumes_from_its_last_epoch(tmp_path, monkeypatch, capsys):
    cfg = SMALL.replace(seg_epochs=3, quality_train="paper")
    reference = run_experiment(cfg, tmp_path / "a", progress=False)

    saved: list[str] = []
    real_save = checkpoint.TrainingCheckpoint.save

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saved.append(self.path.parent.name)
        if len(saved) == 2:  # f after its second of three epochs
            raise Interrupted(self.path.parent.name)

    class SlowClock:  # the killed run's training clock: 1000 s pass between any two readings
        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 1000.0
            return cls.now

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint.TrainingCheckpoint, "save", save_then_die)
        mp.setattr(checkpoint, "time", SlowClock)
        with pytest.raises(Interrupted):
            run_experiment(cfg, tmp_path / "b", progress=False)
    partial = tmp_path / "b" / "units" / units.PARTIAL
    (folder,) = partial.iterdir()
    assert folder.name.startswith("f-ce-s0-full-") and (folder / "train-0.safetensors").is_file()
    assert not list((tmp_path / "b" / "units").glob("f-*/unit.json"))

    capsys.readouterr()
    resumed = run_experiment(cfg, tmp_path / "b", progress=False)
    err = capsys.readouterr().err
    assert "train-0.safetensors: resumed after epoch 2" in err
    assert comparable(resumed) == comparable(reference)
    # the unit's compute time is the whole training's, the killed run's part included
    (f_unit,) = (tmp_path / "b" / "units").glob("f-ce-s0-full-*/unit.json")
    assert json.loads(f_unit.read_text())["seconds"] >= 1000.0
    assert resumed["compute_time_s"] >= 1000.0
    assert not partial.exists()  # each unit's progress goes once the unit is stored


def test_a_stored_unit_takes_its_leftover_progress_away(tmp_path):
    """A unit another run stored while this one still trained it (one units folder, two runs): this
    one's progress was left in units/.partial; the next run that finds the unit stored removes it."""
    cfg = SMALL.replace(seg_epochs=1, quality_train="paper")
    run_experiment(cfg, tmp_path, progress=False)
    root = tmp_path / "units"
    stored = [p.parent.name for p in root.glob("*/unit.json")]
    for name in stored:
        (root / units.PARTIAL / name).mkdir(parents=True)
        (root / units.PARTIAL / name / "train-0.safetensors").write_bytes(b"left over")
    run_experiment(cfg, tmp_path, progress=False)
    assert stored and not (root / units.PARTIAL).exists()


def plan_digests(cfg: ExperimentConfig, tmp_path: Path) -> dict[str, str]:
    images, masks, ids = make_synthetic(20, 32, seed=0)
    data = SegData(images, masks, ids)
    planner = Planner(cfg, data.subset(range(14)), data.subset(range(14, 20)))
    return {u.label: u.digest for u in planner.plan(cfg.seeds[0], planner.rows()).units}


def test_unit_keys_follow_what_determines_them(tmp_path):
    base = SMALL
    digests = plan_digests(base, tmp_path)
    assert plan_digests(base, tmp_path) == digests
    # threshold only enters the metrics, computed at the end
    assert plan_digests(base.replace(threshold=0.6), tmp_path) == digests
    # f's settings change every unit downstream of f
    changed = plan_digests(base.replace(seg_epochs=2), tmp_path)
    assert changed.keys() == digests.keys() and all(changed[k] != digests[k] for k in digests)
    # g's settings change only the g units
    changed = plan_digests(base.replace(quality_epochs=2), tmp_path)
    assert all((changed[k] != digests[k]) == k.startswith("g-") for k in digests)
    # a different seed changes everything
    changed = plan_digests(base.replace(seeds=[1]), tmp_path)
    assert not set(changed.values()) & set(digests.values())


def test_unit_store_round_trip_and_rejections(tmp_path):
    store = UnitStore(tmp_path / "units")
    payload = Payload(
        arrays={"mask": np.eye(4, dtype=np.uint8)},
        tensors={"w": torch.arange(6.0).reshape(2, 3)},
        meta={"a": 1},
    )
    unit = Unit("f", "f-test", {"x": 1, "lr": 1e-3}, lambda: payload)
    assert store.load(unit) is None
    store.save(unit, payload, 1.5)
    loaded, seconds = store.load(unit)
    assert seconds == 1.5 and loaded.meta == {"a": 1}
    np.testing.assert_array_equal(loaded.arrays["mask"], payload.arrays["mask"])
    assert torch.equal(loaded.tensors["w"], payload.tensors["w"])
    # another key is another folder; a tampered key or a damaged file is never trusted
    assert store.load(Unit("f", "f-test", {"x": 2, "lr": 1e-3}, lambda: payload)) is None
    folder = tmp_path / "units" / unit.folder
    info = json.loads((folder / "unit.json").read_text())
    (folder / "unit.json").write_text(json.dumps({**info, "key": {"x": 2, "lr": 1e-3}}))
    assert store.load(unit) is None
    store.save(unit, payload, 1.5)
    (folder / "arrays.npz").write_bytes(b"not a zip")
    assert store.load(unit) is None


@pytest.mark.skipif("mcdropout" not in METHODS.names(), reason="mcdropout not registered")
def test_msp_and_mcdropout_train_the_same_f(tiny_data):
    assert training_key("msp") == training_key("mcdropout")
    train, _ = tiny_data
    a = Segmenter("msp", base_width=4, epochs=1, device="cpu", progress=False).fit(train.subset(range(16)))
    b = Segmenter("mcdropout", base_width=4, epochs=1, device="cpu", progress=False).fit(
        train.subset(range(16))
    )
    sa, sb = a.state()[0], b.state()[0]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mcdropout_placement_segnet_trains_its_own_f(tmp_path):
    """placement=center (the default) reads out msp's f; placement=segnet trains its own, once per seed."""
    segnet = {"placement": "segnet"}
    assert training_key("mcdropout", {"placement": "center"}) == training_key("msp") == "ce"
    assert training_key("mcdropout", segnet) == "ce-segnet"
    cfg = SMALL.replace(
        methods=["msp", "mcdropout"], quality_train="paper", method_params={"mcdropout": segnet}
    )
    labels = list(plan_digests(cfg, tmp_path))
    assert [u for u in labels if u.startswith("f-")] == ["f-ce-s0-full", "f-ce-segnet-s0-full"]
    assert {u for u in labels if u.startswith("pred-")} == {
        f"pred-{m}-s0-{w}" for m in ("msp", "mcdropout") for w in ("test", "train")
    }
    center = plan_digests(SMALL.replace(methods=["msp", "mcdropout"], quality_train="paper"), tmp_path)
    assert [u for u in center if u.startswith("f-")] == ["f-ce-s0-full"]
    assert center["pred-mcdropout-s0-test"] != plan_digests(cfg, tmp_path)["pred-mcdropout-s0-test"]


def test_tta_reads_out_msps_f_and_the_ensemble_trains_its_own(tmp_path):
    """One f per training key: tta's is msp's; the ensemble's key holds K but not the map."""
    cfg = SMALL.replace(
        methods=["msp", "tta", "ensemble"], quality_train="paper", method_params={"ensemble": {"members": 2}}
    )
    assert training_key("tta") == training_key("msp") != training_key("ensemble", {"members": 2})
    assert training_key("ensemble", {"map": "mutual_information"}) == training_key("ensemble")
    labels = list(plan_digests(cfg, tmp_path))
    assert [u for u in labels if u.startswith("f-")] == [
        f"f-{training_key('msp')}-s0-full",
        "f-ensemble-k2-s0-full",
    ]
    assert {u for u in labels if u.startswith("pred-")} == {
        f"pred-{m}-s0-{w}" for m in ("msp", "tta", "ensemble") for w in ("test", "train")
    }
    assert {u for u in labels if u.startswith("g-")} == {
        "g-msp-s0",
        "g-tta-s0",
        "g-ensemble-s0",
        "g-no-uncertainty-s0",
    }


def test_config_validation():
    with pytest.raises(UnknownNameError, match="unknown uncertainty method 'nope'"):
        ExperimentConfig(methods=["nope"])
    with pytest.raises(SegQCError, match="not a baseline"):
        ExperimentConfig(baselines=["uncertainty"])
    with pytest.raises(SegQCError, match="quality_train"):
        ExperimentConfig(quality_train="sometimes")
    with pytest.raises(SegQCError, match="folds"):
        ExperimentConfig(folds=1)
    with pytest.raises(SegQCError, match="duplicates"):
        ExperimentConfig(seeds=[0, 0])
    with pytest.raises(SegQCError, match="multiple of 16"):
        ExperimentConfig(image_size=30)
    cfg = ExperimentConfig(seeds=[2, 5], method_params={"mcdropout": {"samples": 7}})
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.pipeline_config("mcdropout", 5).method_params == {"samples": 7}
    assert cfg.pipeline_config("msp", 5).seed == 5


def test_config_shares_the_training_settings_and_reads_old_configs():
    from segqc.config import PipelineConfig, TrainingSettings

    shared = TrainingSettings.names()
    cfg = ExperimentConfig(**{**TINY, "seeds": [3]})
    assert {k: getattr(cfg, k) for k in shared} == {k: TINY_SETTINGS.get(k, getattr(cfg, k)) for k in shared}
    pcfg = cfg.pipeline_config("msp", 3)
    assert pcfg.training_settings() == cfg.training_settings() and isinstance(pcfg, PipelineConfig)
    assert TrainingSettings.names("f") == [
        "image_size",
        "base_width",
        "dropout",
        "seg_epochs",
        "batch_size",
        "lr",
        "seg_lr_schedule",
    ]
    # method settings live in method_params only; a method-specific key is an unknown key
    with pytest.raises(SegQCError, match="unknown experiment config keys: mc_samples"):
        ExperimentConfig.from_dict({**cfg.to_dict(), "mc_samples": 7})
    with pytest.raises(SegQCError, match="unknown experiment config keys: nope"):
        ExperimentConfig.from_dict({"nope": 1})
    with pytest.raises(SegQCError, match="samples"):
        ExperimentConfig(methods=["mcdropout"], method_params={"mcdropout": {"samples": 0}})


# -- CLI -----------------------------------------------------------------------------------------

TINY_FLAGS = [
    *("--image-size", "32", "--base-width", "4", "--quality-width", "4", "--seg-epochs", "1"),
    *("--quality-epochs", "1", "--device", "cpu", "--quiet"),
]


@pytest.mark.slow
def test_cli_experiment(tmp_path):
    from segqc.cli.experiment import experiment as command

    out = tmp_path / "exp"
    flags = ["--methods", "msp", "--baselines", "rca", "--seeds", "1", "--n-train", "16", "--n-test", "8"]
    args = ["--out", str(out), *flags, "--rca-references", "3", *TINY_FLAGS]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    assert "rca: RMSE" in result.output and "table1.md" in result.output
    res = strict_json(out / "results.json")
    assert [r["method"] for r in res["rows"]] == ["msp", "rca"]
    assert res["config"]["seeds"] == [0] and res["config"]["rca_references"] == 3
    assert res["data"]["source"] == "synthetic" and len(res["per_image"]) == 8
    again = CliRunner().invoke(command, args)
    assert again.exit_code == 0 and "0 computed" in again.output


def test_cli_bad_input(tmp_path):
    from segqc.cli.experiment import experiment as command

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(command, ["--out", str(tmp_path / "o"), "--data", str(empty), *TINY_FLAGS])
    assert result.exit_code == 1
    assert "error:" in result.output and "not a data folder" in result.output
    result = CliRunner().invoke(command, ["--out", str(tmp_path / "o"), "--methods", "msp,nope", *TINY_FLAGS])
    assert result.exit_code == 1 and "unknown uncertainty method 'nope'" in result.output
    result = CliRunner().invoke(command, ["--out", str(tmp_path / "o"), "--seeds", "2", "--seed", "1"])
    assert result.exit_code == 2


def test_few_failing_or_passing_test_images_are_warned_about():
    def summary(*failure_rates):
        return {
            "msp": {
                "n_images": 100,
                "per_seed": [{"seed": i, "failure_rate": r} for i, r in enumerate(failure_rates)],
            }
        }

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_few_failures_or_passes(summary(0.10, 0.90), 0.7)  # 10 of a class: enough
    with pytest.warns(SegQCWarning, match=r"msp seed 1: 9 of 100 fail\)"):
        warn_if_few_failures_or_passes(summary(0.5, 0.09), 0.7)
    with pytest.warns(SegQCWarning, match="msp seed 0: 95 of 100 fail"):
        warn_if_few_failures_or_passes(summary(0.95), 0.7)


def test_code_span_holds_any_backticks():
    assert code_span("segqc experiment --out x") == "`segqc experiment --out x`"
    assert code_span("a `b` c") == "``a `b` c``"
    assert code_span("`a``") == "``` `a`` ```"
    assert code_span("one\ntwo") == "`one two`"
