"""Options shared by several commands."""

from __future__ import annotations

import click

format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", help="Output format (data goes to stdout)."
)
