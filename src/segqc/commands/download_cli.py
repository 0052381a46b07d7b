"""``segqc download``: a thin command over :mod:`segqc.data.download`."""

from __future__ import annotations

from pathlib import Path

import click

from segqc.data.download import OFFICIAL_BASE_URL, download_isic2017
from segqc.errors import SegQCError


@click.group(name="download")
def download_command() -> None:
    """Download public data sets."""


@download_command.command(name="isic2017")
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Destination folder; gets ISIC-2017_Training_Data/ and the other official folders.",
)
@click.option(
    "--parts",
    multiple=True,
    metavar="PART",
    help="Archive stem (e.g. ISIC-2017_Validation_Data) or split (training, validation, test); "
    "repeat or comma-separate. Default: all six archives.",
)
@click.option("--base-url", default=OFFICIAL_BASE_URL, show_default=True, help="Folder URL of the archives.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries per file.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True, help="Seconds."
)
@click.option("--no-checksum", is_flag=True, help="Skip the MD5 check of the official archives.")
@click.option(
    "--keep-archives", is_flag=True, help="Keep the .zip files in DIR/.downloads/ after extraction."
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
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
    try:
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
    except SegQCError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"ISIC 2017 ready in {root}")
