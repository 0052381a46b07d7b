from __future__ import annotations

import pytest
import torch

from segqc.networks import QualityCNN, UNet


@pytest.mark.parametrize(
    ("kwargs", "in_shape", "out_shape"),
    [
        ({}, (2, 3, 32, 32), (2, 2, 32, 32)),
        ({"out_channels": 3, "base_width": 4}, (1, 3, 64, 48), (1, 3, 64, 48)),
        ({"in_channels": 1, "base_width": 2, "dropout": 0.0}, (3, 1, 16, 16), (3, 2, 16, 16)),
    ],
)
def test_unet_shapes(kwargs, in_shape, out_shape):
    net = UNet(**kwargs).eval()
    assert net(torch.rand(in_shape)).shape == out_shape


def test_unet_dropout_only_in_the_centre():
    net = UNet(base_width=4, dropout=0.5)
    drops = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == ["center_dropout", "decoder_dropout"]
    # encode() is deterministic even in train mode: it holds no dropout.
    net.train()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = net.encode(x), net.encode(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with torch.no_grad():
        assert not torch.equal(net.decode(a), net.decode(a))  # but decode samples dropout masks


def test_unet_forward_is_encode_then_decode():
    net = UNet(base_width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(net(x), net.decode(net.encode(x)))


@pytest.mark.parametrize("in_channels", [3, 4, 5])
def test_quality_cnn_range(in_channels):
    net = QualityCNN(in_channels, base_width=4).eval()
    out = net(torch.randn(3, in_channels, 32, 32) * 10)
    assert out.shape == (3,) and ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("net", [UNet(base_width=4), QualityCNN(5, base_width=4)])
def test_folded_copy_matches_eval_network(net):
    from segqc.networks.inference import fold_batchnorm

    net.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            net(
                torch.randn(4, net.encoders[0][0].in_channels if isinstance(net, UNet) else 5, 32, 32) * 3 + 1
            )
    net.eval()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3 if isinstance(net, UNet) else 5, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-4)
