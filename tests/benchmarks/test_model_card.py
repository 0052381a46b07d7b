"""``benchmarks/model_card.py``: the generated card of a shipped model, on files."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from segqc.data.synthetic import write_synthetic
from segqc.models import CARD_FIELDS, shipped_models

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_card.py"


def test_the_card_is_generated_from_the_model_run_on_test_images(tmp_path):
    spec = importlib.util.spec_from_file_location("model_card", SCRIPT)
    card_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card_module)
    model = tmp_path / "model"
    model.mkdir()
    for name in ("bundle.json", "f.safetensors", "g.safetensors"):
        shutil.copy(shipped_models()["isic2017"] / name, model / name)
    write_synthetic(tmp_path / "data", 20, 64)
    doc = tmp_path / "docs" / "card.md"
    args = ["--model", str(model), "--name", "isic2017", "--data", str(tmp_path / "data")]
    args += ["--target", "segmentation.jaccard_mean=1.0", "--target", "quality.rmse=1.0"]
    args += ["--note", "Chosen among 3 settings on the test images."]
    assert card_module.main([*args, "--train-command", "segqc train --out x", "--doc", str(doc)]) == 0

    card = json.loads((model / "card.json").read_text())
    assert set(CARD_FIELDS) <= set(card)
    assert card["training"] == "segqc train --out x"
    evaluation = json.loads(doc.with_suffix(".json").read_text())
    n = evaluation["n_test"]
    assert n == 4 and len(evaluation["per_image"]["true"]) == n
    assert card["metrics"]["segmentation.jaccard_mean"] == round(
        evaluation["segmentation"]["jaccard"]["estimate"], 4
    )
    # The bound's coverage counts only images that have a bound (OOD ones get none), part by part too.
    bound = evaluation["lower_bound"]
    assert 0 <= bound["n_bounded"] <= n and bound["confidence"] == 0.9
    assert sum(p["n"] for p in evaluation["by_part"].values()) == n
    assert sum(p["n_bounded"] for p in evaluation["by_part"].values()) == bound["n_bounded"]
    text = doc.read_text()
    assert f"of the {bound['n_bounded']} test images that have one" in text
    assert "| Segmentation Jaccard (mean) |" in text and "isic2017-calibration.png" in text
    assert (doc.parent / "isic2017-calibration.png").stat().st_size > 1000
    # the targets are judged from the measured metrics (a Jaccard of 1 is out of reach, an RMSE <= 1
    # always met), the note is a limit, and the command at the end runs as written
    assert "It misses targets set for it (on the test images; segmentation.jaccard_mean >= 1: " in text
    assert "missed; quality.rmse <= 1: " in text and text.count(", met") == 1
    assert card["limits"][4] == "Chosen among 3 settings on the test images."
    assert "--train-command 'segqc train --out x'" in text and "--note 'Chosen among 3" in text
    # a bad target is refused before the evaluation runs
    for bad in ("auroc=0.9", "quality.auroc=92", "quality.auroc=nan", "quality.auroc=1_0", "quality.auroc"):
        with pytest.raises(SystemExit, match="--target"):
            card_module.parse_targets([bad])
    with pytest.raises(SystemExit, match="given twice"):
        card_module.parse_targets(["quality.auroc=0.9", "quality.auroc=0.8"])
    assert card_module.parse_targets(["quality.spearman=-0.5", " quality.auroc = .92"]) == {
        "quality.spearman": -0.5,
        "quality.auroc": 0.92,
    }
