"""Model bundles: save/load round trip, and every way a bundle folder can be broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segqc.bundle import BUNDLE_FORMAT, Bundle, load_bundle, save_bundle
from segqc.calibration import choose_threshold
from segqc.config import PipelineConfig
from segqc.data.dataset import SegData
from segqc.data.synthetic import make_synthetic
from segqc.errors import BundleError, SegQCError
from segqc.training import make_predictor, make_segmenter, quality_samples, train_bundle

TINY = dict(image_size=32, base_width=4, quality_width=4, seg_epochs=1, quality_epochs=1, device="cpu")


def tiny_config(**changes) -> PipelineConfig:
    return PipelineConfig(**{**TINY, **changes})


def train_tiny_bundle(out: Path, n: int = 40) -> Bundle:
    """A bundle trained in about a second: 32x32 synthetic images, width 4, one epoch each."""
    images, masks, ids = make_synthetic(n, 32, seed=5)
    data = SegData(images, masks, ids)
    cut = n * 3 // 4
    return train_bundle((data.subset(range(cut)), data.subset(range(cut, n))), None, tiny_config(), out,
                        progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tiny_data):
    train, test = tiny_data
    cfg = tiny_config()
    seg = make_segmenter(cfg, progress=False).fit(train)
    g = make_predictor("uncertainty", cfg, progress=False).fit(
        quality_samples(train, seg.predict(train.images))
    )
    return seg, g, test


@pytest.fixture(scope="module")
def bundle_dir(fitted, tmp_path_factory) -> Path:
    seg, g, _ = fitted
    return save_bundle(tmp_path_factory.mktemp("bundle") / "model", seg, g, image_size=32, threshold=0.65,
                       extra={"data": {"source": "test", "train_ids": ["a", "b"]}})  # fmt: skip


@pytest.fixture()
def copy(bundle_dir, tmp_path) -> Path:
    """A private copy of the bundle folder, for tests that damage it."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def edit_config(path: Path, fn) -> None:
    config = json.loads((path / "bundle.json").read_text())
    fn(config)
    (path / "bundle.json").write_text(json.dumps(config))


def test_round_trip_gives_identical_predictions(fitted, bundle_dir):
    seg, g, test = fitted
    before_seg = seg.predict(test.images)
    before_q = g.predict(quality_samples(test, before_seg))
    bundle = load_bundle(bundle_dir, device="cpu")
    after_seg = bundle.segmenter.predict(test.images)
    after_q = bundle.predictor.predict(quality_samples(test, after_seg))
    np.testing.assert_array_equal(after_seg.probs, before_seg.probs)
    np.testing.assert_array_equal(after_seg.uncertainty, before_seg.uncertainty)
    np.testing.assert_array_equal(after_q, before_q)
    assert bundle.threshold == 0.65 and bundle.image_size == 32 and bundle.method == "msp"


def test_bundle_files_and_config(bundle_dir):
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "f.safetensors", "g.safetensors"]
    config = json.loads((bundle_dir / "bundle.json").read_text())
    assert config["format"] == BUNDLE_FORMAT and config["predictor"] == "uncertainty"
    assert config["threshold_rule"]["kind"] == "fixed"
    assert set(config["sha256"]) == {"f.safetensors", "g.safetensors"}
    assert config["segmenter"]["params"]["base_width"] == 4 and "torch" in config["versions"]
    assert not list(bundle_dir.glob("*.tmp")) and not list(bundle_dir.glob(".*"))


def test_metadata_is_json_and_has_no_id_lists(bundle_dir):
    meta = load_bundle(bundle_dir).metadata()
    json.dumps(meta)
    assert meta["data"] == {"source": "test", "n_train": 2}
    assert meta["threshold"] == 0.65 and meta["method"] == "msp" and meta["format"] == BUNDLE_FORMAT


def test_tampered_weights_are_refused(copy):
    raw = bytearray((copy / "g.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (copy / "g.safetensors").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (("threshold",), "'threshold'"),
        (("segmenter", "mean"), "'segmenter.mean'"),
        (("predictor_config", "z_mean"), "'predictor_config.z_mean'"),
        (("sha256", "f.safetensors"), "f.safetensors"),
    ],
)
def test_missing_key_is_named(copy, path, shown):
    def drop(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    edit_config(copy, drop)
    with pytest.raises(BundleError, match="lacks the key") as err:
        load_bundle(copy)
    assert shown in str(err.value)


def test_weights_of_another_shape_are_refused(copy):
    edit_config(copy, lambda c: c["segmenter"]["params"].update(base_width=8))
    with pytest.raises(BundleError, match="do not match the network"):
        load_bundle(copy)


def test_predictor_shape_mismatch_is_refused(copy):
    edit_config(copy, lambda c: c["predictor_config"]["params"].update(base_width=8))
    with pytest.raises(BundleError, match="g.safetensors: weights do not match"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(format=BUNDLE_FORMAT + 1), "format 2 is not supported"),
        (lambda c: c.update(method="nope"), "unknown uncertainty method 'nope'"),
        (lambda c: c.update(predictor="nope"), "unknown quality predictor 'nope'"),
        (lambda c: c.update(threshold=1.5), "threshold"),
        (lambda c: c.update(image_size=30), "image_size"),
        (lambda c: c["segmenter"]["params"].update(bogus=1), "invalid 'segmenter' settings"),
    ],
)
def test_bad_config_values(copy, edit, message):
    edit_config(copy, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_unreadable_or_missing_files(copy, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="bundle.json not found"):
        load_bundle(tmp_path)
    (copy / "f.safetensors").unlink()
    with pytest.raises(BundleError, match="f.safetensors: weight file not found"):
        load_bundle(copy)
    (copy / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot read bundle config"):
        load_bundle(copy)


def test_garbage_weights_with_matching_checksum(copy):
    """Someone rewrote both the weights and the checksum: the safetensors reader still refuses junk."""
    (copy / "f.safetensors").write_bytes(b"junk" * 10)
    import hashlib

    edit_config(
        copy, lambda c: c["sha256"].update({"f.safetensors": hashlib.sha256(b"junk" * 10).hexdigest()})
    )
    with pytest.raises(BundleError, match="cannot read weights"):
        load_bundle(copy)


def test_choose_threshold_hand_computed():
    predicted = np.array([0.1, 0.5, 0.3, 0.9, 0.6])
    true = np.array([0.2, 0.8, 0.5, 0.9, 0.65])  # failures (< 0.7): items 0, 2, 4
    chosen = choose_threshold(predicted, true, 2 / 3, 0.7)
    assert chosen["threshold"] == pytest.approx(0.3001)
    assert chosen["achieved_recall"] == pytest.approx(2 / 3) and chosen["referral_rate"] == pytest.approx(0.4)
    chosen = choose_threshold(predicted, true, 1.0, 0.7)
    assert chosen["threshold"] == pytest.approx(0.6001) and chosen["referral_rate"] == pytest.approx(0.8)
    with pytest.raises(SegQCError, match="none of the 2 held-out images is a failure"):
        choose_threshold(np.array([0.5, 0.6]), np.array([0.9, 0.8]), 0.9, 0.7)


def test_train_bundle_fixed_threshold_with_test_metrics(tmp_path):
    bundle = train_tiny_bundle(tmp_path / "m")
    assert bundle.threshold == 0.7 and bundle.config["threshold_rule"]["description"] == "fixed 0.7"
    metrics = bundle.config["test_metrics"]
    assert metrics["segmentation"]["n_images"] == 10 and 0 <= metrics["referral"]["referral_rate"] <= 1
    assert len(bundle.config["data"]["train_ids"]) == 30 and bundle.metadata()["data"]["n_test"] == 10
    assert load_bundle(tmp_path / "m").config == bundle.config


def test_target_failure_recall_is_met_on_the_held_out_images(tmp_path):
    recall = 0.8
    images, masks, ids = make_synthetic(50, 32, seed=11)
    data = SegData(images, masks, ids)
    bundle = train_bundle(
        data, None, tiny_config(), tmp_path / "m", target_failure_recall=recall, progress=False
    )
    rule = bundle.config["threshold_rule"]
    assert rule["kind"] == "target_failure_recall" and rule["target_recall"] == recall
    assert rule["threshold"] == bundle.threshold and rule["achieved_recall"] >= recall
    held = bundle.config["data"]["calibration_ids"]
    assert len(held) == 10 and not set(held) & set(bundle.config["data"]["train_ids"])
    # Recompute independently with the saved models on the held-out ids.
    cal = data.select(held)
    samples = quality_samples(cal, bundle.segmenter.predict(cal.images))
    predicted = bundle.predictor.predict(samples)
    failures = samples.jaccard < 0.7
    assert failures.any()
    assert (predicted[failures] < bundle.threshold).mean() >= recall
    assert rule["referral_rate"] == pytest.approx((predicted < bundle.threshold).mean())


def test_target_failure_recall_out_of_range(tmp_path):
    with pytest.raises(SegQCError, match="target failure recall"):
        train_bundle(None, None, tiny_config(), tmp_path / "m", target_failure_recall=1.5, progress=False)


def test_train_bundle_protocol_without_test_split(tmp_path, monkeypatch):
    from segqc.data.synthetic import write_synthetic

    monkeypatch.setenv("SEGQC_CACHE", str(tmp_path / "cache"))

    ids = sorted(write_synthetic(tmp_path / "d", 12, 32, seed=4))
    (tmp_path / "split.json").write_text(json.dumps({"train": ids[:10]}))  # no "test" list
    split = tmp_path / "split.json"
    bundle = train_bundle(tmp_path / "d", split, tiny_config(), tmp_path / "m", progress=False)
    assert "test_metrics" not in bundle.config and bundle.config["data"]["train_ids"] == ids[:10]
    assert bundle.metadata()["data"]["n_train"] == 10 and "n_test" not in bundle.metadata()["data"]
