"""Precomputed outputs of a model (`segqc predict --predictions DIR`): maps read, checked and assessed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.assess import assess_images
from segqc.cli.options import EXIT_PARTIAL
from segqc.cli.predict import predict
from segqc.errors import DataError
from segqc.external.predictions import PredictionFolder
from segqc.postprocess import entropy, two_class_map
from segqc.runtime import load_model


def test_maps_from_one_map_and_from_samples():
    p = np.array([[0.0, 0.3], [0.5, 0.9]], np.float32)
    fg, z = two_class_map(p[None])
    np.testing.assert_allclose(fg, p)
    np.testing.assert_allclose(z, [[0.0, 0.3], [0.5, 0.1]], atol=1e-6)
    samples = np.stack([p, 1 - p])
    fg, z = two_class_map(samples)
    np.testing.assert_allclose(fg, 0.5)
    np.testing.assert_allclose(z, np.log(2), atol=1e-6)
    fg, z = two_class_map(np.stack([p, p]))
    np.testing.assert_allclose(z, entropy(np.stack([1 - p, p]), axis=0), atol=1e-6)


def test_folder_reads_png_npy_and_samples(tmp_path):
    ramp = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray((ramp * 255).round().astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "b.png")
    np.save(tmp_path / "c.npy", ramp)
    for k in range(3):
        np.save(tmp_path / f"d_s{k}.npy", ramp * k / 2)
    folder = PredictionFolder(tmp_path)
    for id_ in "abc":
        assert folder.kind(id_) == "single"
        np.testing.assert_allclose(folder.load(id_, (3, 4))[0], ramp, atol=1 / 255)
    assert folder.kind("d") == "samples" and folder.load("d", (3, 4)).shape == (3, 3, 4)
    assert folder.kind("e") is None


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (
            lambda d: np.save(d / "x.npy", np.zeros((4, 3), np.float32)),
            r"x.npy: prediction of shape \(4, 3\)",
        ),
        (lambda d: np.save(d / "x.npy", np.full((3, 4), 1.5, np.float32)), r"x.npy: .*in \[0, 1\]"),
        (lambda d: np.save(d / "x.npy", np.zeros((3, 4), np.uint8)), "x.npy: .*must hold floats"),
        (lambda d: (d / "x.npy").write_bytes(b"junk"), "x.npy: cannot read"),
        (lambda d: Image.new("RGB", (4, 3)).save(d / "x.png"), "x.png: .*greyscale"),
        (lambda d: [np.save(d / n, np.zeros((3, 4), np.float32)) for n in ("x.npy", "x_s0.npy")], "several"),
        (lambda d: None, "no prediction for 'x'"),
    ],
)
def test_bad_maps_name_the_file(tmp_path, write, match):
    write(tmp_path)
    with pytest.raises(DataError, match=match):
        PredictionFolder(tmp_path).load("x", (3, 4))


def test_assess_images_with_given_probabilities(fit_bundle_dir):
    model = load_model(fit_bundle_dir, device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)] * 2
    p = np.zeros((40, 50), np.float32)
    p[10:30, 15:35] = 0.9
    [a, b] = assess_images(model, images, ["a", "b"], probabilities=[p[None], p])
    np.testing.assert_array_equal(a.mask, (p > 0.5).astype(np.uint8))
    np.testing.assert_allclose(a.uncertainty, 1 - np.maximum(p, 1 - p), atol=1e-6)
    assert a.predicted_jaccard == b.predicted_jaccard  # (1, H, W) or (H, W): one map
    [c] = assess_images(model, images[:1], probabilities=[np.zeros_like(p)])
    assert c.predicted_jaccard != a.predicted_jaccard  # g sees the given map
    with pytest.raises(DataError, match="do not fit the image"):
        assess_images(model, images[:1], probabilities=[p[:, :10]])


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def test_predict_with_a_predictions_folder(fit_bundle_dir, tmp_path):
    rng = np.random.default_rng(1)
    inputs, maps = tmp_path / "in", tmp_path / "maps"
    inputs.mkdir()
    maps.mkdir()
    for name, (h, w) in {"one": (30, 40), "two": (33, 21), "three": (20, 20), "four": (24, 24)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(inputs / f"{name}.png")
    np.save(maps / "one.npy", np.full((30, 40), 0.8, np.float32))
    Image.fromarray(np.full((33, 21), 40000, np.uint16)).save(maps / "two.png")
    np.save(maps / "three.npy", np.zeros((21, 20), np.float32))  # the wrong size; "four" has none
    args = [
        "--model",
        str(fit_bundle_dir),
        str(inputs),
        "--out",
        str(tmp_path / "out"),
        "--predictions",
        str(maps),
    ]
    result = CliRunner().invoke(predict, [*args, "--quiet"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    # The model has its own f: its g is validated only on that f's outputs, which the user is told.
    assert (
        "warning: " in result.output and "has its own f, and its g learned that f's errors" in result.output
    )
    done = _rows(tmp_path / "out" / "quality.csv")
    assert sorted(done) == ["one", "two"]
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "two.png"))
    assert mask.shape == (33, 21) and (mask == 255).all()  # 40000 / 65535 > 0.5
    errors = _rows(tmp_path / "out" / "errors.csv")
    assert sorted(errors) == ["four", "three"]
    assert "no prediction for 'four'" in errors["four"]["reason"]
    assert "three.npy: prediction of shape (21, 20)" in errors["three"]["reason"]


def test_samples_need_an_entropy_model(fit_bundle_dir, tmp_path):
    inputs, maps = tmp_path / "in", tmp_path / "maps"
    inputs.mkdir()
    maps.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inputs / "a.png")
    for k in range(2):
        np.save(maps / f"a_s{k}.npy", np.full((8, 8), 0.5, np.float32))
    args = [
        "--model",
        str(fit_bundle_dir),
        str(inputs),
        "--out",
        str(tmp_path / "out"),
        "--predictions",
        str(maps),
    ]
    result = CliRunner().invoke(predict, [*args, "--quiet"])
    assert result.exit_code == EXIT_PARTIAL
    reason = _rows(tmp_path / "out" / "errors.csv")["a"]["reason"]
    assert "samples per image are read out by mcdropout or ensemble" in reason and "'msp'" in reason


def _write_maps(data_dir: Path, maps: Path, *, samples: int = 0, seed: int = 0) -> None:
    """A noisy copy of each ground-truth mask, as the outputs of a model that is sometimes wrong."""
    rng = np.random.default_rng(seed)
    maps.mkdir()
    for file in sorted((data_dir / "masks").glob("*.png")):
        truth = np.asarray(Image.open(file), np.float32) / 255
        id_ = file.stem
        shift = int(rng.integers(0, 6))  # some masks badly off
        p = np.clip(0.1 + 0.8 * np.roll(truth, shift, axis=1) + rng.normal(0, 0.1, truth.shape), 0, 1)
        if samples:
            for k in range(samples):
                np.save(
                    maps / f"{id_}_s{k}.npy",
                    np.clip(p + rng.normal(0, 0.1, p.shape), 0, 1).astype(np.float32),
                )
        else:
            Image.fromarray((p * 255).round().astype(np.uint8)).save(maps / f"{id_}.png")


def test_train_and_predict_on_precomputed_outputs(tmp_path):
    from segqc.cli.export import export
    from segqc.cli.train import train
    from segqc.data.synthetic import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, 60, 32, seed=2)
    maps = tmp_path / "maps"
    _write_maps(data, maps)
    out = tmp_path / "model"
    args = ["--data", str(data), "--predictions", str(maps), "--out", str(out), "--image-size", "32",
            "--quality-epochs", "2", "--device", "cpu", "--quiet", "--force"]  # fmt: skip
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "g.safetensors"]
    model = load_model(out, device="cpu")
    assert model.method == "msp" and model.config["segmenter"]["precomputed"]["kind"] == "single"

    inputs = tmp_path / "in"
    inputs.mkdir()
    for file in sorted((data / "images").glob("*.png"))[:3]:
        (inputs / file.name).write_bytes(file.read_bytes())
    run = CliRunner().invoke(predict, ["--model", str(out), str(inputs), "--out", str(tmp_path / "p"),
                                       "--predictions", str(maps), "--quiet"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert len(_rows(tmp_path / "p" / "quality.csv")) == 3
    assert "has its own f" not in run.output  # g learned exactly such outputs: no warning
    run = CliRunner().invoke(predict, ["--model", str(out), str(inputs), "--out", str(tmp_path / "q")])
    assert run.exit_code == 2 and "has no f to run" in run.output
    run = CliRunner().invoke(export, ["--model", str(out), "--out", str(tmp_path / "e")])
    assert run.exit_code == 1 and "cannot export to ONNX" in run.output

    samples = tmp_path / "samples"
    _write_maps(data, samples, samples=3)
    args = ["--data", str(data), "--predictions", str(samples), "--out", str(tmp_path / "m2"), "--image-size",
            "32", "--quality-epochs", "1", "--device", "cpu", "--quiet", "--force"]  # fmt: skip
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    default = load_model(tmp_path / "m2", device="cpu")  # no --method: mcdropout, as before
    assert default.method == "mcdropout" and default.config["method_params"] == {}
    result = CliRunner().invoke(train, [*args[:-2], "--method", "msp"])
    assert result.exit_code == 2 and "--method must be mcdropout or ensemble, not 'msp'" in result.output


def test_train_refuses_a_bad_or_missing_map(tmp_path):
    from segqc.cli.train import train
    from segqc.data.synthetic import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, 20, 32, seed=2)
    maps = tmp_path / "maps"
    _write_maps(data, maps)
    first = sorted(maps.glob("*.png"))[0]
    good = first.read_bytes()
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(first)
    args = ["--data", str(data), "--predictions", str(maps), "--out", str(tmp_path / "m"),
            "--image-size", "32", "--quiet", "--force"]  # fmt: skip
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 1 and f"{first.name}: prediction of shape (16, 32)" in result.output
    first.write_bytes(good)
    first.unlink()
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 1 and f"no prediction for {first.stem!r}" in result.output


def _copy_images(data: Path, inputs: Path, n: int) -> list[str]:
    inputs.mkdir()
    files = sorted((data / "images").glob("*.png"))[:n]
    for file in files:
        (inputs / file.name).write_bytes(file.read_bytes())
    return [f.stem for f in files]


@pytest.mark.parametrize("map_", ["entropy", "mutual_information"])
def test_samples_read_out_by_an_ensemble(tmp_path, map_):
    from types import SimpleNamespace

    from segqc.cli.train import train
    from segqc.data.synthetic import write_synthetic
    from segqc.external.predictions import PrecomputedSegmenter
    from segqc.postprocess import combine_samples

    data, samples = tmp_path / "data", tmp_path / "samples"
    write_synthetic(data, 60, 32, seed=2)
    _write_maps(data, samples, samples=3)
    out = tmp_path / "model"
    params = [] if map_ == "entropy" else ["--method-param", f"map={map_}"]
    args = ["--data", str(data), "--predictions", str(samples), "--out", str(out), "--image-size", "32",
            "--quality-epochs", "1", "--device", "cpu", "--quiet", "--force", "--method", "ensemble",
            *params]  # fmt: skip
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = load_model(out, device="cpu")
    recorded = {} if map_ == "entropy" else {"map": map_}
    assert model.method == "ensemble" and model.config["method_params"] == recorded
    assert model.config["segmenter"]["params"]["method_params"] == recorded

    # training (the working size S = 32 here, the images' own): g saw combine_samples of the samples
    ids = sorted(p.stem for p in (data / "images").glob("*.png"))[:2]
    seen = PrecomputedSegmenter(
        PredictionFolder(samples), "samples", image_size=32, method="ensemble", method_params=recorded
    ).predict_data(SimpleNamespace(ids=ids, images=None))
    for j, id_ in enumerate(ids):
        p, z = combine_samples(PredictionFolder(samples).load(id_, None), axis=0, uncertainty=map_)
        np.testing.assert_allclose(seen.uncertainty[j], z, atol=1e-6)
        np.testing.assert_allclose(seen.probs[j], p, atol=1e-6)

    # predict: the same map; the number of samples is not checked against members (it may vary)
    inputs = tmp_path / "in"
    ids = _copy_images(data, inputs, 2)
    (samples / f"{ids[1]}_s3.npy").write_bytes((samples / f"{ids[1]}_s0.npy").read_bytes())
    run = CliRunner().invoke(predict, ["--model", str(out), str(inputs), "--out", str(tmp_path / "p"),
                                       "--predictions", str(samples), "--quiet"])  # fmt: skip
    assert run.exit_code == 0, run.output
    rows = _rows(tmp_path / "p" / "quality.csv")
    folder = PredictionFolder(samples)
    for id_, k in zip(ids, (3, 4)):
        stack = folder.load(id_, None)
        assert len(stack) == k
        p, z = combine_samples(stack, axis=0, uncertainty=map_)
        assert float(rows[id_]["mean_uncertainty"]) == pytest.approx(float(z.mean()), abs=1e-4)
        [a] = assess_images(model, [np.asarray(Image.open(inputs / f"{id_}.png").convert("RGB"))],
                            [id_], probabilities=[stack])  # fmt: skip
        np.testing.assert_allclose(a.uncertainty, z, atol=1e-6)
        np.testing.assert_array_equal(a.mask, (p > 0.5).astype(np.uint8))
    if map_ == "mutual_information":  # not the entropy of the mean, which mcdropout would give
        assert not np.allclose(z, two_class_map(stack)[1], atol=1e-3)

    # one map per image on this bundle: a per-image error, as any other mismatch
    single = tmp_path / "single"
    single.mkdir()
    for id_ in ids:
        np.save(single / f"{id_}.npy", np.full((32, 32), 0.7, np.float32))
    run = CliRunner().invoke(predict, ["--model", str(out), str(inputs), "--out", str(tmp_path / "q"),
                                       "--predictions", str(single), "--quiet"])  # fmt: skip
    assert run.exit_code == EXIT_PARTIAL, run.output
    reason = _rows(tmp_path / "q" / "errors.csv")[ids[0]]["reason"]
    assert "one map per image are read out by msp" in reason and "'ensemble'" in reason

    # a bundle whose recorded kind or map its method cannot read is refused at load
    import json

    from segqc.errors import BundleError
    from segqc.integrity import seal

    for path, value, match in [
        (("segmenter", "precomputed", "kind"), "single", "read out by msp, not 'ensemble'"),
        (("method_params", "map"), "variance", "map must be one of"),
    ]:
        config = json.loads((out / "bundle.json").read_text())
        config.setdefault("method_params", {})
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        if path[0] == "method_params":
            config["segmenter"]["params"]["method_params"] = config["method_params"]
        (out / "bundle.json").write_text(json.dumps(seal(config)))
        with pytest.raises(BundleError, match=match):
            load_model(out, device="cpu")
        (out / "bundle.json").write_text(json.dumps(seal(model.config)))


@pytest.mark.parametrize(
    ("kind", "method", "match"),
    [
        ("samples", "msp", "samples per image: --method must be mcdropout or ensemble, not 'msp'"),
        ("samples", "tta", "--method must be mcdropout or ensemble, not 'tta'"),
        ("single", "ensemble", "one map per image: --method must be msp, not 'ensemble'"),
        ("single", "mcdropout", "--method must be msp, not 'mcdropout'"),
    ],
)
def test_train_refuses_a_method_that_does_not_read_the_folder(tmp_path, kind, method, match):
    from segqc.cli.train import train
    from segqc.data.synthetic import write_synthetic

    data, maps = tmp_path / "data", tmp_path / "maps"
    write_synthetic(data, 8, 32, seed=2)
    _write_maps(data, maps, samples=2 if kind == "samples" else 0)
    args = ["--data", str(data), "--predictions", str(maps), "--out", str(tmp_path / "m"), "--method", method,
            "--quiet"]  # fmt: skip
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 2 and match in result.output, result.output
    assert result.output.count("\n") == 1  # one line


def test_precomputed_maps_are_the_methods_own():
    from segqc.external.predictions import map_methods, precomputed_method
    from segqc.postprocess import combine_samples

    assert map_methods("single") == ("msp",) and map_methods("samples")[0] == "mcdropout"
    assert "ensemble" in map_methods("samples")
    rng = np.random.default_rng(0)
    stack = rng.random((4, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(precomputed_method("mcdropout").precomputed_map(stack)[1],
                                  two_class_map(stack)[1])  # fmt: skip
    for map_ in ("entropy", "mutual_information"):
        got = precomputed_method("ensemble", {"map": map_, "members": 2}).precomputed_map(stack)
        for a, b in zip(got, combine_samples(stack, axis=0, uncertainty=map_)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="'tta' maps, which precomputed outputs cannot give"):
        precomputed_method("tta")
