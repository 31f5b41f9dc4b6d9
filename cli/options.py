"""Options shared by several commands."""

from __future__ import annotations

import click


def _set_format(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Every command's --format tells the console too: JSON into a pipe keeps progress off stderr."""
    from clusterplan.cli.console import console

    console.set_format(value)
    return value


format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", callback=_set_format,
    help="Output format (data goes to stdout)."
)


def nonempty_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--out ""` must not read as "no --out" (validate would run a real job instead of writing one)."""
    if value is not None and not str(value).strip():
        raise click.BadParameter("give a file name, not an empty string")
    return value


MAX_TOKENS = 1e16
"""Most tokens --tokens may budget: 250 times the largest public pre-training run (Llama 4 Behemoth's ~30-40T); more
is a typo, and its days and dollars print as dozens of digits."""


def tokens_option(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """`--tokens 15e12`: a positive, finite token budget of at most MAX_TOKENS."""
    import math

    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TOKENS):
        raise click.BadParameter(f"{value:g}: give a positive token budget of at most {MAX_TOKENS:g} (e.g. "
                                 "--tokens 15e12)")
    return value


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    from clusterplan.cli.console import console

    console.quiet = value
    return value


quiet_option = click.option("--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                            help="No progress or diagnostics on stderr (warnings and errors still show).")


def output_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An output file checked while the options are parsed, before any work: a name the OS takes, not a
    directory, in a folder that is (or can be made) writable. A refused --out costs nothing and prints nothing."""
    from clusterplan.fileio import check_output_path

    value = nonempty_path(ctx, param, value)
    if value is not None:
        check_output_path(value, option=param.opts[0] if param.opts else "--out")
    return value


STACK_NAMES = ("megatron-core, torchtitan, torchtitan-compile, torchtitan-compile-loss, deepspeed, llm-foundry, "
               "megatron-lm-2021, nanotron, hai-llm")
"""The shipped stacks in stacks.yaml order (tests/test_moe_dispatch_layout.py checks it against list_stacks)."""


def stack_option(default_help: str = "megatron-core"):  # noqa: ANN201 - a click decorator
    """`--stack NAME`: the execution stack that runs the layout (hardware_db/data/stacks.yaml)."""
    return click.option("--stack", "stack_name", default=None, metavar="NAME",
                        help=f"Execution stack: {STACK_NAMES} (default {default_help}). It sets which communication "
                             "overlaps, the collectives' granularity and what `plan` may choose.")


plot_option = click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
                           callback=output_path, help="Also draw the result into FILE (.png or .svg).")


def price_options(command):  # noqa: ANN001, ANN201 - a click decorator
    """`--provider`, `--pricing`, `--prices FILE`: which price rows give the answer's dollars (hardware_db/prices.py),
    the same three options on every command that prices GPUs (plan, estimate, serve-plan)."""
    for option in reversed((
        click.option("--provider", default=None, metavar="NAME",
                     help="Price each GPU with this provider's rows (`clusterplan hw show GPU` lists them); default "
                          "cheapest: each GPU type's cheapest row across providers (`any` is the same)."),
        click.option("--pricing", default=None, metavar="MODEL",
                     help="Pricing model of the rows used: on_demand (default), spot, reserved, capacity_block."),
        click.option("--prices", "prices_path", type=click.Path(dir_okay=False), default=None,
                     help="Price table (YAML/JSON rows gpu, provider, region, pricing, usd_per_gpu_hour, date, "
                          "source) instead of the packaged hardware_db/data/prices.yaml."),
    )):
        command = option(command)
    return command
