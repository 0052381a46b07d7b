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


def _old_forward(net: UNet, x: torch.Tensor) -> torch.Tensor:
    """The U-Net's forward pass as it was written before ``dropout_placement`` (two dropout layers)."""
    feats = []
    for enc in net.encoders:
        x = enc(x)
        feats.append(x)
        x = net.pool(x)
    x = net.center_dropout(net.bottleneck(x))
    for i, (up, dec, skip) in enumerate(zip(net.ups, net.decoders, reversed(feats))):
        x = dec(torch.cat([up(x), skip], dim=1))
        if i == 0:
            x = net.decoder_dropout(x)
    return net.head(x)


def _seeded(seed: int = 0, **kwargs) -> UNet:
    torch.manual_seed(seed)
    return UNet(base_width=4, **kwargs)


def test_center_placement_is_the_default_network_unchanged():
    default, center = _seeded(), _seeded(dropout_placement="center")
    assert default.dropout_placement == center.dropout_placement == "center"
    sd, sc = default.state_dict(), center.state_dict()
    assert list(sd) == list(sc) and all(torch.equal(sd[k], sc[k]) for k in sd)
    assert [n for n, _ in center.named_modules()] == [n for n, _ in default.named_modules()]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(center.eval()(x), _old_forward(center, x))
        center.train()
        torch.manual_seed(5)
        got = center(x)
        torch.manual_seed(5)
        assert torch.equal(got, _old_forward(center, x))  # the same dropout draws, in the same order
    assert len(center.encode(x)) == UNet.levels + 1


def test_segnet_placement_layers_weights_and_layout():
    from segqc.networks.graphs import dropout_layout

    center, segnet = _seeded(), _seeded(dropout_placement="segnet")
    drops = [name for name, m in segnet.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [
        "center_dropout",
        "decoder_dropout",
        "encoder_dropouts.2",
        "encoder_dropouts.3",
        "decoder_dropouts.1",
    ]
    sc, ss = center.state_dict(), segnet.state_dict()  # dropout holds no weights: same keys, same init
    assert list(sc) == list(ss) and all(torch.equal(sc[k], ss[k]) for k in sc)
    segnet.load_state_dict(sc)  # and a center state_dict loads into it (strict)
    x = torch.rand(2, 3, 32, 32)
    feats = segnet.eval().encode(x)
    # the deterministic prefix stops at the input of the first dropout: encoder block 2's output
    assert [list(f.shape[1:]) for f in feats] == [[4, 32, 32], [8, 16, 16], [16, 8, 8]]
    layout = dropout_layout(segnet, feats)
    assert layout == [
        (0.5, [16, 8, 8]),  # after encoders[2]
        (0.5, [32, 4, 4]),  # after encoders[3]
        (0.5, [64, 2, 2]),  # after the bottleneck
        (0.5, [32, 4, 4]),  # after decoders[0]
        (0.5, [16, 8, 8]),  # after decoders[1]
    ]
    assert dropout_layout(center, center.eval().encode(x)) == [(0.5, [64, 2, 2]), (0.5, [32, 4, 4])]
    with torch.no_grad():  # eval mode: dropout is the identity, so both placements compute the same
        torch.testing.assert_close(segnet(x), center(x), atol=0, rtol=0)
    segnet.train()
    with torch.no_grad():
        a, b = segnet.encode(x), segnet.encode(x)
        assert all(torch.equal(p, q) for p, q in zip(a, b))  # encode holds no dropout
        assert not torch.equal(segnet.decode(a), segnet.decode(a))


@pytest.mark.parametrize("placement", ["center", "segnet"])
@pytest.mark.parametrize("train", [False, True])
def test_encode_then_decode_is_forward_with_fixed_masks(placement, train):
    from segqc.networks.functional import dropout_hooks
    from segqc.networks.graphs import dropout_layout

    net = _seeded(dropout_placement=placement).train(train)
    x = torch.rand(2, 3, 32, 32)
    layout = dropout_layout(net, net.encode(x))
    gen = torch.Generator().manual_seed(3)
    masks = [(torch.rand(2, *shape, generator=gen) < 0.5).float() * 2 for _, shape in layout]

    def run(fn):
        it = iter(masks)
        with torch.no_grad(), dropout_hooks(net, lambda _m, out: out * next(it)):
            out = fn(x)
        assert next(it, None) is None  # every mask used, once
        return out

    assert torch.equal(run(net), run(lambda x: net.decode(net.encode(x))))
    if train:  # nn.Dropout's own draws: encode draws none, so the same seed gives the same masks
        with torch.no_grad():
            torch.manual_seed(9)
            full = net(x)
            torch.manual_seed(9)
            assert torch.equal(full, net.decode(net.encode(x)))


def test_unknown_dropout_placement():
    from segqc.errors import SettingsError

    with pytest.raises(SettingsError, match="center, segnet"):
        UNet(dropout_placement="everywhere")


def test_folded_segnet_copy_matches_eval_network():
    from segqc.networks.inference import fold_batchnorm

    net = _seeded(dropout_placement="segnet").train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, 32, 32) * 3 + 1)
    net.eval()
    folded = fold_batchnorm(net)
    assert (
        folded.dropout_placement == "segnet"
        and len([m for m in folded.modules() if isinstance(m, torch.nn.Dropout)]) == 5
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-4)
