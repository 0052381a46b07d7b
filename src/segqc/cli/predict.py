"""``segqc predict``: assess new images with a model folder (a bundle or an ONNX export)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from segqc.cli.options import (
    EXIT_PARTIAL,
    apply,
    command,
    device_option,
    model_option,
    option,
    out_option,
    quiet_option,
    signature_default,
    trusted_key_option,
    warn_if_unfit,
)
from segqc.errors import BundleError

LOAD_MODEL = "segqc.runtime:load_model"
#: What ``--backend`` asks the model folder to be, and the manifest that says so.
KINDS = {"torch": "a bundle (from `segqc train`)", "onnx": "an ONNX export (from `segqc export`)"}
MANIFESTS = {"torch": "bundle.json", "onnx": "export.json"}


@command("predict")
@apply(
    model_option(
        "Model folder: a bundle written by `segqc train`, or an ONNX export written by `segqc export`."
    ),
    click.argument("inputs", nargs=-1, required=True),
    out_option("Output folder."),
    option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Images decoded and assessed together.",
        default_from=signature_default("segqc.assess:assess_files", "batch_size"),
    ),
    device_option(signature_default(LOAD_MODEL, "device")),
    click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="ONNX Runtime threads (ONNX exports only); default: its own choice.",
    ),
    click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=None,
        help="Seed of stochastic uncertainty methods; default: the model's training seed.",
    ),
    click.option(
        "--backend",
        type=click.Choice(["torch", "onnx"]),
        default=None,
        help="Optional, for older scripts: the backend the model folder must have (torch: a bundle, "
        "onnx: an export); the folder itself decides.",
    ),
    trusted_key_option("use"),
    click.option(
        "--predictions",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help="Precomputed outputs of your segmentation model instead of running f: <id>.png (8/16-bit "
        "grey) or <id>.npy (float) foreground probabilities at the image's own size, or samples "
        "<id>_s0.npy, <id>_s1.npy, ..., read out by the model's method (msp for one map; mcdropout or "
        "ensemble for samples); an image without its map goes to errors.csv (docs/your-model.md). "
        "Every image is assessed again (its maps may have changed), none skipped as done before.",
    ),
    click.option("--no-report", is_flag=True, help="Do not write report.html."),
    quiet_option(),
)
def predict(
    model: Path,
    inputs: tuple[str, ...],
    out: Path,
    batch_size: int | None,
    device: str | None,
    threads: int | None,
    seed: int | None,
    backend: str | None,
    trusted_key: Path | None,
    predictions: Path | None,
    no_report: bool,
    quiet: bool,
) -> None:
    """Segment images, predict the quality of each segmentation, and flag those to refer.

    INPUTS are image files, folders (searched recursively; hidden files, OUT and the output folders
    of earlier runs are skipped) or glob patterns such as 'scans/**/*.jpg' (expanded here too when
    quoted); folders are searched for .jpg .jpeg .png .bmp .tif .tiff files. Files are decoded by
    their content as JPEG, PNG, BMP, TIFF, GIF, WebP or PPM, of any size and mode (grey, RGB, RGBA,
    16-bit, palette; EXIF rotation applied); other formats, and a file with several frames
    (multi-page TIFF, animation), are not assessed but listed in errors.csv.

    \b
    Writes to OUT:
        masks/<id>.png        binary mask (0/255) at the image's own resolution
        uncertainty/<id>.png  uncertainty heat map
        overlays/<id>.png     mask drawn over the image
        quality.csv           id, predicted_jaccard, decision (pass/refer), reason,
                              jaccard_lower, threshold, mean_uncertainty, source,
                              input_sha256
        errors.csv            id, source, reason for inputs that could not be assessed
        audit.jsonl           one JSON line per decision or error (appended, never rewritten)
        report.html           a page for a reviewer, referrals first
    The id is the file stem, made safe as a file name (odd characters become '_', long names are
    cut and end in a hash). An input whose stem is already taken in OUT by another file gets '-'
    and 8 hex digits of a hash of its path appended; a file keeps its id in every run into OUT.
    OUT accumulates: re-running skips the images already done (unless the file changed) and adds
    new ones, each once. One run at a time may use OUT; a second is refused.
    \b
    Exit codes: 0 all assessed, 3 some inputs could not be assessed (see errors.csv; the
    others were assessed), 1 an error such as a bad model folder, 2 bad usage.

    --model is a bundle (f and g run in PyTorch), a shipped model's name (a bundle inside the
    package, `segqc models`) or a folder written by `segqc export` (f and g run in onnxruntime and
    PyTorch is not imported). The outputs are the same files, with values
    equal up to float rounding (stochastic methods draw the same samples for the same --seed).

    \b
    Example:
        segqc predict --model model scans/ extra.png --out results
        segqc predict --model isic2017 scans/ --out results
        segqc predict --model model-onnx scans/ --out results
        segqc predict --model model scans/ --predictions my-model-outputs/ --out results
    """
    from segqc.assess import assess_files, collect_inputs
    from segqc.errors import DataError
    from segqc.runtime import load_model

    if backend is not None and not (model / MANIFESTS[backend]).is_file():
        raise BundleError(
            f"{model}: not {KINDS[backend]}, which --backend {backend} asks for ({MANIFESTS[backend]} not "
            "found); without --backend the folder decides"
        )
    given = {"device": device, "threads": threads, "seed": seed}
    loaded = load_model(model, trusted_key=trusted_key, **{k: v for k, v in given.items() if v is not None})
    warn_if_unfit(loaded)
    if threads is not None and loaded.backend != "onnx":
        click.echo(f"warning: --threads is for ONNX exports; {model} runs with PyTorch's threads", err=True)
    if backend is not None and loaded.backend != backend:
        kind = KINDS.get(loaded.backend, loaded.backend)
        raise BundleError(
            f"{model}: --backend {backend} but the folder is {kind}; without --backend the folder decides"
        )
    has_own_f = not getattr(getattr(loaded, "segmenter", None), "precomputed", False)
    if predictions is None and not has_own_f:
        raise click.UsageError(
            f"{model} was trained on precomputed outputs and has no f to run: give them with "
            "--predictions DIR"
        )
    if predictions is not None and has_own_f:
        # Legitimate for this f's own outputs computed elsewhere; unvalidated for another model's.
        click.echo(
            f"warning: {model} has its own f, and its g learned that f's errors: judge with it only "
            "outputs of that same f (for another segmentation model's, train a model on its outputs: "
            "segqc train --predictions)",
            err=True,
        )
    try:
        paths = collect_inputs(inputs, exclude=out)
    except DataError as err:
        raise click.BadParameter(str(err), param_hint="INPUTS") from None
    if not paths:
        raise click.BadParameter(
            "no image files found (.jpg .jpeg .png .bmp .tif .tiff)", param_hint="INPUTS"
        )
    options: dict = {"batch_size": batch_size} if batch_size is not None else {}
    if predictions is not None:
        from segqc.external.predictions import PredictionFolder

        options["predictions"] = PredictionFolder(predictions)
    # --out was checked when parsed; assess_files checks it again, holds it and refuses a busy one.
    summary = assess_files(loaded, paths, out, progress=not quiet, report=not no_report, **options)
    n_ref = summary.n_referred
    click.echo(
        f"assessed {images(len(summary.assessed))}, skipped {len(summary.skipped)} done before; "
        f"{len(summary.rows)} in quality.csv: {n_ref} referred, {len(summary.rows) - n_ref} passed"
    )
    if summary.report is not None:
        click.echo(f"wrote {summary.report}")
    if summary.errors:
        n_bad = len(summary.errors)
        click.echo(
            f"{n_bad} {'input' if n_bad == 1 else 'inputs'} could not be assessed; see {out / 'errors.csv'}",
            err=True,
        )
        sys.exit(EXIT_PARTIAL)


def images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"
