"""Command-line interface: thin commands over the library. Library errors become exit code 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segqc import __version__
from segqc.commands.common import common_options, handle_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segqc")
def cli() -> None:
    """segqc: tell when a medical image segmentation has failed."""


@cli.command()
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True
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
    help="JSON file with 'train' and 'test' id lists (e.g. split.json).",
)
@click.option("--method", default=None, help="Uncertainty method [msp].")
@click.option("--n-train", type=int, default=None, help="Synthetic training images [320].")
@click.option("--n-test", type=int, default=None, help="Synthetic test images [160].")
@common_options
@handle_errors
def demo(
    out: Path,
    data: Path | None,
    protocol: Path | None,
    method: str | None,
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
    """
    from segqc.config import PipelineConfig
    from segqc.data.splits import DEMO_TEST, DEMO_TRAIN
    from segqc.demo import run_demo

    cfg = PipelineConfig().replace(method=method, **settings)
    result = run_demo(
        out,
        cfg,
        data=data,
        protocol=protocol,
        n_train=n_train or DEMO_TRAIN,
        n_test=n_test or DEMO_TEST,
        progress=not quiet,
    )
    seg = result.results["segmentation"]
    click.echo(f"segmentation: mean Jaccard {seg['jaccard_mean']:.3f}, failures {seg['failure_rate']:.1%}")
    for row in result.results["rows"]:
        m = row["metrics"]
        click.echo(
            f"{row['method']}: RMSE {m['rmse']:.3f}, AUROC {m['auroc']:.3f}, detection error "
            f"{m['detection_error']:.3f}"
        )
    click.echo(f"wrote {out / 'report.md'}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--n", type=int, default=200, show_default=True, help="Number of image/mask pairs.")
@click.option("--size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def synth(out: Path, n: int, size: int, seed: int) -> None:
    """Write the synthetic data set as images/ + masks/.

    \b
    Example:
        segqc synth --out synth --n 500 --size 128
    """
    from segqc.data.synthetic import write_synthetic

    try:
        ids = write_synthetic(out, n, size, seed=seed)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    click.echo(f"wrote {len(ids)} pairs to {out}")


@cli.command("list-methods")
def list_methods() -> None:
    """List the uncertainty methods and quality predictors."""
    from segqc.quality import PREDICTORS
    from segqc.uncertainty import METHODS

    click.echo("uncertainty methods: " + ", ".join(METHODS.names()))
    click.echo("quality predictors: " + ", ".join(PREDICTORS.names()))


from segqc.commands.assess_cli import predict, train  # noqa: E402
from segqc.commands.download_cli import download_command  # noqa: E402
from segqc.commands.experiment_cli import experiment  # noqa: E402
from segqc.commands.export_cli import export  # noqa: E402
from segqc.commands.serve_cli import serve  # noqa: E402

for command in (experiment, train, predict, export, serve, download_command):
    cli.add_command(command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
