"""Test-time augmentation: the views and their inverses, the batched read-out, its settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segqc.errors import SegQCError
from segqc.postprocess import binary_entropy
from segqc.uncertainty import create_method
from segqc.uncertainty.tta import VIEWS, transform, undo
from tests.uncertainty.conftest import random_images, read_out


def box_blur(images: np.ndarray) -> np.ndarray:
    """A 3x3 mean of the pixels' mean colour, zero-padded: depends on the content around each pixel, and
    commutes with every flip and rotation (the kernel and the padding are symmetric)."""
    x = np.pad(images.astype(np.float64).mean(-1) / 255.0, ((0, 0), (1, 1), (1, 1)))
    s = x.shape[1] - 2
    return sum(x[:, i : i + s, j : j + s] for i in range(3) for j in range(3)) / 9.0


class FakeRunner:
    """Runs ``f`` as ``fg(images)`` (two-channel probabilities and a dummy map); records each call's batch."""

    def __init__(self, fg) -> None:
        self.fg, self.calls = fg, []

    def __call__(self, role, feeds):
        assert role == "f"
        images = feeds["images"]
        assert images.flags.c_contiguous and images.dtype == np.uint8
        self.calls.append(len(images))
        p = self.fg(images).astype(np.float32)
        return [np.stack([1 - p, p], axis=1), np.zeros_like(p)]


def tta_read_out(runner: FakeRunner, images: np.ndarray, **params) -> tuple[np.ndarray, np.ndarray]:
    return create_method("tta", **params).read_out(runner, images, np.random.default_rng(0), {})


@pytest.mark.parametrize("view", VIEWS)
def test_undo_inverts_each_view_exactly(view):
    x = np.random.default_rng(0).random((2, 6, 6, 3))
    np.testing.assert_array_equal(undo(view, transform(view, x)), x)
    np.testing.assert_array_equal(transform(view, undo(view, x)), x)
    maps = x[..., 0]  # (N, S, S), as the read-out undoes the probabilities
    np.testing.assert_array_equal(undo(view, transform(view, maps)), maps)


def test_the_views_are_the_eight_symmetries_of_the_square():
    x = np.arange(16).reshape(1, 4, 4)  # no symmetry of its own: 8 distinct views
    seen = {transform(v, x).tobytes() for v in VIEWS}
    assert len(VIEWS) == len(seen) == 8
    np.testing.assert_array_equal(transform("rot90", x)[0], np.rot90(x[0]))  # anticlockwise
    np.testing.assert_array_equal(transform("hflip", x)[0], x[0, :, ::-1])
    np.testing.assert_array_equal(transform("transpose", x)[0], x[0].T)


def test_an_equivariant_f_gives_the_same_mean_as_one_pass():
    """A fake f that commutes with flips and rotations: every view undone is the same map, so a wrong
    inverse (say rot90 for rot270) would show on these asymmetric images."""
    images = random_images(3, size=16)
    one = box_blur(images)
    runner = FakeRunner(box_blur)
    probs, z = tta_read_out(runner, images)
    np.testing.assert_allclose(probs, one, atol=1e-6)
    np.testing.assert_allclose(z, binary_entropy(one), atol=1e-6)
    assert runner.calls == [3 * 8]  # all views of the batch in one call of the graph


def test_a_position_only_f_averages_over_the_views():
    """f that ignores the content and answers column / (S - 1): undone views average to 1/2 everywhere
    (columns, mirrored columns, rows and mirrored rows, twice each); without the undo it stays a ramp."""
    images = random_images(2, size=8)
    ramp = np.linspace(0.0, 1.0, 8)

    def position(x):
        return np.broadcast_to(ramp, x.shape[:3])

    probs, _ = tta_read_out(FakeRunner(position), images)
    np.testing.assert_allclose(probs, 0.5, atol=1e-6)
    flips, _ = tta_read_out(FakeRunner(position), images, views=2)  # identity and hflip
    np.testing.assert_allclose(flips, 0.5, atol=1e-6)
    vertical, _ = tta_read_out(FakeRunner(position), images, views=["identity", "vflip"])
    np.testing.assert_allclose(vertical, np.broadcast_to(ramp, (2, 8, 8)), atol=1e-6)


@pytest.mark.parametrize(("max_batch", "calls"), [(1, [2] * 8), (6, [6, 6, 4]), (16, [16])])
def test_chunks_give_the_same_read_out(max_batch, calls):
    images = random_images(2, size=8)
    ramp = np.linspace(0.1, 0.9, 8)

    def fg(x):  # position and content: not equivariant
        return 0.5 * box_blur(x) + 0.5 * ramp

    whole = tta_read_out(FakeRunner(fg), images)
    runner = FakeRunner(fg)
    chunked = tta_read_out(runner, images, max_batch=max_batch)
    assert runner.calls == calls
    np.testing.assert_allclose(chunked[0], whole[0], atol=1e-6)
    np.testing.assert_allclose(chunked[1], whole[1], atol=1e-6)


def test_by_default_a_call_holds_about_2_16_pixels():
    """The predict batch's budget (``pixel_batch``): at 128 px, 4 images per call, so 2 views of 2."""
    runner = FakeRunner(box_blur)
    tta_read_out(runner, random_images(2, size=128))
    assert runner.calls == [4, 4, 4, 4]
    runner = FakeRunner(box_blur)
    tta_read_out(runner, random_images(5, size=128))  # more images than the budget: one view at a time
    assert runner.calls == [5] * 8


def test_one_view_is_msp_and_all_views_the_explicit_loop():
    torch.manual_seed(0)
    net = create_method("msp").build(base_width=4).eval()
    images = random_images(3)
    msp_probs, _ = read_out(create_method("msp"), net, images)
    probs, z = read_out(create_method("tta", views=1), net, images)
    np.testing.assert_array_equal(probs, msp_probs)
    np.testing.assert_allclose(z, binary_entropy(msp_probs), atol=1e-7)
    msp = create_method("msp")
    views = [read_out(msp, net, np.ascontiguousarray(transform(v, images)))[0] for v in VIEWS]
    loop = np.mean([undo(v, p) for v, p in zip(VIEWS, views)], axis=0)
    probs, z = read_out(create_method("tta"), net, images)
    np.testing.assert_allclose(probs, loop, atol=1e-5)
    assert np.abs(probs - msp_probs).max() > 1e-4  # the views really differ on an untrained net
    assert (z >= 0).all() and (z <= np.log(2) + 1e-6).all()


@pytest.mark.parametrize(
    "views",
    [0, 9, -1, True, 2.5, "", "bogus", "identity,bogus", ["identity", "identity"], [], ["rot45"], [1, 2]],
)
def test_bad_views_raise_a_clear_error(views):
    with pytest.raises(SegQCError, match="views"):
        create_method("tta", views=views)


def test_views_settings_passes_and_training_key():
    assert create_method("tta").passes() == 8.0
    assert create_method("tta", views=3).passes() == 3.0
    method = create_method("tta", views="identity, rot90")  # as --method-param views=identity,rot90 gives it
    assert method.passes() == 2.0 and method._views == ("identity", "rot90")
    assert create_method("tta", views="4").passes() == 4.0
    assert create_method("tta", views=("hflip", "vflip")).get_params()["views"] == ["hflip", "vflip"]
    again = create_method("tta", **method.get_params())  # the settings a bundle stores, read back
    assert again._views == method._views
    assert create_method("tta").training_key() == create_method("msp").training_key()  # msp's f, trained once
    for bad in (0, True):
        with pytest.raises(SegQCError, match="max_batch"):
            create_method("tta", max_batch=bad)
