"""The models shipped inside the package: name resolution, the ISIC bundle and its card, a plain wheel
install."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from segqc.models import CARD_FIELDS, MODELS_DIR, model_card, resolve_model, shipped_models

REPO = Path(__file__).resolve().parents[1]
ISIC = REPO.parent / "shared" / "data" / "isic2017"
MAX_BYTES = 10 * 1024 * 1024


def isic_test_image() -> Path | None:
    """The first ISIC 2017 test image of split.json, if the data is here."""
    split = ISIC / "split.json"
    if not split.is_file():
        return None
    first = json.loads(split.read_text())["test"][0]
    return next(iter(sorted(ISIC.glob(f"ISIC-2017_*_Data/{first}.jpg"))), None)


def one_image(tmp_path: Path) -> Path:
    """An ISIC test image if present, else a synthetic one written to ``tmp_path``."""
    found = isic_test_image()
    if found is not None:
        return found
    from PIL import Image

    from segqc.data.synthetic import make_synthetic

    path = tmp_path / "synthetic.png"
    Image.fromarray(make_synthetic(1, 64, seed=1)[0][0]).save(path)
    return path


# -- resolution ----------------------------------------------------------------------------------


def test_the_isic_model_is_shipped():
    assert shipped_models() == {"isic2017": MODELS_DIR / "isic2017"}


def test_a_name_resolves_to_the_shipped_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model("isic2017") == MODELS_DIR / "isic2017"
    assert resolve_model(Path("isic2017")) == MODELS_DIR / "isic2017"


def test_an_existing_model_folder_wins_over_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for manifest in ("bundle.json", "export.json"):
        folder = tmp_path / manifest.split(".")[0] / "isic2017"
        folder.mkdir(parents=True)
        (folder / manifest).write_text("{}")
        assert resolve_model(folder) == folder
    (tmp_path / "isic2017").mkdir()
    (tmp_path / "isic2017" / "bundle.json").write_text("{}")
    assert resolve_model("isic2017") == Path("isic2017")


def test_a_folder_that_is_no_model_does_not_hide_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "isic2017" / "ISIC-2017_Training_Data").mkdir(parents=True)  # a data folder
    assert resolve_model("isic2017") == MODELS_DIR / "isic2017"


def test_anything_else_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("no-such-model", "models/isic2017", "./isic2017", str(tmp_path / "isic2017"), ".", ""):
        assert resolve_model(value) == Path(value)


def test_card_schema():
    card = model_card("isic2017")
    assert list(card) == list(CARD_FIELDS) and card["name"] == "isic2017"
    assert "128 x 128 px" in card["description"] and card["card"] == "docs/models/isic2017.md"
    assert all(isinstance(v, (int, float)) for v in card["metrics"].values())
    assert isinstance(card["limits"], list) and card["limits"]


def test_the_card_is_the_shipped_models_own():
    """card.json and docs/models/isic2017.md come from one run of benchmarks/model_card.py on this
    very bundle (its checksum is in the card), so neither can silently describe another model."""
    bundle = json.loads((MODELS_DIR / "isic2017" / "bundle.json").read_text())
    doc = (REPO / "docs" / "models" / "isic2017.md").read_text()
    assert f"`{bundle['manifest_sha256']}`" in doc
    evaluation = json.loads((REPO / "docs" / "models" / "isic2017.json").read_text())
    metrics = model_card("isic2017")["metrics"]
    assert metrics["segmentation.jaccard_mean"] == round(evaluation["segmentation"]["jaccard"]["estimate"], 4)
    assert metrics["quality.auroc"] == round(evaluation["quality"]["auroc"]["estimate"], 4)
    assert metrics["referral.threshold"] == bundle["threshold"]


def test_unknown_card_names_the_shipped_ones():
    from segqc.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="isic2017"):
        model_card("nope")


# -- the shipped bundle --------------------------------------------------------------------------


def test_shipped_bundle_is_small():
    folder = MODELS_DIR / "isic2017"
    names = {p.name for p in folder.iterdir()}
    assert {"bundle.json", "f.safetensors", "g.safetensors", "card.json"} <= names
    assert sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) <= MAX_BYTES


def test_shipped_bundle_loads_and_assesses(tmp_path):
    from segqc.assess import assess_images
    from segqc.data.readers import read_image
    from segqc.runtime import load_model

    model = load_model(resolve_model("isic2017"), device="cpu")
    assert model.fit
    (result,) = assess_images(model, [read_image(one_image(tmp_path))], ["x"])
    assert math.isfinite(result.predicted_jaccard) and 0 <= result.predicted_jaccard <= 1
    assert result.decision in ("pass", "refer")


# -- a plain (non-editable) install --------------------------------------------------------------


@pytest.mark.slow
def test_shipped_model_works_after_a_wheel_install(tmp_path):
    """Build a wheel, install it in a fresh venv (reusing the system's torch etc.), predict elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def run(*args: str | Path, cwd: Path = tmp_path) -> str:
        done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    # Build from a copy of what the wheel is made of, so no build/ or egg-info (stale files) is involved.
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source)
    (wheel,) = wheels.glob("segqc-*.whl")
    venv_dir = tmp_path / "venv"
    venv.create(venv_dir, system_site_packages=True, with_pip=False)
    python, segqc = venv_dir / "bin" / "python", venv_dir / "bin" / "segqc"
    # The venv sees the system's pip and segqc (an editable install): --force-reinstall puts the wheel's
    # copy in the venv anyway (the system one is outside it and left alone).
    run(python, "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = Path(run(python, "-c", "import segqc; print(segqc.__file__)", cwd=work).strip())
    assert where.is_relative_to(venv_dir), f"the venv imported {where}, not the wheel"
    image = one_image(tmp_path)
    out = work / "out"
    run(segqc, "predict", "--model", "isic2017", image, "--out", out, "--quiet", "--no-report", cwd=work)
    with open(out / "quality.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [image.stem]
    assert np.isfinite(float(rows[0]["predicted_jaccard"])) and rows[0]["decision"] in ("pass", "refer")
    assert "isic2017" in run(segqc, "models", cwd=work)
