"""``segqc train`` (make a model bundle) and ``segqc predict`` (assess new images with it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from segqc.commands.common import common_options, handle_errors

#: Exit code of ``segqc predict`` when some inputs could not be read (the others were assessed).
EXIT_PARTIAL = 3


@click.command("train")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Data folder (ISIC 2017 or images/ + masks/); default: the embedded synthetic set "
    "(320 training and 160 test images).",
)
@click.option(
    "--protocol",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON file with a 'train' id list and optionally a 'test' one; default: a seeded 80/20 "
    "train/test split of --data.",
)
@click.option("--method", default=None, help="Uncertainty method of f [msp]; see `segqc list-methods`.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Model bundle folder to write.",
)
@click.option(
    "--target-failure-recall",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Instead of the fixed threshold 0.7, choose the smallest threshold that refers at least "
    "this fraction of the failures (true Jaccard < 0.7) of 20% of the training images held "
    "out of training.",
)
@common_options
@handle_errors
def train(
    data: Path | None,
    protocol: Path | None,
    method: str | None,
    out: Path,
    target_failure_recall: float | None,
    quiet: bool,
    **settings: Any,
) -> None:
    """Train f and g and save them as a model bundle for `segqc predict`.

    The bundle folder holds f.safetensors, g.safetensors and bundle.json (settings, threshold,
    checksums, versions, training ids and, when a test split exists, test metrics).

    \b
    Example:
        segqc train --out model
        segqc train --data ../shared/data/isic2017 --protocol split.json --out isic-model \\
            --image-size 128 --target-failure-recall 0.9
    """
    from segqc.config import PipelineConfig
    from segqc.training import train_bundle

    cfg = PipelineConfig().replace(method=method, **settings)
    bundle = train_bundle(data, protocol, cfg, out, target_failure_recall=target_failure_recall,
                          progress=not quiet)  # fmt: skip
    rule = bundle.config.get("threshold_rule", {})
    click.echo(f"threshold {bundle.threshold:g}: {rule.get('description', '')}")
    test = bundle.config.get("test_metrics")
    if test:
        seg, ref, q = test["segmentation"], test["referral"], test["quality"]
        recall = "n/a" if ref["failure_recall"] is None else f"{ref['failure_recall']:.1%}"
        auroc = "n/a" if q.get("auroc") is None else f"{q['auroc']:.3f}"
        click.echo(
            f"test: mean Jaccard {seg['jaccard_mean']:.3f}, failures {seg['failure_rate']:.1%}, "
            f"referred {ref['referral_rate']:.1%}, failures caught {recall}, AUROC {auroc}"
        )
    click.echo(f"wrote {out}")


@click.command("predict")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Model bundle folder written by `segqc train`; with --backend onnx, a folder written by "
    "`segqc export`.",
)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Images decoded and assessed together.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    show_default=True,
    help="Run f and g with PyTorch (a bundle), or with onnxruntime and NumPy only (an export folder).",
)
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def predict(
    model: Path,
    inputs: tuple[str, ...],
    out: Path,
    batch_size: int,
    device: str,
    backend: str,
    no_report: bool,
    quiet: bool,
) -> None:
    """Segment images, predict the quality of each segmentation, and flag those to refer.

    INPUTS are image files, folders (searched recursively; hidden files and OUT are skipped) or
    glob patterns such as 'scans/**/*.jpg' (expanded here too when quoted). JPEG, PNG, BMP and
    TIFF of any size and mode (grey, RGB, RGBA, 16-bit, palette; EXIF rotation applied).

    \b
    Writes to OUT:
        masks/<id>.png        binary mask (0/255) at the image's own resolution
        uncertainty/<id>.png  uncertainty heat map
        overlays/<id>.png     mask drawn over the image
        quality.csv           id, predicted_jaccard, decision (pass/refer), threshold,
                              mean_uncertainty, source
        errors.csv            id, source, reason for inputs that could not be read
        report.html           a page for a reviewer, referrals first
    The id is the file stem; inputs sharing a stem get '-' and 8 hex digits of a hash of their
    path appended. Re-running into the same OUT skips the images already done.

    \b
    Exit codes: 0 all assessed, 3 some inputs could not be read (see errors.csv; the
    others were assessed), 1 an error such as a bad model bundle, 2 bad usage.

    With --backend onnx, --model is a folder written by `segqc export`; f and g run in
    onnxruntime and PyTorch is not imported. The outputs are the same files, with values equal to
    the torch backend's up to float rounding (mcdropout: up to its random sampling).

    \b
    Example:
        segqc predict --model model scans/ extra.png --out results
        segqc predict --backend onnx --model model-onnx scans/ --out results
    """
    from segqc.assess.folder import assess_files, collect_inputs
    from segqc.errors import DataError

    if backend == "onnx":
        from segqc.runtime.onnx_backend import load_onnx_bundle

        bundle = load_onnx_bundle(model, device=device)
    else:
        from segqc.bundle import load_bundle

        bundle = load_bundle(model, device=device)
    try:
        paths = collect_inputs(inputs, exclude=out)
    except DataError as err:
        raise click.BadParameter(str(err), param_hint="INPUTS") from None
    if not paths:
        raise click.BadParameter(
            "no image files found (.jpg .jpeg .png .bmp .tif .tiff)", param_hint="INPUTS"
        )
    summary = assess_files(
        bundle, paths, out, batch_size=batch_size, progress=not quiet, report=not no_report
    )
    n_ref = summary.n_referred
    click.echo(
        f"assessed {len(summary.assessed)} images, skipped {len(summary.skipped)} done before; "
        f"{len(summary.rows)} in quality.csv: {n_ref} referred, {len(summary.rows) - n_ref} passed"
    )
    if summary.report is not None:
        click.echo(f"wrote {summary.report}")
    if summary.errors:
        click.echo(f"{len(summary.errors)} inputs could not be read; see {out / 'errors.csv'}", err=True)
        sys.exit(EXIT_PARTIAL)
