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
    training_options(),
)
def train(
    data: Path | None,
    protocol: Path | None,
    method: str | None,
    method_params: dict[str, Any],
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

    cfg = PipelineConfig().replace(method=method, method_params=method_params or None, **settings)
    check_method(cfg.method, cfg.method_params)
    bundle = train_bundle(
        data, protocol, cfg, out, target_failure_recall=target_failure_recall, progress=not quiet
    )
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
