"""LayoutArrays: many layouts as numpy columns, so one evaluation prices thousands of candidates.

Categorical fields become small integer codes; every cost function in compute.py,
memory.py and step.py takes these arrays (a single layout is a batch of one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np

from clusterplan.models.training.layout import CHOICES, Layout, recompute_modules_mask, recompute_modules_text

CODES = {name: {v: i for i, v in enumerate(values)} for name, values in CHOICES.items()}


class RecomputeCode(IntEnum):
    """LayoutArrays.recompute: the index of Layout.recompute in CHOICES["recompute"]."""

    NONE = 0
    SELECTIVE = 1
    FULL = 2


class ScheduleCode(IntEnum):
    GPIPE = 0
    ONE_F_ONE_B = 1
    INTERLEAVED = 2
    ZB = 3
    """ZB-H1 (Qi et al. 2023): 1F1B with weight gradients moved into the bubble."""
    ZBV = 4
    """ZB-V (Qi et al. 2024; torchtitan ZBVZeroBubble): 2 chunks per rank in a V."""
    DUALPIPE = 5
    """DualPipe (DeepSeek-V3, arXiv 2412.19437 section 3.2.1): micro-batches fed from both pipeline ends; each rank
    holds stages i and pp-1-i and overlaps one micro-batch's forward chunk with another's backward chunk."""


class PrecisionCode(IntEnum):
    BF16 = 0
    FP16 = 1
    FP8 = 2
    FP32 = 3


class OptimizerCode(IntEnum):
    ADAM_MASTER = 0
    ADAM = 1
    SGD = 2


class CpKindCode(IntEnum):
    RING = 0
    A2A = 1
    ALLGATHER = 2
    A2A_P2P = 3
    """Megatron's hierarchical CP: all-to-all inside groups of cp_a2a ranks, a ring across them."""


class CudaGraphsCode(IntEnum):
    NONE = 0
    ATTN = 1
    FULL = 2


class MoeDispatcherCode(IntEnum):
    ALLTOALL = 0
    DEEPEP = 1
    HYBRIDEP = 2


ENUMS: dict[str, type[IntEnum]] = {"recompute": RecomputeCode, "schedule": ScheduleCode, "precision": PrecisionCode,
                                   "optimizer": OptimizerCode, "cp_kind": CpKindCode, "cuda_graphs": CudaGraphsCode,
                                   "moe_dispatcher": MoeDispatcherCode}
# The enums index CHOICES one to one (a new Layout choice needs its member, in the same place).
assert all(len(ENUMS[k]) == len(CHOICES[k]) for k in CHOICES) and set(ENUMS) == set(CHOICES)

# Short names kept for the modules that import them (each is the enum member, not a bare integer).
RECOMPUTE_NONE, RECOMPUTE_SELECTIVE, RECOMPUTE_FULL = RecomputeCode
SCHEDULE_GPIPE, SCHEDULE_1F1B, SCHEDULE_INTERLEAVED, SCHEDULE_ZB, SCHEDULE_ZBV, SCHEDULE_DUALPIPE = ScheduleCode
OPT_ADAM_MASTER, OPT_ADAM, OPT_SGD = OptimizerCode
PREC_BF16, PREC_FP16, PREC_FP8, PREC_FP32 = PrecisionCode

INT_FIELDS = ("dp", "dp_replicate", "tp", "pp", "vpp", "cp", "cp_a2a", "ep", "etp", "zero", "mbs", "gbs", "seq",
              "recompute_layers", "first_stage_layers", "last_stage_layers", "offload_layers", "bf16_first_layers",
              "bf16_last_layers")
BOOL_FIELDS = ("sp", "flash_attn", "fp32_grads", "fp8_params", "bf16_moments", "precision_aware", "moe_a2a_overlap")
DROPLESS = 0.0
"""LayoutArrays.moe_capacity_factor of a dropless layout (Layout.moe_capacity_factor None)."""


def tuple_column(values: Sequence[tuple[int, ...]] | np.ndarray) -> np.ndarray:
    """An object array of tuples, one per row (numpy would otherwise make a 2-D array of equal-length tuples); an
    object array is taken as it is (a search's millions of rows are not copied one by one)."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return values
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = tuple(v)
    return out


def empty_tuple_column(n: int) -> np.ndarray:
    """`n` rows without a per-rank list (Layout.pp_layers ())."""
    out = np.empty(n, dtype=object)
    out.fill(())
    return out


def pp_layers_columns(pp_layers: np.ndarray, pp: np.ndarray, first: np.ndarray,
                      last: np.ndarray) -> dict[str, np.ndarray]:
    """The numeric columns a per-rank list (Layout.pp_layers) is priced by: pp_layers_listed, the end ranks' counts
    as given in first/last_stage_layers (0 = none there, not an even share) and the heaviest middle rank's."""
    listed = np.array([bool(r) for r in pp_layers], dtype=bool) & (np.asarray(pp) > 1)
    pick = lambda f: np.array([float(f(r)) if on else 0.0 for r, on in zip(pp_layers, listed, strict=True)])  # noqa: E731
    return {"pp_layers": pp_layers, "pp_layers_listed": listed.astype(float),
            "first_stage_layers": np.where(listed, pick(lambda r: r[0]), first),
            "last_stage_layers": np.where(listed, pick(lambda r: r[-1]), last),
            "middle_stage_layers": pick(lambda r: max(r[1:-1], default=0))}


@dataclass(frozen=True, slots=True)
class LayoutArrays:
    dp: np.ndarray
    dp_replicate: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    vpp: np.ndarray
    cp: np.ndarray
    cp_a2a: np.ndarray
    """Layout.cp_a2a: the all-to-all group of hierarchical (a2a+p2p) context parallelism; 1 otherwise."""
    ep: np.ndarray
    etp: np.ndarray
    zero: np.ndarray
    mbs: np.ndarray
    gbs: np.ndarray
    seq: np.ndarray
    recompute_layers: np.ndarray
    first_stage_layers: np.ndarray
    last_stage_layers: np.ndarray
    offload_layers: np.ndarray
    bf16_first_layers: np.ndarray
    bf16_last_layers: np.ndarray
    sp: np.ndarray
    flash_attn: np.ndarray
    fp32_grads: np.ndarray
    fp8_params: np.ndarray
    bf16_moments: np.ndarray
    precision_aware: np.ndarray
    moe_a2a_overlap: np.ndarray
    recompute: np.ndarray
    schedule: np.ndarray
    precision: np.ndarray
    optimizer: np.ndarray
    cp_kind: np.ndarray
    cuda_graphs: np.ndarray
    moe_dispatcher: np.ndarray
    recompute_modules: np.ndarray
    """Bitmask of Layout.recompute_modules (bit i = layout.RECOMPUTE_MODULES[i]; 0 = the stack's default)."""
    moe_capacity_factor: np.ndarray
    """Layout.moe_capacity_factor; DROPLESS (0) for None."""
    moe_imbalance: np.ndarray
    """Layout.moe_imbalance (1 = force-balanced routing)."""
    pp_layers_listed: np.ndarray
    """1 where Layout.pp_layers gives each rank's layers: first_stage_layers / last_stage_layers then hold the end
    ranks' counts as given (0 = no layers, not an even share) and middle_stage_layers the heaviest middle rank's."""
    middle_stage_layers: np.ndarray
    """The heaviest middle rank's layers under Layout.pp_layers (0 otherwise, or with no middle rank)."""
    pp_layers: np.ndarray
    """Layout.pp_layers of each row, tuples in an object array (() = none): what layout(i) gives back; the
    pricing reads the numeric columns above (pp_layers_columns)."""

    @classmethod
    def from_layouts(cls, layouts: Sequence[Layout]) -> LayoutArrays:
        cols = {}
        for name in INT_FIELDS + BOOL_FIELDS:
            cols[name] = np.array([float(getattr(x, name)) for x in layouts])
        for name, codes in CODES.items():
            cols[name] = np.array([codes[getattr(x, name)] for x in layouts], dtype=np.int64)
        cols["recompute_modules"] = np.array([recompute_modules_mask(x.recompute_modules) for x in layouts],
                                             dtype=np.int64)
        cols["moe_capacity_factor"] = np.array([DROPLESS if x.moe_capacity_factor is None else x.moe_capacity_factor
                                                for x in layouts], dtype=float)
        cols["moe_imbalance"] = np.array([x.moe_imbalance for x in layouts], dtype=float)
        cols.update(pp_layers_columns(tuple_column([x.pp_layers for x in layouts]), cols["pp"],
                                      cols["first_stage_layers"], cols["last_stage_layers"]))
        return cls(**cols)

    @classmethod
    def from_columns(cls, **columns: np.ndarray) -> LayoutArrays:
        n = len(next(iter(columns.values())))
        defaults = Layout()
        cols = {}
        for f in fields(cls):
            if f.name == "pp_layers" and f.name in columns:
                cols[f.name] = tuple_column(columns[f.name])
            elif f.name in columns:
                integer = f.name in CODES or f.name == "recompute_modules"
                cols[f.name] = np.asarray(columns[f.name], dtype=np.int64 if integer else float)
            elif f.name == "recompute_modules":
                cols[f.name] = np.zeros(n, dtype=np.int64)
            elif f.name == "moe_capacity_factor":
                cols[f.name] = np.full(n, DROPLESS)
            elif f.name in ("pp_layers_listed", "middle_stage_layers"):  # no per-rank list: first/last and even
                cols[f.name] = np.zeros(n)
            elif f.name == "pp_layers":
                cols[f.name] = empty_tuple_column(n)
            elif f.name == "sp":  # unset sequence parallelism follows tp (Layout.sp)
                cols[f.name] = (np.asarray(columns.get("tp", np.ones(n)), dtype=float) > 1).astype(float)
            elif f.name in CODES:
                cols[f.name] = np.full(n, CODES[f.name][getattr(defaults, f.name)], dtype=np.int64)
            else:
                cols[f.name] = np.full(n, float(getattr(defaults, f.name)))
        return cls(**cols)

    def __len__(self) -> int:
        return len(self.dp)

    def full_recompute_share(self, n_layers: int) -> np.ndarray:
        """Share of a pipeline rank's layers whose forward full recompute runs again in backward (with its forward
        collectives): 1 with recompute_layers 0 (every layer), else min(recompute_layers, layers per rank) / layers
        per rank at the average n_layers / pp (memory.full_recompute_layers keeps the same layers' inputs only);
        0 without full recompute."""
        per_rank = n_layers / self.pp
        share = np.where(self.recompute_layers > 0, np.minimum(self.recompute_layers, per_rank) / per_rank, 1.0)
        return np.where(self.recompute == RECOMPUTE_FULL, share, 0.0)

    def interleaved_warmup_passes(self) -> np.ndarray:
        """Forward chunk passes pipeline rank 0 runs before its first backward under the interleaved schedule, at
        most all m x vpp (Megatron-Core schedules.py get_pp_rank_microbatches with microbatch_group_size_per_vp_stage
        = pp, its default; torch.distributed.pipelining's Interleaved1F1B warms up alike): 2 (pp - 1) + (vpp - 1) pp.
        The cool-down runs as many backward passes alone."""
        warmup = (self.pp - 1.0) * 2.0 + (self.vpp - 1.0) * self.pp
        return np.minimum(warmup, self.microbatches * self.vpp)

    def take(self, index: np.ndarray) -> LayoutArrays:
        return LayoutArrays(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def unique_rows(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """(first, inverse): the index of one row of each distinct combination of the columns `names` (in the order
        of the combinations) and, per row, which of those it is (self.take(first).take(inverse) equals self in those
        columns); None when a column is not
        integer-valued or the combinations overflow a 63-bit key. What a cost term that reads only those columns
        computes once per combination (a search's millions of candidates share a few thousand)."""
        key = np.zeros(len(self), dtype=np.int64)
        radix = 1
        for name in names:
            column = getattr(self, name)
            if not len(column):
                return None
            low, high = column.min(), column.max()
            if low == high:  # one value in every row (a pinned float field too): it splits nothing
                continue
            if not (np.all(column == np.floor(column)) and high - low < 2**31):
                return None
            span = int(high - low) + 1
            if radix * span >= 2**62:
                return None
            key += (column - low).astype(np.int64) * radix
            radix *= span
        if radix > max(4 * len(self), 2**16):
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            return first, inverse.reshape(-1)
        # Few combinations: a table over the key range, no sort (any row of a combination can represent it).
        row_of = np.zeros(radix, dtype=np.int64)
        row_of[key] = np.arange(len(self))
        present = np.zeros(radix, dtype=bool)
        present[key] = True
        keys = np.nonzero(present)[0]
        slot = np.zeros(radix, dtype=np.int64)
        slot[keys] = np.arange(len(keys))
        return row_of[keys], slot[key]

    def layout(self, i: int) -> Layout:
        values: dict = {name: int(getattr(self, name)[i]) for name in INT_FIELDS}
        values.update({name: bool(getattr(self, name)[i]) for name in BOOL_FIELDS})
        values.update({name: CHOICES[name][int(getattr(self, name)[i])] for name in CODES})
        values["recompute_modules"] = recompute_modules_text(int(self.recompute_modules[i]))
        cf = float(self.moe_capacity_factor[i])
        values["moe_capacity_factor"] = None if cf == DROPLESS else cf
        values["moe_imbalance"] = float(self.moe_imbalance[i])
        values["pp_layers"] = tuple(self.pp_layers[i])
        if values["pp_layers"] and self.pp_layers_listed[i]:  # the ends live in the list, not in first/last
            values["first_stage_layers"] = values["last_stage_layers"] = 0
        return Layout(**values)

    # derived columns
    @property
    def dp_shard(self) -> np.ndarray:
        return self.dp / self.dp_replicate

    @property
    def microbatches(self) -> np.ndarray:
        return np.maximum(1.0, np.floor(self.gbs / (self.dp * self.mbs)))

    @property
    def cp_ring(self) -> np.ndarray:
        """Ranks of the ring a context-parallel rank passes K/V blocks around, where its kind runs one: cp / cp_a2a
        under hierarchical a2a+p2p (the ring runs across the all-to-all groups), else cp."""
        return np.where(self.cp_kind == CpKindCode.A2A_P2P, self.cp / self.cp_a2a, self.cp)

    @property
    def sharded_grads(self) -> np.ndarray:
        """1.0 on rows whose gradients are sharded (ZeRO 2 / 3: Megatron-Core runs them as Megatron-FSDP, without
        gradient-accumulation fusion), else 0.0: a column of its own, so a cost term that only asks this keys on two
        values, not on every ZeRO stage (step.LAYER_TIME_FIELDS)."""
        return (self.zero >= 2).astype(float)

    @property
    def token_drop(self) -> np.ndarray:
        """Rows on Megatron-Core's drop-and-pad MoE path (Layout.moe_capacity_factor set)."""
        return self.moe_capacity_factor != DROPLESS

    @property
    def sp_div(self) -> np.ndarray:
        """Divisor of the activations outside attention/MLP cores: tp with sequence parallelism, else 1."""
        return np.where(self.sp > 0, self.tp, 1.0)
