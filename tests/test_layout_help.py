"""Every Layout key a user can give in `estimate --layout` / `plan --fix` is named in estimate's --help, so a key
added to Layout without its help line fails here (stop 40: recompute_modules, fp32_grads, offload_layers and
cuda_graphs were accepted but not listed)."""

from __future__ import annotations

import dataclasses
import re

from click.testing import CliRunner

from clusterplan.cli.main import cli
from clusterplan.models.training.layout import Layout


def test_every_layout_key_is_in_the_help():
    text = re.sub(r"\s+", " ", CliRunner().invoke(cli, ["estimate", "--help"]).output)
    missing = [f.name for f in dataclasses.fields(Layout) if f.name not in text]
    assert missing == []
