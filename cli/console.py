"""The one console wrapper for all terminal output: data on stdout, diagnostics on stderr.

Colour and spinners only on a TTY and when NO_COLOR is unset; user strings are printed without markup.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console as RichConsole
from rich.table import Table
from rich.text import Text

from clusterplan.fileio import dumps_json


class Console:
    def __init__(self) -> None:
        no_color = bool(os.environ.get("NO_COLOR"))
        # Pipes and files get wide, uncoloured tables; terminals get their own width.
        out_width = None if sys.stdout.isatty() else 250
        # file=None makes rich look sys.stdout / sys.stderr up at write time (tests capture them).
        # emoji=False: user text such as `uniform:100:10` must not turn into emoji codes.
        self.out = RichConsole(no_color=no_color, highlight=False, soft_wrap=True, width=out_width, emoji=False)
        self.err = RichConsole(stderr=True, no_color=no_color, highlight=False, soft_wrap=True, emoji=False,
                               width=None if sys.stderr.isatty() else 250)
        self.quiet = False
        """--quiet: no diagnostics but warnings and errors, no progress."""
        self.data_piped_json = False
        """--format json into a pipe: progress stays silent (the consumer is a program)."""

    def reset(self) -> None:
        """Back to the defaults (one process may run several commands: tests, the entry point)."""
        self.quiet = False
        self.data_piped_json = False

    def set_format(self, fmt: str) -> None:
        self.data_piped_json = fmt == "json" and not sys.stdout.isatty()

    @property
    def _live(self) -> bool:
        """Spinners and progress bars: only on a terminal, never with --quiet or JSON piped to a program."""
        return self.err.is_terminal and not self.quiet and not self.data_piped_json

    # diagnostics (stderr)
    def info(self, text: str) -> None:
        if self.quiet:
            return
        sys.stdout.flush()  # keep data and diagnostics in order on a shared terminal
        self.err.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.err.print(f"warning: {text}", style="yellow", markup=False)

    def error(self, text: str) -> None:
        self.err.print(f"error: {text}", style="bold red", markup=False)

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        if self._live:
            with self.err.status(text):
                yield
        else:
            yield

    @contextmanager
    def progress(self, text: str) -> Iterator[Callable[[int, int, str], None]]:
        """A progress bar on stderr for loops that can take long: yields update(done, total, what) (total 0:
        unknown). The library code that loops takes it as an optional callable and never imports the CLI.

        Drawn only on a terminal (`_live`): with --quiet, with --format json into a pipe, or when stderr is not
        a terminal (a log file, CI, a program reading diagnostics) the update does nothing, so stderr there
        carries only warnings and errors and no carriage-return frames; stdout is the same either way."""
        if not self._live:
            yield lambda done, total, what: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.err, transient=True) as bar:
            task = bar.add_task(text, total=None)

            def update(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total or None, description=f"{text}: {what}")

            yield update

    # data (stdout)
    def json(self, obj: Any) -> None:
        sys.stdout.write(dumps_json(obj))

    def text(self, text: str) -> None:
        self.out.print(text, markup=False)

    def table(self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              justify_right: Sequence[bool] | None = None, wrap: Sequence[bool] | None = None) -> None:
        """A borderless table on stdout. Columns never wrap, so names and numbers stay whole and copyable, except
        those flagged in `wrap` (free text such as a description): when the table is wider than the console,
        rich narrows and word-wraps only those, instead of cutting every column to "name…"."""
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, box=None,
                      header_style="bold")
        for i, col in enumerate(columns):
            right = justify_right[i] if justify_right else i > 0
            wraps = bool(wrap and wrap[i])
            table.add_column(col, justify="right" if right else "left", no_wrap=not wraps,
                             overflow="fold" if wraps else "ellipsis")
        for row in rows:
            table.add_row(*[Text(str(c)) for c in row])  # Text: cells are data, never markup
        self.out.print(table)


console = Console()
