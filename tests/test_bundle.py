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
from segqc.gate import fit_gate
from segqc.integrity import seal
from segqc.training import make_predictor, make_segmenter, quality_samples, train_bundle

TINY = dict(image_size=32, base_width=4, quality_width=4, seg_epochs=1, quality_epochs=1, device="cpu")


def tiny_config(**changes) -> PipelineConfig:
    return PipelineConfig(**{**TINY, **changes})


def synthetic_split(n: int = 40) -> tuple[SegData, SegData]:
    """``n`` synthetic 32x32 images (seed 5): the first three quarters to train on, the rest to test."""
    images, masks, ids = make_synthetic(n, 32, seed=5)
    data = SegData(images, masks, ids)
    cut = n * 3 // 4
    return data.subset(range(cut)), data.subset(range(cut, n))


def train_tiny_bundle(out: Path, n: int = 40) -> Bundle:
    """A bundle trained in about a second: 32x32 synthetic images, width 4, one epoch each."""
    # One epoch each leaves g near constant, so the model fails its fitness check: forced, since the
    # tests that use it are about files and mechanics, not about a useful g.
    return train_bundle(synthetic_split(n), None, tiny_config(), out, progress=False, force=True)


@pytest.fixture(scope="module")
def fitted(tiny_data):
    train, test = tiny_data
    cfg = tiny_config()
    seg = make_segmenter(cfg, progress=False).fit(train)
    g = make_predictor("uncertainty", cfg, progress=False).fit(
        quality_samples(train, seg.predict(train.images))
    )
    return seg, g, test


def tiny_gate(seg, g, train: SegData, heldout: SegData, threshold: float) -> dict:
    """A gate learned like ``train_bundle`` does, on the given training and held-out images."""
    train_samples = quality_samples(train, seg.predict(train.images))
    held_samples = quality_samples(heldout, seg.predict(heldout.images))
    return fit_gate(train_samples, held_samples, g.predict(held_samples), threshold, 0.7).to_config()


@pytest.fixture(scope="module")
def bundle_dir(fitted, tiny_data, tmp_path_factory) -> Path:
    seg, g, test = fitted
    gate = tiny_gate(seg, g, tiny_data[0], test, 0.65)
    return save_bundle(tmp_path_factory.mktemp("bundle") / "model", seg, g, image_size=32, threshold=0.65,
                       gate=gate, extra={"data": {"source": "test", "train_ids": ["a", "b"]}})  # fmt: skip


@pytest.fixture()
def copy(bundle_dir, tmp_path) -> Path:
    """A private copy of the bundle folder, for tests that damage it."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def edit_config(path: Path, fn, *, reseal: bool = True) -> None:
    """Change bundle.json; by default recompute its checksum too, as a deliberate tamperer would, so
    that the test reaches the check of the field itself."""
    config = json.loads((path / "bundle.json").read_text())
    fn(config)
    (path / "bundle.json").write_text(json.dumps(seal(config) if reseal else config))


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
        (lambda c: c.update(format=BUNDLE_FORMAT + 1), f"format {BUNDLE_FORMAT + 1} is not supported"),
        (lambda c: c.update(method="nope"), "unknown uncertainty method 'nope'"),
        (lambda c: c.update(predictor="nope"), "unknown quality predictor 'nope'"),
        (lambda c: c.update(threshold=1.5), "threshold"),
        (lambda c: c.update(threshold=1e-300), "threshold"),
        (lambda c: c.update(threshold=1.0), "threshold"),
        (lambda c: c.update(threshold="0.7"), "threshold"),
        (lambda c: c.update(image_size=30), "image_size"),
        (lambda c: c.update(image_size=10**9), "image_size"),
        (lambda c: c.update(image_size=64), "trained with 32"),
        (lambda c: c.update(method="mcdropout"), "'method' and 'segmenter.params.method' disagree"),
        (lambda c: c["segmenter"].update(mean=[0.5]), "mean must be 3 finite numbers"),
        (lambda c: c["segmenter"].update(std=[0.2, 0.0, 0.2]), "std must be 3 finite numbers > 0"),
        (lambda c: c["segmenter"].update(std=["a", 1, 1]), "std must be 3 finite numbers > 0"),
        (lambda c: c["gate"]["ood"].update(limit=-1), "ood.limit"),
        (lambda c: c["gate"]["ood"].update(center=[0.0]), "center/scale/precision"),
        (lambda c: c["gate"]["conformal"].update(margin="x"), "conformal.margin"),
        (lambda c: c.pop("gate"), "lacks the key 'gate'"),
        (lambda c: c["segmenter"]["params"].update(bogus=1), "invalid 'segmenter' settings"),
        # The ONNX backend seeds its read-outs with int(pipeline.seed): a traceback before it was checked.
        (lambda c: c.update(pipeline={"seed": "abc"}), "'pipeline.seed' must be a non-negative integer"),
        (lambda c: c.update(pipeline={"seed": -1}), "'pipeline.seed' must be a non-negative integer"),
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
    data = bundle.config["data"]
    assert len(data["train_ids"]) == 24 and len(data["calibration_ids"]) == 6  # 20 % held out for the gate
    assert bundle.metadata()["data"]["n_test"] == 10
    assert load_bundle(tmp_path / "m").config == bundle.config


def test_target_failure_recall_is_met_on_the_held_out_images(tmp_path):
    recall = 0.8
    images, masks, ids = make_synthetic(50, 32, seed=11)
    data = SegData(images, masks, ids)
    bundle = train_bundle(
        data, None, tiny_config(), tmp_path / "m", target_failure_recall=recall, progress=False, force=True
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
    bundle = train_bundle(tmp_path / "d", split, tiny_config(), tmp_path / "m", progress=False, force=True)
    data = bundle.config["data"]
    assert (
        "test_metrics" not in bundle.config
        and sorted(data["train_ids"] + data["calibration_ids"]) == ids[:10]
    )
    assert bundle.metadata()["data"]["n_train"] == 8 and "n_test" not in bundle.metadata()["data"]


def test_an_edited_manifest_is_refused_by_its_checksum(copy):
    edit_config(copy, lambda c: c.update(threshold=0.01), reseal=False)
    with pytest.raises(BundleError, match="manifest checksum mismatch"):
        load_bundle(copy)


def test_a_missing_cuda_device_is_the_machines_error_not_the_models(bundle_dir, monkeypatch):
    import torch

    from segqc.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device is available") as caught:
        load_bundle(bundle_dir, device="cuda")
    assert not isinstance(caught.value, BundleError) and "self-test" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"format": 2, "threshold": ' + "1" * 5000 + "}", "\ud800"],
)
def test_hostile_json_is_a_bundle_error(copy, text):
    (copy / "bundle.json").write_text(text, errors="surrogatepass")
    with pytest.raises(BundleError):
        load_bundle(copy)


def test_non_finite_weights_are_refused_even_with_matching_checksums(copy):
    import hashlib

    from safetensors.torch import load, save

    tensors = load((copy / "g.safetensors").read_bytes())
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    blob = save(tensors)
    (copy / "g.safetensors").write_bytes(blob)
    edit_config(copy, lambda c: c["sha256"].update({"g.safetensors": hashlib.sha256(blob).hexdigest()}))
    with pytest.raises(BundleError, match="non-finite"):
        load_bundle(copy)


def test_unfit_model_is_refused_unless_forced(tmp_path):
    """One epoch leaves g constant: train_bundle refuses to write it, or writes it marked unfit."""
    with pytest.raises(SegQCError, match="not fit to gate segmentations.*g is constant"):
        train_bundle(synthetic_split(), None, tiny_config(), tmp_path / "m", progress=False)
    assert not (tmp_path / "m" / "bundle.json").exists()
    bundle = train_tiny_bundle(tmp_path / "forced")
    assert not bundle.fit and bundle.config["gate"]["fitness"]["forced"] is True
    assert bundle.metadata()["gate"]["fitness"]["fit"] is False


def _saved_seconds(partial: Path) -> float:
    """The seconds the checkpoints under ``partial`` say their trainings have run."""
    from safetensors import safe_open

    total = 0.0
    for path in partial.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += float(f.metadata()["seconds"])
    return total


def _assert_compute_time_carries(bundle_dir: Path, earlier: float) -> None:
    """The bundle's compute time is its own run's plus what the stopped run's trainings had done."""
    timing = json.loads((bundle_dir / "bundle.json").read_text())["timing"]
    assert timing["compute_s"] - timing["train_s"] == pytest.approx(earlier, abs=1e-6)


def test_a_killed_train_resumes_its_trainings_to_the_same_bundle(one_thread, tmp_path, monkeypatch, capsys):
    import segqc.checkpoint as checkpoint

    split = synthetic_split()
    cfg = tiny_config(seg_epochs=2, quality_epochs=2)
    train_bundle(split, None, cfg, tmp_path / "a", progress=False, force=True)

    saves: list[str] = []
    real_save = checkpoint.TrainingCheckpoint.save

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saves.append(self.path.name)
        if len(saves) == 3:  # f's two epochs, then g's first
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint.TrainingCheckpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_bundle(split, None, cfg, tmp_path / "b", progress=False, force=True)
    partial = tmp_path / "b" / checkpoint.PARTIAL
    kept = sorted(str(p.relative_to(partial)) for p in partial.rglob("*.safetensors"))
    assert kept == ["f/train-0.safetensors", "g/train-0.safetensors"]
    assert not (tmp_path / "b" / "bundle.json").exists()
    earlier = _saved_seconds(partial)

    capsys.readouterr()
    train_bundle(split, None, cfg, tmp_path / "b", progress=False, force=True)
    _assert_compute_time_carries(tmp_path / "a", 0.0)
    _assert_compute_time_carries(tmp_path / "b", earlier)
    err = capsys.readouterr().err
    assert "train-0.safetensors: resumed after epoch 2" in err
    assert err.count("train-0.safetensors: resumed after epoch") == 2
    assert "resumed after epoch 1" in err
    for name in ("f.safetensors", "g.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not partial.exists()

    # killed again; rerun with other settings of g only: f resumes, g starts over
    saves.clear()
    with monkeypatch.context() as mp:
        mp.setattr(checkpoint.TrainingCheckpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_bundle(split, None, cfg, tmp_path / "c", progress=False, force=True)
    capsys.readouterr()
    train_bundle(split, None, cfg.replace(quality_epochs=3), tmp_path / "c", progress=False, force=True)
    err = capsys.readouterr().err
    assert "f/train-0.safetensors: resumed after epoch 2" in err
    assert "g/train-0.safetensors: was saved by another training" in err
    f_a, f_c = ((tmp_path / d / "f.safetensors").read_bytes() for d in "ac")
    assert f_a == f_c


def test_a_rerun_with_another_given_segmenter_does_not_resume_g(tmp_path, monkeypatch, capsys):
    """g trains on the given f's outputs: a rerun into the same folder with another given f (the same
    settings and data) must train g afresh, not resume the g trained on the first f's outputs."""
    import segqc.checkpoint as checkpoint

    split = synthetic_split()
    cfg = tiny_config(quality_epochs=2)
    first, second = (make_segmenter(tiny_config(seed=s), progress=False).fit(split[0]) for s in (0, 1))

    real_save = checkpoint.TrainingCheckpoint.save

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt  # g dies after its first epoch

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint.TrainingCheckpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_bundle(split, None, cfg, tmp_path / "b", segmenter=first, progress=False, force=True)
    capsys.readouterr()
    train_bundle(split, None, cfg, tmp_path / "b", segmenter=second, progress=False, force=True)
    assert "resumed" not in capsys.readouterr().err


def test_a_rerun_with_another_segqc_version_does_not_resume(tmp_path, monkeypatch, capsys):
    """A killed segqc train rerun after an upgrade (another loss or network, the same shapes) trains
    afresh, as an experiment's units do: the code is part of what a training depends on."""
    import segqc.checkpoint as checkpoint
    import segqc.training as training

    split = synthetic_split()
    real_save = checkpoint.TrainingCheckpoint.save

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt  # f dies after its first epoch

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint.TrainingCheckpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_bundle(split, None, tiny_config(seg_epochs=2), tmp_path, progress=False, force=True)
    monkeypatch.setattr(training, "__version__", "99.0")
    capsys.readouterr()
    train_bundle(split, None, tiny_config(seg_epochs=2), tmp_path, progress=False, force=True)
    assert "resumed" not in capsys.readouterr().err


def test_crossfit_trains_g_on_out_of_fold_predictions_and_ships_the_same_f(one_thread, tmp_path):
    from segqc.training import crossfit_folds, out_of_fold_predictions

    split = synthetic_split()
    cfg = tiny_config()
    paper = train_bundle(split, None, cfg, tmp_path / "paper", progress=False, force=True)
    crossfit = train_bundle(
        split, None, cfg, tmp_path / "cf", quality_train="crossfit", folds=2, progress=False, force=True
    )
    assert crossfit.config["quality_train"] == {"kind": "crossfit", "folds": 2}
    assert paper.config["quality_train"] == {"kind": "paper"}
    # the bundle's f is the one trained on every training image either way; g learned otherwise
    f_paper, f_cf = ((tmp_path / d / "f.safetensors").read_bytes() for d in ("paper", "cf"))
    g_paper, g_cf = ((tmp_path / d / "g.safetensors").read_bytes() for d in ("paper", "cf"))
    assert f_paper == f_cf and g_paper != g_cf

    # each image is predicted by an f that never trained on it
    train = split[0].subset(range(24))
    parts = crossfit_folds(len(train), 2, cfg.seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(24)) and not set(parts[0]) & set(parts[1])
    oof, carried = out_of_fold_predictions(cfg, train, parts, None, {}, progress=False)
    assert carried == 0.0  # nothing to resume without a folder
    for index in parts:
        rest = np.setdiff1d(np.arange(24), index)
        own = make_segmenter(cfg, progress=False).fit(train.subset(rest)).predict(train.images[index])
        np.testing.assert_array_equal(oof.mask[index], own.mask)
        np.testing.assert_array_equal(oof.uncertainty[index], own.uncertainty)


def test_crossfit_settings_are_checked(tmp_path, tiny_data):
    train, _ = tiny_data
    seg = make_segmenter(tiny_config(), progress=False).fit(train)
    with pytest.raises(SegQCError, match="given segmentation model is not trained here"):
        train_bundle(None, None, tiny_config(), tmp_path / "m", segmenter=seg, quality_train="crossfit")
    with pytest.raises(SegQCError, match="quality_train must be one of paper, crossfit"):
        train_bundle(None, None, tiny_config(), tmp_path / "m", quality_train="both")
    # the message explains the count: 5 images given, 4 left once the gate's are held out
    told = r"5 folds of 4 training images \(the 1 held out for the gate set aside\)"
    with pytest.raises(SegQCError, match=told):
        few = (train.subset(range(5)), None)  # 4 images left for f and g once the gate's are held out
        train_bundle(few, None, tiny_config(), tmp_path / "m", quality_train="crossfit", folds=5)


@pytest.mark.parametrize("folds", [2.5, "3", True])
def test_crossfit_folds_must_be_a_whole_number(tmp_path, tiny_data, folds):
    """2.5 used to run 2 folds and record 2.5 in bundle.json: the record of how g was trained lied."""
    with pytest.raises(SegQCError, match="folds must be a whole number"):
        train_bundle(tiny_data, None, tiny_config(), tmp_path / "m", quality_train="crossfit", folds=folds)
    assert not (tmp_path / "m").exists()


def test_a_killed_crossfit_train_resumes_every_fold_to_the_same_bundle(
    one_thread, tmp_path, monkeypatch, capsys
):
    import segqc.checkpoint as checkpoint

    split = synthetic_split(24)
    cfg = tiny_config(seg_epochs=2)
    kw = dict(quality_train="crossfit", folds=2, progress=False, force=True)
    train_bundle(split, None, cfg, tmp_path / "a", **kw)

    saves: list[str] = []
    real_save = checkpoint.TrainingCheckpoint.save

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saves.append(self.path.parent.name)
        if len(saves) == 5:  # f's two epochs, fold 1's two, then fold 2's first
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint.TrainingCheckpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_bundle(split, None, cfg, tmp_path / "b", **kw)
    assert saves == ["f", "f", "fold1of2", "fold1of2", "fold2of2"]
    earlier = _saved_seconds(tmp_path / "b" / checkpoint.PARTIAL)
    capsys.readouterr()
    train_bundle(split, None, cfg, tmp_path / "b", **kw)
    _assert_compute_time_carries(tmp_path / "b", earlier)  # f's and both folds' earlier seconds
    err = capsys.readouterr().err
    for resumed in ("f/train-0.safetensors: resumed after epoch 2",
                    "fold1of2/train-0.safetensors: resumed after epoch 2",
                    "fold2of2/train-0.safetensors: resumed after epoch 1"):  # fmt: skip
        assert resumed in err
    for name in ("f.safetensors", "g.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a, b = (json.loads((tmp_path / d / "bundle.json").read_text()) for d in "ab")
    assert a["gate"] == b["gate"] and a["uncertainty_vmax"] == b["uncertainty_vmax"]
    assert not (tmp_path / "b" / checkpoint.PARTIAL).exists()


def test_train_removes_only_the_progress_it_kept(tmp_path):
    """``OUT/.partial`` may hold a user's own files: a finished train removes its f, g and fold
    folders there, and the folder itself only when nothing else is left in it."""
    from segqc.checkpoint import PARTIAL
    from segqc.training import drop_progress

    partial = tmp_path / PARTIAL
    for name in ("f", "g", "fold1of3", "fold3of3"):
        (partial / name).mkdir(parents=True)
        (partial / name / "train-0.safetensors").write_bytes(b"progress")
    (partial / "notes").mkdir()
    (partial / "notes" / "mine.txt").write_text("keep me")
    drop_progress(partial)
    assert sorted(p.name for p in partial.iterdir()) == ["notes"]
    assert (partial / "notes" / "mine.txt").read_text() == "keep me"
    (partial / "notes" / "mine.txt").unlink()
    (partial / "notes").rmdir()
    (partial / "f").mkdir()
    drop_progress(partial)
    assert not partial.exists()
    drop_progress(partial)  # nothing there: nothing to do


def test_train_leaves_a_users_fold_like_names_and_links_in_partial(tmp_path):
    """Only ``foldKofN`` (K, N numbers) is train's: ``folder_of_photos`` or ``foldXofY`` is not, and a
    link named ``f`` or ``fold1of3`` goes with neither its target nor itself."""
    from segqc.checkpoint import PARTIAL
    from segqc.training import drop_progress

    partial = tmp_path / PARTIAL
    partial.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.png").write_bytes(b"png")
    mine = ["fold_of_", "foldXofY", "folder_of_photos", "foldof", "fold1of3.bak"]
    for name in mine:
        (partial / name).mkdir()
        (partial / name / "mine.txt").write_text("keep me")
    (partial / "f").symlink_to(data)
    (partial / "fold1of3").symlink_to(data)
    (partial / "g").write_text("a file")
    (partial / "fold2of3").mkdir()
    drop_progress(partial)
    assert sorted(p.name for p in partial.iterdir()) == sorted([*mine, "f", "fold1of3", "g"])
    assert (data / "image.png").read_bytes() == b"png"
