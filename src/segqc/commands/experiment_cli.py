"""``segqc experiment``: the paper's Table 1 over several seeds, resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from segqc.commands.common import common_options, handle_errors


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def _seed_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, got {value!r}", param_hint="--seed-list"
        ) from None


@click.command("experiment")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder; rerunning with the same folder resumes (finished units are reused).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Data folder (ISIC 2017 or images/ + masks/); default: the embedded synthetic set.",
)
@click.option(
    "--protocol",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON file with 'train' and 'test' id lists (e.g. split.json); default: a seeded 80/20 split.",
)
@click.option("--methods", default=None, help="Comma-separated uncertainty methods [msp,mcdropout,hcnn,lce].")
@click.option(
    "--baselines",
    default=None,
    help="Comma-separated baselines, or 'none' [no-uncertainty,qualitynet,rca]; they use the f of the "
    "first method.",
)
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), default=None, help="Run seeds 0..N-1 [3].")
@click.option("--seed-list", default=None, help="Comma-separated seeds, instead of --seeds (e.g. 3,4).")
@click.option(
    "--quality-train",
    type=click.Choice(["paper", "crossfit", "both"]),
    default=None,
    help="g trained on f's predictions over its own training images (paper), on out-of-fold "
    "predictions (crossfit), or both as separate rows [paper].",
)
@click.option("--folds", type=click.IntRange(min=2), default=None, help="Folds of the cross-fitting [3].")
@click.option(
    "--rca-references", type=click.IntRange(min=1), default=None, help="Reference images of RCA [20]."
)
@click.option("--mc-samples", type=click.IntRange(min=1), default=None, help="Samples of mcdropout [20].")
@click.option("--quality-width", type=click.IntRange(min=1), default=None, help="Width of g [16].")
@click.option("--n-train", type=click.IntRange(min=2), default=None, help="Synthetic training images [320].")
@click.option("--n-test", type=click.IntRange(min=1), default=None, help="Synthetic test images [160].")
@common_options
@handle_errors
def experiment(
    out: Path,
    data: Path | None,
    protocol: Path | None,
    methods: str | None,
    baselines: str | None,
    n_seeds: int | None,
    seed_list: str | None,
    seed: int | None,
    quiet: bool,
    **settings: Any,
) -> None:
    """Reproduce the paper's Table 1: every uncertainty method and baseline, over several seeds.

    Writes results.json, table1.md, report.md and figures/fig2.png, figures/fig3.png to --out;
    finished units (trained f, predictions, g) are cached in --out/units, so a killed run resumes
    where it stopped. --seed S runs the single seed S.

    \b
    Example:
        segqc experiment --out table1 --seeds 3
        segqc experiment --data ../shared/data/isic2017 --protocol ../shared/data/isic2017/split.json \\
            --seeds 3 --quality-train both --out isic-table1
    """
    from segqc.experiment.run import ExperimentConfig, run_experiment
    from segqc.report import format_value

    options = (("--seeds", n_seeds), ("--seed-list", seed_list), ("--seed", seed))
    given = [name for name, value in options if value is not None]
    if len(given) > 1:
        raise click.UsageError(f"use only one of {', '.join(given)}")
    seeds = None
    if n_seeds is not None:
        seeds = list(range(n_seeds))
    elif seed_list is not None:
        seeds = _seed_list(seed_list)
    elif seed is not None:
        seeds = [seed]
    cfg = ExperimentConfig().replace(
        methods=_names(methods), baselines=_names(baselines), seeds=seeds, **settings
    )
    results = run_experiment(
        cfg, out, data=data, protocol=protocol, progress=not quiet, command=["segqc", *sys.argv[1:]]
    )
    for method, seg in results["segmentation"].items():
        jac = format_value(seg["jaccard_mean"], False, seg["jaccard_std"])
        click.echo(f"f ({method}): mean Jaccard {jac}")
    for row in results["rows"]:
        m, s = row["metrics"], row["std"]
        click.echo(
            f"{row['method']}: RMSE {format_value(m['rmse'], False, s['rmse'])}, "
            f"AUROC {format_value(m['auroc'], True, s['auroc'])} %, "
            f"detection error {format_value(m['detection_error'], True, s['detection_error'])} %"
        )
    units = results["units"]
    click.echo(f"units: {units['computed']} computed, {units['cached']} reused; wrote {out / 'table1.md'}")
