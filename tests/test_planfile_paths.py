"""A plan file names a model or cluster YAML relative to itself, so it reads back from any folder (a new user's
`plan --cluster tests/fixtures/clusters/mixed_h100_a100.yaml --out /tmp/x/mixed.yaml` then `cd /tmp/x && clusterplan
check mixed.yaml` failed: the path had been stored as given, relative to where `plan` ran)."""

from __future__ import annotations

from pathlib import Path

from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.planfile import read_plan, write_plan

REPO = Path(__file__).resolve().parents[1]
CLUSTER = "tests/fixtures/clusters/mixed_h100_a100.yaml"


def test_a_cluster_yaml_is_stored_relative_to_the_plan_and_read_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "plans" / "p.yaml"
    world = load_cluster(CLUSTER).world_size
    layout = Layout(tp=8, pp=1, dp=world // 8, gbs=world // 8, seq=2048)
    write_plan(out, model_ref="llama3.1-8b", cluster_ref=CLUSTER, layout=layout)
    stored = out.read_text()
    assert "cluster: ../../" in stored and CLUSTER.split("/")[-1] in stored
    monkeypatch.chdir(tmp_path)  # neither the repository's folder nor the plan's
    assert read_plan(out).cluster.world_size == world
    monkeypatch.chdir(out.parent)
    assert read_plan("p.yaml").cluster.world_size == world


def test_a_plan_moved_without_its_cluster_file_says_so_about_the_plan(run_cli, tmp_path):
    """A new user copied a plan into another folder: the error named `--cluster`, an option they never gave. It
    names the plan, its cluster file and the two fixes, in one line, exit 2."""
    cluster = tmp_path / "cl.yaml"
    cluster.write_text("groups:\n  - {node: dgx-h100, count: 2}\n")
    plan = tmp_path / "p.yaml"
    write_plan(plan, model_ref="llama3.1-8b", cluster_ref=str(cluster),
               layout=Layout(tp=8, pp=1, dp=2, gbs=2, seq=2048))
    moved = tmp_path / "a" / "b" / "p.yaml"
    moved.parent.mkdir(parents=True)
    moved.write_text(plan.read_text())
    code, out, err = run_cli("check", str(moved))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "its cluster file cl.yaml (relative to the plan's folder) is not there" in err and "--cluster" not in err
    assert run_cli("check", str(plan))[0] == 0  # beside its file it reads
