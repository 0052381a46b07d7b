"""The pass/refer gate (segqc.gate): reasons, bounds, fitness, and non-dermoscopy probes end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.assess import assess_images
from segqc.cli import cli
from segqc.data.probes import make_probes
from segqc.gate import LOW_QUALITY, NOT_FINITE, OUT_OF_DISTRIBUTION, assess_fitness
from segqc.runtime import load_model
from tests.assess.conftest import accept_all_gate


def test_reasons_are_ordered_by_severity_and_a_pass_says_ok():
    gate = accept_all_gate(0.7)
    s = 16
    images = np.full((4, s, s, 3), 120, np.uint8)
    masks = np.ones((4, s, s), np.uint8)
    maps = np.zeros((4, s, s), np.float32)
    maps[3, 0, 0] = np.inf
    verdict = gate.decide(images, masks, maps, np.array([0.9, 0.5, np.nan, 0.9]))
    assert verdict.decision == ["pass", "refer", "refer", "refer"]
    assert verdict.reason == ["ok", LOW_QUALITY, NOT_FINITE, NOT_FINITE]
    assert verdict.jaccard_lower[:2] == pytest.approx([0.8, 0.4]) and verdict.jaccard_lower[2:] == [
        None,
        None,
    ]
    gate.ood.limit = 1e-9  # now everything is beyond the limit... but the zero precision gives distance 0
    gate.ood.precision = np.eye(len(gate.ood.center))
    verdict = gate.decide(images, masks, maps, np.array([0.9, 0.5, np.nan, 0.9]))
    assert verdict.reason[:2] == [OUT_OF_DISTRIBUTION, f"{OUT_OF_DISTRIBUTION}; {LOW_QUALITY}"]
    assert verdict.jaccard_lower[:2] == [None, None]  # no bound for an input unlike the held-out ones


def test_fitness_problems():
    true = np.array([0.2, 0.3, 0.9, 0.95])
    assert assess_fitness(np.array([0.1, 0.2, 0.9, 0.9]), true, 0.7, 0.7)["fit"]
    constant = assess_fitness(np.full(4, 0.8), true, 0.7, 0.7)
    assert not constant["fit"] and "constant" in constant["problems"][0]
    blind = assess_fitness(np.array([0.75, 0.8, 0.9, 0.95]), true, 0.7, 0.7)
    assert blind["problems"] == ["none of the 2 held-out failures is referred at threshold 0.7"]
    assert (
        "not all finite" in assess_fitness(np.array([0.1, np.nan, 0.9, 0.9]), true, 0.7, 0.7)["problems"][0]
    )
    no_failures = assess_fitness(np.array([0.8, 0.9]), np.array([0.9, 0.95]), 0.7, 0.7)
    assert no_failures["fit"] and "could not be checked" in no_failures["notes"][0]


def test_a_fit_model_refers_every_non_dermoscopy_probe_as_out_of_distribution(fit_bundle_dir):
    model = load_model(fit_bundle_dir, device="cpu")
    assert model.fit and model.gate.fitness["problems"] == []
    probes = make_probes(224)
    results = assess_images(model, list(probes.values()), list(probes))
    not_flagged = [r.id for r in results if OUT_OF_DISTRIBUTION not in r.reason]
    assert not_flagged == [] and all(r.decision == "refer" for r in results)
    assert all(r.jaccard_lower is None for r in results)


def test_train_refuses_an_unfit_model_and_force_marks_it(tmp_path, monkeypatch):
    from segqc.data.synthetic import write_synthetic

    monkeypatch.setenv("SEGQC_CACHE", str(tmp_path / "cache"))
    write_synthetic(tmp_path / "d", 30, 32, seed=2)
    args = ["train", "--data", str(tmp_path / "d"), "--image-size", "32", "--seg-epochs", "1",
            "--quality-epochs", "1", "--base-width", "4", "--quiet", "--device", "cpu"]  # fmt: skip
    refused = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "m")])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "not fit to gate segmentations" in refused.output and "--force" in refused.output
    assert not (tmp_path / "m" / "bundle.json").exists()
    forced = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "m"), "--force"])
    assert forced.exit_code == 0 and "UNFIT" in forced.stderr
    config = json.loads((tmp_path / "m" / "bundle.json").read_text())
    assert config["gate"]["fitness"]["fit"] is False and config["gate"]["fitness"]["forced"] is True
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tmp_path / "x.png")
    predict = ["predict", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--quiet"]
    predicted = CliRunner().invoke(cli, [*predict, str(tmp_path / "x.png")])
    assert predicted.exit_code == 0 and predicted.stderr.startswith("warning: this model failed its fitness")


def test_confidence_needs_a_target_recall(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "m"), "--confidence", "0.9"])
    assert result.exit_code == 2 and "--target-failure-recall" in result.output
