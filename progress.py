"""The progress callback that long computations take (serving sweeps, serve-plan, expert ILP, profile, validate).

progress(done, total, what) after each unit of work (total 0: unknown). The CLI passes console.progress's
update, which draws a bar on a terminal and does nothing otherwise; library code never imports the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]
