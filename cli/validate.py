"""`clusterplan validate PLAN`: run a plan with torch.distributed and print predicted against measured.

Real run: spawns --nproc ranks (gloo on CPU, NCCL on GPU), scaled-down model, same layout. Dry run: the full
model at full world size in this process, with torch's fake process group and the meta device.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, nonempty_path, output_path, quiet_option
from clusterplan.errors import BadInputError
from clusterplan.fileio import dumps_json, require_finite, write_atomic
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.planfile import read_plan


def _scale(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        factor = int(value)
    except ValueError:
        factor = 0
    if factor < 1:  # 0 used to read as `auto`
        raise BadInputError(f"--scale {value!r}: give a positive integer or `auto`")
    return factor


def runnable_layout(model: Any, layout: Layout) -> Layout:
    """The layout a real run executes (fp32 parameters and AdamW; ZeRO-1/2 as FSDP2); rejects what it cannot run."""
    from clusterplan.validate.rules import executed_layout, real_run_problems

    problems = real_run_problems(model, layout)
    if problems:
        raise BadInputError(f"validate cannot run this layout for real: {'; '.join(problems)}; "
                            "check it at full scale with --dry-run")
    return executed_layout(layout)


def _prepare(plan: Any, nproc: int | None, scale: str, budget_gib: float) -> tuple[Any, Layout, int]:
    """The scaled model and executed layout of a real run, checked against the number of ranks."""
    from clusterplan.validate.scale import auto_factor, scale_model

    layout = runnable_layout(plan.model, plan.layout)
    if nproc is not None and nproc != layout.world:
        raise BadInputError(f"--nproc {nproc}: the plan's layout needs {layout.world} ranks "
                            f"({layout.short()}); write a plan for {nproc} ranks or use --dry-run")
    factor = _scale(scale) or auto_factor(plan.model, layout, budget_gib * 2**30)
    return scale_model(plan.model, layout, factor), layout, factor


def _compare(plan: Any, run: dict[str, Any], factor: int | None, calibration: str | None) -> dict[str, Any]:
    """Predicted against measured for one run's gathered ranks."""
    from clusterplan.models.architecture.spec import ModelSpec
    from clusterplan.models.hardware.calibration import load_calibration
    from clusterplan.validate.predict import predicted_step
    from clusterplan.validate.report import max_memory_error, rank_rows, time_row

    model, layout = ModelSpec.from_dict(run["model"]), Layout.from_dict(run["layout"])
    # On GPU the run autocasts to bf16: fp32 states, bf16 activations, bf16 GEMMs and FSDP2 gathers (param_dtype),
    # so its step time is priced as a bf16 layout.
    act_layout = layout.with_(precision="bf16") if run["device"] == "cuda" else None
    rows = rank_rows(model, layout, run["ranks"], act_layout)
    cal = load_calibration(calibration) if calibration else None
    return {"model": model.name, "scale": factor, "layout": plan.layout.to_dict(), "executed_layout": layout.to_dict(),
            "device": run["device"], "ranks": rows, "max_memory_error_pct": max_memory_error(rows),
            "time": time_row(predicted_step(model, plan.cluster, act_layout or layout, cal), run["ranks"])}


def _real(plan: Any, nproc: int | None, scale: str, steps: int, timeout_s: float, calibration: str | None,
          budget_gib: float) -> dict[str, Any]:
    from clusterplan.validate.launch import spawn

    model, layout, factor = _prepare(plan, nproc, scale, budget_gib)
    console.info(f"validate: {model.name} ({model.total_params() / 1e6:.1f} M params), {layout.short()}, "
                 f"{layout.world} ranks")
    with console.progress(f"validate {layout.short()}") as progress:
        runs = spawn([{"model": model.to_dict(), "layout": layout.to_dict(), "steps": steps}], layout.world, timeout_s,
                     on_progress=progress)
    return _compare(plan, runs[0], factor, calibration)


def _write_job(path: str, plan: Any, scale: str, steps: int, timeout_s: float, budget_gib: float) -> None:
    model, layout, _ = _prepare(plan, None, scale, budget_gib)
    job = {"runs": [{"model": model.to_dict(), "layout": layout.to_dict(), "steps": steps}], "timeout_s": timeout_s}
    write_atomic(path, dumps_json(job))
    console.info(f"wrote {path}: {model.name}, {layout.short()}, {layout.world} ranks; on every node run\n"
                 f"  torchrun --nnodes NODES --nproc-per-node GPUS --rdzv-backend c10d --rdzv-endpoint HOST:29500 "
                 f"-m clusterplan.validate.worker {path} result.json\n"
                 f"then: clusterplan validate PLAN --measured result.json")


def _measured_run(path: str) -> dict[str, Any]:
    from clusterplan.fileio import load_mapping

    runs = load_mapping(path).get("runs")
    if not isinstance(runs, list) or not runs or "ranks" not in runs[0] or "model" not in runs[0]:
        raise BadInputError(f"{path}: not a result of `python -m clusterplan.validate.worker`; "
                            "write the job with --write-job and run it with torchrun")
    return runs[0]


def _dry(plan: Any) -> dict[str, Any]:
    from clusterplan.validate.dryrun import dry_run

    with console.progress(f"dry run {plan.layout.short()}") as progress:
        positions = dry_run(plan.model, plan.layout, progress)
    errors = [abs(v["error_pct"]) for p in positions for v in p.get("terms", {}).values() if v["error_pct"] is not None]
    rejected = [f"{p['position']} stage: {p['rejected']}" for p in positions if "rejected" in p]
    from clusterplan.models.training.layout import layout_problems

    return {"model": plan.model.name, "layout": plan.layout.to_dict(), "world": plan.layout.world,
            "positions": positions, "rejected": rejected, "max_state_error_pct": max(errors, default=0.0),
            "layout_problems": [str(r) for r in layout_problems(plan.model, plan.layout, plan.layout.world)]}


def _print_dry(result: dict[str, Any]) -> None:
    rows = []
    for p in result["positions"]:
        for term, v in p.get("terms", {}).items():
            rows.append([str(p["rank"]), p["position"], term, f"{v['predicted_bytes'] / 2**30:.4f}",
                         f"{v['runtime_bytes'] / 2**30:.4f}", "-" if v["error_pct"] is None else f"{v['error_pct']:+.2f}"])
    if rows:  # a sharding the runtime rejected at every position has no bytes to compare (said below)
        console.table(f"dry run: {result['model']} on {result['world']} ranks, bytes per rank (GiB)",
                      ["rank", "stage", "term", "memory model", "runtime shards", "error %"], rows)
    for p in result["positions"]:
        for u in p.get("uneven", []):
            console.warn(f"{p['position']} stage: uneven shard {u}")
    for line in result["layout_problems"]:
        console.warn(f"layout rule: {line}")
    for line in result["rejected"]:
        console.error(f"runtime rejected the sharding on the {line}")
    if rows:
        console.text(f"largest state-bytes error: {result['max_state_error_pct']:.2f}%")


def _print_real(result: dict[str, Any]) -> None:
    from clusterplan.validate.report import table_rows

    console.table(f"memory per rank: {result['model']} on {result['device']} (MiB)",
                  ["rank", "stage", "term", "predicted", "measured", "error %"], table_rows(result["ranks"]))
    t = result["time"]
    err = "-" if t["error_pct"] is None else f"{t['error_pct']:+.1f}%"
    console.text(f"step time: predicted {t['predicted_s']} s ({t['hardware'].get('gpu', '?')}"
                 f"{', calibrated' if t['hardware'].get('calibrated') else ''}), measured median "
                 f"{t['measured_median_s']:.4f} s (spread {100 * t['spread']:.1f}%), error {err}")
    console.text(f"largest memory error over ranks: {result['max_memory_error_pct']:.2f}%")


def _check_numbers(nproc: int | None, steps: int, timeout_s: float, budget_gib: float, tolerance: float | None,
                   time_tolerance: float | None) -> None:
    """One-line errors for option values no run can use (checked before any rank is spawned)."""
    if nproc is not None and nproc < 1:
        raise BadInputError(f"--nproc {nproc}: give a number of ranks >= 1")
    if steps < 1:
        raise BadInputError(f"--steps {steps}: give at least 1 measured step")
    for name, value in (("--timeout", timeout_s), ("--budget-gib", budget_gib)):
        if not 0 < value < math.inf:  # NaN fails too
            raise BadInputError(f"{name} {value:g}: give a finite number > 0")
    for name, value in (("--tolerance", tolerance), ("--time-tolerance", time_tolerance)):
        if value is not None and not 0 <= value < math.inf:
            raise BadInputError(f"{name} {value:g}: give a finite percentage >= 0")


@click.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--nproc", type=int, default=None, help="Ranks to spawn on this machine (default: the layout's world).")
@click.option("--scale", default="auto", help="Divide model sizes by N, or `auto` to fit --budget-gib per rank.")
@click.option("--budget-gib", type=float, default=1.0, help="Per-rank memory budget for --scale auto.")
@click.option("--steps", type=int, default=3, help="Measured steps after one warm-up step.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, help="Seconds a rank may go without a heartbeat, and the run without progress, before every rank is "
                   "stopped (the line names the rank).")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None, help="Calibration from `profile`.")
@click.option("--tolerance", type=float, default=None, help="Exit 1 when a rank's memory error exceeds this %.")
@click.option("--time-tolerance", type=float, default=None, help="Exit 1 when the step-time error exceeds this %.")
@click.option("--dry-run", is_flag=True, help="Full model, full world size, one CPU process (fake process group).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, callback=output_path,
              help="Also write the JSON result here.")
@click.option("--write-job", type=click.Path(dir_okay=False), default=None, callback=output_path,
              help="Write the job for torchrun on several machines and exit (see README).")
@click.option("--measured", type=click.Path(dir_okay=False), default=None, callback=nonempty_path,
              help="Compare a worker's result.json (from a torchrun launch) instead of spawning ranks.")
@quiet_option
@format_option
def validate(plan_path: str, nproc: int | None, scale: str, budget_gib: float, steps: int, timeout_s: float,
             calibration: str | None, tolerance: float | None, time_tolerance: float | None, dry_run: bool,
             out: str | None, write_job: str | None, measured: str | None, fmt: str) -> None:
    """Run PLAN for real (or --dry-run it at full scale) and report predicted against measured."""
    _check_numbers(nproc, steps, timeout_s, budget_gib, tolerance, time_tolerance)
    plan = read_plan(plan_path)
    if plan.stages:
        raise BadInputError(f"{plan_path}: a mixed-GPU plan ({len(plan.stages)} stages on "
                            f"{len({st.gpu for st in plan.stages})} GPU types); validate runs one GPU type with an even "
                            "split, so check it with `clusterplan check` or `clusterplan estimate --plan`")
    if not measured:  # a model the runtime cannot build is refused before any rank starts (one line, exit 2)
        from clusterplan.runtime.supported import check_supported

        check_supported(plan.model)
    if dry_run:
        result = _dry(plan)
        error_pct = result["max_state_error_pct"]
    elif write_job:
        _write_job(write_job, plan, scale, steps, timeout_s, budget_gib)
        return
    elif measured:
        result = _compare(plan, _measured_run(measured), None, calibration)
        error_pct = result["max_memory_error_pct"]
    else:
        result = _real(plan, nproc, scale, steps, timeout_s, calibration, budget_gib)
        error_pct = result["max_memory_error_pct"]
    failed = ["the runtime rejected a sharding (see above)"] if result.get("rejected") else []
    if tolerance is not None and error_pct > tolerance:
        failed.append(f"memory error {error_pct:.2f}% > --tolerance {tolerance}%")
    t_err = result.get("time", {}).get("error_pct")
    if time_tolerance is not None and t_err is not None and abs(t_err) > time_tolerance:
        failed.append(f"step-time error {t_err:+.1f}% > --time-tolerance {time_tolerance}%")
    result["ok"] = not failed
    require_finite(result)
    if out:
        write_atomic(out, dumps_json(result))
    if fmt == "json":
        console.json(result)
    else:
        (_print_dry if dry_run else _print_real)(result)
    for line in failed:
        console.error(line)
    if failed:
        sys.exit(1)
