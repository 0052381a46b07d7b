"""The out-of-distribution detector (segqc.ood): statistics, Mahalanobis distance, conformal limit."""

from __future__ import annotations

import numpy as np
import pytest

from segqc.data.probes import make_probes
from segqc.data.synthetic import make_synthetic
from segqc.ood import FEATURES, OODDetector, image_features


def _features(n: int, seed: int, size: int = 48) -> np.ndarray:
    images, masks, _ = make_synthetic(n, size, seed=seed)
    uncertainty = np.random.default_rng(seed).random((n, size, size)).astype(np.float32) * 0.2
    return image_features(images, masks, uncertainty)


@pytest.fixture(scope="module")
def detector() -> OODDetector:
    return OODDetector.fit(_features(300, seed=0), image_size=48).calibrate(
        _features(200, seed=1), alpha=0.02
    )


def test_features_are_finite_and_named():
    features = _features(5, seed=2)
    assert features.shape == (5, len(FEATURES)) and np.isfinite(features).all()


def test_in_distribution_images_are_rarely_flagged(detector):
    """The conformal limit holds the false referral rate near alpha on new in-distribution images."""
    flagged = detector.flag(_features(400, seed=3)).mean()
    assert flagged <= 0.06  # alpha 0.02; binomial spread on 400 images
    assert detector.calibration["n_heldout"] == 200 and detector.calibration["guaranteed"]


def test_every_probe_is_flagged(detector):
    probes = make_probes(48)
    images = np.stack(list(probes.values()))
    n, s = len(images), images.shape[1]
    features = image_features(images, np.zeros((n, s, s), np.uint8), np.zeros((n, s, s), np.float32))
    flagged = dict(zip(probes, detector.flag(features)))
    assert all(flagged.values()), [k for k, v in flagged.items() if not v]


def test_non_finite_features_are_flagged(detector):
    features = _features(20, seed=4)
    typical = features[np.argmin(detector.distance(features))]
    pair = np.stack([typical, typical])
    pair[0, 3] = np.nan
    assert detector.flag(pair).tolist() == [True, False]


def test_config_round_trip_and_validation(detector):
    config = detector.to_config()
    again = OODDetector.from_config(config)
    features = _features(8, seed=5)
    np.testing.assert_allclose(again.distance(features), detector.distance(features))
    assert again.limit == detector.limit and again.image_size == 48
    for change, message in [
        ({"kind": "other"}, "not a"),
        ({"features": ["a"]}, "not a"),
        ({"precision": [[1.0]]}, "center/scale/precision"),
        ({"scale": [-1.0] * len(FEATURES)}, "positive"),
        ({"limit": float("inf")}, "limit"),
        ({"limit": True}, "limit"),
        ({"alpha": 0.9}, "alpha"),
        ({"image_size": "48"}, "image_size"),
    ]:
        with pytest.raises(ValueError, match=message):
            OODDetector.from_config({**config, **change})
    asymmetric = np.array(config["precision"])
    asymmetric[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        OODDetector.from_config({**config, "precision": asymmetric.tolist()})


def test_too_few_held_out_images_are_recorded():
    small = OODDetector.fit(_features(40, seed=6)).calibrate(_features(10, seed=7), alpha=0.01)
    assert not small.calibration["guaranteed"] and small.calibration["min_heldout_for_alpha"] == 99
    assert small.limit == pytest.approx(small.distance(_features(10, seed=7)).max())
