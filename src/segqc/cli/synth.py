"""``segqc synth``: the synthetic data set as files."""

from __future__ import annotations

from pathlib import Path

import click

from segqc.cli.options import command, out_option
from segqc.errors import SettingsError


@command("synth")
@out_option("Folder to write images/ and masks/ to.")
@click.option(
    "--n", type=click.IntRange(1), default=200, show_default=True, help="Number of image/mask pairs."
)
@click.option(
    "--size", type=click.IntRange(16), default=64, show_default=True, help="Side of the square images."
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Generator seed.")
def synth(out: Path, n: int, size: int, seed: int) -> None:
    """Write the synthetic data set as images/ + masks/.

    \b
    Example:
        segqc synth --out synth --n 500 --size 128
    """
    from segqc.data.synthetic import write_synthetic

    try:
        ids = write_synthetic(out, n, size, seed=seed)
    except SettingsError as err:
        raise click.BadParameter(str(err)) from None
    click.echo(f"wrote {len(ids)} pairs to {out}")
