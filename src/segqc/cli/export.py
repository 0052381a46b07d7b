"""``segqc export``: write a bundle's f and g as ONNX graphs for ``segqc predict``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from segqc.cli.options import command, model_option, out_option
from segqc.runtime.onnx_backend import OPSET


@command("export")
@model_option("Model bundle folder written by `segqc train`.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx"]),
    default="onnx",
    show_default=True,
    help="Export format.",
)
@out_option("Export folder.")
@click.option(
    "--opset", type=click.IntRange(min=14), default=OPSET, show_default=True, help="ONNX operator set."
)
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "torchscript"]),
    default="dynamo",
    show_default=True,
    help="torch.onnx exporter: dynamo (torch.export-based, PyTorch's default) or torchscript (legacy "
    "tracer, deprecated by PyTorch but much faster to export).",
)
def export(model: Path, fmt: str, out: Path, opset: int, exporter: str) -> None:
    """Export f (with its uncertainty readout) and g to ONNX, checked against PyTorch.

    \b
    Writes to OUT:
        <role>.onnx            f's graphs, as its uncertainty method declares them: f.onnx
                               (uint8 images (N, S, S, 3) -> probs (N, 2, S, S), uncertainty
                               (N, S, S)) for a deterministic method; a stochastic method's
                               graphs take their random draws as inputs
        g.onnx                 images, masks (N, S, S) uint8, uncertainty (N, S, S) float32
                               -> quality (N,), the predicted Jaccard
        export.json            method, threshold, image size S, checksums, versions, and the
                               largest differences from PyTorch measured on a few images
    Normalisation is baked into the graphs; the batch axis is dynamic. The export fails
    (exit 1) if onnxruntime and PyTorch differ by more than 1e-4 (+ 1e-4 relative).

    \b
    Example:
        segqc export --model model --format onnx --out model-onnx
        segqc predict --model model-onnx scans/ --out results
    """
    from segqc.runtime.export import export_onnx

    path = export_onnx(model, out, opset=opset, exporter=exporter)
    manifest = json.loads((path / "export.json").read_text(encoding="utf-8"))
    parity = manifest["parity"]
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in parity["max_abs_diff"].items())
    click.echo(
        f"method {manifest['method']}, opset {opset}, {exporter} exporter; largest difference from PyTorch "
        f"on {parity['n_images']} images: {diffs}"
    )
    files = sorted(spec["file"] for spec in manifest["graphs"].values())
    click.echo(f"wrote {', '.join(files)} and export.json to {path}")
