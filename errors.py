"""The expected outcomes of clusterplan, as a small exception taxonomy.

These are not bugs: the CLI prints the message on one line and exits 2 (cli/main.py). Anything else that escapes is
a bug and shows a traceback with `--debug`. A layout that breaks a rule is not an exception at all: the rules are
objects (models/training/rules.py) that estimate returns and the search counts by code.
"""

from __future__ import annotations


class ClusterplanError(Exception):
    """Base of every expected failure."""


class BadInputError(ClusterplanError, ValueError):
    """A file, flag or value the user gave is malformed or out of range."""


class UnsupportedModelError(ClusterplanError):
    """A model architecture or feature that clusterplan cannot describe."""


class InfeasibleError(ClusterplanError):
    """A request no layout can meet: nothing fits, or a rule the user pinned cannot hold."""
