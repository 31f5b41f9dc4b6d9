"""Pipeline timeline: when each stage runs each micro-batch's forward and backward under a schedule.

A small list scheduler: every stage runs its operations in the schedule's order (GPipe; 1F1B; Megatron's
interleaved 1F1B with vpp model chunks per rank, Narayanan et al. 2021; zero-bubble ZB-H1, Qi et al. 2023,
whose weight-gradient halves of backward fill the idle time), each as soon as its input has arrived from the
neighbouring stage. Used to draw the schedule (`estimate --plot`) and to check the step model's bubble.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zb")


@dataclass(frozen=True, slots=True)
class Op:
    stage: int
    kind: str
    """F forward, B backward (input gradient and, except under zb, weight gradient), W weight gradient (zb)."""
    microbatch: int
    chunk: int
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Timeline:
    ops: tuple[Op, ...]
    pp: int
    makespan_s: float
    busy_s: float
    """Busy time of one stage (all stages are equal here)."""

    @property
    def bubble_s(self) -> float:
        return self.makespan_s - self.busy_s


def stage_order(schedule: str, s: int, pp: int, m: int, v: int) -> list[tuple[str, int, int]]:
    """(kind, micro-batch, chunk) in the order stage `s` runs them."""
    if schedule == "gpipe":
        return [("F", i, 0) for i in range(m)] + [("B", i, 0) for i in range(m)]
    if schedule == "interleaved-1f1b":
        total = m * v

        def fwd(k: int) -> tuple[str, int, int]:
            return ("F", (k // (pp * v)) * pp + k % pp, (k // pp) % v)

        def bwd(k: int) -> tuple[str, int, int]:
            return ("B", (k // (pp * v)) * pp + k % pp, v - 1 - (k // pp) % v)

        warm = min((pp - s - 1) * 2 + (v - 1) * pp, total)  # Megatron's warm-up count for interleaving
    else:
        total = m

        def fwd(k: int) -> tuple[str, int, int]:
            return ("F", k, 0)

        def bwd(k: int) -> tuple[str, int, int]:
            return ("B", k, 0)

        warm = min(pp - s - 1, m)
    order = [fwd(k) for k in range(warm)]
    for i in range(total - warm):
        order += [fwd(warm + i), bwd(i)]
    order += [bwd(k) for k in range(total - warm, total)]
    return order


def simulate(schedule: str, pp: int, m: int, forward_s: float, backward_s: float, *, v: int = 1,
             p2p_s: float = 0.0) -> Timeline:
    """Timeline of one step: `forward_s`/`backward_s` per micro-batch per stage (all chunks of a rank together),
    `p2p_s` per activation or gradient hop between stages."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    v = v if schedule == "interleaved-1f1b" else 1
    zb = schedule == "zb"
    dur = {"F": forward_s / v, "B": backward_s / v / (2 if zb else 1), "W": backward_s / v / 2}
    n_virtual = pp * v
    orders = [stage_order(schedule, s, pp, m, v) for s in range(pp)]
    nxt = [0] * pp
    free = [0.0] * pp
    pending_w: list[list[tuple[int, int, float]]] = [[] for _ in range(pp)]  # (mb, chunk, ready)
    done: dict[tuple[str, int, int], float] = {}  # (kind, mb, virtual stage) -> end
    ops: list[Op] = []

    def ready_time(s: int, kind: str, mb: int, chunk: int) -> float | None:
        vs = chunk * pp + s
        if kind == "F":
            if vs == 0:
                return 0.0
            end = done.get(("F", mb, vs - 1))
            return None if end is None else end + p2p_s
        if vs == n_virtual - 1:
            return done.get(("F", mb, vs))
        end = done.get(("B", mb, vs + 1))
        return None if end is None else end + p2p_s

    remaining = sum(len(o) for o in orders)
    while remaining or any(pending_w):
        best = None  # (start, is_w, stage)
        for s in range(pp):
            if nxt[s] < len(orders[s]):
                kind, mb, chunk = orders[s][nxt[s]]
                r = ready_time(s, kind, mb, chunk)
                if r is not None:
                    cand = (max(free[s], r), 0, s)
                    best = cand if best is None or cand < best else best
            if pending_w[s]:
                cand = (free[s], 1, s)
                # A weight gradient runs only where the stage would otherwise wait (or nothing else is left).
                if nxt[s] < len(orders[s]):
                    kind, mb, chunk = orders[s][nxt[s]]
                    r = ready_time(s, kind, mb, chunk)
                    if r is not None and r < free[s] + dur["W"]:
                        continue
                best = cand if best is None or cand < best else best
        assert best is not None, "schedule deadlock"
        start, is_w, s = best
        if is_w:
            mb, chunk, _ = pending_w[s].pop(0)
            kind = "W"
        else:
            kind, mb, chunk = orders[s][nxt[s]]
            nxt[s] += 1
            remaining -= 1
        end = start + dur[kind]
        free[s] = end
        done[(kind, mb, chunk * pp + s)] = end
        if kind == "B" and zb:
            pending_w[s].append((mb, chunk, end))
        ops.append(Op(stage=s, kind=kind, microbatch=mb, chunk=chunk, start_s=start, end_s=end))
    makespan = max(o.end_s for o in ops)
    return Timeline(ops=tuple(sorted(ops, key=lambda o: (o.stage, o.start_s))), pp=pp, makespan_s=makespan,
                    busy_s=m * (forward_s + backward_s))
