"""The one console wrapper for all terminal output: data on stdout, diagnostics on stderr.

Colour and spinners only on a TTY and when NO_COLOR is unset; user strings are printed without markup.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
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

    # diagnostics (stderr)
    def info(self, text: str) -> None:
        sys.stdout.flush()  # keep data and diagnostics in order on a shared terminal
        self.err.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.err.print(f"warning: {text}", style="yellow", markup=False)

    def error(self, text: str) -> None:
        self.err.print(f"error: {text}", style="bold red", markup=False)

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        if self.err.is_terminal:
            with self.err.status(text):
                yield
        else:
            yield

    # data (stdout)
    def json(self, obj: Any) -> None:
        sys.stdout.write(dumps_json(obj))

    def text(self, text: str) -> None:
        self.out.print(text, markup=False)

    def table(self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              justify_right: Sequence[bool] | None = None) -> None:
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, box=None,
                      header_style="bold")
        for i, col in enumerate(columns):
            right = justify_right[i] if justify_right else i > 0
            table.add_column(col, justify="right" if right else "left", no_wrap=True)
        for row in rows:
            table.add_row(*[Text(str(c)) for c in row])  # Text: cells are data, never markup
        self.out.print(table)


console = Console()
