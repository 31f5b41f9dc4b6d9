"""The layout search space: structural degrees checked once with the layout rules, then expanded over the cheap
dimensions (ZeRO stage, micro-batch, recompute) as numpy columns.

Divisibility follows torchtitan and Megatron-LM (models/training/layout.py: layout_problems); tp stays inside one
scale-up domain, as both frameworks recommend.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.stacks import ExecutionStack, get_stack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.batch import (
    CODES,
    LayoutArrays,
    RecomputeCode,
    ScheduleCode,
    pp_layers_columns,
    tuple_column,
)
from clusterplan.models.training.estimate import cp_window_problems, stack_splits_kv_heads
from clusterplan.models.training.layout import (
    CHOICES,
    Layout,
    bf16_moments_run,
    fp8_params_run,
    layout_problems,
    recompute_modules_mask,
)
from clusterplan.models.training.pipeline_split import split_to_price
from clusterplan.models.training.rules import RuleCode

ZERO = (0, 1, 2, 3)
MICRO_BATCHES = (1, 2, 4, 8)
RECOMPUTE = ("none", "selective", "full")
BATCH_RULES = (RuleCode.GBS_DP_MBS, RuleCode.INTERLEAVED_MICROBATCHES)


def divisors(n: int, at_most: int | None = None) -> list[int]:
    """Divisors of n up to `at_most`, in order; pairs (d, n // d) so that a world of billions of GPUs takes
    sqrt(n) steps, not n."""
    limit = n if at_most is None else min(n, at_most)
    small = [d for d in range(1, min(limit, math.isqrt(n)) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small if n // d <= limit)})


@dataclass(frozen=True, slots=True)
class Space:
    arrays: LayoutArrays
    structures: int
    rejected: Counter[RuleCode]
    """Layouts rejected per broken rule (the first one each structure breaks)."""
    left_out: Counter
    """Structures (or layouts, for ZeRO stages) not generated because the stack cannot run them, by feature."""


def layer_splits(n_layers: int, pp: int, vpp: int) -> list[tuple[int, int]]:
    """(first_stage_layers, last_stage_layers) options: (0, 0) for an even split when layers divide, and uneven
    ends with fewer layers on the first/last stage, whose embedding and LM head take memory and time
    (torchtitan's first/last_stage_less_layers; Llama 3's 126 layers on pp=16). With vpp chunks the middle ranks
    split evenly; the ends may hold fewer layers than chunks share evenly (e.g. 126 layers on pp 16 vpp 8: 7 + 14 x 8
    + 7, Megatron's pipeline layout)."""
    splits = [(0, 0)] if n_layers % (pp * vpp) == 0 else []
    if pp < 3:
        return splits
    mid = -(-n_layers // pp)
    mid += (-mid) % vpp
    rest = n_layers - (pp - 2) * mid
    for first in sorted({rest // 2, rest - mid, rest - rest // 2}):
        last = rest - first
        if 1 <= first <= mid and 1 <= last <= mid and (first, last) != (mid, mid):
            splits.append((first, last))
    return splits


def stack_split(model: ModelSpec, pp: int, fixed: dict, stack: ExecutionStack) -> tuple[int, ...]:
    """The per-rank list a structure of `pp` ranks runs under `fixed` (pipeline_split.split_to_price)."""
    return split_to_price(model, pp, stack.pp_split, tuple(fixed.get("pp_layers", ())),
                          pinned_ends="first_stage_layers" in fixed or "last_stage_layers" in fixed)


def replicate_options(dp: int, domain: int) -> list[int]:
    """dp_replicate for HSDP: 1 (shard over all of dp) or shards of 1..8 scale-up domains."""
    options = [1]
    for shard in (domain, 2 * domain, 4 * domain, 8 * domain):
        if 1 < shard < dp and dp % shard == 0:
            options.append(dp // shard)
    return options


def _structures(model: ModelSpec, world: int, domain: int, fixed: dict, stack: ExecutionStack,
                left_out: Counter) -> Iterator[dict]:
    pick = lambda key, options: [fixed[key]] if key in fixed else list(options)  # noqa: E731
    tps = pick("tp", divisors(world, at_most=domain))
    pps = pick("pp", divisors(world, at_most=model.n_layers))
    cps = pick("cp", [d for d in (1, 2, 4, 8, 16, 32) if world % d == 0])
    eps = pick("ep", divisors(model.n_experts, at_most=world) if model.is_moe else [1])
    for tp, pp, cp, vpp, ep in itertools.product(tps, pps, cps, pick("vpp", (1, 2, 3, 4)), eps):
        if world % (tp * pp * cp) or (pp == 1 and vpp > 1):
            continue
        # layout.hybrid_problems: Megatron-Core's MambaStack has no virtual pipeline (a pinned one is rejected by the
        # rule instead)
        if model.is_hybrid and vpp > 1 and "vpp" not in fixed:
            left_out["vpp > 1 with Mamba blocks"] += 1
            continue
        if stack.max_tp is not None and tp > stack.max_tp:  # stacks.yaml max_tp (hai-llm: no TP)
            left_out[f"tp > {stack.max_tp}"] += 1
            continue
        if not stack_splits_kv_heads(model, tp, stack):
            left_out["tp not dividing the kv heads"] += 1
            continue
        if stack.tp_alone and tp > 1 and max(pp, cp, ep) > 1:  # stacks.yaml tp_alone (DeepSpeed AutoTP)
            left_out["tp with pp, cp or ep"] += 1
            continue
        dp = world // (tp * pp * cp)
        if "dp" in fixed and dp != int(fixed["dp"]):  # a pinned dp leaves tp x pp x cp = world / dp
            continue
        if tp > 1 and "sp" in fixed and not fixed["sp"] and stack.tp_sequence_parallel_always:
            left_out["tp > 1 without sequence parallelism"] += 1  # torchtitan's TP shards the norms, always
            continue
        if fixed.get("recompute_layers") and stack.recompute_layers_per_chunk and int(fixed["recompute_layers"]) % vpp:
            left_out["recompute_layers not a multiple of vpp"] += 1  # Megatron-Core's block method, per chunk
            continue
        # ZB-V runs exactly 2 chunks per rank; GPipe is never faster than 1F1B and holds more, so it is not searched.
        schedules = (["interleaved-1f1b"] + (["zbv"] if vpp == 2 else [])) if vpp > 1 else \
            (["1f1b", "zb"] if pp > 1 else ["1f1b"])
        # DualPipe (two stages per rank, even pp) only where the stack runs it (stacks.yaml schedules: hai-llm);
        # no other stack counts it as left out.
        if vpp == 1 and pp > 1 and pp % 2 == 0 and stack.can_run("schedule", "dualpipe"):
            schedules = [*schedules, "dualpipe"]
        if pp > 1:
            for name in [x for x in schedules if not stack.can_run("schedule", x)]:
                left_out[f"schedule {name}"] += 1
            schedules = [x for x in schedules if stack.can_run("schedule", x)]
        ranks = stack_split(model, pp, fixed, stack)
        if ranks or pp == 1 and "pp_layers" in fixed:  # a per-rank list: its ends are in it (layout_problems checks)
            splits = [(0, 0)]
        elif "first_stage_layers" in fixed or "last_stage_layers" in fixed:
            splits = [(int(fixed.get("first_stage_layers", 0)), int(fixed.get("last_stage_layers", 0)))]
        elif stack.pp_split != "even":  # a stack that splits by its own rule, where it prices as even (stack_split)
            splits = [(0, 0)]
        elif not stack.pp_uneven_ends:  # DeepSpeed's PipelineModule: an even split or nothing
            if pp > 1 and model.n_layers % (pp * vpp):
                left_out["uneven pipeline stages"] += 1
                continue
            splits = [(0, 0)]
        else:
            splits = layer_splits(model.n_layers, pp, vpp) or [(0, 0)]
        cp_kinds = ["ring"]
        if cp > 1:
            # The K,V all-gather exposes what the ring hides, so it is searched only for a stack without the ring
            # (pin cp_kind=allgather to price it); Ulysses and the ring each win somewhere (heads vs sequence).
            # A pinned kind is not filtered here: what it cannot run is rejected per structure, by rule code
            # (estimate.cp_window_problems), as estimate() refuses it.
            runs = [k for k in CHOICES["cp_kind"] if stack.can_run("cp_kind", k)]
            windowed = stack.cp_impl == "megatron" and model.sliding_window is not None  # estimate.cp_window_problems
            if "cp_kind" not in fixed:
                for name in [k for k in ("ring", "a2a") if k not in runs or windowed and k != "a2a"]:
                    left_out[f"cp_kind {name}" + (" with sliding windows" if name in runs else "")] += 1
            if windowed:
                runs = [k for k in runs if k == "a2a"]
            cp_kinds = [k for k in ("ring", "a2a") if k in runs] or runs
        replicates = replicate_options(dp, domain)
        if not stack.hsdp and "dp_replicate" not in fixed and len(replicates) > 1:
            left_out["dp_replicate > 1 (hybrid sharding)"] += len(replicates) - 1
            replicates = [1]
        for schedule, (first, last), replicate, cp_kind in itertools.product(
                pick("schedule", schedules), splits, pick("dp_replicate", replicates),
                pick("cp_kind", cp_kinds)):
            if schedule in ("zb", "zbv") and (first or last or ranks or model.n_layers % (2 * pp)):
                # torch's ZBVZeroBubble, as torchtitan builds it: two even chunks per rank (frameworks/torchtitan.py
                # refuse_unsupported), so no uneven ends
                left_out[f"schedule {schedule} over uneven stages"] += 1
                continue
            yield dict(tp=tp, pp=pp, cp=cp, vpp=vpp, ep=ep, dp=dp, schedule=schedule,
                       cp_a2a=int(fixed.get("cp_a2a", 1)) if cp_kind == "a2a+p2p" else 1,
                       sp=bool(fixed.get("sp", tp > 1 and stack.tp_sequence_parallel)),
                       first_stage_layers=first, last_stage_layers=last, dp_replicate=replicate, cp_kind=cp_kind,
                       pp_layers=ranks or (tuple(fixed["pp_layers"]) if "pp_layers" in fixed else ()))


def enumerate_space(model: ModelSpec, world: int, domain: int, gbs: int, seq: int,
                    fixed: dict[str, object] | None = None, stack: ExecutionStack | None = None,
                    precisions: tuple[str, ...] = ("bf16",)) -> Space:
    """Every layout of the model on `world` GPUs for one batch and sequence length, under the fixed keys, that
    `stack` can run (None: megatron-core); Space.left_out counts what the stack cannot run, by feature.
    `precisions` are searched unless precision is pinned (the caller knows which the GPUs and the stack run:
    solver.search.precision_options)."""
    fixed = dict(fixed or {})
    stack = stack or get_stack()
    left_out: Counter = Counter()
    # Pins that narrow another key: named selective modules are selective recompute (Layout: recompute_modules needs
    # recompute=selective), a count of recomputed layers is full recompute (RuleCode.RECOMPUTE_LAYERS), and
    # activation offloading runs at pp 1 only (Layout.offload_layers).
    if fixed.get("recompute_modules"):
        fixed.setdefault("recompute", "selective")
    if fixed.get("recompute_layers"):
        if fixed.setdefault("recompute", "full") != "full":
            raise BadInputError(f"--fix recompute_layers={fixed['recompute_layers']} counts fully recomputed layers: "
                                f"it needs recompute=full, got recompute={fixed['recompute']}; unpin one of them")
    if fixed.get("offload_layers"):
        fixed.setdefault("pp", 1)
    moe_pins = {"ep": fixed.get("ep", 1) != 1, "etp": fixed.get("etp", 1) != 1,
                "moe_dispatcher": fixed.get("moe_dispatcher", "alltoall") != "alltoall",
                "moe_a2a_overlap": bool(fixed.get("moe_a2a_overlap")),
                "moe_capacity_factor": fixed.get("moe_capacity_factor") is not None,
                "moe_imbalance": fixed.get("moe_imbalance", 1.0) != 1.0}
    if not model.is_moe and any(moe_pins.values()):
        keys = ", ".join(k for k, pinned in moe_pins.items() if pinned)
        raise BadInputError(f"--fix {keys}: {model.name} is a dense model (no experts); drop {keys}")
    if model.is_hybrid and not stack.mamba_blocks:  # estimate.hybrid_stack_problems
        raise BadInputError(f"--stack {stack.name} has no Mamba blocks for hybrid {model.name}; use --stack "
                            "megatron-core")
    if int(fixed.get("dp_replicate", 1)) > 1 and not stack.hsdp:  # layout.stack_problems
        raise BadInputError(f"--fix dp_replicate={fixed['dp_replicate']}: stack {stack.name} shards over the whole "
                            "data-parallel group (no hybrid sharding); unpin it or pick another --stack")
    if model.parallel_block and not stack.parallel_blocks:  # estimate.parallel_block_problems
        raise BadInputError(f"--stack {stack.name} builds attention and MLP one after the other; {model.name} runs "
                            "them in parallel: use --stack deepspeed")
    if fixed.get("moe_a2a_overlap") and not stack.moe_a2a_overlap:
        raise BadInputError(f"--fix moe_a2a_overlap=1: stack {stack.name} has no 1F1B all-to-all overlap; pick "
                            "another --stack or unpin it")
    if fixed.get("fp8_params") and not stack.keeps_fp8_params:
        raise BadInputError(f"--fix fp8_params=1: {stack.fp8_params_refusal}; pick another --stack or recipe, or "
                            "unpin it")
    if fixed.get("fp8_params") and not fp8_params_run(str(fixed.get("precision", "fp8")), int(fixed.get("zero", 1)),
                                                      str(fixed.get("optimizer", "adam-master"))):
        raise BadInputError(f"--fix fp8_params=1 needs precision=fp8, zero >= 1 (the distributed optimizer or FSDP) and "
                            f"optimizer=adam-master, got precision={fixed.get('precision', 'fp8')} "
                            f"zero={fixed.get('zero', 1)} optimizer={fixed.get('optimizer', 'adam-master')}; unpin "
                            "one of them")
    if fixed.get("fp8_params") and "fp8" not in precisions and "precision" not in fixed:
        raise BadInputError("--fix fp8_params=1 needs fp8 training, which these GPUs or this stack cannot run (no fp8 "
                            "tensor cores, or no fp8 recipe); unpin fp8_params")
    if fixed.get("recompute_modules") and stack.selective_recompute != "core_attn":
        raise BadInputError(f"--fix recompute_modules={fixed['recompute_modules']}: stack {stack.name} has no "
                            f"Megatron recompute modules (its selective recompute is {stack.selective_recompute}); "
                            "pick another --stack or unpin it")
    if fixed.get("offload_layers") and not stack.activation_offload:
        raise BadInputError(f"--fix offload_layers={fixed['offload_layers']}: stack {stack.name} offloads no "
                            "activations to host memory; pick another --stack or unpin it")
    bf16_layers = {k: int(fixed[k]) for k in ("bf16_first_layers", "bf16_last_layers") if fixed.get(k)}
    if bf16_layers and not stack.bf16_end_layers:
        raise BadInputError(f"--fix {', '.join(bf16_layers)}: stack {stack.name} keeps no layers out of fp8 by "
                            "position (Megatron-Core --first-last-layers-bf16); pick another --stack or unpin them")
    if bf16_layers and (fixed.get("precision", "fp8") != "fp8" or precisions != ("fp8",)):
        raise BadInputError(f"--fix {', '.join(bf16_layers)} keeps layers out of fp8 and needs fp8 training only; pin "
                            "precision=fp8 (on GPUs and a stack that run it)")
    if bf16_layers and stack.fp8_recipes[:1] == ("delayed",):  # estimate.precision_problems' BF16_LAYERS
        raise BadInputError(f"--fix {', '.join(bf16_layers)}: Megatron-Core keeps no first / last layers in bf16 "
                            "under delayed scaling; pin another fp8_recipe or unpin them")
    if bf16_layers:
        fixed.setdefault("precision", "fp8")
    if fixed.get("cuda_graphs", "none") != "none" and int(fixed.get("offload_layers", 0)):
        raise BadInputError(f"--fix cuda_graphs={fixed['cuda_graphs']} with offload_layers: Megatron-Core captures no "
                            "CUDA graphs beside activation offloading; drop one of them")
    if fixed.get("bf16_moments") and not stack.bf16_moments:
        raise BadInputError(f"--fix bf16_moments=1: stack {stack.name} keeps Adam's moments in fp32 only; pick another "
                            "--stack or unpin it")
    if fixed.get("bf16_moments") and not bf16_moments_run(int(fixed.get("zero", 1)),
                                                          str(fixed.get("optimizer", "adam-master"))):
        raise BadInputError(f"--fix bf16_moments=1 needs optimizer=adam-master and zero >= 1 (Megatron-Core's "
                            f"precision-aware optimizer), got zero={fixed.get('zero', 1)} "
                            f"optimizer={fixed.get('optimizer', 'adam-master')}; unpin one of them")
    if fixed.get("moe_capacity_factor") is not None and not stack.moe_token_drop:
        raise BadInputError(f"--fix moe_capacity_factor={fixed['moe_capacity_factor']:g}: stack {stack.name} has no "
                            "token-dropping MoE; pick another --stack or unpin it")
    # The token dispatcher and the 1F1B all-to-all overlap are not searched: they stay at the NCCL all-to-all
    # without overlap unless pinned (--fix moe_dispatcher=deepep,moe_a2a_overlap=1).
    for key in ("schedule", "cp_kind", "zero", "cuda_graphs", "moe_dispatcher", "recompute"):
        if key in fixed and not stack.can_run(key, fixed[key]):
            raise BadInputError(f"--fix {key}={fixed[key]}: stack {stack.name} cannot run it; pick another --stack or "
                                f"unpin {key}")
    for key in ("tp", "etp"):
        if key in fixed and stack.max_tp is not None and int(fixed[key]) > stack.max_tp:
            raise BadInputError(f"--fix {key}={fixed[key]}: stack {stack.name} runs tensor parallelism up to "
                                f"{stack.max_tp} only; pick another --stack or set {key} <= {stack.max_tp}")
    if "tp" in fixed and not stack_splits_kv_heads(model, int(fixed["tp"]), stack):
        raise BadInputError(f"--fix tp={fixed['tp']}: stack {stack.name} needs tp to divide the {model.kv_heads} kv "
                            f"heads of {model.name}; pick another --stack or set tp to a divisor of {model.kv_heads}")
    if (fixed.get("cp_kind") == "a2a+p2p") != (int(fixed.get("cp_a2a", 1)) > 1):
        raise BadInputError("--fix cp_kind=a2a+p2p and cp_a2a=A go together (A: the all-to-all group of the "
                            "hierarchical context parallelism, e.g. the CP ranks inside one node); pin both or neither")
    if "dp" in fixed and world % int(fixed["dp"]):
        raise BadInputError(f"--fix dp={fixed['dp']}: dp must divide the {world} GPUs (world = pp x dp x cp x tp); "
                            f"pick one of {', '.join(map(str, divisors(world)))}")
    pick = lambda key, options: [fixed[key]] if key in fixed else list(options)  # noqa: E731
    rejected: Counter[RuleCode] = Counter()
    keys = ("tp", "pp", "cp", "vpp", "ep", "dp", "schedule", "sp", "first_stage_layers", "last_stage_layers",
            "dp_replicate", "cp_kind", "cp_a2a", "pp_layers")
    columns: dict[str, list] = {k: [] for k in keys}
    structures = 0
    # With flash attention, selective recompute keeps exactly what no recompute keeps (Korthikanti's selective
    # set is the s^2 score matrix flash never stores), so it is a duplicate unless pinned.
    flash = bool(fixed.get("flash_attn", True))
    recompute_options = tuple(r for r in RECOMPUTE if not (flash and r == "selective") and stack.can_run("recompute", r)
                              and not (model.is_hybrid and r == "full"))  # layout.hybrid_problems: no full recompute
    zero_options = [z for z in ZERO if stack.can_run("zero", z)]
    # Each rejected structure stands for every (zero, mbs, recompute) it would have expanded to.
    precision_options = pick("precision", precisions)
    expand = (len(pick("zero", zero_options)) * len(pick("mbs", MICRO_BATCHES)) * len(pick("recompute", recompute_options))
              * len(precision_options))
    # The pinned dispatcher / overlap go into the probe so their structural rules (A2A_OVERLAP: ep > 1, the
    # interleaved schedule with pp > 1) reject here as estimate() would.
    # A capacity factor is never searched (it changes what the model learns: dropped tokens skip their experts);
    # a pinned one is priced.
    moe_fields = {k: fixed[k] for k in ("moe_dispatcher", "moe_a2a_overlap", "moe_capacity_factor", "moe_imbalance")
                  if k in fixed}
    # A pinned count of recomputed layers is checked per structure against the layers a pipeline rank holds
    # (RuleCode.RECOMPUTE_LAYERS), as estimate() checks it.
    recompute_fields = ({"recompute": "full", "recompute_layers": int(fixed["recompute_layers"])}
                        if fixed.get("recompute_layers") else {})
    for st in _structures(model, world, domain, fixed, stack, left_out):
        structures += 1
        if st["dp"] % st["dp_replicate"]:
            rejected[RuleCode.DP_REPLICATE] += expand
            continue
        probe = Layout(**st, gbs=gbs, seq=seq, mbs=1, **moe_fields, **recompute_fields,
                       **({"precision": "fp8", "fp8_recipe": str(fixed.get("fp8_recipe") or ""), **bf16_layers}
                          if bf16_layers else {}))
        # The batch rules depend on mbs, expanded below; they are counted per expanded layout there. DualPipe's
        # micro-batch count is largest at mbs 1: a structure it refuses here it refuses at every mbs.
        problems = [p for p in layout_problems(model, probe, world) + cp_window_problems(model, probe, stack)
                    if p.code not in BATCH_RULES]
        if problems:
            rejected[problems[0].code] += expand
            continue
        for key in keys:
            value = st[key]
            columns[key].append(value if key == "pp_layers" else
                                CODES[key][value] if key in ("schedule", "cp_kind") else float(value))
    base = {k: np.asarray(v, dtype=float) for k, v in columns.items() if k != "pp_layers"}
    base.update(pp_layers_columns(tuple_column(columns["pp_layers"]), base["pp"], base["first_stage_layers"],
                                  base["last_stage_layers"]))
    n = len(base["tp"])
    if "zero" not in fixed:
        left_out.update({f"zero {z}": 1 for z in ZERO if z not in zero_options})
    zero, mbs, rec = (np.asarray(pick(k, v)) for k, v in (("zero", zero_options), ("mbs", MICRO_BATCHES),
                                                          ("recompute", recompute_options)))
    # Every (structure, zero, mbs, recompute, precision), the last varying fastest (itertools.product's order):
    # each dimension's values repeated by the sizes after it and tiled by the sizes before it.
    dims = [np.arange(n), zero.astype(float), mbs.astype(float),
            np.array([CODES["recompute"][r] for r in rec]), np.array([CODES["precision"][p] for p in precision_options])]
    sizes = [len(d) for d in dims]
    total = math.prod(sizes)

    def expand(values: np.ndarray, axis: int) -> np.ndarray:
        inner = math.prod(sizes[axis + 1:])
        return np.tile(np.repeat(values, inner), total // (inner * sizes[axis])) if total else values[:0]

    cols = {k: np.repeat(v, math.prod(sizes[1:])) for k, v in base.items()}
    cols.update(zero=expand(dims[1], 1), mbs=expand(dims[2], 2), recompute=expand(dims[3], 3),
                precision=expand(dims[4], 4), gbs=np.full(total, float(gbs)), seq=np.full(total, float(seq)))
    for key in ("optimizer", "cuda_graphs", "moe_dispatcher"):
        if key in fixed:
            cols[key] = np.full(total, CODES[key][fixed[key]])
    for key in ("etp", "recompute_layers", "flash_attn", "moe_a2a_overlap", "fp32_grads", "offload_layers",
                "bf16_moments", "precision_aware", "bf16_first_layers", "bf16_last_layers"):
        if key in fixed:
            cols[key] = np.full(total, float(fixed[key]))
    if fixed.get("recompute_modules"):  # recompute is pinned to selective above
        cols["recompute_modules"] = np.full(total, float(recompute_modules_mask(str(fixed["recompute_modules"]))))
    if "recompute_layers" in fixed:  # it applies to full recompute only (RuleCode.RECOMPUTE_LAYERS)
        cols["recompute_layers"] = np.where(cols["recompute"] == RecomputeCode.FULL, cols["recompute_layers"], 0.0)
    if fixed.get("moe_capacity_factor") is not None:
        cols["moe_capacity_factor"] = np.full(total, float(fixed["moe_capacity_factor"]))
    if "moe_imbalance" in fixed:  # a routing assumption, priced on every candidate (no effect where ep is 1)
        cols["moe_imbalance"] = np.full(total, float(fixed["moe_imbalance"]))
    # fp8-only parameters wherever they run (fp8 with the distributed optimizer or FSDP), as every Megatron-Bridge
    # fp8 recipe sets them, on a stack that has them: less memory and half the weight all-gather, nothing slower
    # (Layout.fp8_params); a pinned value is kept, and a pinned 1 refuses the layouts it cannot run on.
    can_fp8_params = (cols["precision"] == CODES["precision"]["fp8"]) & (cols["zero"] >= 1)
    if "optimizer" in cols:  # the fp32 master of adam-master is the weights' only high-precision copy
        can_fp8_params = can_fp8_params & (cols["optimizer"] == CODES["optimizer"]["adam-master"])
    if "fp8_params" in fixed:
        cols["fp8_params"] = np.full(total, float(bool(fixed["fp8_params"])))
    else:
        cols["fp8_params"] = (can_fp8_params & stack.keeps_fp8_params).astype(float)
    # The batch rules and the stack's limits read a few columns: filter before the full LayoutArrays is built.
    dp_mbs = cols["dp"] * cols["mbs"]
    ok = cols["gbs"] % dp_mbs == 0
    rejected[RuleCode.GBS_DP_MBS] += int((~ok).sum())
    fp8_params_bad = ok & (cols["fp8_params"] > 0) & ~can_fp8_params
    if fp8_params_bad.any():
        rejected[RuleCode.FP8_PARAMS] += int(fp8_params_bad.sum())
        ok = ok & ~fp8_params_bad
    if fixed.get("bf16_moments"):  # the distributed optimizer only: the searched zero 0 rows refuse it
        moments_bad = ok & (cols["zero"] < 1)
        rejected[RuleCode.BF16_MOMENTS] += int(moments_bad.sum())
        ok = ok & ~moments_bad
    m = np.maximum(1.0, np.floor(cols["gbs"] / dp_mbs))  # LayoutArrays.microbatches
    inter_bad = ok & (cols["schedule"] == ScheduleCode.INTERLEAVED) & (m % cols["pp"] != 0)
    rejected[RuleCode.INTERLEAVED_MICROBATCHES] += int(inter_bad.sum())
    # layout_problems' DUALPIPE_SHAPE per expanded mbs: an even number of micro-batches, at least 2 * pp.
    dual_bad = ok & (cols["schedule"] == ScheduleCode.DUALPIPE) & ((m % 2 != 0) | (m < 2 * cols["pp"]))
    if dual_bad.any():
        rejected[RuleCode.DUALPIPE_SHAPE] += int(dual_bad.sum())
    # A2A_OVERLAP per expanded recompute: a pinned 1F1B all-to-all overlap does not run with full recompute.
    overlap_bad = ok & ~dual_bad & (cols["recompute"] == RecomputeCode.FULL) & bool(fixed.get("moe_a2a_overlap"))
    if overlap_bad.any():
        rejected[RuleCode.A2A_OVERLAP] += int(overlap_bad.sum())
    # CUDA_GRAPHS per expanded recompute: pinned attention graphs do not run with full recompute
    graphs_bad = ok & ~dual_bad & ~overlap_bad & (cols["recompute"] == RecomputeCode.FULL) \
        & (fixed.get("cuda_graphs") == "attn")
    if graphs_bad.any():
        rejected[RuleCode.CUDA_GRAPHS] += int(graphs_bad.sum())
    batch_bad = inter_bad | dual_bad | overlap_bad | graphs_bad
    # The stack's own limits on combinations (DeepSpeed: ZeRO-2/3 do not run with pipeline parallelism).
    stack_bad = ok & ~batch_bad & (cols["pp"] > 1) & (cols["zero"] > stack.pp_max_zero)
    if stack_bad.any():
        left_out[f"zero > {stack.pp_max_zero} with pp > 1"] += int(stack_bad.sum())
    if stack.tp_max_zero is not None:  # DeepSpeed AutoTP: no ZeRO-3 beside tensor parallelism
        tp_bad = ok & ~batch_bad & ~stack_bad & (cols["tp"] > 1) & (cols["zero"] > stack.tp_max_zero)
        if tp_bad.any():
            left_out[f"zero > {stack.tp_max_zero} with tp > 1"] += int(tp_bad.sum())
            stack_bad = stack_bad | tp_bad
    if stack.ddp_alone:  # torchtitan: DDP (zero 0) on a 1-D mesh only
        ddp_bad = ok & ~batch_bad & ~stack_bad & (cols["zero"] == 0) & (cols["dp"] > 1) & (
            (cols["tp"] > 1) | (cols["pp"] > 1) | (cols["cp"] > 1) | (cols["ep"] > 1))
        if ddp_bad.any():
            left_out["zero 0 with tp, pp, cp or ep"] += int(ddp_bad.sum())
            stack_bad = stack_bad | ddp_bad
    keep = np.nonzero(ok & ~batch_bad & ~stack_bad)[0]
    arrays = LayoutArrays.from_columns(**{k: v[keep] for k, v in cols.items()})
    return Space(arrays=arrays, structures=structures, rejected=rejected,
                 left_out=left_out)
