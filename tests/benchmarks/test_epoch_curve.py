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
