"""An external ONNX model: segqc's masks equal the model's own, and what does not fit is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segqc.data.synthetic import make_synthetic
from segqc.errors import SegQCError
from segqc.external import ExternalOnnxModel, ExternalRunner, ExternalSegmenter, ExternalSpec
from tests.external.conftest import ConvNet, Squeeze, export

S = 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return make_synthetic(6, S, seed=1)[0]


def test_nhwc_bgr_sigmoid_model_matches_its_own_output(tmp_path, images):
    net = ConvNet(1, nhwc=True)
    file = export(net, tmp_path / "m.onnx", (1, S, S, 3))
    spec = ExternalSpec.from_dict({"layout": "NHWC", "channel_order": "BGR", "scale": 127.5,
                                   "mean": [1.0, 0.9, 0.8], "std": [0.5, 0.6, 0.7]})  # fmt: skip
    seg = ExternalSegmenter(ExternalOnnxModel(file.read_bytes(), spec, S), "msp")
    pred = seg.predict(images)

    x = torch.from_numpy(images[..., ::-1].copy()).float() / 127.5  # BGR, scaled
    x = (x - torch.tensor([1.0, 0.9, 0.8])) / torch.tensor([0.5, 0.6, 0.7])
    with torch.no_grad():
        logits = net(x)[..., 0].numpy()
    want = torch.sigmoid(torch.from_numpy(logits)).numpy()
    assert pred.probs.shape == pred.uncertainty.shape == (len(images), S, S)
    np.testing.assert_allclose(pred.probs, want, atol=1e-5)
    np.testing.assert_array_equal(pred.mask, (logits > 0).astype(np.uint8))
    np.testing.assert_allclose(pred.uncertainty, 1 - np.maximum(want, 1 - want), atol=1e-5)
    assert 0 < pred.mask.mean() < 1  # the test means something


def test_two_channel_logits_resized(tmp_path, images):
    net = ConvNet(2, seed=1)
    file = export(net, tmp_path / "m.onnx", (1, 3, 24, 24))
    model = ExternalOnnxModel(file.read_bytes(), ExternalSpec.from_dict({"input_size": [24, 24]}), S)
    probs, z = ExternalRunner(model)("f", {"images": images})
    assert probs.shape == (len(images), 2, S, S) and z.shape == (len(images), S, S)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    assert z.min() >= 0 and z.max() <= 0.5
    # Without resizing (a fully convolutional model fed S x S): the same softmax as PyTorch.
    file = export(net, tmp_path / "fcn.onnx", (1, 3, S, S), dynamic_size=True)
    fg = ExternalOnnxModel(file.read_bytes(), ExternalSpec(), S).foreground(images)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255), 1)[:, 1]
    np.testing.assert_allclose(fg, want.numpy(), atol=1e-5)


def test_probabilities_output(tmp_path, images):
    net = torch.nn.Sequential(ConvNet(1, seed=2), torch.nn.Sigmoid())
    file = export(net, tmp_path / "m.onnx", (1, 3, S, S))
    fg = ExternalOnnxModel(file.read_bytes(), ExternalSpec(output="probabilities"), S).foreground(images)
    with torch.no_grad():
        want = net(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)[:, 0].numpy()
    np.testing.assert_allclose(fg, want, atol=1e-6)


class TwoHeads(torch.nn.Module):
    """A model with two outputs, e.g. an auxiliary head first and the segmentation second."""

    def __init__(self) -> None:
        super().__init__()
        self.aux, self.main = ConvNet(2, seed=3), ConvNet(2, seed=4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.aux(x), self.main(x)


def test_output_name_picks_one_of_several_outputs(tmp_path, images):
    net = TwoHeads()
    file = export(net, tmp_path / "two.onnx", (1, 3, S, S), outputs=("aux", "seg"))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        aux, main = (torch.softmax(o, 1)[:, 1].numpy() for o in net(x))
    first = ExternalOnnxModel(file.read_bytes(), ExternalSpec(), S).foreground(images)
    np.testing.assert_allclose(first, aux, atol=1e-5)  # by default the first output, as documented
    named = ExternalOnnxModel(file.read_bytes(), ExternalSpec.from_dict({"output_name": "seg"}), S)
    np.testing.assert_allclose(named.foreground(images), main, atol=1e-5)
    assert not np.allclose(aux, main, atol=1e-3)  # the two heads really differ
    with pytest.raises(
        SegQCError, match="output_name 'mask' is not an output of the model; its outputs: aux, seg"
    ):
        ExternalOnnxModel(file.read_bytes(), ExternalSpec.from_dict({"output_name": "mask"}), S)
    with pytest.raises(SegQCError, match="output_name"):
        ExternalSpec.from_dict({"output_name": 3})


def test_methods_that_need_f_insides_are_refused(tmp_path):
    file = export(ConvNet(2), tmp_path / "m.onnx", (1, 3, S, S))
    model = ExternalOnnxModel(file.read_bytes(), ExternalSpec(), S)
    for name in ("mcdropout", "hcnn", "lce"):
        with pytest.raises(SegQCError, match=f"{name}.*cannot read out an external model.*msp"):
            ExternalSegmenter(model, name)
    with pytest.raises(SegQCError, match="only the graph 'f'"):
        ExternalRunner(model)("f_encode", {})


def _error(tmp_path, net, shape, spec=None, *, dynamic_size=False) -> str:
    file = export(net, tmp_path / "bad.onnx", shape, dynamic_size=dynamic_size)
    with pytest.raises(SegQCError) as err:
        ExternalOnnxModel(file.read_bytes(), ExternalSpec.from_dict(spec or {}), S, source="bad.onnx")
    message = str(err.value)
    assert "\n" not in message and message.startswith("bad.onnx: ")
    return message


def test_wrong_output_rank(tmp_path):
    assert "output has rank 3" in _error(tmp_path, Squeeze(ConvNet(1)), (1, 3, S, S))


def test_three_channels(tmp_path):
    assert "output has 3 channels" in _error(tmp_path, ConvNet(3), (1, 3, S, S))
    message = _error(tmp_path, ConvNet(3), (1, 3, S, S), {"foreground_channel": 3})
    assert "foreground_channel 3" in message
    file = export(ConvNet(3), tmp_path / "ok.onnx", (1, 3, S, S))  # a foreground channel makes it usable
    ExternalOnnxModel(file.read_bytes(), ExternalSpec(foreground_channel=2), S)


def test_spec_that_does_not_fit(tmp_path):
    assert "takes 32x32 inputs" in _error(tmp_path, ConvNet(2), (1, 3, S, S), {"input_size": [64, 64]})
    assert "set input_size to [24, 24]" in _error(tmp_path, ConvNet(2), (1, 3, 24, 24))
    assert "check the SPEC's layout" in _error(tmp_path, ConvNet(2), (1, 3, S, S), {"layout": "NHWC"})
    message = _error(tmp_path, ConvNet(2), (1, 3, S, S), {"output": "probabilities"})
    assert "'probabilities' but the model gave values" in message


def test_corrupt_file():
    with pytest.raises(SegQCError, match="^x.onnx: onnxruntime cannot load this model"):
        ExternalOnnxModel(b"not an onnx file", ExternalSpec(), S, source="x.onnx")


class NhwcInNchwOut(torch.nn.Module):
    """Channels-last input, channels-first output (as a PyTorch model fed NHWC images often is)."""

    def __init__(self, net: torch.nn.Module, height: int) -> None:
        super().__init__()
        self.net, self.height = net, height

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))[:, :, : self.height]  # a non-square map: (N, 2, H, W)


def test_an_output_layout_unlike_the_input_is_caught_and_can_be_said(tmp_path, images):
    """A (N, 2, 32, 32) output read as NHWC would be a 2x32 map of 32 channels: refused, not misread."""
    net = NhwcInNchwOut(ConvNet(2, seed=3), S)
    file = export(net, tmp_path / "m.onnx", (1, S, S, 3))
    with pytest.raises(SegQCError, match="check the SPEC's output_layout"):
        ExternalOnnxModel(file.read_bytes(), ExternalSpec.from_dict({"layout": "NHWC"}), S).check()
    spec = ExternalSpec.from_dict({"layout": "NHWC", "output_layout": "NCHW"})
    fg = ExternalOnnxModel(file.read_bytes(), spec, S).foreground(images)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(images).float() / 255), 1)[:, 1].numpy()
    np.testing.assert_allclose(fg, want, atol=1e-5)
    assert ExternalSpec.from_dict(spec.to_dict()) == spec
