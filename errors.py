"""The expected outcomes of clusterplan, as a small exception taxonomy.

These are not bugs: the search counts them per reason, the CLI prints one line and exits 2.
Anything else that escapes is a bug and shows a traceback with `--debug`.
"""

from __future__ import annotations


class ClusterplanError(Exception):
    """Base of every expected failure. `reason` is a short key the search counts by."""

    reason = "error"


class BadInputError(ClusterplanError, ValueError):
    """A file, flag or value the user gave is malformed or out of range."""

    reason = "bad_input"


class UnsupportedModelError(ClusterplanError):
    """A model architecture or feature that clusterplan cannot describe."""

    reason = "unsupported_model"


class InfeasibleError(ClusterplanError):
    """A layout or request that breaks a divisibility or capacity rule."""

    reason = "infeasible"


class OutOfMemoryError(ClusterplanError):
    """A layout whose most loaded GPU does not fit in memory."""

    reason = "out_of_memory"
