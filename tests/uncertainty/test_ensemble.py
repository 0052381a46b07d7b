"""Deep ensembles: distinct members, the training loss, the two maps, settings, a bundle round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segqc.config import PipelineConfig
from segqc.data.dataset import SegData
from segqc.data.synthetic import make_synthetic
from segqc.errors import SegQCError
from segqc.postprocess import binary_entropy, combine_samples, entropy, mutual_information
from segqc.runtime import load_model
from segqc.training import train_bundle
from segqc.uncertainty import create_method
from tests.uncertainty.conftest import random_images, read_out


def member_params(net) -> list[torch.Tensor]:
    return [torch.cat([p.detach().flatten() for p in member.parameters()]) for member in net.members]


def test_members_differ_after_build_and_repeat_under_a_seed():
    method = create_method("ensemble", members=3)
    torch.manual_seed(4)
    first = member_params(method.build(base_width=4))
    assert len(first) == 3
    assert all(not torch.equal(first[i], first[j]) for i in range(3) for j in range(i))
    torch.manual_seed(4)
    again = member_params(method.build(base_width=4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_loss_is_the_mean_of_the_members_cross_entropies():
    method = create_method("ensemble", members=3)
    output = torch.randn(2, 3, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    want = sum(F.cross_entropy(output[:, k], target) for k in range(3)) / 3
    torch.testing.assert_close(method.loss(output, target), want)
    torch.manual_seed(0)
    net = method.build(base_width=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 3, 2, 16, 16)
        torch.testing.assert_close(out[:, 1], net.members[1](x))  # member k's logits at index k


def test_read_out_is_the_mean_of_the_members_and_its_maps():
    torch.manual_seed(0)
    images = random_images(2)
    method = create_method("ensemble", members=3)
    net = method.build(base_width=4).eval()
    probs, z = read_out(method, net, images)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25  # conftest's Normalize
    with torch.inference_mode():
        members = np.stack([torch.softmax(m(x), 1)[:, 1].numpy() for m in net.members], axis=1)
    assert np.abs(members[:, 0] - members[:, 1]).max() > 1e-3  # the members really differ
    np.testing.assert_allclose(probs, members.mean(1), atol=1e-5)
    np.testing.assert_allclose(z, binary_entropy(members.mean(1)), atol=1e-5)
    _, mi = read_out(create_method("ensemble", members=3, map="mutual_information"), net, images)
    np.testing.assert_allclose(mi, mutual_information(members), atol=1e-5)
    assert (mi >= 0).all() and (mi <= z + 1e-6).all() and mi.max() > 0


def test_mutual_information_is_between_zero_and_the_entropy_of_the_mean():
    rng = np.random.default_rng(0)
    samples = rng.random((4, 5, 16, 16), dtype=np.float32) ** 3  # some near 0, some spread
    samples[0] = 0.3  # all members agree: no disagreement to measure
    samples[1, :, 0, 0] = [0.0, 1.0, 0.0, 1.0, 1.0]  # certain but disagreeing members: MI = H(mean)
    mean, total = combine_samples(samples)
    _, mi = combine_samples(samples, uncertainty="mutual_information")
    assert (mi >= 0).all() and (mi <= total).all()
    np.testing.assert_allclose(mean, samples.mean(1), atol=1e-6)
    np.testing.assert_allclose(mi[0], 0.0, atol=1e-6)
    h = -0.6 * math.log(0.6) - 0.4 * math.log(0.4)
    assert mi[1, 0, 0] == pytest.approx(total[1, 0, 0], abs=1e-6) and total[1, 0, 0] == pytest.approx(h)
    assert (total <= math.log(2) + 1e-6).all()
    two = np.stack([1 - samples, samples], axis=1)  # binary entropy = entropy of the two channels
    np.testing.assert_allclose(binary_entropy(samples), entropy(two), atol=1e-6)
    with pytest.raises(SegQCError, match="map"):
        combine_samples(samples, uncertainty="variance")


@pytest.mark.parametrize(
    "params", [{"map": "variance"}, {"map": "entropy "}, {"members": 0}, {"members": True}, {"members": 2.5}]
)
def test_bad_settings_raise(params):
    with pytest.raises(SegQCError):
        create_method("ensemble", **params)


def test_passes_and_training_key():
    assert create_method("ensemble").passes() == 5.0 and create_method("ensemble", members=3).passes() == 3.0
    a = create_method("ensemble", members=3)
    b = create_method("ensemble", members=3, map="mutual_information")
    assert a.training_key() == b.training_key() != create_method("ensemble").training_key()


def test_state_round_trip_through_a_bundle(tmp_path):
    images, masks, ids = make_synthetic(24, 32, seed=5)
    data = SegData(images, masks, ids)
    cfg = PipelineConfig(image_size=32, base_width=4, quality_width=4, seg_epochs=1, quality_epochs=1,
                         batch_size=8, device="cpu", method="ensemble",
                         method_params={"members": 2, "map": "mutual_information"})  # fmt: skip
    parts = (data.subset(range(18)), data.subset(range(18, 24)))
    bundle = train_bundle(parts, None, cfg, tmp_path / "m", progress=False, force=True)
    loaded = load_model(tmp_path / "m", device="cpu")
    assert loaded.method == "ensemble"
    seg = loaded.segmenter
    assert seg.method_.get_params() == {"members": 2, "map": "mutual_information"}
    assert len(seg.model_.members) == 2
    new = make_synthetic(3, 32, seed=9)[0]
    want, got = bundle.segmenter.predict(new), loaded.segment(new)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
    np.testing.assert_allclose(got.uncertainty, want.uncertainty, atol=1e-6)
