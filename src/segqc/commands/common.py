"""Pieces shared by the CLI commands: error handling and the training settings."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from segqc.errors import SegQCError

#: Exit codes: 0 success, 1 an error segqc explains (bad data, bad model file, ...), 2 bad usage,
#: 3 (``segqc predict``) some inputs could not be read; the others were processed.
EXIT_ERROR = 1


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SegQCError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Settings shared by the commands that train (unset flags keep the library defaults)."""
    options = [
        click.option("--image-size", type=int, default=None, help="Side of the square images [64]."),
        click.option("--seg-epochs", type=int, default=None, help="Epochs for f [10]."),
        click.option("--quality-epochs", type=int, default=None, help="Epochs for g [15]."),
        click.option("--base-width", type=int, default=None, help="U-Net width [16]."),
        click.option("--seed", type=int, default=None, help="Seed of everything [0]."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="[auto]"),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
