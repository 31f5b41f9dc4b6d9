"""The measurement plan: an ordered list of small measurements, each with a stable key for --resume.

Rank 0 builds the plan and broadcasts it, so every rank walks the same list. Link levels come from the
torchrun environment: ranks on one node (LOCAL_WORLD_SIZE of them, numbered node by node) form the scale_up
groups, all measured at once; the whole world (more than one node) is the scale_out group.
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterplan.errors import BadInputError

KIB = 1024
MIB = 1024 * KIB
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


@dataclass(frozen=True, kw_only=True, slots=True)
class Measurement:
    key: str
    """Stable identity, e.g. "collective/all_reduce/scale_up/65536"; --resume skips keys already in the file."""
    kind: str
    """gemm | attention | memory | decode | collective | overlap | layer"""
    label: str
    """What the progress bar shows."""
    dtype: str = ""
    shape: tuple[int, ...] = ()
    """gemm: (m, n, k); attention: (batch, heads, seq, head_dim); decode: (layers,); overlap: (gemm side,);
    layer: (tp,)."""
    size_bytes: int = 0
    op: str = ""
    level: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepConfig:
    cuda: bool
    quick: bool
    dtypes: tuple[str, ...]
    gemm_shapes: tuple[tuple[int, int, int], ...]
    attention_heads: int
    attention_head_dim: int
    levels: tuple[str, ...]
    decode_layers: int = 32
    """Layers of the decode-overhead model (the target model's, else Llama-3-8B's 32)."""
    layer_tps: tuple[int, ...] = (1,)
    """Tensor-parallel degrees of the eager-layer measurement: 1, and 2 when a node's ranks pair up."""


def level_groups(world_size: int, local_world_size: int) -> dict[str, list[list[int]]]:
    """Rank groups per link level; a level whose groups would have one rank is left out."""
    if local_world_size < 1 or world_size % local_world_size:
        raise BadInputError(f"WORLD_SIZE({world_size}) is not a multiple of LOCAL_WORLD_SIZE({local_world_size}); "
                            "start the same --nproc-per-node on every node")
    nodes = world_size // local_world_size
    groups: dict[str, list[list[int]]] = {}
    if local_world_size > 1:
        groups["scale_up"] = [list(range(n * local_world_size, (n + 1) * local_world_size)) for n in range(nodes)]
    if nodes > 1:
        # The whole world across nodes, as nccl-tests runs multi-node: its busbw is the node's aggregate over
        # the NICs (hierarchical NCCL), which models/hardware/rates.py divides by GPUs per node.
        groups["scale_out"] = [list(range(world_size))]
    return groups


def collective_sizes(*, cuda: bool, quick: bool) -> list[int]:
    """Message sizes: 1 KiB .. 256 MiB on GPU (nccl-tests style, powers of two), 1 KiB .. 32 MiB on CPU (a small
    model's layer: FSDP gathers whole layers, and a CPU's caches make 4 MiB faster than what leaves them)."""
    if cuda:
        return [KIB * 16**i for i in range(5)] + [256 * MIB] if quick else [KIB * 2**i for i in range(19)]
    return [KIB * 8**i for i in range(6)] if quick else [KIB * 2**i for i in range(16)]


def attention_seqs(*, cuda: bool, quick: bool) -> list[int]:
    if cuda:
        return [1024, 4096] if quick else [512, 1024, 2048, 4096, 8192]
    return [128, 256] if quick else [128, 256, 512, 1024]


def memory_sizes(*, cuda: bool, quick: bool) -> list[int]:
    if cuda:
        return [1024 * MIB] if quick else [256 * MIB, 1024 * MIB, 2048 * MIB]
    return [32 * MIB] if quick else [16 * MIB, 64 * MIB, 256 * MIB]


def overlap_case(*, cuda: bool) -> tuple[int, int, str]:
    """(all-reduce bytes, square GEMM side, GEMM dtype) of the overlap measurement: a DP gradient bucket's size
    (FSDP2/DDP buckets are tens of MiB on GPU) against GEMMs of a training step's size."""
    return (256 * MIB, 8192, "bf16") if cuda else (64 * MIB, 256, "fp32")


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def build_plan(cfg: SweepConfig) -> list[Measurement]:
    plan: list[Measurement] = []
    for size in memory_sizes(cuda=cfg.cuda, quick=cfg.quick):
        plan.append(Measurement(key=f"memory/copy/{size}", kind="memory", label=f"copy {human_bytes(size)}",
                                size_bytes=size))
    for dtype in cfg.dtypes:
        for m, n, k in cfg.gemm_shapes:
            plan.append(Measurement(key=f"gemm/{dtype}/{m}x{n}x{k}", kind="gemm", label=f"GEMM {dtype} {m}x{n}x{k}",
                                    dtype=dtype, shape=(m, n, k)))
    att_dtype = "bf16" if cfg.cuda else "fp32"
    for seq in attention_seqs(cuda=cfg.cuda, quick=cfg.quick):
        shape = (1, cfg.attention_heads, seq, cfg.attention_head_dim)
        plan.append(Measurement(key=f"attention/{att_dtype}/{'x'.join(map(str, shape))}", kind="attention",
                                label=f"attention {att_dtype} seq {seq}", dtype=att_dtype, shape=shape))
    plan.append(Measurement(key=f"decode/{att_dtype}/{cfg.decode_layers}", kind="decode", dtype=att_dtype,
                            shape=(cfg.decode_layers,), label=f"decode step, {cfg.decode_layers} tiny layers"))
    for level in cfg.levels:
        for op in COLLECTIVE_OPS:
            for size in collective_sizes(cuda=cfg.cuda, quick=cfg.quick):
                plan.append(Measurement(key=f"collective/{op}/{level}/{size}", kind="collective", op=op, level=level,
                                        size_bytes=size, label=f"{op} {level} {human_bytes(size)}"))
        size, side, dtype = overlap_case(cuda=cfg.cuda)
        plan.append(Measurement(key=f"overlap/{level}/{size}", kind="overlap", level=level, size_bytes=size,
                                shape=(side,), dtype=dtype, label=f"all_reduce {level} under GEMMs"))
    for tp in cfg.layer_tps:
        plan.append(Measurement(key=f"layer/{att_dtype}/tp{tp}", kind="layer", dtype=att_dtype, shape=(tp,),
                                label=f"eager layer fwd+bwd, tp {tp}"))
    return plan
