"""``segqc list-methods``: the registered plug-ins."""

from __future__ import annotations

import click

from segqc.cli.options import command, registry_names


@command("list-methods")
def list_methods() -> None:
    """List the uncertainty methods and quality predictors."""
    click.echo("uncertainty methods: " + registry_names("methods"))
    click.echo("quality predictors: " + registry_names("predictors"))
