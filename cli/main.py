"""clusterplan command line: parses, calls the models and solvers, renders. Nothing imports cli.

Subcommands live in their own modules and are imported only when invoked, so `clusterplan plan`
never imports torch and `--help` stays fast.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import warnings
from typing import Any

import click

from clusterplan import __version__
from clusterplan.errors import ClusterplanError

# command name -> (module, attribute, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "plan": ("clusterplan.cli.plan", "plan", "Search training layouts and rank them by predicted step time."),
    "estimate": ("clusterplan.cli.estimate", "estimate", "Predict memory and step time of one training layout."),
    "serve-plan": ("clusterplan.cli.serve", "serve_plan", "Cheapest GPU mix that serves a workload within SLOs."),
    "serve-estimate": ("clusterplan.cli.serve_estimate", "serve_estimate",
                       "Latency percentiles and throughput of one serving configuration under one load."),
    "experts": ("clusterplan.cli.experts", "experts", "Place MoE experts on GPUs from routing statistics."),
    "profile": ("clusterplan.cli.profile", "profile", "Measure GEMM, memory and collectives; write a calibration."),
    "validate": ("clusterplan.cli.validate", "validate", "Run a plan with torch.distributed; report prediction error."),
    "check": ("clusterplan.cli.check", "check", "CI gate: check a plan or launch config against rules."),
    "export": ("clusterplan.cli.export", "export", "Write a plan as a torchtitan, Megatron-LM, Megatron-Bridge or DeepSpeed config."),
    "hw": ("clusterplan.cli.hw", "hw", "List and show GPUs, links and node presets."),
    "models": ("clusterplan.cli.models_cmd", "models", "List and show model presets or config.json files."),
}


def _available(name: str) -> bool:
    module = COMMANDS[name][0]
    return importlib.util.find_spec(module) is not None


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not _available(cmd_name):
            return None
        module, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="clusterplan")
@click.option("--debug", is_flag=True, envvar="CLUSTERPLAN_DEBUG", help="Show tracebacks of unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Plan, check and calibrate large-model training and serving layouts on GPU clusters."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


class _HeldStdout(io.StringIO):
    """stdout held until the command ends: data reaches the real stdout only when the command succeeds (exit 0
    or 1), so a refused run (exit 2) prints nothing there. Looks like the real stream to rich (width, TTY)."""

    def __init__(self, real: Any) -> None:
        super().__init__()
        self.real = real

    def isatty(self) -> bool:
        return bool(getattr(self.real, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", None) or "utf-8"


def one_line(text: str) -> str:
    """A message as one line: newlines and other control characters (e.g. in a file name) escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _input_files(args: list[str]) -> list[str]:
    from clusterplan.fileio import is_file, show

    return [show(a) for a in args if not a.startswith("-") and is_file(a)]


def main(argv: list[str] | None = None) -> Any:
    """Entry point: expected failures print one line and exit 2; bugs show a traceback with --debug."""
    for name in ("stdout", "stderr"):  # a stream closed at launch (`>&-`): write into the void, not a traceback
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 (lives as long as the process)
    from clusterplan.cli.console import console
    from clusterplan.fileio import NonFiniteResultError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    console.reset()
    real_stdout = sys.stdout
    held = _HeldStdout(real_stdout)
    code: int | str | None = 0
    sys.stdout = held
    try:
        with warnings.catch_warnings():
            # numpy overflow/invalid-value warnings would add lines to stderr; every result is checked for
            # finiteness where it is rendered (fileio.require_finite), which names what went out of range
            warnings.simplefilter("ignore", RuntimeWarning)
            return cli.main(args=args, prog_name="clusterplan", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.Abort:
        console.error("aborted")
        code = 130
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())  # click lists choices on several lines
        if isinstance(exc, click.UsageError):  # unknown option or command, missing value: where the usage is
            where = exc.ctx.command_path if exc.ctx is not None else "clusterplan"
            message += f" (see `{where} --help`)"
        console.error(one_line(message))
        code = 2
    except NonFiniteResultError as exc:
        files = _input_files(args)
        console.error(one_line(f"{exc}; check the numbers in {', '.join(files)}" if files else
                               f"{exc}; check the numbers given on the command line"))
        code = 2
    except ClusterplanError as exc:
        console.error(one_line(str(exc)))
        code = 2
    except SystemExit as exc:
        code = exc.code
    except RecursionError:  # a bug, but one that would print thousands of frames
        console.error("internal error: RecursionError (run with --debug for the traceback)")
        code = 3
    except Exception as exc:  # an unexpected bug
        if debug:
            console.err.print_exception(suppress=[click])
        else:
            console.error(one_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"))
        code = 3
    finally:
        sys.stdout = real_stdout
        if code in (0, 1, None):
            try:
                real_stdout.write(held.getvalue())
                real_stdout.flush()
            except BrokenPipeError:  # the reader left (e.g. `| head`): nothing more to say, and no traceback at exit
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, real_stdout.fileno())
    sys.exit(code)
