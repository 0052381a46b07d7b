"""Hostile or odd external ONNX models (built node by node with ``onnx.helper``): each is refused with a
one-line error, or read so that the gate refers what it cannot trust; never a traceback, never a file
read from outside the model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from segqc.errors import SegQCError
from segqc.external import ExternalOnnxModel, ExternalSpec

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

S = 16


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _vi(name, shape, kind=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, kind, shape)


def channel_mean(k: float = 1.0, batch="N", in_type=TensorProto.FLOAT, out_cast=None):
    """``y = k * mean over channels of x``: ``(N, 3, H, W)`` -> ``(N, 1, H, W)``."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["m", "k"], ["y" if out_cast is None else "f"]),
    ]
    out_type = in_type
    if out_cast is not None:
        nodes.append(helper.make_node("Cast", ["f"], ["y"], to=out_cast))
        out_type = out_cast
    k_init = numpy_helper.from_array(np.array([k], onnx.helper.tensor_dtype_to_np_dtype(in_type)), "k")
    return _model(
        nodes, [_vi("x", [batch, 3, "H", "W"], in_type)], [_vi("y", [batch, 1, "H", "W"], out_type)], [k_init]
    )


def _load(model, **spec) -> ExternalOnnxModel:
    return ExternalOnnxModel(model.SerializeToString(), ExternalSpec.from_dict(spec), S)


def _images(n: int, value: int | None = None) -> np.ndarray:
    if value is not None:
        return np.full((n, S, S, 3), value, np.uint8)
    return np.random.default_rng(0).integers(0, 256, (n, S, S, 3), dtype=np.uint8)


def test_external_data_is_refused_and_never_read(tmp_path, monkeypatch):
    """A tensor kept in another file (ONNX external data, a path the file names) is outside the
    model's checksum: refused, whatever the path, and nothing next to the working directory is read."""
    (tmp_path / "weights.bin").write_bytes(np.full(1, 7.0, np.float32).tobytes())
    monkeypatch.chdir(tmp_path)
    for location in ("weights.bin", "../weights.bin", str(tmp_path / "weights.bin")):
        model = channel_mean()
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
        with pytest.raises(SegQCError, match="keeps tensor 'k' in a separate file"):
            _load(model)


def test_fixed_batch_model_is_fed_batches_of_its_size():
    """A model exported with batch size 1 gave an onnxruntime traceback on a batch of 5."""
    images = _images(5)
    fixed, free = _load(channel_mean(batch=1)), _load(channel_mean())
    assert fixed.batch == 1 and free.batch is None
    np.testing.assert_allclose(fixed.foreground(images), free.foreground(images), rtol=1e-6)
    three = _load(channel_mean(batch=3))  # 5 images: a batch of 3 and a padded one of 2
    np.testing.assert_allclose(three.foreground(images), free.foreground(images), rtol=1e-6)


def test_empty_or_non_float_output_is_refused():
    empty = _model(
        [helper.make_node("Slice", ["x", "start", "end", "axes"], ["y"])],
        [_vi("x", ["N", 3, "H", "W"])],
        [_vi("y", ["N", 1, "H", "W"])],
        [
            numpy_helper.from_array(np.array([0, 0, 0], np.int64), "start"),
            numpy_helper.from_array(np.array([1, 0, 0], np.int64), "end"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        ],
    )
    with pytest.raises(SegQCError, match=r"output \(1, 1, 0, 0\) is empty"):
        _load(empty)
    for kind in (TensorProto.INT64, TensorProto.BOOL, TensorProto.UINT8):
        with pytest.raises(SegQCError, match="not float logits or probabilities"):
            _load(channel_mean(out_cast=kind), output="probabilities")


def test_probabilities_beyond_0_1_at_run_time_are_not_clipped_into_confidence():
    """Logits declared as probabilities that stay in [0, 1] on the test image (k = 1.2 and the
    probe's brightest pixel ~0.67) but not on a bright image: that image's map is NaN (the gate refers
    it as not finite), not clipped to a confident 1."""
    model = _load(channel_mean(1.2), output="probabilities")
    fg = model.foreground(np.concatenate([_images(1, 100), _images(1, 255)]))
    assert np.isfinite(fg[0]).all() and np.allclose(fg[0], 1.2 * 100 / 255, atol=1e-5)
    assert np.isnan(fg[1]).all()
    rounding = _load(channel_mean(1.00001), output="probabilities")  # float rounding: clipped
    assert np.array_equal(rounding.foreground(_images(1, 255)), np.ones((1, S, S), np.float32))


@pytest.mark.parametrize(
    "spec",
    [
        {"scale": 1e-300},  # 255 / scale overflows
        {"scale": 1e300},  # every pixel 0 in float32: a constant image
        {"std": 1e-300},
        {"mean": 1e300},
        {"mean": 1e10},  # (0..1) - 1e10 is one float32 value
    ],
)
def test_scaling_that_makes_inputs_non_finite_or_constant_is_refused(spec):
    with pytest.raises(SegQCError, match="check scale, mean and std"):
        _load(channel_mean(), **spec)


def test_float16_model_with_inputs_beyond_float16_is_refused():
    with pytest.raises(SegQCError, match="float16 inputs"):
        _load(channel_mean(in_type=TensorProto.FLOAT16), scale=1, std=0.001)  # 255000 > 65504
    _load(channel_mean(in_type=TensorProto.FLOAT16))  # 0..1: fine


def test_model_returning_nan_for_some_inputs_gives_a_nan_map():
    """(1 - m) / (1 - m) is NaN only where the image is white: that image's map is not finite."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["one", "m"], ["d"]),
        helper.make_node("Div", ["d", "d"], ["y"]),
    ]
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    model = _load(_model(nodes, [_vi("x", ["N", 3, "H", "W"])], [_vi("y", ["N", 1, "H", "W"])], [one]))
    fg = model.foreground(np.concatenate([_images(1, 100), _images(1, 255)]))
    assert np.isfinite(fg[0]).all() and np.isnan(fg[1]).all()
    assert os.path.basename(model.source) == "segmenter.onnx"


def test_training_refuses_an_external_model_that_is_not_finite_on_training_images():
    """The NaN of a bright training image would otherwise reach g's training and calibration."""
    from segqc.data.dataset import SegData
    from segqc.external import ExternalSegmenter
    from segqc.training import segment

    seg = ExternalSegmenter(_load(channel_mean(1.2), output="probabilities"))
    images = np.concatenate([_images(2, 100), _images(1, 255)])
    data = SegData(images, np.zeros(images.shape[:3], np.uint8), ["a", "b", "white"])
    with pytest.raises(SegQCError, match=r"not finite .* on 1 of 3 images \(white\)"):
        segment(seg, data)
    assert np.isfinite(segment(seg, SegData(images[:2], data.masks[:2], ["a", "b"])).uncertainty).all()
