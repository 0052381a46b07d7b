"""assess_images on arrays, and the file helpers of `segqc predict` (inputs, ids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segqc.assess.folder import Assessment, assess_images, collect_inputs, unique_ids
from segqc.errors import DataError
from tests.conftest import write_rgb
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


def test_unique_ids_keep_stems_and_hash_clashes(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "x" / "a.jpg", tmp_path / "b.png", tmp_path / "B.tif"]
    ids = unique_ids(paths)
    assert ids[0].startswith("a-") and ids[1].startswith("a-") and ids[0] != ids[1]
    assert ids[2].startswith("b-") and ids[3].startswith("B-")  # clash ignoring case
    assert all(len(i.split("-")[-1]) == 8 for i in ids)
    assert unique_ids(paths) == ids  # stable across runs
    assert unique_ids([tmp_path / "été.png", tmp_path / "c.png"]) == ["été", "c"]


def test_collect_inputs_files_folders_globs(tmp_path):
    write_rgb(tmp_path / "d" / "one.png")
    write_rgb(tmp_path / "d" / "sub" / "two.JPG", fmt="JPEG")
    write_rgb(tmp_path / "d" / ".hidden" / "three.png")
    write_rgb(tmp_path / "d" / "out" / "masks" / "one.png")
    (tmp_path / "d" / "notes.txt").write_text("x")
    explicit = tmp_path / "odd.name"
    explicit.write_text("not an image, but named explicitly")
    found = collect_inputs(
        [tmp_path / "d", explicit, str(tmp_path / "d" / "*.png")], exclude=tmp_path / "d" / "out"
    )
    assert [p.name for p in found] == ["one.png", "two.JPG", "odd.name"]
    assert [p.name for p in collect_inputs([str(tmp_path / "d" / "**" / "*.JPG")])] == ["two.JPG"]
    with pytest.raises(DataError, match="no such file"):
        collect_inputs([tmp_path / "missing.png"])
    with pytest.raises(DataError, match="no file matches"):
        collect_inputs([str(tmp_path / "*.bmp")])
    assert collect_inputs([Path(tmp_path / "d" / ".hidden")]) == [tmp_path / "d" / ".hidden" / "three.png"]
