"""`segqc models`, and the shipped model's name as --model of predict, serve and export."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from segqc.cli import cli
from segqc.models import MODELS_DIR
from tests.test_models import one_image

SHIPPED = MODELS_DIR / "isic2017"


def shipped_size() -> int:
    """The shipped ISIC model's image size, as its bundle.json says."""
    from segqc.models import shipped_models

    return json.loads((shipped_models()["isic2017"] / "bundle.json").read_text())["image_size"]


def test_models_lists_the_shipped_ones():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    card = json.loads((SHIPPED / "card.json").read_text())
    first = result.output.splitlines()[0]
    assert first == f"isic2017: {card['title']}"
    size = shipped_size()
    assert f"image size {size}, method msp, size " in result.output and " MB" in result.output
    metric = next(iter(card["metrics"]))
    assert f"test metrics: {metric}=" in result.output
    assert "segqc models NAME" in result.output


def test_models_name_prints_the_whole_card():
    result = CliRunner().invoke(cli, ["models", "isic2017"])
    assert result.exit_code == 0, result.output
    card = json.loads((SHIPPED / "card.json").read_text())
    for key, value in card.items():
        assert f"{key.replace('_', ' ')}:" in result.output
        if isinstance(value, str):
            assert value in result.output
    assert all(f"  - {limit}" in result.output for limit in card["limits"])
    assert all(f"  {metric}: " in result.output for metric in card["metrics"])
    assert f"folder: {SHIPPED}" in result.output
    assert f"image size: {shipped_size()}" in result.output


def test_models_unknown_name_is_one_line():
    result = CliRunner().invoke(cli, ["models", "nope"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: no shipped model named 'nope' (shipped: isic2017)"


@pytest.mark.parametrize("command", ["predict", "serve", "export"])
def test_model_option_takes_a_shipped_name(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "isic2017").mkdir()  # a folder of that name that is no model does not hide it
    (param,) = [p for p in cli.commands[command].params if p.name in ("model", "model_dir")]
    assert param.type.convert("isic2017", param, None) == SHIPPED
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "bundle.json").write_text("{}")
    assert str(param.type.convert("mine", param, None)) == "mine"
    assert "or the name of a shipped model (segqc models)" in param.help


def test_a_model_folder_taking_a_shipped_name_is_used_with_a_warning(tmp_path, monkeypatch, capsys):
    """A folder here named like a shipped model (yours, or planted) wins, but never silently."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "isic2017").mkdir()
    (tmp_path / "isic2017" / "bundle.json").write_text("{}")
    (param,) = [p for p in cli.commands["predict"].params if p.name == "model"]
    assert str(param.type.convert("isic2017", param, None)) == "isic2017"
    err = capsys.readouterr().err
    assert "warning: --model isic2017 is the folder" in err and "not the shipped model" in err
    param.type.convert(str(SHIPPED), param, None)  # a path to the shipped folder itself: no warning
    assert capsys.readouterr().err == ""


def test_predict_with_the_shipped_model_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = one_image(tmp_path)
    result = CliRunner().invoke(
        cli, ["predict", "--model", "isic2017", str(image), "--out", "out", "--quiet", "--no-report"]
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "quality.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["id"] == image.stem and row["decision"] in ("pass", "refer")


def test_predict_unknown_model_name_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["predict", "--model", "nope", "x.png", "--out", "out"])
    assert result.exit_code == 2 and "nope" in result.output
