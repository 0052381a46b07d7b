"""``segqc download``: a thin command over :mod:`segqc.data.download`."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from segqc.cli.options import Group, command, out_option
from segqc.data.download import download_isic2017

DEFAULTS = {k: p.default for k, p in inspect.signature(download_isic2017).parameters.items()}


@click.group("download", cls=Group)
def download_command() -> None:
    """Download public data sets."""


@command("isic2017")
@out_option("Destination folder; gets ISIC-2017_Training_Data/ and the other official folders.", name="--to")
@click.option(
    "--parts",
    multiple=True,
    metavar="PART",
    help="Archive stem (e.g. ISIC-2017_Validation_Data) or split (training, validation, test); "
    "repeat or comma-separate. Default: all six archives.",
)
@click.option(
    "--base-url", default=DEFAULTS["base_url"], show_default=True, help="Folder URL of the archives."
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=DEFAULTS["retries"],
    show_default=True,
    help="Retries per file.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS["timeout"],
    show_default=True,
    help="Seconds.",
)
@click.option("--no-checksum", is_flag=True, help="Skip the MD5 check of the official archives.")
@click.option(
    "--keep-archives", is_flag=True, help="Keep the .zip files in DIR/.downloads/ after extraction."
)
@click.option(
    "--progress/--no-progress", default=DEFAULTS["progress"], show_default=True, help="Show progress bars."
)
def isic2017_command(
    to: Path,
    parts: tuple[str, ...],
    base_url: str,
    retries: int,
    timeout: float,
    no_checksum: bool,
    keep_archives: bool,
    progress: bool,
) -> None:
    """Download ISIC 2017 Part 1 (images and lesion masks); resumes and skips what is already there."""
    chosen = [p.strip() for item in parts for p in item.split(",") if p.strip()]
    root = download_isic2017(
        to,
        parts=chosen or None,
        base_url=base_url,
        retries=retries,
        timeout=timeout,
        progress=progress,
        checksums={} if no_checksum else None,
        keep_archives=keep_archives,
    )
    click.echo(f"ISIC 2017 ready in {root}")


download_command.add_command(isic2017_command)
