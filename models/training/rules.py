"""Rules a training layout must keep, as objects: a code to count by, a message that prints the factors, a fix.

`layout_problems` (layout.py) returns the broken ones; the search counts rejections by `code`, `clusterplan check`
prints `fix`, and `str(rule)` is the message. No caller reads the message text to tell rules apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class RuleCode(str, Enum):
    """What a rule checks; the value is the key the search's rejection counts are printed under."""

    WORLD = "tp * pp * cp * dp != world"
    HEADS_TP = "n_heads % tp"
    KV_HEADS_TP = "kv heads vs tp"
    FFN_TP = "ffn_hidden % tp"
    A2A_HEADS = "n_heads % (tp * cp), local kv heads % cp (all-to-all cp)"
    CP_WINDOW = "sliding windows under context parallelism other than a2a (Transformer Engine)"
    CP_HIERARCHY = "a2a+p2p: 1 < cp_a2a < cp, cp % cp_a2a, heads and local kv heads % cp_a2a"
    HYBRID = "hybrid Mamba: tp (and cp) divide Mamba heads and groups; vpp 1, no full recompute or pp_layers"
    UNEVEN_NEEDS_PP = "uneven stages need pp > 1"
    NO_MIDDLE_LAYERS = "no layers left for middle stages"
    STAGE_LAYERS_SUM = "stage layers != n_layers"
    STAGE_LAYERS_VPP = "stage layers % vpp"
    PP_LAYERS = "pp_layers: one count per rank summing to n_layers"
    LAYERS_PP = "n_layers % (pp * vpp)"
    VPP_SCHEDULE = "vpp > 1 needs interleaved-1f1b or zbv"
    SCHEDULE_NEEDS_PP = "vpp > 1 or a pipeline schedule needs pp > 1"
    ZBV_CHUNKS = "zbv needs pp > 1 and vpp = 2"
    DUALPIPE_SHAPE = "dualpipe needs even pp, vpp 1, even micro-batches >= 2 pp"
    INTERLEAVED_MICROBATCHES = "micro-batches % pp (interleaved)"
    GBS_DP_MBS = "gbs % (dp * mbs)"
    SP_SEQ = "seq % (tp * cp) (sequence parallel)"
    RECOMPUTE_LAYERS = "recompute_layers needs recompute=full and at most n_layers"
    CP_SEQ = "seq % (2 * cp) (context parallel)"
    FP8_PARAMS = "fp8_params needs precision=fp8, zero >= 1 and adam-master"
    BF16_MOMENTS = "bf16_moments needs zero >= 1 and adam-master"
    BF16_LAYERS = "bf16 first / last layers: at most n_layers // pp each, not under delayed scaling"
    EP_DENSE = "ep or etp > 1 on a dense model"
    EXPERTS_EP = "n_experts % ep"
    EP_FOLD = "(dp_shard * cp * tp) % (ep * etp)"
    EXPERT_FFN_ETP = "expert_ffn_hidden % etp"
    DP_REPLICATE = "dp % dp_replicate"
    A2A_OVERLAP = "1F1B all-to-all overlap preconditions"
    CUDA_GRAPHS = "CUDA graphs without activation offloading, attention graphs without full recompute"
    MOE_FIELDS_DENSE = "moe_dispatcher / moe_a2a_overlap on a dense model"
    FLEX_DISPATCHER = "deepep / hybridep need ep * etp > 1"
    IMBALANCE = "moe_imbalance <= ep x min(top_k, experts per rank) / top_k"
    TOKEN_DROP = "token-dropping MoE preconditions"
    OUT_OF_MEMORY = "out of memory"
    PRECISION = "precision the stack or GPU cannot run"
    STACK = "what the stack cannot run"
    MIN_MFU = "MFU below --min-mfu"
    MODEL_MISMATCH = "config model != --model"
    LAUNCH_WORLD = "the script's torchrun GPUs != --cluster's GPUs"

    def __str__(self) -> str:
        return self.value


FIXES: dict[RuleCode, str] = {
    RuleCode.WORLD: "make tp * pp * cp * dp equal the number of GPUs",
    RuleCode.HEADS_TP: "pick a tp that divides it (a divisor of the head and FFN sizes, usually 1, 2, 4 or 8)",
    RuleCode.KV_HEADS_TP: "pick tp dividing the kv heads, or a multiple of them",
    RuleCode.FFN_TP: "pick a tp that divides it (a divisor of the head and FFN sizes, usually 1, 2, 4 or 8)",
    RuleCode.A2A_HEADS: "use ring context parallel (cp_kind=ring), or tp * cp dividing the attention heads and cp "
                        "the kv heads each tp rank holds",
    RuleCode.CP_WINDOW: "use cp_kind=a2a for a model with sliding-window layers (or cp=1)",
    RuleCode.CP_HIERARCHY: "give cp_a2a, the all-to-all group (e.g. the CP ranks inside one node), dividing cp and "
                           "with tp * cp_a2a dividing the attention heads; or cp_kind=ring / a2a",
    RuleCode.HYBRID: "pick tp dividing the Mamba heads and groups (Megatron-Core MambaMixer) and cp dividing the heads "
                     "per tp rank, with the groups per tp rank and cp dividing one another (MambaContextParallel), "
                     "vpp=1 (MambaStack has no interleaved pipeline), recompute none or "
                     "selective (no full recompute there) and first/last_stage_layers instead of pp_layers",
    RuleCode.UNEVEN_NEEDS_PP: "drop first_stage_layers/last_stage_layers, or use pp > 1",
    RuleCode.NO_MIDDLE_LAYERS: "lower first_stage_layers/last_stage_layers so the middle stages keep layers",
    RuleCode.STAGE_LAYERS_SUM: "pick pp * vpp dividing n_layers, or set uneven first/last stage layers",
    RuleCode.STAGE_LAYERS_VPP: "pick middle-stage layer counts divisible by vpp, or vpp = 1",
    RuleCode.PP_LAYERS: "give pp_layers one count per pipeline rank (e.g. 6/5/5/0), summing to n_layers, every "
                        "middle rank >= 1 and no first/last_stage_layers beside it; or drop it for an even split",
    RuleCode.LAYERS_PP: "pick pp * vpp dividing n_layers, or set uneven first/last stage layers",
    RuleCode.VPP_SCHEDULE: "use the interleaved 1F1B schedule, or vpp = 1",
    RuleCode.SCHEDULE_NEEDS_PP: "set pp > 1, or drop vpp and schedule (pp 1 runs 1f1b, one stage)",
    RuleCode.ZBV_CHUNKS: "use vpp = 2 with pp > 1 for zbv, or another schedule",
    RuleCode.DUALPIPE_SHAPE: "use an even pp with vpp = 1 and a global batch giving an even number of at least "
                             "2 * pp micro-batches, or another schedule",
    RuleCode.INTERLEAVED_MICROBATCHES: "raise the global batch so micro-batches per pipeline are a multiple of pp",
    RuleCode.GBS_DP_MBS: "make the global batch a multiple of dp * micro-batch size",
    RuleCode.SP_SEQ: "make seq divisible by tp * cp",
    RuleCode.RECOMPUTE_LAYERS: "give recompute=full with recompute_layers at most the layers a pipeline rank holds "
                               "(0 = every layer), or drop recompute_layers",
    RuleCode.CP_SEQ: "make seq divisible by 2 * cp",
    RuleCode.BF16_LAYERS: "keep bf16_first_layers and bf16_last_layers at most n_layers // pp each (Megatron-Core "
                          "TransformerConfig), under a current-scaling, MXFP8 or NVFP4 recipe; or set them to 0",
    RuleCode.FP8_PARAMS: "set fp8_params=0, or train in fp8 with the distributed optimizer or FSDP (zero >= 1) and "
                         "optimizer=adam-master",
    RuleCode.BF16_MOMENTS: "set bf16_moments=0, or use optimizer=adam-master with the distributed optimizer (zero >= 1)",
    RuleCode.EP_DENSE: "use ep = 1 and etp = 1 for a dense model",
    RuleCode.EXPERTS_EP: "pick ep dividing the number of experts",
    RuleCode.EP_FOLD: "pick ep * etp dividing dp_shard * cp * tp",
    RuleCode.EXPERT_FFN_ETP: "pick etp dividing the expert FFN hidden size",
    RuleCode.DP_REPLICATE: "pick dp_replicate dividing dp",
    RuleCode.A2A_OVERLAP: "set moe_a2a_overlap=0, or use ep > 1, the interleaved schedule (vpp > 1) when pp > 1 and "
                          "selective recompute without the moe module",
    RuleCode.CUDA_GRAPHS: "set cuda_graphs=none, or offload_layers=0 (and, with cuda_graphs=attn, recompute other "
                          "than full; full recompute takes cuda_graphs=full)",
    RuleCode.MOE_FIELDS_DENSE: "drop moe_dispatcher, moe_a2a_overlap, moe_capacity_factor and moe_imbalance: a dense "
                               "model has no token dispatch",
    RuleCode.IMBALANCE: "give a moe_imbalance the layout's ranks can reach (1 = force-balanced)",
    RuleCode.FLEX_DISPATCHER: "use ep > 1 (or etp > 1) with deepep / hybridep, or moe_dispatcher=alltoall",
    RuleCode.TOKEN_DROP: "use moe_dispatcher=alltoall and a capacity factor <= n_experts / top_k, or drop "
                         "moe_capacity_factor (dropless)",
    RuleCode.PRECISION: "pick a precision the stack and every GPU run (bf16 runs everywhere), or another --stack",
    RuleCode.STACK: "re-plan with `clusterplan plan --stack NAME` to search only what the stack runs, or pick another "
                    "--stack",
    RuleCode.OUT_OF_MEMORY: "raise tp/pp, use zero=3 or more recompute, or lower the micro-batch size",
    RuleCode.MIN_MFU: "run `clusterplan plan` for a faster layout on this cluster",
    RuleCode.MODEL_MISMATCH: "give the --model the config trains, or fix the config",
    RuleCode.LAUNCH_WORLD: "give the --cluster the script launches (PRESET:NODESxGPUS), or set the script's --nnodes / "
                           "--nproc-per-node to the cluster's",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One broken rule: `code` to count and compare by, `message` with the factors, `fix` to print."""

    code: RuleCode
    message: str
    fix: str
    field: str = ""
    """The Layout field the rule is about where it is about one (a stack rule: the field the stack cannot run), so
    a caller that has already said what runs instead of that field (an exporter's note) need not say it again."""

    @classmethod
    def broken(cls, code: RuleCode, message: str, field: str = "") -> Rule:
        """The rule `code`, broken as `message` says, with its standard fix."""
        return cls(code=code, message=message, fix=FIXES[code], field=field)

    @classmethod
    def out_of_memory(cls, message: str, *, zero: int, recompute: str, mbs: int, fp8_params_off: bool = False,
                      bf16_moments_off: bool = False, precision_aware_off: bool = False) -> Rule:
        """OUT_OF_MEMORY with the fix narrowed to the knobs the layout has not used up (no "use zero=3" for a layout
        at zero 3)."""
        knobs = ["raise tp/pp/cp"]
        knobs += ["use zero=3"] if zero < 3 else []
        knobs += ["more recompute"] if recompute != "full" else []
        knobs += ["lower the micro-batch size"] if mbs > 1 else []
        knobs += ["keep the parameters in fp8 only (fp8_params=1)"] if fp8_params_off else []
        knobs += ["keep Adam's moments in bf16 (bf16_moments=1)"] if bf16_moments_off else []
        knobs += ["keep the master weights as 2-byte remainders (precision_aware=1)"] if precision_aware_off else []
        fix = ", ".join(knobs[:-1]) + f" or {knobs[-1]}" if len(knobs) > 1 else knobs[0]
        return cls(code=RuleCode.OUT_OF_MEMORY, message=message, fix=fix)

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code.name.lower(), "rule": self.message, "fix": self.fix}
