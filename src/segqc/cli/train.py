"""``segqc train``: make a model bundle for ``segqc predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segqc.cli.options import (
    apply,
    check_method,
    command,
    config_default,
    data_options,
    method_option,
    method_param_option,
    option,
    out_option,
    training_options,
)

TRAIN_PROTOCOL_HELP = (
    "JSON file with a 'train' id list and optionally a 'test' one; default: a seeded 80/20 train/test "
    "split of --data."
)


def _recall_help(threshold: float) -> str:
    return (
        f"Instead of the fixed threshold {threshold:g}, choose the smallest threshold that refers at least "
        f"this fraction of the failures (true Jaccard < {threshold:g}) of 20% of the training images held "
        "out of training."
    )


@command("train")
@apply(
    data_options(TRAIN_PROTOCOL_HELP),
    method_option(),
    method_param_option(),
    out_option("Model bundle folder to write."),
    option(
        "--target-failure-recall",
        type=click.FloatRange(0.0, 1.0, min_open=True),
        default=None,
        help_from=lambda: _recall_help(config_default("threshold")()),
    ),
    option(
        "--confidence",
        type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
        default=None,
        help="With --target-failure-recall R: choose the threshold so that the failure recall is >= R with "
        "this probability (a Clopper-Pearson bound on the held-out failures), e.g. 0.95.",
    ),
    option(
        "--force",
        is_flag=True,
        help="Write the bundle even if it fails its fitness check (g constant, or no held-out failure "
        "referred); it is marked unfit and predict and serve warn about it.",
    ),
    click.option(
        "--segmenter",
        "segmenter_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        multiple=True,
        help="Your own segmentation model as an ONNX file: segqc keeps it fixed, runs it on the training "
        "images and trains only g and the gate; the bundle stores a copy (docs/your-model.md). Given K >= 2 "
        "times (with --method ensemble): an ensemble of K models, fed with one SPEC.",
    ),
    click.option(
        "--segmenter-spec",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="With --segmenter: SPEC.json saying how to feed it (input size, layout, channel order, "
        "scale, mean, std) and read its output (logits or probabilities, foreground channel); one SPEC "
        "for every member of an ensemble.",
    ),
    click.option(
        "--quality-train",
        type=click.Choice(["paper", "crossfit"]),
        default="paper",
        show_default=True,
        help="What g learns from: f's predictions over its own training images (paper), or out-of-fold "
        "predictions (crossfit: --folds more trainings of f, each on the other folds, predict their fold, "
        "so g sees the failures f makes on unseen images; the bundle's f still trains on every image).",
    ),
    click.option(
        "--folds",
        type=click.IntRange(min=2),
        default=None,
        help="Folds of --quality-train crossfit.  [default: 3]",
    ),
    click.option(
        "--predictions",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help="Instead of f, precomputed outputs of your model on the --data images: <id>.png/.npy "
        "foreground probabilities at the image's own size, or samples <id>_s<k>.npy; trains only g and the "
        "gate (the method reads them out: msp for one map; for samples mcdropout, the default, or "
        "--method ensemble with its map setting); the bundle then "
        "needs `segqc predict --predictions` (docs/your-model.md).",
    ),
    training_options(),
)
def train(
    data: Path | None,
    protocol: Path | None,
    method: str | None,
    method_params: dict[str, Any],
    out: Path,
    target_failure_recall: float | None,
    confidence: float | None,
    force: bool,
    segmenter_file: tuple[Path, ...],
    segmenter_spec: Path | None,
    predictions: Path | None,
    quality_train: str,
    folds: int | None,
    quiet: bool,
    **settings: Any,
) -> None:
    """Train f and g and save them as a model bundle for `segqc predict`.

    The bundle folder holds f.safetensors, g.safetensors and bundle.json (settings, threshold,
    checksums, versions, training ids and, when a test split exists, test metrics). With
    --segmenter, f is your own ONNX model (copied as segmenter.onnx; K models, an ensemble with
    --method ensemble, as segmenter-0.onnx ...) and only g is trained.

    \b
    Example:
        segqc train --out model
        segqc train --data ../shared/data/isic2017 --protocol split.json --out isic-model \\
            --image-size 128 --target-failure-recall 0.9
        segqc train --segmenter unet.onnx --segmenter-spec SPEC.json --data mydata --out qc-model
        segqc train --segmenter a.onnx --segmenter b.onnx --segmenter c.onnx --method ensemble \\
            --segmenter-spec SPEC.json --data mydata --out qc-ensemble
    """
    from segqc.config import PipelineConfig
    from segqc.errors import SegQCError
    from segqc.external import external_params
    from segqc.training import external_segmenter, precomputed_segmenter, train_bundle

    folder = None
    if predictions is not None:
        from segqc.external.predictions import KIND_NAMES, PredictionFolder, map_methods

        if segmenter_file:
            raise click.UsageError("--predictions and --segmenter exclude each other")
        if data is None:
            raise click.UsageError("--predictions needs --data (the maps are looked up by its image ids)")
        folder = PredictionFolder(predictions)
        if Path(data).is_dir():  # its ids: a map <id>_s0.npy of an image "<id>_s0" is not a sample
            from segqc.data.readers import find_pairs

            folder.expect(find_pairs(data))
        kind = folder.folder_kind()
        fits = map_methods(kind)  # the methods that read this kind out; the first is the default
        if method is not None and method not in fits:
            raise click.UsageError(
                f"--predictions in {predictions} hold {KIND_NAMES[kind]}: --method must be "
                f"{' or '.join(fits)}, not {method!r}"
            )
        method = fits[0] if method is None else method
    cfg = PipelineConfig().replace(method=method, method_params=method_params or None, **settings)
    check_method(cfg.method, cfg.method_params)
    if confidence is not None and target_failure_recall is None:
        raise click.UsageError("--confidence needs --target-failure-recall")
    if folds is not None and quality_train != "crossfit":
        # silently ignored, it would leave g trained the paper's way by someone who asked for folds
        raise click.UsageError("--folds needs --quality-train crossfit")
    if segmenter_spec is not None and not segmenter_file:
        raise click.UsageError("--segmenter-spec needs --segmenter")
    if segmenter_file:
        try:  # the method must read out this many models, before any is loaded
            external_params(cfg.method, cfg.method_params, len(segmenter_file))
        except SegQCError as err:
            raise click.UsageError(str(err)) from None
    segmenter = external_segmenter(segmenter_file, segmenter_spec, cfg) if segmenter_file else None
    if folder is not None:
        segmenter = precomputed_segmenter(folder, data, cfg)
    bundle = train_bundle(
        data, protocol, cfg, out, target_failure_recall=target_failure_recall, confidence=confidence,
        force=force, segmenter=segmenter, quality_train=quality_train, folds=folds or 3, progress=not quiet,
    )  # fmt: skip
    rule = bundle.config.get("threshold_rule", {})
    click.echo(f"threshold {bundle.threshold:g}: {rule.get('description', '')}")
    gate = bundle.gate
    fitness, ood = gate.fitness, gate.ood
    click.echo(
        f"held-out: {fitness['n_heldout']} images, {fitness['n_heldout_failures']} failures, "
        f"out-of-distribution limit {ood.limit:.3g} (refers {ood.alpha:.0%} of in-distribution images), "
        f"lower bound margin {gate.conformal['margin']:.3f} at {gate.conformal['confidence']:g}"
    )
    for note in fitness.get("notes", []):
        click.echo(f"note: {note}", err=True)
    if not gate.fit:
        click.echo(
            f"warning: model is UNFIT ({'; '.join(fitness['problems'])}); written because of --force",
            err=True,
        )
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
