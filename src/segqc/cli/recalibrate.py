"""``segqc recalibrate``: another referral threshold for a trained model, without training."""

from __future__ import annotations

from pathlib import Path

import click

from segqc.cli.options import (
    DEVICES,
    command,
    data_options,
    model_option,
    option,
    out_option,
    trusted_key_option,
)


@command("recalibrate")
@model_option("Model bundle folder written by `segqc train`.")
@data_options("The protocol file the model was trained with, if any.")
@out_option("New model bundle folder to write: a new or empty one, not the model's own.")
@option(
    "--target-failure-recall",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Choose the smallest threshold that refers at least this fraction of the failures among the "
    "model's held-out training images; without it, the fixed threshold (the failure Jaccard, 0.7).",
)
@option(
    "--confidence",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=None,
    help="With --target-failure-recall R: the failure recall is >= R with this probability (a "
    "Clopper-Pearson bound on the held-out failures), e.g. 0.9.",
)
@option("--force", is_flag=True, help="Write the bundle even if it fails its fitness check (marked unfit).")
@option("--device", type=click.Choice(DEVICES), default=None, help="Where to run the networks.")
@trusted_key_option("recalibrate")
def recalibrate(
    model: Path,
    data: Path | None,
    protocol: Path | None,
    out: Path,
    target_failure_recall: float | None,
    confidence: float | None,
    force: bool,
    device: str | None,
    trusted_key: Path | None,
) -> None:
    """Choose a model's referral threshold again, on its own held-out images, without training.

    f, g, the out-of-distribution limit and the lower-bound margin stay as they are: g predicts the
    Jaccard of the 20% of the training images that `segqc train` held out (found again in --data by
    the model's seed and checked against the ids and masks it recorded), the threshold is chosen by
    the rule of `segqc train --target-failure-recall`, the gate's fitness is checked again, and the
    same f and g are written to OUT with the new threshold (and test metrics, when --data has the
    model's test split). MODEL is not changed; OUT is not signed (`segqc sign` it if you sign models,
    after checking MODEL's signature with --trusted-key).

    \b
    Example:
        segqc recalibrate --model isic2017 --data ../shared/data/isic2017 \\
            --protocol ../shared/data/isic2017/split.json --target-failure-recall 0.9 \\
            --confidence 0.9 --out isic2017-r90
        segqc predict --model isic2017-r90 scans/ --out results
    """
    from segqc.recalibrate import recalibrate_bundle

    if confidence is not None and target_failure_recall is None:
        raise click.UsageError("--confidence needs --target-failure-recall")
    bundle = recalibrate_bundle(
        model, data, protocol, out, target_failure_recall=target_failure_recall, confidence=confidence,
        force=force, device=device, trusted_key=trusted_key,
    )  # fmt: skip
    before = bundle.config["recalibrated"]["previous_threshold"]
    rule = bundle.config.get("threshold_rule", {})
    fitness = bundle.gate.fitness
    recall = fitness.get("failure_recall")
    click.echo(f"threshold {before:g} -> {bundle.threshold:g}: {rule.get('description', '')}")
    click.echo(
        f"held-out: {fitness['n_heldout']} images, {fitness['n_heldout_failures']} failures, "
        f"referred {fitness['referral_rate']:.1%}, failures referred "
        f"{'n/a' if recall is None else f'{recall:.1%}'}"
    )
    if not bundle.gate.fit:
        problems = "; ".join(fitness["problems"])
        click.echo(f"warning: model is UNFIT ({problems}); written because of --force", err=True)
    test = bundle.config.get("test_metrics")
    if test:
        ref = test["referral"]
        caught = "n/a" if ref["failure_recall"] is None else f"{ref['failure_recall']:.1%}"
        click.echo(f"test: referred {ref['referral_rate']:.1%}, failures caught {caught}")
    click.echo(f"wrote {out}")
