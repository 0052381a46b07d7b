"""``segqc models``: the models shipped inside the package, and their cards."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from segqc.cli.options import command
from segqc.errors import BundleError

MB = 1_000_000


def _bundle_facts(folder: Path) -> dict[str, Any]:
    """Image size and method (from ``bundle.json``) and the size of the folder's files."""
    file = folder / "bundle.json"
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"{file}: cannot read the bundle manifest: {err}") from err
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return {
        "image size": manifest.get("image_size", "?"),
        "method": manifest.get("method", "?"),
        "size": f"{size / MB:.1f} MB",
    }


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_line(metrics: Any) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return "none recorded"
    return ", ".join(f"{key}={_number(value)}" for key, value in metrics.items())


def _show_field(key: str, value: Any) -> None:
    label = key.replace("_", " ")
    if isinstance(value, dict):
        click.echo(f"{label}:")
        for sub, item in value.items():
            click.echo(f"  {sub}: {_number(item)}")
    elif isinstance(value, list):
        click.echo(f"{label}:")
        for item in value:
            click.echo(f"  - {item}")
    else:
        click.echo(f"{label}: {_number(value)}")


@command("models")
@click.argument("name", required=False)
def models(name: str | None) -> None:
    """List the models shipped with segqc, or show the card of model NAME.

    A shipped model's name works wherever a model folder does (--model of predict, serve and
    export).

    \b
    Example:
        segqc models
        segqc models isic2017
        segqc predict --model isic2017 scans/ --out results
    """
    from segqc.models import model_card, shipped_models

    shipped = shipped_models()
    if name is not None:
        card = model_card(name)  # an unknown name: one line listing the shipped ones
        for key, value in card.items():
            _show_field(key, value)
        for key, value in _bundle_facts(shipped[name]).items():
            _show_field(key, value)
        click.echo(f"folder: {shipped[name]}")
        return
    if not shipped:
        click.echo("no shipped models")
        return
    for model_name, folder in shipped.items():
        card = model_card(model_name)
        facts = _bundle_facts(folder)
        click.echo(f"{model_name}: {card.get('title', '')}".rstrip(": "))
        click.echo("  " + ", ".join(f"{key} {value}" for key, value in facts.items()))
        line = f"test metrics: {_metrics_line(card.get('metrics'))}"
        click.echo(textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="    "))
    click.echo("\nsegqc models NAME: the model's card; segqc predict --model NAME IMAGES --out OUT: use it.")
