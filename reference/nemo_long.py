"""Our predictions against NVIDIA's published long-sequence pre-training throughput with context parallelism
(data/nemo_long_context.csv; research/nemo-long-context.md): NeMo's "Long Sequence Performance" page (Llama 2 7B on
8-1,024 H100, NeMo 24.03.01, 8K to 1M tokens; Llama 3 8B on 8-256 B200, NeMo 25.04.rc2, 32K to 1M tokens), both fp8,
at the published tp / pp / cp / dp and batch; and the 64K Mixtral-8x22B rows of the NeMo 25.02 / 25.04 performance
summaries (256 B200 / GB200).

A held-out check set for issue #13's long-context item: no constant is fitted to these rows. Each row runs `estimate`
with the megatron-core stack: ring context parallelism (Megatron's --cp-comm-type p2p, the only one NeMo 24.03 had and
the default every later recipe keeps: no long-context recipe sets another), sequence parallelism with tp > 1, no
recompute, fp8 delayed scaling (NeMo's fp8 recipe before 25.09), one sequence per micro-batch; what the page does not
say is noted per row. The Llama rows publish model TFLOP/s only: tokens/s = TFLOP/s / the release's FLOPs per token,
taken a priori as NeMo's own count of that era (nemo.nemo_flops_per_token: Megatron's count with the full s x s
attention, which reproduces the 24.09-25.02 summaries' TFLOP/s-to-tokens/s ratios within 1 %); the page does not state
its formula, and with the causal half instead every long row's published tokens/s would be larger (the notes give the
factor). Rows the CLI cannot express are listed with the reason.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate, precision_problems
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.reference.bridge import bridge_flops_per_token
from clusterplan.reference.nemo import NemoRow, nemo_flops_per_token
from clusterplan.reference.nemo import table as nemo_table
from clusterplan.reference.report import held_out_line, markdown_rows, print_rows, read_rows

LONG_CSV = "nemo_long_context.csv"
STACK = "megatron-core"
MODELS = {"LLAMA2-7B": "llama2-7b", "LLAMA3-8B": "llama3.1-8b", "Mixtral-8x22B": "mixtral-8x22b"}
"""CSV model -> preset (Llama 3 8B has the Llama 3.1 dimensions; only the RoPE scaling differs)."""
SYSTEMS = {"DGX-H100": ("dgx-h100", 8), "DGX-B200": ("dgx-b200", 8), "DGX-GB200": ("gb200-nvl72", 4)}
"""The system named first in the CSV's source cell -> (node preset, GPUs per node preset unit)."""
FP8_RECIPE = "delayed"
"""NeMo's fp8 recipe before 25.09 (fp8_hybrid with an amax history: reference/nemo.py FP8_RECIPES FP8-DS)."""
FP8_PARAMS_RELEASES = frozenset({"25.02", "25.04", "25.04.rc2"})
"""NeMo 2.0 releases, whose fp8 plugins keep fp8-only parameters (reference/nemo.py FP8_PARAMS_UNKNOWN); NeMo 1.0
(24.03) keeps bf16 beside TE's fp8 copies."""
ASSUMED = ("ring CP (p2p), sp with tp > 1, no recompute, mbs 1, fp8 delayed scaling, TP overlap as megatron-core: "
           "the long-sequence page states none of them")
TITLE = ("NeMo long-sequence pre-training with context parallelism (Llama 2 7B on H100, NeMo 24.03; Llama 3 8B on "
         "B200, NeMo 25.04; Mixtral-8x22B at 64K, NeMo 25.02 / 25.04): tokens/s and model TFLOP/s per GPU")
COUNT_NOTE = ("Llama rows: published tokens/s = published TFLOP/s / the release's count (NeMo's full s x s count, "
              "nemo_flops_per_token); `GFLOP/token published` is that count itself there.")


def long_rows() -> list[NemoRow]:
    stack = get_stack(STACK)
    out = []
    for r in read_rows(LONG_CSV):
        system = r["source"].split(";")[0].strip()
        model = load_model(MODELS[r["model"]])
        seq, gbs = int(r["seq"]), int(r["gbs"])
        notes = [s.strip() for s in r["source"].split(";")[1:]]
        base = dict(release=r["release"], model=r["model"], precision=r["precision"],
                    published_tflops=float(r["model_tflops_per_gpu"] or 0.0))
        if not r["tp"]:  # "without CP": the page gives the best layout's rate, not the layout (tp 1 counted)
            count = nemo_flops_per_token(model, seq, 1) / 1e9
            out.append(NemoRow(gpus=int(r["gpus"] or 0), layout=Layout(seq=seq, gbs=gbs), notes=tuple(notes),
                               reason="no layout published (the page's best run without context parallelism)",
                               published_tokens_per_s=base["published_tflops"] * 1e3 / count,
                               megatron_gflops_per_token=bridge_flops_per_token(model, seq, 1) / 1e9,
                               release_gflops_per_token=count, **base))
            continue
        tp, pp, cp, gpus = int(r["tp"]), int(r["pp"]), int(r["cp"]), int(r["gpus"])
        vp = int(r["vp"] or 1)
        moe = model.is_moe
        layout = Layout(tp=tp, pp=pp, cp=cp, dp=gpus // (tp * pp * cp), vpp=vp, ep=8 if moe else 1,
                        mbs=int(r["mbs"] or 1), gbs=gbs, seq=seq, sp=tp > 1, zero=1, recompute="none",
                        schedule="interleaved-1f1b" if vp > 1 else "1f1b", precision="fp8", fp8_recipe=FP8_RECIPE,
                        fp8_params=r["release"] in FP8_PARAMS_RELEASES, fp32_grads=False)
        megatron = bridge_flops_per_token(model, seq, tp) / 1e9
        count = nemo_flops_per_token(model, seq, tp) / 1e9
        if r["tokens_per_s_per_gpu"]:
            tokens = float(r["tokens_per_s_per_gpu"])
        else:
            tokens = base["published_tflops"] * 1e3 / count
            notes.append(f"tokens/s from TFLOP/s at NeMo's full-attention count ({count:.1f} GFLOP/token); at the "
                         f"causal count ({megatron:.1f}) {count / megatron:.2f} x more")
        if not r["model_tflops_per_gpu"]:
            base["published_tflops"] = tokens * count / 1e3
            notes.append("TFLOP/s not published (cell cut in the stored page): shown at the release's count")
        notes.append(ASSUMED)
        node, per_node = SYSTEMS[system]
        row = dict(gpus=gpus, layout=layout, published_tokens_per_s=tokens, megatron_gflops_per_token=megatron,
                   release_gflops_per_token=count, **base)
        if gpus % per_node:  # a job on part of one node (the page's 2 and 4 GPU rows): PRESET:1xGPUS
            notes.append(f"{gpus} of one {node}'s {per_node} GPUs")
        cluster = load_cluster(f"{node}:1x{gpus}" if gpus < per_node else f"{node}:{gpus // per_node}")
        problems = [*layout_problems(model, layout, cluster.world_size), *stack_problems(layout, stack),
                    *precision_problems(cluster, layout, stack, FP8_RECIPE)]
        if problems:
            out.append(NemoRow(notes=tuple(notes), reason="; ".join(str(p) for p in problems), **row))
            continue
        js = estimate(model, cluster, layout, stack=stack).to_json()
        out.append(NemoRow(notes=tuple(notes), reason="", predicted_tokens_per_s=js["tokens_per_s"] / gpus,
                           model_tflops=js["tflops_per_gpu"], refused="; ".join(js.get("reasons", [])), **row))
    return out


def print_table(rows: list[NemoRow]) -> None:
    columns, cells = nemo_table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [held_out_line(rows), COUNT_NOTE])


def markdown_table(rows: list[NemoRow]) -> str:
    columns, cells = nemo_table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", held_out_line(rows) + ".", "", COUNT_NOTE])
