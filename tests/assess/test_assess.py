"""assess_images on arrays (segqc.assess.assess)."""

from __future__ import annotations

import numpy as np
import pytest

from segqc.assess import Assessment, assess_images
from segqc.errors import DataError
from tests.assess.conftest import accept_all_gate
from tests.test_bundle import train_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_tiny_bundle(tmp_path_factory.mktemp("assess") / "model")


def test_outputs_at_each_inputs_own_resolution(bundle):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(32, 32, 3), (45, 70, 3), (300, 17, 3)]
    ]
    out = assess_images(bundle, images, ["a", "b", "c"], batch_size=2)
    assert [a.id for a in out] == ["a", "b", "c"]
    for a, image in zip(out, images):
        assert isinstance(a, Assessment)
        assert (
            a.mask.shape == image.shape[:2] and a.mask.dtype == np.uint8 and set(np.unique(a.mask)) <= {0, 1}
        )
        assert a.uncertainty.shape == image.shape[:2] and a.uncertainty.dtype == np.float32
        assert 0.0 <= a.predicted_jaccard <= 1.0 and a.threshold == bundle.threshold
        assert a.decision == ("refer" if a.predicted_jaccard < a.threshold else "pass")
        assert a.to_dict()["decision"] == a.decision and np.isfinite(a.mean_uncertainty)


def test_same_result_as_the_models_at_model_resolution(bundle):
    """At the model's own size there is no resizing: mask and map are f's, quality is g's."""
    from segqc.types import QualitySamples

    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pred = bundle.segmenter.predict(images)
    q = bundle.predictor.predict(QualitySamples(images, pred.mask, pred.uncertainty))
    out = assess_images(bundle, list(images))
    assert [a.id for a in out] == ["0", "1", "2"]
    for i, a in enumerate(out):
        np.testing.assert_array_equal(a.mask, pred.mask[i])
        np.testing.assert_allclose(a.uncertainty, pred.uncertainty[i], atol=1e-6)
        assert a.predicted_jaccard == pytest.approx(q[i], abs=1e-6)
        assert a.mean_uncertainty == pytest.approx(pred.uncertainty[i].mean(), abs=1e-6)


def test_batch_size_does_not_change_results(bundle):
    images = list(np.random.default_rng(2).integers(0, 256, (5, 40, 24, 3), dtype=np.uint8))
    one, many = assess_images(bundle, images, batch_size=1), assess_images(bundle, images, batch_size=5)
    for a, b in zip(one, many):
        assert a.predicted_jaccard == pytest.approx(b.predicted_jaccard, abs=1e-5)
        np.testing.assert_allclose(a.uncertainty, b.uncertainty, atol=1e-5)


def test_bad_arrays_are_data_errors(bundle):
    assert assess_images(bundle, []) == []
    with pytest.raises(DataError, match="expected an \\(H, W, 3\\) uint8"):
        assess_images(bundle, [np.zeros((10, 10), np.uint8)])
    with pytest.raises(DataError, match="uint8"):
        assess_images(bundle, [np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(DataError, match="no pixels"):
        assess_images(bundle, [np.zeros((0, 10, 3), np.uint8)])
    with pytest.raises(DataError, match="2 ids"):
        assess_images(bundle, [np.zeros((8, 8, 3), np.uint8)], ["a", "b"])


class _NonFinite:
    """A model whose g (or f's map) gives NaN or infinity: the gate must refer, never pass."""

    backend, config, threshold, image_size, method, uncertainty_vmax = "test", {}, 0.7, 16, "msp", None

    def __init__(self, quality: float, uncertainty: float = 0.0, probs: float = 0.9) -> None:
        self.quality, self.uncertainty, self.probs = quality, uncertainty, probs
        self.gate = accept_all_gate(self.threshold)

    def segment(self, images):
        from segqc.types import SegPrediction

        n, s = len(images), images.shape[1]
        return SegPrediction(
            np.full((n, s, s), self.probs, np.float32),
            np.ones((n, s, s), np.uint8),
            np.full((n, s, s), self.uncertainty, np.float32),
        )

    def predict_quality(self, samples):
        return np.full(len(samples), self.quality)


@pytest.mark.parametrize(("quality", "uncertainty"), [(np.nan, 0.0), (np.inf, 0.0), (0.95, np.nan)])
def test_non_finite_values_are_referred(quality, uncertainty):
    image = np.zeros((20, 20, 3), np.uint8)
    (result,) = assess_images(_NonFinite(quality, uncertainty), [image])
    assert result.decision == "refer" and result.reason == "not finite" and result.jaccard_lower is None
    (control,) = assess_images(_NonFinite(0.95), [image])
    assert control.decision == "pass" and control.reason == "ok"
    assert control.jaccard_lower == pytest.approx(0.85)


def test_non_finite_probabilities_are_referred_even_with_a_finite_map_and_quality():
    # f's probabilities were not checked: NaN probabilities (an empty mask) with a finite map passed.
    image = np.zeros((20, 20, 3), np.uint8)
    (result,) = assess_images(_NonFinite(0.95, 0.0, probs=np.nan), [image])
    assert result.decision == "refer" and result.reason == "not finite" and result.jaccard_lower is None
