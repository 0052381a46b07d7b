"""Hostile inputs to an ensemble of external ONNX models: members that are copies or not segmentation
models, hand-edited ``bundle.json`` (resealed, so only the content is wrong), and maps of width 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from segqc.bundle import load_bundle
from segqc.cli.predict import predict
from segqc.cli.train import train
from segqc.data.synthetic import write_synthetic
from segqc.errors import BundleError
from segqc.external import load_external_segmenter
from segqc.integrity import seal
from tests.external.conftest import ConvNet, export

S = 32


class Pooled(nn.Module):
    """Two class scores per image, dims kept: ``(N, 2, 1, 1)``, a classifier, not a segmentation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)[:, :2]


class Softmax(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-ens")
    write_synthetic(root / "data", 40, S, seed=5)
    for k in range(3):
        export(ConvNet(2, seed=k), root / f"m{k}.onnx", (1, 3, S, S))
    return root


def _train(root: Path, files: list[Path], out: Path, *extra: str):
    args = [arg for f in files for arg in ("--segmenter", str(f))]
    args += ["--method", "ensemble", "--data", str(root / "data"), "--out", str(out), "--image-size", str(S),
             "--quality-epochs", "1", "--device", "cpu", "--quiet", "--force", *extra]  # fmt: skip
    return CliRunner().invoke(train, args)


@pytest.fixture(scope="module")
def bundle_dir(root) -> Path:
    out = root / "b3"
    result = _train(root, [root / f"m{k}.onnx" for k in range(3)], out)
    assert result.exit_code == 0, result.output
    return out


def _edited(bundle_dir: Path, tmp_path: Path, edit) -> Path:
    out = Path(shutil.copytree(bundle_dir, tmp_path / "edited"))
    config = json.loads((out / "bundle.json").read_text())
    config.pop("manifest_sha256", None)
    edit(config, out)
    (out / "bundle.json").write_text(json.dumps(seal(config)))
    return out


def test_the_same_model_twice_is_refused(root, tmp_path):
    """Two copies of one model are no ensemble: their disagreement, the mutual information, is 0."""
    copy = Path(shutil.copy(root / "m0.onnx", tmp_path / "other name.onnx"))
    for files in ([root / "m0.onnx", root / "m0.onnx"], [root / "m0.onnx", root / "m1.onnx", copy]):
        result = _train(root, files, tmp_path / "b")
        assert result.exit_code == 1, result.output
        assert "identical files" in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "b").exists()


def test_a_bundle_with_a_member_copied_over_another_is_refused(bundle_dir, tmp_path):
    def edit(config, out):
        shutil.copy(out / "segmenter-0.onnx", out / "segmenter-2.onnx")
        config["sha256"]["segmenter-2.onnx"] = config["sha256"]["segmenter-0.onnx"]

    with pytest.raises(BundleError, match="members 0 and 2 of the ensemble are identical files"):
        load_bundle(_edited(bundle_dir, tmp_path, edit), device="cpu")


def test_a_classifier_member_is_refused(root, tmp_path):
    pooled = export(Pooled(), tmp_path / "pooled.onnx", (1, 3, S, S))
    result = _train(root, [root / "m0.onnx", pooled], tmp_path / "b")
    assert result.exit_code == 1, result.output
    assert "one value per image and channel, not a segmentation map" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", ["ab", [["members", 3]], 5])
def test_method_params_not_an_object(bundle_dir, tmp_path, value):
    """A string there used to escape as a ValueError traceback; a list of pairs used to load."""
    out = _edited(bundle_dir, tmp_path, lambda config, _: config.__setitem__("method_params", value))
    with pytest.raises(BundleError, match="'method_params' must be a JSON object"):
        load_bundle(out, device="cpu")
    result = CliRunner().invoke(predict, ["--model", str(out), str(tmp_path), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "'method_params' must be a JSON object" in result.output, result.output


def test_members_and_file_together_are_refused(bundle_dir, tmp_path):
    def edit(config, _):
        config["segmenter"]["external"]["file"] = "segmenter.onnx"

    with pytest.raises(BundleError, match="both 'file' .* and 'members'"):
        load_bundle(_edited(bundle_dir, tmp_path, edit), device="cpu")


@pytest.mark.parametrize("section", [[1], "x", None])
def test_segmenter_section_not_an_object(tmp_path, section):
    """An export manifest with a 'segmenter' key that is no object (an AttributeError before)."""
    with pytest.raises(BundleError, match="must be JSON objects"):
        load_external_segmenter(tmp_path, {"segmenter": section}, tmp_path / "export.json")


def test_members_that_agree_everywhere_give_a_loadable_bundle(root, tmp_path):
    """The mutual information of members that agree (here: saturated probabilities) is 0 on every
    training image; train wrote uncertainty_vmax 0 and then refused its own bundle."""

    class Certain(nn.Module):
        """Probability 1 of foreground everywhere; ``k`` only makes the files differ."""

        def __init__(self, k: int) -> None:
            super().__init__()
            self.register_buffer("k", torch.tensor(float(k + 1)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            zero = x[:, :1] * self.k * 0.0
            return torch.cat([zero, zero + 1.0], dim=1)

    files = [export(Certain(k), tmp_path / f"s{k}.onnx", (1, 3, S, S)) for k in range(2)]
    (tmp_path / "spec.json").write_text(json.dumps({"output": "probabilities"}))
    out = tmp_path / "b"
    result = _train(root, files, out, "--segmenter-spec", str(tmp_path / "spec.json"),
                    "--method-param", "map=mutual_information")  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out, device="cpu")
    assert bundle.uncertainty_vmax is None
