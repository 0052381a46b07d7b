"""Command-line interface: thin commands over the library, one module per command.

Every command reports the errors a user can cause as one line ``error: <message>`` on stderr
(never a traceback), and exits with:

* 0: success;
* 1: an error segqc explains (bad data, bad model file, unknown method, unwritable output folder,
  disk full, ...);
* 2: bad usage (unknown option, bad value, bad ``--method-param``);
* 3: ``segqc predict`` finished but some inputs could not be assessed (listed in ``errors.csv``; the
  others were assessed);
* 130: interrupted (Ctrl-C).

Shared options and the error convention live in :mod:`segqc.cli.options`.
"""

from __future__ import annotations

import io
import sys

import click

from segqc import __version__
from segqc.cli.demo import demo
from segqc.cli.download import download_command
from segqc.cli.experiment import experiment
from segqc.cli.export import export
from segqc.cli.list_methods import list_methods
from segqc.cli.models import models
from segqc.cli.options import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_USAGE, Group
from segqc.cli.predict import predict
from segqc.cli.recalibrate import recalibrate
from segqc.cli.serve import serve
from segqc.cli.sign import keygen, sign
from segqc.cli.synth import synth
from segqc.cli.train import train

__all__ = ["cli", "main"]

EPILOG = (
    "\b\nExit codes:\n"
    "  0    success\n"
    f"  {EXIT_ERROR}    an error segqc explains (bad data, bad model file, unwritable output, ...)\n"
    f"  {EXIT_USAGE}    bad usage (unknown option, bad value)\n"
    f"  {EXIT_PARTIAL}    segqc predict finished but some inputs could not be assessed\n"
    f"  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="segqc")
def cli() -> None:
    """segqc: tell when a medical image segmentation has failed."""


_COMMANDS = (
    demo, experiment, train, recalibrate, predict, export, sign, keygen, serve, download_command, synth,
    list_methods, models,
)  # fmt: skip
for _command in _COMMANDS:
    cli.add_command(_command)


def main() -> None:
    if isinstance(sys.stdout, io.TextIOWrapper):
        # a console that cannot show the tables' "−" and "±" (or a file name's letters) gets "?"
        # instead of a traceback after the work is done
        sys.stdout.reconfigure(errors="replace")
    cli()
