"""``segqc demo``: train f and g once and evaluate them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segqc.cli.options import (
    apply,
    check_method,
    command,
    data_options,
    method_option,
    method_param_option,
    out_option,
    synthetic_size_options,
    training_options,
)

DEMO_PROTOCOL_HELP = "JSON file with 'train' and 'test' id lists (e.g. split.json)."


@command("demo")
@apply(
    out_option("Output folder.", default=Path("demo")),
    data_options(DEMO_PROTOCOL_HELP),
    method_option(),
    method_param_option(),
    synthetic_size_options(),
    training_options(),
)
def demo(
    out: Path,
    data: Path | None,
    protocol: Path | None,
    method: str | None,
    method_params: dict[str, Any],
    n_train: int | None,
    n_test: int | None,
    quiet: bool,
    **settings: Any,
) -> None:
    """Train f and g and evaluate them; writes report.md, results.json and figures/.

    \b
    Example:
        segqc demo --out demo
        segqc demo --data ../shared/data/isic2017 --protocol split.json --out isic
        segqc demo --method mcdropout --method-param samples=30
    """
    from segqc.config import PipelineConfig
    from segqc.demo import run_demo

    cfg = PipelineConfig().replace(method=method, method_params=method_params or None, **settings)
    check_method(cfg.method, cfg.method_params)
    sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    result = run_demo(out, cfg, data=data, protocol=protocol, progress=not quiet, **sizes)
    seg = result.results["segmentation"]
    click.echo(f"segmentation: mean Jaccard {seg['jaccard_mean']:.3f}, failures {seg['failure_rate']:.1%}")
    for row in result.results["rows"]:
        m = row["metrics"]
        click.echo(
            f"{row['method']}: RMSE {m['rmse']:.3f}, AUROC {m['auroc']:.3f}, detection error "
            f"{m['detection_error']:.3f}"
        )
    click.echo(f"wrote {out / 'report.md'}")
