from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segqc.metrics import dice, jaccard

# pred has 3 pixels, target 2, they share 1: union 4.
PRED = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
TARGET = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 1]])


def test_hand_worked_single_image():
    assert jaccard(PRED, TARGET) == pytest.approx(1 / 4)
    assert dice(PRED, TARGET) == pytest.approx(2 * 1 / (3 + 2))
    assert isinstance(jaccard(PRED, TARGET), float)
    assert isinstance(dice(PRED, TARGET), float)


def test_identical_and_disjoint():
    assert jaccard(PRED, PRED) == 1.0
    assert dice(PRED, PRED) == 1.0
    assert jaccard(PRED, 1 - PRED) == 0.0
    assert dice(PRED, 1 - PRED) == 0.0


def test_nonzero_is_foreground_any_dtype():
    weird = PRED * np.array(7.5)  # floats, not 0/1
    assert jaccard(weird, TARGET.astype(bool)) == pytest.approx(1 / 4)
    assert dice(PRED.astype(np.uint8), TARGET.astype(np.float32)) == pytest.approx(0.4)


@pytest.mark.parametrize("fn", [jaccard, dice])
def test_empty_masks_give_empty(fn):
    z = np.zeros((4, 4), dtype=bool)
    assert fn(z, z) == 1.0
    assert fn(z, z, empty=0.0) == 0.0
    assert math.isnan(fn(z, z, empty=float("nan")))
    # Only one mask empty: plain 0, not `empty`.
    assert fn(z, np.eye(4), empty=0.5) == 0.0
    assert fn(np.eye(4), z, empty=0.5) == 0.0


@pytest.mark.parametrize("fn", [jaccard, dice])
def test_batch_matches_per_image(fn):
    rng = np.random.default_rng(0)
    p = rng.random((6, 5, 7)) > 0.5
    t = rng.random((6, 5, 7)) > 0.6
    p[2] = t[2] = False  # an empty pair inside the batch
    out = fn(p, t, empty=0.25)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (6,)
    np.testing.assert_allclose(out, [fn(p[i], t[i], empty=0.25) for i in range(6)])
    assert out[2] == 0.25


def test_dice_jaccard_relation():
    rng = np.random.default_rng(1)
    p = rng.random((10, 8, 8)) > 0.5
    t = rng.random((10, 8, 8)) > 0.5
    j, d = jaccard(p, t), dice(p, t)
    np.testing.assert_allclose(d, 2 * j / (1 + j))


@pytest.mark.parametrize("fn", [jaccard, dice])
def test_numpy_and_torch_agree(fn):
    rng = np.random.default_rng(2)
    p = (rng.random((4, 6, 6)) > 0.5).astype(np.float32)
    t = (rng.random((4, 6, 6)) > 0.5).astype(np.int64)
    ref = fn(p, t)
    for tp, tt in [
        (torch.from_numpy(p), torch.from_numpy(t)),
        (torch.from_numpy(p).bool(), torch.from_numpy(t).bool()),
        (torch.from_numpy(p).requires_grad_(), torch.from_numpy(t)),
        (torch.from_numpy(p), t),  # mixed
    ]:
        out = fn(tp, tt)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
        np.testing.assert_array_equal(out, ref)
    single = fn(torch.from_numpy(p[0]), torch.from_numpy(t[0]))
    assert isinstance(single, float) and single == ref[0]


@pytest.mark.parametrize("fn", [jaccard, dice])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        fn(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(1, 4, 4\)"):
        fn(torch.zeros(4, 4), torch.zeros(1, 4, 4))


@pytest.mark.parametrize("shape", [(4,), (1, 1, 4, 4)])
def test_bad_ndim(shape):
    with pytest.raises(ValueError, match="shape"):
        jaccard(np.zeros(shape), np.zeros(shape))
