"""Tests of the synthetic dermoscopy generator and its folder writer.

The difficulty knobs in ``segqc.data.synthetic`` were calibrated outside the test suite, too slow to
rerun here: ``segqc.networks.unet.UNet`` (width 16, dropout 0.5) trained on the first 320 images at 64x64
for 8 epochs (Adam 1e-3, batch 16, cross-entropy, random 90-degree rotations), per-image Jaccard on the
next 160. Final knobs, generator seed 0: mean 0.77, 25 % below 0.7, 59 % above 0.8, quartiles
0.70 / 0.84 / 0.91; seed 1: mean 0.72, 36 % below 0.7, 56 % above 0.8, quartiles 0.57 / 0.87 / 0.95.
Failures concentrate on lazy masks, low contrast and tiny lesions. These tests only check the contract:
shapes, value sets, determinism, the prefix property, the lazy fraction and the writer.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segqc.data.synthetic import make_synthetic, synthetic_id, write_synthetic


@pytest.mark.parametrize("size", [32, 64, 100])
def test_shapes_dtypes_and_values(size: int) -> None:
    images, masks, ids = make_synthetic(6, size, seed=3)
    assert images.shape == (6, size, size, 3) and images.dtype == np.uint8
    assert masks.shape == (6, size, size) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) <= {0, 1}
    assert ids == [f"synth_{i:05d}" for i in range(6)]
    assert images.flags.c_contiguous and masks.flags.c_contiguous


def test_large_size_works() -> None:
    images, masks, _ = make_synthetic(1, 224, seed=0)
    assert images.shape == (1, 224, 224, 3) and masks.shape == (1, 224, 224)


def test_deterministic_and_prefix() -> None:
    a_img, a_mask, a_ids = make_synthetic(10, 32, seed=7)
    b_img, b_mask, b_ids = make_synthetic(10, 32, seed=7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, c_mask, c_ids = make_synthetic(20, 32, seed=7)
    np.testing.assert_array_equal(a_img, c_img[:10])
    np.testing.assert_array_equal(a_mask, c_mask[:10])
    assert c_ids[:10] == a_ids == b_ids


def test_seeds_differ() -> None:
    a_img, a_mask, _ = make_synthetic(4, 32, seed=0)
    b_img, b_mask, _ = make_synthetic(4, 32, seed=1)
    for i in range(4):
        assert not np.array_equal(a_img[i], b_img[i])
    assert not np.array_equal(a_mask, b_mask)
    # Images within one data set differ too.
    assert not np.array_equal(a_img[0], a_img[1])


def test_lazy_fraction_only_changes_masks() -> None:
    img0, mask0, _, info0 = make_synthetic(40, 32, seed=2, lazy_fraction=0.0, return_info=True)
    img1, mask1, _, info1 = make_synthetic(40, 32, seed=2, lazy_fraction=1.0, return_info=True)
    np.testing.assert_array_equal(img0, img1)
    assert not info0["lazy"].any()
    assert info1["lazy"].mean() > 0.9  # all but images whose lesion missed the frame
    changed = [not np.array_equal(mask0[i], mask1[i]) for i in np.flatnonzero(info1["lazy"])]
    assert np.mean(changed) > 0.9


def test_lazy_fraction_roughly_respected_and_coarse() -> None:
    _, masks, _, info = make_synthetic(200, 32, seed=5, lazy_fraction=0.3, return_info=True)
    assert 0.2 < info["lazy"].mean() < 0.4
    # Lazy outlines are drawn outside the lesion, so they overlap the exact mask only partly.
    _, exact, _ = make_synthetic(200, 32, seed=5, lazy_fraction=0.0)
    lazy_idx = np.flatnonzero(info["lazy"])
    inter = (masks[lazy_idx] & exact[lazy_idx]).reshape(len(lazy_idx), -1).sum(1)
    union = (masks[lazy_idx] | exact[lazy_idx]).reshape(len(lazy_idx), -1).sum(1)
    assert np.median(inter / np.maximum(union, 1)) < 0.85


def test_info_fields_and_variety() -> None:
    _, masks, _, info = make_synthetic(200, 32, seed=0, return_info=True)
    expected = {"lazy", "n_parts", "low_contrast", "contrast", "n_hairs", "radius", "lesion_fraction"}
    assert set(info) == expected
    assert all(len(v) == 200 for v in info.values())
    assert set(np.unique(info["n_parts"]).tolist()) == {1, 2, 3}
    assert 0 < info["low_contrast"].mean() < 0.3
    assert (info["n_hairs"] == 0).any() and (info["n_hairs"] >= 8).any()
    assert info["radius"].min() < 0.08 and info["radius"].max() > 0.33
    np.testing.assert_allclose(info["lesion_fraction"], masks.reshape(200, -1).mean(1))
    # Masks are non-empty for (almost) every image, and lesions come in very different sizes.
    assert (masks.reshape(200, -1).sum(1) > 0).mean() > 0.95
    assert info["lesion_fraction"].min() < 0.02 and info["lesion_fraction"].max() > 0.5


def test_lesion_darker_than_skin_on_average() -> None:
    images, masks, _ = make_synthetic(30, 64, seed=4, lazy_fraction=0.0)
    grey = images.astype(np.float64).mean(-1)
    darker = [
        grey[i][masks[i] == 1].mean() < grey[i][masks[i] == 0].mean() for i in range(30) if masks[i].any()
    ]
    assert np.mean(darker) > 0.8


def test_write_round_trip(tmp_path) -> None:
    ids = write_synthetic(tmp_path / "out", 5, 32, seed=9)
    assert ids == [synthetic_id(i) for i in range(5)]
    images, masks, _ = make_synthetic(5, 32, seed=9)
    for i, sid in enumerate(ids):
        with Image.open(tmp_path / "out" / "images" / f"{sid}.png") as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), images[i])
        with Image.open(tmp_path / "out" / "masks" / f"{sid}.png") as mk:
            arr = np.asarray(mk)
            assert arr.ndim == 2
            assert set(np.unique(arr).tolist()) <= {0, 255}
            np.testing.assert_array_equal(arr, masks[i] * 255)
    # No temporary files are left behind.
    leftovers = [p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.endswith(".png")]
    assert leftovers == []
    assert len(list((tmp_path / "out" / "images").iterdir())) == 5


def test_write_overwrites_existing(tmp_path) -> None:
    write_synthetic(tmp_path, 2, 16, seed=0)
    write_synthetic(tmp_path, 2, 16, seed=1)
    _, masks, _ = make_synthetic(2, 16, seed=1)
    with Image.open(tmp_path / "masks" / "synth_00001.png") as mk:
        np.testing.assert_array_equal(np.asarray(mk), masks[1] * 255)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be >= 1"),
        ({"n": 2.5}, "n must be an integer"),
        ({"n": 2, "size": 8}, "size must be >= 16"),
        ({"n": 2, "seed": -1}, "seed must be >= 0"),
        ({"n": 2, "lazy_fraction": 1.5}, r"lazy_fraction must be in \[0, 1\]"),
        ({"n": 2, "lazy_fraction": -0.1}, r"lazy_fraction must be in \[0, 1\]"),
        ({"n": 2, "lazy_fraction": float("nan")}, r"lazy_fraction must be in \[0, 1\]"),
    ],
)
def test_argument_errors(kwargs: dict, match: str, tmp_path) -> None:
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)
    with pytest.raises(ValueError, match=match):
        write_synthetic(tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()
