"""``benchmarks/heldout_compare.py``: models compared on their held-out training images, on files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from segqc.config import PipelineConfig
from segqc.data.synthetic import write_synthetic
from segqc.training import train_bundle

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "heldout_compare.py"
TINY = dict(image_size=32, base_width=4, quality_width=4, seg_epochs=1, quality_epochs=1, device="cpu")


def test_models_are_compared_on_the_same_held_out_training_images_only(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("heldout_compare", SCRIPT)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    ids = write_synthetic(tmp_path / "data", 30, 48, seed=3)
    protocol = tmp_path / "split.json"
    protocol.write_text(json.dumps({"train": ids[:25], "test": ids[25:]}))
    models = []
    for name, changes in (("a", {}), ("b", {"method": "tta"}), ("other-seed", {"seed": 1})):
        cfg = PipelineConfig(**{**TINY, **changes})
        train_bundle(tmp_path / "data", protocol, cfg, tmp_path / name, progress=False, force=True)
        models.append(str(tmp_path / name))
    args = ["--data", str(tmp_path / "data"), "--protocol", str(protocol), "--size", "48"]
    assert compare.main([*args, "--out", str(tmp_path / "cmp.json"), *models[:2]]) == 0
    out = json.loads((tmp_path / "cmp.json").read_text())
    held = json.loads((tmp_path / "a" / "bundle.json").read_text())["data"]["calibration_ids"]
    assert out["n_heldout"] == len(held) == 5 and not set(held) & set(ids[25:])  # never a test image
    assert list(out["models"]) == models[:2]
    assert all(0 <= row["jaccard_mean"] <= 1 and "auroc" in row for row in out["models"].values())
    assert "| " + models[1] + " | 32 | tta |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="hold out different images"):
        compare.main([*args, models[0], models[2]])
