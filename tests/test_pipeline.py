from __future__ import annotations

import json

import numpy as np
import pytest

from segqc.config import PipelineConfig
from segqc.demo import run_demo
from segqc.errors import SegQCError
from segqc.metrics import QUALITY_KEYS
from segqc.training import run_pipeline


def test_run_pipeline_results_schema(tiny_data, tiny_config):
    train, test = tiny_data
    cfg = tiny_config.replace(predictors=["uncertainty", "no-uncertainty"])
    result = run_pipeline(train, test, cfg, progress=False)
    res = result.results
    assert [r["method"] for r in res["rows"]] == ["msp", "no-uncertainty"]
    for row in res["rows"]:
        assert set(row["metrics"]) == set(QUALITY_KEYS)
    assert len(res["per_image"]) == len(test)
    assert res["data"]["test_ids"] == test.ids and res["data"]["train_ids"] == train.ids
    assert 0.0 <= res["segmentation"]["jaccard_mean"] <= 1.0
    assert res["config"]["seed"] == cfg.seed and "torch" in res["versions"]


def test_same_seed_same_result(tiny_data, tiny_config):
    train, test = tiny_data
    a = run_pipeline(train, test, tiny_config, progress=False)
    b = run_pipeline(train, test, tiny_config, progress=False)
    np.testing.assert_array_equal(a.test_prediction.mask, b.test_prediction.mask)
    np.testing.assert_allclose(a.predicted_quality["msp"], b.predicted_quality["msp"])
    c = run_pipeline(train, test, tiny_config.replace(seed=1), progress=False)
    assert not np.allclose(a.test_prediction.probs, c.test_prediction.probs)


def test_config_validation():
    with pytest.raises(SegQCError, match="multiple of 16"):
        PipelineConfig(image_size=30)
    with pytest.raises(SegQCError, match="unknown config keys: bogus"):
        PipelineConfig.from_dict({"bogus": 1})
    cfg = PipelineConfig(seed=5)
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.slow
def test_run_demo_writes_outputs(tmp_path, tiny_config):
    run_demo(tmp_path, tiny_config, n_train=32, n_test=16, progress=False)
    for name in ("report.md", "results.json", "config.json", "figures/overlays.png", "figures/scatter.png"):
        assert (tmp_path / name).is_file(), name
    res = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN written as null
    assert res["rows"][0]["method"] == "msp" and len(res["per_image"]) == 16
    assert "| msp |" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries
