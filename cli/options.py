"""Options shared by several commands."""

from __future__ import annotations

import click

format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", help="Output format (data goes to stdout)."
)


def nonempty_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--out ""` must not read as "no --out" (validate would run a real job instead of writing one)."""
    if value is not None and not str(value).strip():
        raise click.BadParameter("give a file name, not an empty string")
    return value


def tokens_option(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """`--tokens 15e12`: a positive, finite token budget."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value:g}: give a positive token budget (e.g. --tokens 15e12)")
    return value


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    from clusterplan.cli.console import console

    console.quiet = value
    return value


quiet_option = click.option("--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                            help="No progress or diagnostics on stderr (warnings and errors still show).")
plot_option = click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
                           callback=nonempty_path, help="Also draw the result into FILE (.png or .svg).")
