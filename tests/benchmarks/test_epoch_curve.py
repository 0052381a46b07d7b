"""``benchmarks/epoch_curve.py``: the rule that picks f's epochs from a held-out curve."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "epoch_curve.py"


@pytest.fixture(scope="module")
def curve_module():
    spec = importlib.util.spec_from_file_location("epoch_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rule_takes_the_first_epoch_near_the_smoothed_best(curve_module):
    epochs = [5, 10, 15, 20, 25, 30]
    scores = [0.60, 0.70, 0.76, 0.78, 0.782, 0.781]
    # smoothed: .65 .687 .747 .774 .781 .7815 -> within 0.005 of .7815 first at epoch 25
    assert curve_module.choose_epochs(epochs, scores, 0.005) == 25
    assert curve_module.choose_epochs(epochs, scores, 0.01) == 20
    # a noisy plateau: smoothed .74 .76 .79 .80 .80 .805 -> first within 0.006 of .805 is epoch 20
    noisy = [0.70, 0.78, 0.80, 0.79, 0.81, 0.80]
    assert curve_module.choose_epochs(epochs, noisy, 0.006) == 20


def test_a_short_curve_on_synthetic_images(curve_module, tmp_path):
    out = tmp_path / "curve"
    rc = curve_module.main(
        ["--image-size", "32", "--epochs", "2", "--every", "1", "--device", "cpu", "--out", str(out)]
    )
    assert rc == 0
    result = json.loads((out / "curve.json").read_text())
    assert [c["epoch"] for c in result["curve"]] == [1, 2]
    assert result["chosen_epochs"] in (1, 2) and result["complete"]
    assert (out / "curve.png").is_file()


def _stopped_run(curve_module, monkeypatch, args, saves):
    """Run the curve with ``args`` and kill it (KeyboardInterrupt) right after f's ``saves``-th
    checkpoint was saved; then undo every patch made so far, as a fresh process would start."""
    from segqc import checkpoint

    real_save = checkpoint.TrainingCheckpoint.save
    done = []

    def save_then_die(self, *a, **kw):
        real_save(self, *a, **kw)
        done.append(1)
        if len(done) == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.TrainingCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        curve_module.main(args)
    monkeypatch.undo()


def test_a_stopped_curve_resumes_to_the_uninterrupted_one(curve_module, tmp_path, monkeypatch):
    args = ["--image-size", "32", "--epochs", "4", "--every", "1", "--device", "cpu"]
    assert curve_module.main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "curve.json").read_text())

    out = tmp_path / "split"
    _stopped_run(curve_module, monkeypatch, [*args, "--out", str(out)], 2)  # killed after epoch 2 was saved
    assert not (out / "curve.json").exists() and (out / ".partial" / "curve.json").is_file()
    assert curve_module.main([*args, "--out", str(out)]) == 0
    split = json.loads((out / "curve.json").read_text())
    assert [c["epoch"] for c in split["curve"]] == [1, 2, 3, 4]
    assert [c["heldout_jaccard"] for c in split["curve"]] == [c["heldout_jaccard"] for c in whole["curve"]]
    assert split["chosen_epochs"] == whole["chosen_epochs"]
    assert not (out / ".partial").exists()  # finished: the scratch is gone


def test_a_curve_with_other_settings_starts_over(curve_module, tmp_path, capsys):
    out = tmp_path / "curve"
    base = ["--image-size", "32", "--every", "1", "--device", "cpu", "--out", str(out)]
    assert curve_module.main([*base, "--epochs", "2", "--time-budget", "0"]) == 75
    (out / ".partial").mkdir(exist_ok=True)
    (out / ".partial" / "curve.json").write_text(
        '{"key": {"seed": 99}, "points": [{"epoch": 1, "heldout_jaccard": 1.0, "seconds": 5}]}'
    )
    assert curve_module.main([*base, "--epochs", "2"]) == 0
    result = json.loads((out / "curve.json").read_text())
    assert [c["epoch"] for c in result["curve"]] == [1, 2]
    assert result["curve"][0]["heldout_jaccard"] < 1.0  # the other run's point was not taken


def test_a_stopped_curve_rerun_with_more_epochs_keeps_no_point_of_the_other_training(
    curve_module, tmp_path, monkeypatch
):
    # --epochs sets f's learning-rate schedule: a point of the 3-epoch training is not one of the 4-epoch one
    out = tmp_path / "curve"
    base = ["--image-size", "32", "--every", "2", "--device", "cpu", "--out", str(out)]
    _stopped_run(curve_module, monkeypatch, [*base, "--epochs", "3"], 3)
    assert curve_module.main([*base, "--epochs", "4"]) == 0
    result = json.loads((out / "curve.json").read_text())
    assert [c["epoch"] for c in result["curve"]] == [2, 4]


@pytest.mark.parametrize(
    "progress",
    [
        None,  # lost
        "{not json",
        '{"key": null, "points": []}',
        "[1, 2]",
        "KEY",  # the right key, unusable points
    ],
)
def test_a_curve_whose_progress_is_lost_or_damaged_starts_over(curve_module, tmp_path, monkeypatch, progress):
    # f's checkpoint is useless without the curve it went with: resuming it would leave out the early points
    out = tmp_path / "curve"
    args = ["--image-size", "32", "--epochs", "3", "--every", "1", "--device", "cpu", "--out", str(out)]
    _stopped_run(curve_module, monkeypatch, args, 2)
    saved = out / ".partial" / "curve.json"
    if progress is None:
        saved.unlink()
    elif progress == "KEY":
        key = json.loads(saved.read_text())["key"]
        saved.write_text(json.dumps({"key": key, "points": [{"epoch": "one"}, "x", {"epoch": 2}]}))
    else:
        saved.write_text(progress)
    assert curve_module.main(args) == 0
    result = json.loads((out / "curve.json").read_text())
    assert [c["epoch"] for c in result["curve"]] == [1, 2, 3] and result["complete"]


def test_a_curve_stopped_before_its_first_evaluation_keeps_its_training(
    curve_module, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "curve"
    args = ["--image-size", "32", "--epochs", "3", "--every", "3", "--device", "cpu", "--out", str(out)]
    _stopped_run(curve_module, monkeypatch, args, 1)
    assert not (out / ".partial" / "curve.json").exists()
    assert curve_module.main(args) == 0
    assert "resumed after epoch 1" in capsys.readouterr().err


def test_a_resumed_curve_counts_the_time_of_the_epochs_after_its_last_point(
    curve_module, tmp_path, monkeypatch
):
    """The curve's seconds are f's training time so far: a run stopped between two evaluations trained
    epochs after its last point, and their time is in f's checkpoint, not in the curve so far."""
    from types import SimpleNamespace

    from segqc import checkpoint

    clock = [0.0]
    fake_time = SimpleNamespace(perf_counter=lambda: clock[0])
    monkeypatch.setattr(curve_module, "time", fake_time)
    monkeypatch.setattr(checkpoint, "time", fake_time)
    real_save = checkpoint.TrainingCheckpoint.save
    saves = []

    def ten_seconds_an_epoch(self, *a, **kw):  # the clock moves only here: 10 s an epoch
        clock[0] += 10.0
        real_save(self, *a, **kw)
        saves.append(1)
        if len(saves) == 3:
            raise KeyboardInterrupt  # stopped after epoch 3, one epoch past the point at epoch 2

    monkeypatch.setattr(checkpoint.TrainingCheckpoint, "save", ten_seconds_an_epoch)
    out = tmp_path / "curve"
    args = ["--image-size", "32", "--epochs", "4", "--every", "2", "--device", "cpu", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        curve_module.main(args)
    assert curve_module.main(args) == 0
    result = json.loads((out / "curve.json").read_text())
    # uninterrupted: epoch 2 evaluated after 1 epoch's save (10 s), epoch 4 after 3 (30 s), 40 s in all
    assert [c["seconds"] for c in result["curve"]] == [10.0, 30.0]
    assert result["seconds"] == 40.0


def test_a_curve_whose_training_starts_over_keeps_no_later_point_of_the_stopped_one(
    curve_module, tmp_path, monkeypatch
):
    """When f's checkpoint cannot be resumed (damaged, or saved on another kind of device, whose f differs),
    f trains from the start again: the stopped run's points past where it has got are not this f's."""
    from segqc import checkpoint
    from segqc.engine import TimeBudgetExceeded

    out = tmp_path / "curve"
    args = ["--image-size", "32", "--epochs", "3", "--every", "1", "--device", "cpu", "--out", str(out)]
    monkeypatch.setattr(curve_module, "heldout_jaccard", lambda *a: 1.0)  # the other device's f
    _stopped_run(curve_module, monkeypatch, args, 2)
    (out / ".partial" / "train-0.safetensors").write_bytes(b"not this device's")
    real_save = checkpoint.TrainingCheckpoint.save

    def budget_after_one(self, *a, **kw):
        real_save(self, *a, **kw)
        raise TimeBudgetExceeded("out of time")

    monkeypatch.setattr(checkpoint.TrainingCheckpoint, "save", budget_after_one)
    assert curve_module.main(args) == 75
    result = json.loads((out / "curve.json").read_text())
    assert [c["epoch"] for c in result["curve"]] == [1] and result["curve"][0]["heldout_jaccard"] < 1.0
