"""Installs as users install: build the wheel, install it into a fresh venv, run every command once from the
installed console script, from a directory outside the repository (issue 14, item 7).

What an editable install hides and this test catches: a subpackage missing from pyproject's `packages`, a YAML/CSV
data file missing from `package-data`, code that reads `tests/` or the repository root, and imports that only
work because the development environment imported something first (e.g. `importlib.util`).

Cost on 2 cores: building the wheel ~3 s, the venv ~5 s, the runtime dependencies ~20 s from the package index,
torch (CPU, the version of the development venv) ~25 s, the commands ~25 s.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SKIP_DIRS = {".git", ".venv", "build", "dist", "tests", "docs", "bench", "research", "__pycache__", ".ruff_cache",
             ".pytest_cache", ".hypothesis", "out"}
"""Not part of the package: copying the source without them keeps the build away from stale build/ output."""
DATA_SUFFIXES = (".yaml", ".csv", ".json")
PIP_TIMEOUT_S = 900
"""Generous bound for a hung install (not an assertion on speed)."""

pytestmark = pytest.mark.slow


def _source_files() -> list[Path]:
    """Every file the package is built from: Python modules and data under the package directories."""
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(".py") or (name.endswith(DATA_SUFFIXES) and path.parent != ROOT):
                out.append(path.relative_to(ROOT))
    return out


def _copy_source(dest: Path) -> None:
    for rel in _source_files() + [Path("pyproject.toml"), Path("README.md")]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)


def _clean_env() -> dict[str, str]:
    """The user's environment: no PYTHONPATH pointing at a checkout, no debug switches of ours."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV") and not k.startswith("CLUSTERPLAN")}


def _run(cmd: list[str], cwd: Path, timeout: float = PIP_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)


def _torch_spec() -> str | None:
    """torch at the development venv's version (public part: 2.13.0+cpu -> torch==2.13.0), or None without it."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    return f"torch=={version.split('+', 1)[0]}"


@pytest.fixture(scope="module")
def installed():
    """(venv bin directory, working directory outside the repository, wheel path, torch installed)."""
    with tempfile.TemporaryDirectory(prefix="clusterplan-install-") as tmp:
        tmp_path = Path(tmp)
        src, dist, venv, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
        _copy_source(src)
        work.mkdir()
        built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], cwd=work)
        assert built.returncode == 0, built.stderr[-3000:]
        wheel = next(dist.glob("clusterplan-*.whl"))
        made = _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
        assert made.returncode == 0, made.stderr[-3000:]
        bin_dir = venv / "bin"
        torch = _torch_spec()
        # Runtime dependencies come from the wheel's own metadata (Requires-Dist), resolved by pip from the index.
        got = _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel), *([torch] if torch else [])],
                   cwd=work)
        assert got.returncode == 0, got.stderr[-3000:]
        yield bin_dir, work, wheel, torch is not None


def test_wheel_holds_every_package_and_data_file(installed):
    _, _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [str(rel) for rel in _source_files() if f"clusterplan/{rel.as_posix()}" not in names]
    assert not missing, f"not in the wheel (add to pyproject's packages / package-data): {missing}"


def test_installed_package_does_not_see_the_repository(installed):
    bin_dir, work, _, _ = installed
    out = _run([str(bin_dir / "python"), "-c", "import clusterplan, sys; print(clusterplan.__file__); "
                "print('\\n'.join(sys.path))"], cwd=work)
    assert out.returncode == 0, out.stderr
    where, *path = out.stdout.splitlines()
    assert Path(where).is_relative_to(bin_dir.parent), where
    assert not any(p and Path(p).resolve().is_relative_to(ROOT) for p in path), path


def test_every_command_runs_from_the_installed_script(installed, run_cli):
    bin_dir, work, _, has_torch = installed
    exe = str(bin_dir / "clusterplan")
    shutil.copy(FIXTURES / "validate" / "tiny_tp2_dp2.yaml", work / "tiny.yaml")

    def cp(*args: str, ok: tuple[int, ...] = (0,)) -> str:
        r = _run([exe, *args], cwd=work)
        assert r.returncode in ok, f"clusterplan {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}"
        assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        return r.stdout

    assert "H100" in cp("hw", "list")
    assert "llama3.1-8b" in cp("models", "list")
    plan_args = ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "4096",
                 "--top", "2", "--fix", "precision=bf16", "--format", "json")  # bf16: DeepSpeed has no fp8
    installed_plan = cp(*plan_args, "--out", "plan.yaml")
    # The installed package reads the same data as the checkout: byte-identical JSON.
    code, dev_plan, err = run_cli(*plan_args)
    assert code == 0, err
    assert installed_plan == dev_plan
    est_args = ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--format", "json",
                "--layout", "tp=2,zero=1,gbs=64,seq=4096")
    code, dev_est, err = run_cli(*est_args)
    assert code == 0, err
    assert cp(*est_args) == dev_est
    for target, suffix in (("torchtitan", "toml"), ("torchtitan-py", "py"), ("megatron", "sh"), ("deepspeed", "json")):
        cp("export", "plan.yaml", "--to", target, "--out", f"train_{target}.{suffix}")
        assert (work / f"train_{target}.{suffix}").stat().st_size > 0
        # check reads the export back; PASS or FAIL with reasons (0 or 1), never a crash or a refusal.
        cp("check", f"train_{target}.{suffix}", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", ok=(0, 1))
    assert cp("check", "plan.yaml").startswith("ok: plan.yaml")
    serve = json.loads(cp("serve-plan", "--model", "llama3.1-8b", "--rate", "5", "--input-len", "1000",
                          "--output-len", "100", "--ttft-ms", "500", "--tpot-ms", "50", "--format", "json"))
    assert serve
    assert json.loads(cp("serve-estimate", "--model", "llama3.1-8b", "--gpu", "H100", "--concurrency", "8",
                         "--input-len", "1000", "--output-len", "100", "--format", "json"))
    cp("experts", "synth", "--model", "qwen3-30b-a3b", "--layers", "2", "--out", "stats.npz")
    assert json.loads(cp("experts", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:1", "--stats", "stats.npz",
                         "--format", "json"))
    assert "--nproc" in cp("profile", "--help")
    if has_torch:  # the meta-device dry run of the full model needs torch
        assert "weights" in cp("validate", "tiny.yaml", "--dry-run")
    else:
        assert "--dry-run" in cp("validate", "--help")


def test_reference_report_runs_from_the_installed_package(installed):
    bin_dir, work, _, _ = installed
    r = _run([str(bin_dir / "python"), "-m", "clusterplan.reference", "--out", "TABLES.md"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    ours = (work / "TABLES.md").read_text()
    assert ours == (ROOT / "reference" / "TABLES.md").read_text()
