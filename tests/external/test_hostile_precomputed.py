"""Hostile precomputed outputs and SPEC output names: a gap in the samples, an empty map, one sample for
the mutual information, a non-tensor output. Each is a one-line error for that image or model (the
others assessed), never fewer samples read silently, a map of zeros read as certainty, or a traceback."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from segqc.cli.options import EXIT_PARTIAL
from segqc.errors import DataError, SegQCError
from segqc.external.predictions import MAX_SAMPLES, PredictionFolder, precomputed_method

SHAPE = (4, 5)


def _save(folder, name, value=0.5):
    np.save(folder / name, np.full(SHAPE, value, np.float32))


@pytest.mark.parametrize("names", [("a_s0.npy", "a_s2.npy"), ("a_s1.npy",), ("a_s0.npy", "a_s01.npy")])
def test_a_gap_in_the_samples_is_refused_not_read_short(tmp_path, names):
    """_s0 and _s2 were read as one sample (_s2 dropped silently): mcdropout then reads the msp map, the
    mutual information 0 everywhere, both more certain than the samples given."""
    for name in names:
        _save(tmp_path, name)
    folder = PredictionFolder(tmp_path, ids=["a"])
    with pytest.raises(DataError, match="samples of 'a' must be numbered a_s0.npy to .* without gaps"):
        folder.load("a", SHAPE)


def test_sample_like_maps_of_other_images_are_not_a_gap(tmp_path):
    for name in ("a_s0.npy", "a_s1.npy", "a_s3.npy", "a_s1_s0.npy"):
        _save(tmp_path, name)
    folder = PredictionFolder(tmp_path, ids=["a", "a_s3", "a_s1"])  # a_s3.npy: the map of image a_s3
    assert folder.load("a", SHAPE).shape == (2, *SHAPE)


def test_more_samples_than_read_are_refused(tmp_path):
    for k in range(MAX_SAMPLES + 1):
        _save(tmp_path, f"a_s{k}.npy")
    with pytest.raises(DataError, match=f"at most {MAX_SAMPLES}.*a_s{MAX_SAMPLES}.npy is not among them"):
        PredictionFolder(tmp_path).load("a", SHAPE)


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_an_empty_map_is_refused_when_the_size_is_unknown(tmp_path, shape):
    """shape None (training on in-memory SegData): an empty map gave a ValueError traceback."""
    np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
    with pytest.raises(DataError, match="a.npy: a prediction must be a 2-d"):
        PredictionFolder(tmp_path).load("a", None)


def test_mutual_information_of_one_sample_is_refused():
    """One sample has no disagreement: its mutual information is 0 everywhere, the most certain map."""
    one = np.full((1, *SHAPE), 0.6, np.float32)
    mi = precomputed_method("ensemble", {"map": "mutual_information"})
    with pytest.raises(DataError, match="needs at least 2 samples"):
        mi.precomputed_map(one)
    assert mi.precomputed_map(np.concatenate([one, one * 0.5]))[1].max() > 0
    assert precomputed_method("ensemble").precomputed_map(one)[1].min() > 0  # entropy: any K
    assert precomputed_method("mcdropout").precomputed_map(one)[1].min() > 0  # documented: msp's map


def test_one_sample_for_the_mutual_information_is_a_per_image_error(tmp_path):
    """In a batch the image with one sample goes to errors.csv; the others are assessed."""
    from segqc.assess import assess_images
    from segqc.cli.predict import predict
    from segqc.cli.train import train
    from segqc.data.synthetic import write_synthetic
    from segqc.runtime import load_model
    from tests.external.test_predictions import _copy_images, _rows, _write_maps

    data, samples = tmp_path / "data", tmp_path / "samples"
    write_synthetic(data, 40, 32, seed=2)
    _write_maps(data, samples, samples=2)
    out = tmp_path / "model"
    args = ["--data", str(data), "--predictions", str(samples), "--out", str(out), "--image-size", "32",
            "--quality-epochs", "1", "--device", "cpu", "--quiet", "--force", "--method", "ensemble",
            "--method-param", "map=mutual_information"]  # fmt: skip
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ids = _copy_images(data, tmp_path / "in", 3)
    (samples / f"{ids[1]}_s1.npy").unlink()  # one sample left
    args = ["--model", str(out), str(tmp_path / "in"), "--out", str(tmp_path / "p"), "--predictions",
            str(samples), "--quiet"]  # fmt: skip
    run = CliRunner().invoke(predict, args)
    assert run.exit_code == EXIT_PARTIAL, run.output
    assert set(_rows(tmp_path / "p" / "quality.csv")) == {ids[0], ids[2]}
    assert "needs at least 2 samples" in _rows(tmp_path / "p" / "errors.csv")[ids[1]]["reason"]
    model = load_model(out, device="cpu")
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(DataError, match="x: precomputed probabilities: .*needs at least 2 samples"):
        assess_images(model, [image], ["x"], probabilities=[np.full((1, 32, 32), 0.5, np.float32)])


def test_output_name_of_a_sequence_output_is_refused_at_load():
    """A seq(tensor) output (ragged) gave a ValueError traceback from np.asarray."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from segqc.external.onnx_model import ExternalOnnxModel
    from segqc.external.spec import ExternalSpec

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])
    nodes = [helper.make_node("Identity", ["input"], ["seg"]),
             helper.make_node("ReduceMean", ["input"], ["small"], axes=[2, 3], keepdims=1),
             helper.make_node("SequenceConstruct", ["seg", "small"], ["seq"])]  # fmt: skip
    seq = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None))
    outputs = [
        helper.make_value_info("seq", seq),
        helper.make_tensor_value_info("seg", TensorProto.FLOAT, None),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    blob = model.SerializeToString()
    for name in ("seq", None):  # named, or the first output by default
        spec = ExternalSpec.from_dict(
            {"output_name": name, "output": "probabilities", "foreground_channel": 0}
        )
        with pytest.raises(SegQCError, match="output 'seq' is a seq\\(tensor\\(float\\)\\), not a tensor"):
            ExternalOnnxModel(blob, spec, 16, source="m.onnx", device="cpu")
    spec = ExternalSpec.from_dict({"output_name": "seg", "output": "probabilities", "foreground_channel": 0})
    assert ExternalOnnxModel(blob, spec, 16, source="m.onnx", device="cpu").output_name == "seg"
    assert onnx is not None


def test_a_rerun_with_predictions_never_keeps_the_decision_on_old_maps(fit_bundle_dir, tmp_path):
    """The rows record the image's digest, not its maps': a rerun after the maps were replaced skipped
    every image and kept the decisions (and mean_uncertainty) made on the old maps."""
    from PIL import Image

    from segqc.cli.predict import predict
    from segqc.data.synthetic import make_synthetic
    from tests.external.test_predictions import _rows

    images, masks, _ = make_synthetic(3, 32, seed=3)
    inputs, maps = tmp_path / "in", tmp_path / "maps"
    inputs.mkdir()
    maps.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(inputs / f"i{i}.png")
        np.save(maps / f"i{i}.npy", np.full((32, 32), 0.5, np.float32))
    args = ["--model", str(fit_bundle_dir), str(inputs), "--out", str(tmp_path / "p"), "--predictions",
            str(maps), "--quiet", "--no-report"]  # fmt: skip
    assert CliRunner().invoke(predict, args).exit_code == 0
    assert {float(r["mean_uncertainty"]) for r in _rows(tmp_path / "p" / "quality.csv").values()} == {0.5}
    for i, mask in enumerate(masks):
        np.save(maps / f"i{i}.npy", mask.astype(np.float32))  # replaced: certain maps
    run = CliRunner().invoke(predict, args)
    assert run.exit_code == 0 and "assessed 3 images, skipped 0" in run.output, run.output
    assert {float(r["mean_uncertainty"]) for r in _rows(tmp_path / "p" / "quality.csv").values()} == {0.0}


@pytest.mark.parametrize(
    "probs",
    ["abc", {"a": 1}, [[0.1] * 5] * 3 + [[0.1] * 4], np.full((4, 5), 0.2 + 0.9j), np.full((4, 5), None)],
)
def test_assess_images_refuses_probabilities_that_are_not_real_numbers(probs):
    """Strings, dicts and ragged lists raised ValueError/TypeError; complex maps lost their imaginary part."""
    from segqc.assess.assess import _check_probabilities

    with pytest.raises(DataError, match="x: precomputed probabilities must be a real numeric"):
        _check_probabilities(probs, np.zeros((4, 5, 3), np.uint8), "x")
    assert _check_probabilities(np.full((4, 5), 0.5), np.zeros((4, 5, 3), np.uint8), "x").shape == (1, 4, 5)
