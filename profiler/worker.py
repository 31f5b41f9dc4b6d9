"""One rank of `clusterplan profile`: `python -m clusterplan.profiler.worker --out FILE [...]`.

Started by `clusterplan profile --nproc N` on one machine, or by torchrun on many (same environment:
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Rank 0 plans,
records, and writes the file after every measurement. Every rank runs every measurement at the same time as
the others (compute too: a training step keeps all of a node's devices, or a CPU's processes, busy at once, and
shared cores, memory bandwidth or power limits show up only then); rank 0 keeps its own compute timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError, ClusterplanError
from clusterplan.profiler import store
from clusterplan.profiler.sweep import Measurement, SweepConfig, build_plan, level_groups
from clusterplan.runtime.procs import Pulse, die_with_launcher, exit_now

FAULT_ENV = "CLUSTERPLAN_PROFILE_FAULT"
"""Fault injection for tests: "RANK:INDEX:KIND" (KIND exit, hang or kill) before measurement INDEX (0-based)."""
HEARTBEAT_ENV = "CLUSTERPLAN_PROFILE_HEARTBEAT"
"""Set by the launcher: each rank writes JSON progress lines on stdout for it to watch."""
REFIT_EVERY_S = 2.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RankEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def rank_env() -> RankEnv:
    try:
        world = int(os.environ["WORLD_SIZE"])
        return RankEnv(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                       local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    except (KeyError, ValueError) as exc:
        raise BadInputError(f"environment variable {exc} missing or not an integer; start workers with "
                            "`clusterplan profile --nproc N` or torchrun") from exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clusterplan.profiler.worker", description=__doc__)
    p.add_argument("--out", required=True, help="calibration file to write (rank 0's file system)")
    p.add_argument("--model", help="model preset, YAML or config.json whose GEMM shapes to measure")
    p.add_argument("--layout", help='layout for the model shapes, e.g. "tp=8,mbs=1,seq=8192"')
    p.add_argument("--quick", action="store_true", help="reduced sweep")
    p.add_argument("--resume", action="store_true", help="continue the run recorded in --out")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a collective may wait for a peer")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p.parse_args(argv)


class Heartbeat:
    """Progress: JSON lines on stdout for the launcher, or '[i/n] label' on rank 0's stderr under torchrun.

    For the launcher, a thread also writes an "alive" line every HEARTBEAT_S with the start-up phase (start-up,
    rendezvous), from before torch is imported: a rank that stops beating (SIGSTOP, a wedged process) is named
    within the launcher's --timeout even while its peers wait for it in the rendezvous."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.machine = os.environ.get(HEARTBEAT_ENV) == "1"
        self.phase = "start-up"
        self._lock = threading.Lock()
        if self.machine:
            Pulse(lambda: self._write({"rank": self.rank, "state": "alive", "phase": self.phase}))

    def _write(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line) + "\n").encode("utf-8")
        with self._lock:  # one os.write per line (< PIPE_BUF): lines from two threads never interleave
            os.write(sys.stdout.fileno(), data)

    def __call__(self, state: str, index: int, total: int, label: str = "") -> None:
        if self.machine:
            self._write({"rank": self.rank, "state": state, "index": index, "total": total, "label": label})
        elif self.rank == 0 and state == "begin":
            print(f"[{index + 1}/{total}] {label}", file=sys.stderr, flush=True)

    def failed(self, error: str, code: int) -> None:
        """Tell the launcher first, before the traceback and teardown let peers notice and fail too."""
        if self.machine:
            self._write({"rank": self.rank, "state": "failed", "at": time.time(), "error": error, "code": code})


STARTUP_INDEX = -1
"""inject_fault's index for start-up (before the rendezvous): FAULT_ENV "1:start-up:stop"."""


def inject_fault(rank: int, index: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    f_rank, f_index, kind = spec.split(":")
    f_index = str(STARTUP_INDEX) if f_index == "start-up" else f_index
    if int(f_rank) == rank and int(f_index) == index:
        if kind == "hang":
            time.sleep(10**6)
        if kind == "kill":  # as the kernel's OOM killer would
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "stop":  # as `kill -STOP` or a debugger would: no progress, no heartbeat, no exit
            os.kill(os.getpid(), signal.SIGSTOP)
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")


def sweep_config(args: argparse.Namespace, device: Any, levels: tuple[str, ...], local_world_size: int = 1) -> SweepConfig:
    from clusterplan.profiler.gemm import available_dtypes
    from clusterplan.profiler.shapes import model_shapes, standard_shapes

    cuda = device.type == "cuda"
    shapes = standard_shapes(cuda=cuda, quick=args.quick)
    heads, head_dim, layers = (16, 128, 32) if cuda else (4, 64, 32)
    if args.model:
        from clusterplan.models.architecture.catalog import load_model
        from clusterplan.models.training.layout import Layout

        model = load_model(args.model)
        layout = Layout.parse(args.layout) if args.layout else Layout()
        cap = None if cuda else (2e8 if args.quick else 2e9)  # keep CPU GEMMs to milliseconds
        shapes = sorted(set(shapes) | set(model_shapes(model, layout, quick=args.quick, max_flops=cap)))
        heads, head_dim = max(model.n_heads // layout.tp, 1), model.dim_head
        layers = -(-model.n_layers // layout.pp)  # one pipeline stage's layers run per step
    return SweepConfig(cuda=cuda, quick=args.quick, dtypes=tuple(available_dtypes(device)),
                       gemm_shapes=tuple(shapes), attention_heads=heads, attention_head_dim=head_dim, levels=levels,
                       decode_layers=layers, layer_tps=(1, 2) if local_world_size % 2 == 0 else (1,))


def measure_local(meas: Measurement, device: Any, quick: bool) -> dict[str, Any]:
    """A compute measurement on this rank's device (every rank at once; rank 0 records)."""
    from clusterplan.profiler.attention import measure_attention
    from clusterplan.profiler.decode import measure_decode
    from clusterplan.profiler.gemm import measure_gemm
    from clusterplan.profiler.memory import measure_copy

    budget_s = 0.1 if quick else 0.3  # GPU and CPU alike (CPU samples are >= 20 ms, see gemm.sample_seconds)
    fn = {"gemm": measure_gemm, "memory": measure_copy, "attention": measure_attention,
          "decode": measure_decode}[meas.kind]
    return fn(meas, device, budget_s=budget_s)


def prepare(args: argparse.Namespace, env: RankEnv, device: Any, levels: tuple[str, ...]) -> dict[str, Any]:
    """Rank 0: the document to fill (new or resumed) and the measurements still to do."""
    from clusterplan.profiler.device import run_meta

    meta = run_meta(device, world_size=env.world_size, local_world_size=env.local_world_size, quick=args.quick,
                    model=args.model, layout=args.layout)
    plan = build_plan(sweep_config(args, device, levels, env.local_world_size))
    doc = store.load_for_resume(args.out, meta) if args.resume and Path(args.out).exists() else store.new_document(meta)
    done = store.done_keys(doc)
    store.save(args.out, doc)
    return {"doc": doc, "todo": [m for m in plan if m.key not in done], "total": len(plan)}


def level_process_groups(env: RankEnv) -> dict[str, tuple[Any, list[int]]]:
    """For each link level, this rank's process group and its ranks (every rank creates every group)."""
    import torch.distributed as dist

    mine: dict[str, tuple[Any, list[int]]] = {}
    for level, groups in level_groups(env.world_size, env.local_world_size).items():
        for ranks in groups:
            pg = dist.new_group(ranks)
            if env.rank in ranks:
                mine[level] = (pg, ranks)
    return mine


def run(args: argparse.Namespace, env: RankEnv, beat: Heartbeat) -> None:
    import torch.distributed as dist

    from clusterplan.profiler.collectives import measure_collective
    from clusterplan.profiler.device import backend_for, pick_device
    from clusterplan.profiler.layer import measure_layer
    from clusterplan.profiler.overlap import measure_overlap

    device = pick_device(args.device, env.local_rank)
    inject_fault(env.rank, STARTUP_INDEX)
    beat.phase = "rendezvous"
    # device_id binds NCCL to this rank's GPU up front (barriers then know their device).
    dist.init_process_group(backend_for(device), rank=env.rank, world_size=env.world_size,
                            timeout=dt.timedelta(seconds=args.timeout),
                            device_id=device if device.type == "cuda" else None)
    beat.phase = "planning"
    pgs = level_process_groups(env)
    payload: list[Any] = [prepare(args, env, device, tuple(pgs)) if env.rank == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    todo, total = payload[0]["todo"], payload[0]["total"]
    doc = payload[0]["doc"] if env.rank == 0 else None
    start = total - len(todo)
    beat("ready", start, total)
    last_fit = time.monotonic()
    for i, meas in enumerate(todo, start=start):
        beat("begin", i, total, meas.label)
        inject_fault(env.rank, i)
        beat("run", i, total, meas.label)
        if meas.kind == "collective":
            pg, ranks = pgs[meas.level]
            record = measure_collective(meas, group=pg, ranks=ranks, rank=env.rank, device=device, quick=args.quick)
        elif meas.kind == "overlap":
            pg, ranks = pgs[meas.level]
            record = measure_overlap(meas, group=pg, ranks=ranks, device=device)
        elif meas.kind == "layer":
            record = measure_layer(meas, world_size=env.world_size, device=device, quick=args.quick)
        else:
            record = {**measure_local(meas, device, args.quick), "concurrent_ranks": env.local_world_size}
            record = record if env.rank == 0 else None
        beat("wait", i, total, meas.label)
        dist.barrier()
        if doc is not None and record is not None:
            store.add_record(doc, meas.kind, record)
            if time.monotonic() - last_fit > REFIT_EVERY_S:
                store.refit(doc)
                last_fit = time.monotonic()
            store.save(args.out, doc)
        beat("done", i, total, meas.label)
    if doc is not None:
        store.refit(doc)
        store.save(args.out, doc, complete=True)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()
    args = parse_args(argv)
    rank = os.environ.get("RANK", "?")
    beat = Heartbeat(int(rank) if rank.isdigit() else -1)
    try:
        run(args, rank_env(), beat)
    except ClusterplanError as exc:
        beat.failed(str(exc), 2)
        print(f"error: rank {rank}: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # a failed rank must say so in one last line, then exit non-zero
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        beat.failed(f"{type(exc).__name__}: {first}", 1)
        traceback.print_exc()
        print(f"error: rank {rank}: {type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        return 1
    return 0




if __name__ == "__main__":
    exit_now(main())
