"""segqc.recalibrate: another referral threshold without training, as training with it would give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from segqc.cli import cli
from segqc.config import PipelineConfig
from segqc.data.synthetic import write_synthetic
from segqc.errors import SegQCError
from segqc.recalibrate import recalibrate_bundle
from segqc.training import train_bundle

TINY = dict(image_size=32, base_width=4, quality_width=4, seg_epochs=2, quality_epochs=2, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A data folder with its protocol, and two bundles trained on it alike but for the threshold:
    ``fixed`` (0.7) and ``r90`` (--target-failure-recall 0.9)."""
    root = tmp_path_factory.mktemp("recalibrate")
    ids = sorted(write_synthetic(root / "d", 60, 32, seed=2))
    (root / "split.json").write_text(json.dumps({"train": ids[:45], "test": ids[45:]}))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the two trainings must give the same f and g bit for bit
    try:
        cfg = PipelineConfig(**TINY)
        for name, target in (("fixed", None), ("r90", 0.9)):
            train_bundle(
                root / "d", root / "split.json", cfg, root / name, target_failure_recall=target,
                progress=False, force=True,
            )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return {"data": root / "d", "protocol": root / "split.json", "fixed": root / "fixed", "r90": root / "r90"}


def _config(folder: Path) -> dict:
    return json.loads((folder / "bundle.json").read_text())


def test_recalibrating_gives_the_bundle_training_with_that_target_gives(trained, tmp_path, one_thread):
    source = (trained["fixed"] / "bundle.json").read_bytes()
    out = recalibrate_bundle(
        trained["fixed"], trained["data"], trained["protocol"], tmp_path / "m", target_failure_recall=0.9,
        force=True,
    )  # fmt: skip
    fixed, r90, new = _config(trained["fixed"]), _config(trained["r90"]), _config(tmp_path / "m")
    assert (trained["fixed"] / "bundle.json").read_bytes() == source  # the model given is not changed
    for name in ("f.safetensors", "g.safetensors"):  # same f and g as the model given
        assert (tmp_path / "m" / name).read_bytes() == (trained["fixed"] / name).read_bytes()
        assert (trained["r90"] / name).read_bytes() == (trained["fixed"] / name).read_bytes()
    # the threshold, its rule and the gate's fitness are those of the training with the target
    assert new["threshold"] == r90["threshold"] == out.threshold and new["threshold"] != fixed["threshold"]
    assert new["threshold_rule"] == r90["threshold_rule"]
    assert new["gate"] == r90["gate"]
    assert new["test_metrics"] == r90["test_metrics"]  # the test split was found again and scored
    assert new["recalibrated"]["from_manifest_sha256"] == fixed["manifest_sha256"]
    assert new["recalibrated"]["previous_threshold"] == 0.7
    assert new["data"] == fixed["data"] and new["pipeline"] == fixed["pipeline"]

    # and back: no target is the fixed threshold, with the fixed model's gate
    back = recalibrate_bundle(
        tmp_path / "m", trained["data"], trained["protocol"], tmp_path / "back", target_failure_recall=None,
        force=True,
    )  # fmt: skip
    assert back.threshold == 0.7 and _config(tmp_path / "back")["gate"] == fixed["gate"]
    assert _config(tmp_path / "back")["threshold_rule"] == fixed["threshold_rule"]


def test_a_confidence_is_chosen_with_its_bound(trained, tmp_path, one_thread):
    bundle = recalibrate_bundle(
        trained["fixed"], trained["data"], trained["protocol"], tmp_path / "m", target_failure_recall=0.5,
        confidence=0.6, force=True,
    )  # fmt: skip
    rule = bundle.config["threshold_rule"]
    assert rule["kind"] == "guaranteed_failure_recall" and rule["confidence"] == 0.6
    assert rule["threshold"] == bundle.threshold and rule["recall_lower_bound"] >= 0.5


def test_other_data_than_the_model_was_trained_on_is_refused(trained, tmp_path):
    ids = json.loads(trained["protocol"].read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"train": ids["train"][1:], "test": ids["test"]}))
    with pytest.raises(SegQCError, match="held-out images of this data are not the model's"):
        recalibrate_bundle(
            trained["fixed"], trained["data"], other, tmp_path / "m", target_failure_recall=0.9
        )

    # the same ids with another truth: one held-out mask redrawn
    held = _config(trained["fixed"])["data"]["calibration_ids"][0]
    relabelled = tmp_path / "d"
    relabelled.mkdir()
    for sub in ("images", "masks"):
        (relabelled / sub).mkdir()
        for path in (trained["data"] / sub).iterdir():
            (relabelled / sub / path.name).write_bytes(path.read_bytes())
    mask = next((relabelled / "masks").glob(f"{held}*"))
    Image.fromarray(255 - np.asarray(Image.open(mask))).save(mask)
    with pytest.raises(SegQCError, match="masks of the model's held-out images differ"):
        recalibrate_bundle(
            trained["fixed"], relabelled, trained["protocol"], tmp_path / "m", target_failure_recall=0.9
        )
    assert not (tmp_path / "m").exists()


def test_the_model_folder_itself_is_refused_as_out(trained, tmp_path):
    (tmp_path / "link").symlink_to(trained["fixed"])
    before = sorted(p.name for p in trained["fixed"].iterdir())
    for out in (
        trained["fixed"],
        Path(f"{trained['fixed']}/"),
        trained["fixed"] / ".." / trained["fixed"].name,
        tmp_path / "link",
        trained["fixed"] / "sub",  # inside it: the model folder would change
        tmp_path / "link" / "sub" / "deeper",
    ):
        with pytest.raises(SegQCError, match="another folder than the model"):
            recalibrate_bundle(
                trained["fixed"], trained["data"], trained["protocol"], out, target_failure_recall=0.9
            )
    assert sorted(p.name for p in trained["fixed"].iterdir()) == before


def test_an_unfit_model_is_not_written_without_force(trained, tmp_path, monkeypatch):
    # g of two epochs on 36 images is near constant: unfit at any threshold, so only --force writes it
    assert _config(trained["fixed"])["gate"]["fitness"]["fit"] is False
    with pytest.raises(SegQCError, match="not fit to gate"):
        recalibrate_bundle(
            trained["fixed"], trained["data"], trained["protocol"], tmp_path / "m", target_failure_recall=0.9
        )
    assert not (tmp_path / "m").exists()


def test_recalibrate_command(trained, tmp_path):
    model = ["recalibrate", "--model", str(trained["fixed"]), "--device", "cpu"]
    args = [*model, "--data", str(trained["data"]), "--protocol", str(trained["protocol"])]
    result = CliRunner().invoke(
        cli, [*args, "--out", str(tmp_path / "m"), "--target-failure-recall", "0.9", "--force"]
    )
    assert result.exit_code == 0, result.output
    assert "threshold 0.7 -> " in result.output and "failures caught" in result.output
    assert _config(tmp_path / "m")["threshold"] == _config(trained["r90"])["threshold"]

    usage = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "u"), "--confidence", "0.9"])
    assert usage.exit_code == 2 and "--confidence needs --target-failure-recall" in usage.output
    unfit = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "n"), "--target-failure-recall", "0.9"])
    assert unfit.exit_code == 1 and "error:" in unfit.output and "not fit to gate" in unfit.output
    assert "Traceback" not in unfit.output and not (tmp_path / "n").exists()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c.__setitem__("data", ["not", "an", "object"]),
        lambda c: c.__setitem__("data", "d"),
        lambda c: c["data"].__setitem__("calibration_ids", [["x"], *c["data"]["calibration_ids"][1:]]),
        lambda c: c["data"].__setitem__("calibration_ids", [{"id": 1}]),
    ],
)
def test_a_bundle_json_with_a_malformed_data_record_is_refused(trained, tmp_path, tamper):
    from segqc.integrity import seal

    model = tmp_path / "model"
    model.mkdir()
    for path in trained["fixed"].iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    config = _config(model)
    tamper(config)
    (model / "bundle.json").write_text(json.dumps(seal(config)))  # checksum made to match: loads
    with pytest.raises(SegQCError, match="does not record its training seed and held-out image ids"):
        recalibrate_bundle(
            model, trained["data"], trained["protocol"], tmp_path / "m", target_failure_recall=0.9
        )
    assert not (tmp_path / "m").exists()


def test_a_model_trained_with_another_failure_jaccard_is_recalibrated_with_it(trained, tmp_path, one_thread):
    # bundle.json's failure_jaccard is the Jaccard training counted failures below: recalibrate counts
    # the held-out failures with it, and without a target goes back to it
    cfg = PipelineConfig(**{**TINY, "threshold": 0.6})
    model = train_bundle(
        trained["data"], trained["protocol"], cfg, tmp_path / "t", progress=False, force=True
    )
    assert model.config["failure_jaccard"] == 0.6 == model.threshold
    back = recalibrate_bundle(
        tmp_path / "t", trained["data"], trained["protocol"], tmp_path / "m", target_failure_recall=None,
        force=True,
    )  # fmt: skip
    assert back.threshold == 0.6 and back.config["failure_jaccard"] == 0.6
    assert back.config["gate"] == model.config["gate"]
    assert back.config["test_metrics"] == model.config["test_metrics"]


def test_a_failure_jaccard_other_than_training_counted_with_is_refused(trained, tmp_path):
    from segqc.integrity import seal

    model = tmp_path / "model"
    model.mkdir()
    for path in trained["fixed"].iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    config = _config(model)
    config["pipeline"]["threshold"] = 0.6  # as bundles trained with it before failure_jaccard followed it
    (model / "bundle.json").write_text(json.dumps(seal(config)))
    with pytest.raises(SegQCError, match="failure_jaccard 0.7 is not the 0.6"):
        recalibrate_bundle(
            model, trained["data"], trained["protocol"], tmp_path / "m", target_failure_recall=0.9
        )
    assert not (tmp_path / "m").exists()


def test_out_is_written_whole_or_not_at_all(trained, tmp_path, monkeypatch, one_thread):
    import segqc.bundle

    # an existing bundle (or anything else) at --out is never replaced
    kept = tmp_path / "kept"
    kept.mkdir()
    for path in trained["r90"].iterdir():
        (kept / path.name).write_bytes(path.read_bytes())
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    with pytest.raises(SegQCError, match="exists and is not an empty folder"):
        recalibrate_bundle(
            trained["fixed"], trained["data"], trained["protocol"], kept, target_failure_recall=None
        )
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before

    # interrupted while writing: no --out, half-written or not, and nothing left beside it
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segqc.bundle, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recalibrate_bundle(
            trained["fixed"], trained["data"], trained["protocol"], tmp_path / "new" / "m",
            target_failure_recall=0.9, force=True,
        )  # fmt: skip
    assert list((tmp_path / "new").iterdir()) == []
    monkeypatch.undo()

    (tmp_path / "empty").mkdir()  # an empty folder is fine
    bundle = recalibrate_bundle(
        trained["fixed"], trained["data"], trained["protocol"], tmp_path / "empty", target_failure_recall=0.9,
        force=True,
    )  # fmt: skip
    assert bundle.path == tmp_path / "empty" and bundle.threshold == _config(trained["r90"])["threshold"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "kept", "new"]


def test_a_trusted_key_checks_the_models_signature_first(trained, tmp_path):
    pytest.importorskip("cryptography")
    from segqc.integrity import generate_key, seal, sign_model

    private, public = generate_key(tmp_path / "key.pem")
    _, other = generate_key(tmp_path / "other.pem")
    model = tmp_path / "model"
    model.mkdir()
    for path in trained["fixed"].iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    sign_model(model, private)
    args = ["recalibrate", "--model", str(model), "--device", "cpu", "--data", str(trained["data"])]
    args += ["--protocol", str(trained["protocol"]), "--target-failure-recall", "0.9", "--force"]
    result = CliRunner().invoke(cli, [*args, "--trusted-key", str(public), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert _config(tmp_path / "m")["recalibrated"]["signature_verified"] is True
    assert not (tmp_path / "m" / "signature.json").exists()  # OUT is another model: not signed

    refused = CliRunner().invoke(cli, [*args, "--trusted-key", str(other), "--out", str(tmp_path / "n")])
    assert refused.exit_code == 1 and "signature does not verify" in refused.output
    config = _config(model)  # changed after signing, its checksum made to match
    config["gate"]["conformal"]["margin"] = 0.0
    (model / "bundle.json").write_text(json.dumps(seal(config)))
    refused = CliRunner().invoke(cli, [*args, "--trusted-key", str(public), "--out", str(tmp_path / "n")])
    assert refused.exit_code == 1 and "signature does not verify" in refused.output
    assert not (tmp_path / "n").exists()


def test_a_threshold_no_model_loads_with_is_refused_before_writing():
    from segqc.calibration import referral_threshold

    # the lowest-scored failure predicted 0: half the failures are referred from 0.0001, a threshold
    # below segqc.model.MIN_THRESHOLD that save_bundle wrote and load_bundle then refused
    predicted, true = np.array([0.0, 0.5, 0.9]), np.array([0.1, 0.5, 0.9])
    with pytest.raises(SegQCError, match="below 0.01"):
        referral_threshold(predicted, true, 0.7, 0.5)
    assert referral_threshold(predicted, true, 0.7, 1.0)[0] == 0.5001
