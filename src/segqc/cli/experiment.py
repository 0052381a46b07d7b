"""``segqc experiment``: the paper's Table 1 over several seeds, resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from segqc.cli.options import (
    EXPERIMENT_CONFIG,
    apply,
    check_method,
    command,
    config_default,
    data_options,
    method_param_option,
    option,
    out_option,
    registry_names,
    synthetic_size_options,
    training_options,
)

#: Exit status of a run stopped by --time-budget (EX_TEMPFAIL: rerun to finish).
TIME_BUDGET_EXIT = 75


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


#: Seeds go to NumPy and PyTorch generators; 2^32 - 1 is far more than any run needs.
MAX_SEED = 2**32 - 1


def _seed_list(value: str) -> list[int]:
    """``"3,4"`` -> ``[3, 4]``; anything else (empty items, negatives, repeats) is a usage error."""
    items = [v.strip() for v in value.split(",")]
    seeds = [int(v) for v in items] if all(v.isascii() and v.isdigit() for v in items) else []
    if not seeds or max(seeds) > MAX_SEED or len(set(seeds)) < len(seeds):
        raise click.BadParameter(
            f"expected distinct integers from 0 to {MAX_SEED} separated by commas, got {value!r}",
            param_hint="--seed-list",
        )
    return seeds


def _setting(flag: str, help: str, type: click.ParamType) -> Any:
    name = flag.lstrip("-").replace("-", "_")
    return option(
        flag, type=type, default=None, help=help, default_from=config_default(name, EXPERIMENT_CONFIG)
    )


@command("experiment")
@apply(
    out_option(
        "Output folder; rerunning with the same folder resumes (finished units are reused; with other "
        "settings, what fits is reused and the tables are replaced, with a warning)."
    ),
    data_options(),
    option(
        "--methods",
        default=None,
        help_from=lambda: f"Comma-separated uncertainty methods, of: {registry_names('methods')}.",
        default_from=config_default("methods", EXPERIMENT_CONFIG),
    ),
    option(
        "--baselines",
        default=None,
        help_from=lambda: (
            "Comma-separated baselines, or 'none', of: "
            f"{registry_names('predictors', baselines=True)}; they use the f of the first method."
        ),
        default_from=config_default("baselines", EXPERIMENT_CONFIG),
    ),
    method_param_option(qualified=True),
    option(
        "--seeds",
        "n_seeds",
        type=click.IntRange(min=1),
        default=None,
        help="Run seeds 0..N-1.",
        default_from=lambda: len(config_default("seeds", EXPERIMENT_CONFIG)().split(",")),
    ),
    click.option("--seed-list", default=None, help="Comma-separated seeds, instead of --seeds (e.g. 3,4)."),
    _setting(
        "--quality-train",
        "g trained on f's predictions over its own training images (paper), on out-of-fold predictions "
        "(crossfit), or both as separate rows.",
        click.Choice(["paper", "crossfit", "both"]),
    ),
    _setting("--folds", "Folds of the cross-fitting.", click.IntRange(min=2)),
    _setting("--rca-references", "Reference images of RCA.", click.IntRange(min=1)),
    _setting("--quality-width", "Width of g.", click.IntRange(min=1)),
    click.option(
        "--paper-table",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The paper's Table 1 as JSON, shown beside ours (default: ../shared/paper/table1.json "
        "if it exists; none: no paper lines).",
    ),
    click.option(
        "--note",
        "notes",
        multiple=True,
        help="A note to show under the tables (e.g. what a row's setting was chosen on), kept in "
        "results.json; repeatable. Given notes replace the stored ones (--note '' clears them); "
        "without --note a rerun of the same settings keeps them.",
    ),
    click.option(
        "--preset",
        type=click.Choice(["paper"]),
        default=None,
        help="Start from named settings; options given explicitly override them. paper: the paper's "
        "setup (224 px, f 120 epochs, g 30 epochs, batches of 16, Adam 1e-3, 5 seeds, every row, MC dropout "
        "after every central block: mcdropout.placement=segnet); a --method-param adds to the preset's "
        "settings of its method.",
    ),
    click.option(
        "--time-budget",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="Stop cleanly after this long (finished units and the finished epochs of a training are "
        "kept; rerun the same command to resume); "
        "exits with status 75.",
    ),
    click.option(
        "--report-only",
        is_flag=True,
        help="Rebuild table1.md, report.md and figures/fig3.png from --out/results.json (no training); "
        "figures/fig2.png is kept.",
    ),
    synthetic_size_options(EXPERIMENT_CONFIG),
    training_options(EXPERIMENT_CONFIG, seed_help="Run the single seed S (instead of --seeds)."),
)
def experiment(
    out: Path,
    data: Path | None,
    protocol: Path | None,
    methods: str | None,
    baselines: str | None,
    method_params: dict[str, dict[str, Any]],
    n_seeds: int | None,
    seed_list: str | None,
    seed: int | None,
    quiet: bool,
    paper_table: Path | None,
    notes: tuple[str, ...],
    preset: str | None,
    time_budget: float | None,
    report_only: bool,
    **settings: Any,
) -> None:
    """Reproduce the paper's Table 1: every uncertainty method and baseline, over several seeds.

    Writes results.json, table1.md, report.md and figures/fig2.png, figures/fig3.png to --out;
    finished units (trained f, predictions, g) are cached in --out/units, so a killed run resumes
    where it stopped. --seed S runs the single seed S. --report-only rebuilds the tables and
    figure 3 of an existing --out from its results.json, without training.

    \b
    Example:
        segqc experiment --out table1 --seeds 3
        segqc experiment --data ../shared/data/isic2017 --protocol ../shared/data/isic2017/split.json \\
            --seeds 3 --quality-train both --out isic-table1
        segqc experiment --out table1 --method-param mcdropout.samples=30
        segqc experiment --preset paper --data ../shared/data/isic2017 \\
            --protocol ../shared/data/isic2017/split.json --device cuda --time-budget 3600 --out paper
        segqc experiment --report-only --out docs/results/isic2017-600
    """
    from segqc import engine
    from segqc.experiment.run import ExperimentConfig, run_experiment
    from segqc.report import format_value

    if report_only:
        from segqc.experiment.report import render_report

        ctx = click.get_current_context()
        ignored = [
            max(param.opts, key=len)
            for param in ctx.command.params
            if param.name not in ("out", "paper_table", "report_only", "quiet", "notes")
            and ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
        ]
        if ignored:  # they would change nothing: the tables come from results.json as it is
            raise click.UsageError(
                "--report-only rebuilds the tables from --out/results.json and takes only --out, "
                f"--paper-table, --note and --quiet; drop {', '.join(ignored)} "
                "(or leave out --report-only to run)"
            )

        command = ["segqc", *sys.argv[1:]]
        render_report(out, paper_table=paper_table, command=command, notes=list(notes) if notes else None)
        click.echo(f"rewrote {out / 'table1.md'}, {out / 'report.md'} and {out / 'results.json'}")
        return
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
    start = ExperimentConfig.preset(preset)
    run_methods = start.methods if methods is None else _names(methods)
    # the preset's settings of the methods this run has; a given setting overrides the preset's
    merged = {m: dict(p) for m, p in start.method_params.items() if m in run_methods}
    for method, params in method_params.items():
        merged.setdefault(method, {}).update(params)
    for method, params in merged.items():
        check_method(method, params)
    cfg = start.replace(
        methods=_names(methods),
        baselines=_names(baselines),
        seeds=seeds,
        method_params=merged,
        **settings,
    )
    try:
        with engine.time_budget(time_budget):
            results = run_experiment(
                cfg,
                out,
                data=data,
                protocol=protocol,
                progress=not quiet,
                command=["segqc", *sys.argv[1:]],
                paper_table=paper_table,
                notes=list(notes) if notes else None,
            )
    except engine.TimeBudgetExceeded:
        click.echo(
            f"stopped at the time budget ({time_budget:g} s); finished units, and the finished epochs of "
            f"the training cut off, are kept in {out / 'units'}: rerun the same command to resume",
            err=True,
        )
        sys.exit(TIME_BUDGET_EXIT)
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
