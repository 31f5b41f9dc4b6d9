"""Our predictions against published runs: A100 (Narayanan et al. 2021 Tables 1-2, Korthikanti et al. 2022),
NeMo 25.11 / Megatron-Bridge on H100, B200, GB200, GB300 (reference/bridge.py), torchtitan on H100 (reference/titan.py)
and its later H200 / async-TP / A100 / B200 runs (reference/titan_community.py), OLMo-core's README rows
(reference/olmo_core.py),
the earlier NeMo performance summaries on H100 (24.09 - 25.09, reference/nemo.py), MosaicML llm-foundry's MPT benchmarks
on H100 and A100 (reference/foundry.py), the Llama 3 405B pre-training runs on 8,192 and 16,384 H100
(reference/llama3.py), the Megatron-Core MoE report's and ModelZoo's MoE runs (reference/mcore_moe.py), the
published Mixtral runs on H100 and GB200 (reference/mixtral.py), NVIDIA's MLPerf Training submissions
(reference/mlperf.py) and its DGX Cloud Benchmarking recipes (reference/dgxc.py).

    python -m clusterplan.reference                     # prints every comparison table
    python -m clusterplan.reference --markdown [--out F] # the same tables as markdown (README; `make reference`)

The same rows are asserted in tests/test_reference_training.py, tests/test_reference_bridge.py,
tests/test_reference_titan.py, tests/test_reference_nemo.py, tests/test_reference_foundry.py,
tests/test_reference_llama3.py, tests/test_reference_mcore_moe.py, tests/test_reference_mixtral.py,
tests/test_reference_mlperf.py and
tests/test_reference_dgxc.py with the
tolerances stated there.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Protocol

from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, load_cluster
from clusterplan.models.training.estimate import Estimate, estimate
from clusterplan.models.training.layout import Layout

REFERENCE_DIR = Path(__file__).resolve().parent / "data"
STACK = "megatron-lm-2021"
"""The stack these A100 runs used: Megatron-LM of 2021-22 (no TP/P2P overlap, unfused attention)."""


TARGET_TIME_MEDIAN = 0.10
TARGET_TIME_MAX = 0.20
TARGET_MEMORY = 0.08
"""Issue #13's target for held-out published H100-era runs: time within 10 % median and 20 % max, memory within 8 %."""


def read_rows(name: str, directory: Path = REFERENCE_DIR) -> list[dict[str, str]]:
    with open(directory / name, encoding="utf-8") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def gpt(hidden: int, heads: int, layers: int, name: str = "gpt") -> ModelSpec:
    """The Megatron GPT of these papers: ffn 4h, vocab 51200, seq 2048, biases, learned positions, dropout."""
    return ModelSpec(name=name, family="gpt2", n_layers=layers, hidden=hidden, n_heads=heads, ffn_hidden=4 * hidden,
                     gated_ffn=False, vocab=51200, tied_embeddings=True, norm="layernorm", position="learned",
                     max_positions=2048, attn_bias=True, linear_bias=True, dropout=True)


def selene(gpus: int) -> Cluster:
    return load_cluster(f"dgx-a100-80g:{gpus // 8}")


class PublishedRow(Protocol):
    """A published run compared with its prediction: bridge, foundry, mcore_moe and nemo rows."""

    @property
    def expressible(self) -> bool: ...

    @property
    def error(self) -> float: ...


class PricedRow:
    """What a published row priced by `estimate` answers (a mixin of the frozen row dataclasses: bridge, mcore_moe,
    mixtral, mlperf), from its `reason` (why the CLI cannot express it, '' when it can), `label`, and published and
    predicted tokens/s per GPU."""

    reason: str
    label: str
    published_tokens_per_s: float
    predicted_tokens_per_s: float | None
    notes: tuple[str, ...]
    refused: str
    """Why estimate refused the row's layout (out of memory, ...): '' when it fits."""

    @property
    def expressible(self) -> bool:
        return not self.reason

    def shown_notes(self) -> list[str]:
        """The row's notes as the tables print them: why it is not expressible first, estimate's refusal last."""
        return ([f"not expressible: {self.reason}"] if not self.expressible else []) + row_notes(self.notes,
                                                                                               self.refused)

    @property
    def error(self) -> float:
        """Predicted over published tokens/s per GPU, minus 1."""
        if self.predicted_tokens_per_s is None:
            raise ValueError(f"{self.label}: not expressible ({self.reason})")
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1


def held_out_line(rows: Sequence[PublishedRow], scope: str = "") -> str:
    """A held-out set's summary: its expressible rows' tokens/s median and max |error| against issue #13's targets
    (`scope` qualifies the rows counted, e.g. what was left out of them)."""
    n, med, worst = summary(rows)
    return (f"expressible {n} of {len(rows)}{scope}: tokens/s median |error| {med:.1%}, max {worst:.1%} (issue #13 "
            f"held-out target: {TARGET_TIME_MEDIAN:.0%} median, {TARGET_TIME_MAX:.0%} max)")


def summary(rows: Sequence[PublishedRow]) -> tuple[int, float, float]:
    """(expressible rows, median |error|, max |error|) of a reference set's tokens/s per GPU."""
    errors = sorted(abs(r.error) for r in rows if r.expressible)
    if not errors:
        return 0, float("nan"), float("nan")
    return len(errors), median(errors), errors[-1]


Column = tuple[str, str]
"""A markdown table column: (header, "l" | "r" alignment)."""


def markdown_rows(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a reference table in markdown: the header, the alignment row, then one line per row of cells,
    a cell's '|' written as '/' (the notes quote layouts and sources)."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|" + "|".join("---:" if align == "r" else "---" for _, align in columns) + "|"]
    for cells in rows:
        if len(cells) != len(columns):
            raise ValueError(f"{len(cells)} cells for {len(columns)} columns: {cells!r}")
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return lines


def text_rows(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[str]:
    """The same table for the console: each column padded to its widest cell, aligned as in markdown."""
    widths = [max([len(header), *(len(cells[i]) for cells in rows)]) for i, (header, _) in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(width) if align == "r" else cell.ljust(width)
                         for cell, width, (_, align) in zip(cells, widths, columns, strict=True)).rstrip()

    return [line([header for header, _ in columns]), *(line(cells) for cells in rows)]


def print_rows(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], labels: Sequence[str],
               footer: Sequence[str] = ()) -> None:
    """A reference table on the console: its title, the table without its last column (the notes), the footer lines
    (summaries), then each row's notes under its label."""
    print(f"\n{title}")
    for line in text_rows(columns[:-1], [cells[:-1] for cells in rows]):
        print(line)
    for line in footer:
        print(line)
    for label, cells in zip(labels, rows, strict=True):
        if cells[-1]:
            print(f"  {label}: {cells[-1]}")


def notes_cell(notes: Sequence[str]) -> str:
    """A row's notes as one table cell."""
    return "; ".join(notes)


def refusal(est: Estimate) -> str:
    """Why `estimate` refused a reference row's layout (out of memory, ...), its reasons joined; empty when it fits."""
    return "; ".join(str(p) for p in est.reasons)


def row_notes(notes: tuple[str, ...] | list[str], refused: str | None) -> list[str]:
    """A reference row's notes, with estimate's refusal of its layout (out of memory, ...) last when it refused it."""
    return list(notes) + ([f"estimate refuses: {refused}"] if refused else [])


@dataclass(frozen=True)
class Comparison:
    label: str
    measured: float
    predicted: float
    unit: str

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1


def table1() -> list[Comparison]:
    """Iteration time, from the published TFLOP/s and the paper's FLOP formula (which counts recompute).

    The paper does not publish micro-batch sizes or interleaving: we take the fastest feasible choice among
    mbs 1/2/4/8 and vpp 1-4, which is what our planner would recommend for the published tp/pp/dp.
    """
    out = []
    for r in read_rows("megatron2021_table1.csv"):
        h, a, n, pp, dp = int(r["hidden"]), int(r["heads"]), int(r["layers"]), int(r["pp"]), int(r["dp"])
        b, s, v, gpus = int(r["global_batch"]), 2048, 51200, int(r["gpus"])
        flops = 96 * b * s * n * h * h * (1 + s / (6 * h) + v / (16 * n * h))  # Narayanan 2021 Eq. 3
        measured = flops / (gpus * float(r["measured_tflops_per_gpu"]) * 1e12)
        best = float("inf")
        for mbs in (1, 2, 4, 8):
            for vpp in (1, 2, 3, 4) if pp > 1 else (1,):
                if b % (dp * mbs) or n % (pp * vpp):
                    continue
                layout = Layout(tp=int(r["tp"]), pp=pp, dp=dp, mbs=mbs, gbs=b, seq=s, recompute="full", vpp=vpp, sp=False,
                                schedule="interleaved-1f1b" if vpp > 1 else "1f1b", precision="fp16", zero=0,
                                flash_attn=False)
                est = estimate(gpt(h, a, n), selene(gpus), layout, stack=get_stack(STACK))
                if est.feasible:
                    best = min(best, est.to_json()["step_time_s"])
        out.append(Comparison(f"{r['params_b']}B t{r['tp']} p{pp} d{dp}", measured, best, "s"))
    return out


def table2() -> list[Comparison]:
    """Achieved TFLOP/s per GPU of PTD-P and ZeRO-3 (Narayanan 2021 Table 2), in the paper's FLOP convention."""
    out = []
    for r in read_rows("megatron2021_table2.csv"):
        h, a, n = int(r["hidden"]), int(r["heads"]), int(r["layers"])
        tp, pp, gpus, b = int(r["tp"]), int(r["pp"]), int(r["gpus"]), int(r["global_batch"])
        zero3 = r["scheme"] == "zero3"
        layout = Layout(tp=tp, pp=pp, dp=gpus // (tp * pp), mbs=int(r["micro_batch"]), gbs=b, seq=2048, sp=False,
                        recompute="full", precision="fp16", zero=3 if zero3 else 0, flash_attn=False,
                        vpp=1, schedule="1f1b")
        step = estimate(gpt(h, a, n), selene(gpus), layout, stack=get_stack(STACK)).to_json()["step_time_s"]
        flops = 96 * b * 2048 * n * h * h * (1 + 2048 / (6 * h) + 51200 / (16 * n * h))
        out.append(Comparison(f"{r['scheme']} {r['params_b']}B {gpus} GPUs", float(r["measured_tflops_per_gpu"]),
                              flops / step / gpus / 1e12, "TFLOP/s"))
    return out


def korthikanti_layouts(r: dict[str, str], seqsel: bool) -> Layout:
    vpp = int(r["interleave"])
    return Layout(tp=int(r["tp"]), pp=int(r["pp"]), dp=1, mbs=int(r["micro_batch"]), gbs=int(r["global_batch"]),
                  seq=2048, vpp=vpp, schedule="interleaved-1f1b" if vpp > 1 else "1f1b", precision="fp16", zero=0,
                  flash_attn=False, sp=seqsel, recompute="selective" if seqsel else "full")


def korthikanti_times() -> list[Comparison]:
    out = []
    for r in read_rows("korthikanti2022.csv"):
        model = gpt(int(r["hidden"]), int(r["heads"]), int(r["layers"]))
        for seqsel, key in ((False, "iter_s_full"), (True, "iter_s_seqsel")):
            est = estimate(model, selene(int(r["gpus"])), korthikanti_layouts(r, seqsel), stack=get_stack(STACK))
            out.append(Comparison(f"{r['model']} {'seq+sel' if seqsel else 'full'}", float(r[key]),
                                  est.to_json()["step_time_s"], "s"))
    return out


A100_TABLES = (("Narayanan 2021 Table 1: iteration time", table1),
               ("Narayanan 2021 Table 2: TFLOP/s per GPU", table2),
               ("Korthikanti 2022 Table 5: iteration time", korthikanti_times))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clusterplan.reference",
                                     description="Our predictions against published training runs.")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown (for the README)")
    parser.add_argument("--out", help="write the markdown to this file (atomically) instead of stdout")
    args = parser.parse_args(argv)
    if args.markdown or args.out:
        from clusterplan.fileio import write_atomic

        text = markdown_report()
        if args.out:
            from clusterplan.errors import BadInputError

            try:
                write_atomic(args.out, text)
            except BadInputError as exc:  # one line, exit 2, as the CLI reports a path it cannot write
                print(f"error: {exc}", file=sys.stderr)
                return 2
        else:
            print(text, end="")
        return 0
    print_text_report()
    return 0


def markdown_report() -> str:
    """Every reference table as markdown: the A100 tables, then Megatron-Bridge 25.11."""
    from clusterplan.reference.bridge import bridge_rows, markdown_table

    out = ["<!-- generated by `make reference` (python -m clusterplan.reference --markdown); do not edit -->", ""]
    for title, fn in A100_TABLES:
        rows = fn()
        out += [f"#### {title}", "", "| row | measured | predicted | error |", "|---|---:|---:|---:|"]
        out += [f"| {c.label} | {c.measured:.2f} {c.unit} | {c.predicted:.2f} {c.unit} | {c.error:+.1%} |"
                for c in rows]
        errors = sorted(abs(c.error) for c in rows)
        out += ["", f"Median |error| {errors[len(errors) // 2]:.1%}, max {errors[-1]:.1%}.", ""]
    out += ["#### NeMo 25.11 / Megatron-Bridge pre-training: tokens/s and model TFLOP/s per GPU", "",
            markdown_table(bridge_rows()), ""]
    from clusterplan.reference import titan

    out += ["#### torchtitan on H100 (Liang et al. 2024, arXiv 2410.06511): tokens/s and peak memory per GPU", "",
            titan.markdown_table(titan.titan_rows()), ""]
    from clusterplan.reference import titan_community

    out += ["#### torchtitan runs published since (H200, async TP on H100, A100, B200): tokens/s and peak memory per GPU",
            "", titan_community.markdown_table(titan_community.community_rows()), ""]
    from clusterplan.reference import olmo_core

    out += [f"#### {olmo_core.TITLE}", "", olmo_core.markdown_table(olmo_core.olmo_core_rows()), ""]
    from clusterplan.reference import nemo

    out += ["#### NeMo Framework performance summaries on DGX-H100 (24.09, 24.12, 25.02, Megatron-Bridge 25.09, 26.02): "
            "tokens/s and model TFLOP/s per GPU", "", nemo.markdown_table(nemo.nemo_rows()), ""]
    from clusterplan.reference import foundry

    out += ["#### MosaicML llm-foundry MPT training benchmarks (scripts/train/benchmarking/README.md): tokens/s and MFU "
            "per GPU", "", foundry.markdown_table(foundry.foundry_rows()), ""]
    from clusterplan.reference import ultrascale

    out += ["#### Hugging Face Ultra-Scale Playbook sweep (nanotron, 1 node of 8 H100, seq 4096, 1M-token batch): "
            "tokens/s and rank-0 memory per GPU", "", ultrascale.markdown_table(ultrascale.ultrascale_rows()), ""]
    from clusterplan.reference import smol

    out += ["#### Hugging Face nanotron runs on H100 (SmolLM3 pre-training on 384 GPUs, the Smol Training Playbook's 1B "
            "baseline): tokens/s per GPU", "", smol.markdown_table(smol.smol_rows()), ""]
    from clusterplan.reference import llama3

    out += ["#### Llama 3 405B pre-training on 8,192 and 16,384 H100 (Dubey et al. 2024, arXiv 2407.21783, Table 4): "
            "TFLOP/s per GPU", "", llama3.markdown_table(llama3.llama3_rows()), ""]
    from clusterplan.reference import deepseek_v3, mcore_moe, mixtral

    out += ["#### DeepSeek-V3 pre-training on 2,048 H800 (DeepSeek-AI 2024, arXiv 2412.19437): tokens/s per GPU", "",
            deepseek_v3.markdown_table(deepseek_v3.deepseek_rows()), ""]
    out += ["#### Megatron-Core MoE report (Yan et al. 2026, arXiv 2603.07685) and Megatron-MoE-ModelZoo runs on H100, "
            "GB200, GB300; Megatron-Bridge pull requests' runs at NVIDIA's fixed recipes (source pr: DGX-B200 #2499 "
            "Qwen3-30B, #1760 Qwen3-235B, #1869 DeepSeek-V3; DGX-H100 #5123 Qwen3-30B): tokens/s per GPU", "", mcore_moe.markdown_table(mcore_moe.mcore_moe_rows()), ""]
    out += [f"#### {mixtral.TITLE}", "", mixtral.markdown_table(mixtral.mixtral_rows()), ""]
    from clusterplan.reference import mlperf

    out += ["#### MLPerf Training, NVIDIA's GPT-3 175B and Llama 3.1 405B / 8B submissions (v3.0-v5.1): tokens/s per GPU of "
            "one training step", "", mlperf.markdown_table(mlperf.mlperf_rows()), ""]
    from clusterplan.reference import nemo_long

    out += [f"#### {nemo_long.TITLE}", "", nemo_long.markdown_table(nemo_long.long_rows()), ""]
    from clusterplan.reference import bridge_nvfp4

    out += [f"#### {bridge_nvfp4.TITLE}", "", bridge_nvfp4.markdown_table(bridge_nvfp4.nvfp4_rows()), ""]
    from clusterplan.reference import bridge_hybrid

    out += [f"#### {bridge_hybrid.TITLE}", "", bridge_hybrid.markdown_table(bridge_hybrid.hybrid_rows()), ""]
    from clusterplan.reference import dgxc

    out += ["#### NVIDIA DGX Cloud Benchmarking recipes (dgxc-benchmarking, NeMo 24.05-25.04 containers): Llama 3.1, "
            "Nemotron-4, GPT-3, Grok-1, DeepSeek-V3, Llama 4 Maverick on 8-2,048 H100 and 128-512 GB200: tokens/s per "
            "GPU", "", dgxc.markdown_table(dgxc.dgxc_rows()), ""]
    from clusterplan.reference.serving import serving_markdown

    out += serving_markdown()
    return "\n".join(out)


def print_text_report() -> None:
    from clusterplan.reference.bridge import bridge_rows, print_table

    for title, fn in A100_TABLES:
        rows = fn()
        print(f"\n{title}")
        print(f"{'row':32} {'measured':>10} {'predicted':>10} {'error':>8}")
        for c in rows:
            print(f"{c.label:32} {c.measured:10.2f} {c.predicted:10.2f} {c.error:+8.1%}")
        errors = sorted(abs(c.error) for c in rows)
        print(f"median |error| {errors[len(errors) // 2]:.1%}, max {errors[-1]:.1%}")
    print("\nKorthikanti 2022 published layouts (seq-par + selective) in our plan's top 5:")
    for label, rank, published, best in published_in_top5():
        print(f"{label:6} rank {rank or '>5':>3}  published {published:8.2f} s  our best {best:8.2f} s")
    print_table(bridge_rows())
    from clusterplan.reference import titan

    titan.print_table(titan.titan_rows())
    from clusterplan.reference import titan_community

    titan_community.print_table(titan_community.community_rows())
    from clusterplan.reference import olmo_core

    olmo_core.print_table(olmo_core.olmo_core_rows())
    from clusterplan.reference import nemo

    nemo.print_table(nemo.nemo_rows())
    from clusterplan.reference import foundry

    foundry.print_table(foundry.foundry_rows())
    from clusterplan.reference import ultrascale

    ultrascale.print_table(ultrascale.ultrascale_rows())
    from clusterplan.reference import smol

    smol.print_table(smol.smol_rows())
    from clusterplan.reference import llama3

    llama3.print_table(llama3.llama3_rows())
    from clusterplan.reference import deepseek_v3

    deepseek_v3.print_table(deepseek_v3.deepseek_rows())
    from clusterplan.reference import mcore_moe

    mcore_moe.print_table(mcore_moe.mcore_moe_rows())
    from clusterplan.reference import mixtral

    mixtral.print_table(mixtral.mixtral_rows())
    from clusterplan.reference import mlperf

    mlperf.print_table(mlperf.mlperf_rows())
    from clusterplan.reference import nemo_long

    nemo_long.print_table(nemo_long.long_rows())
    from clusterplan.reference import bridge_nvfp4

    bridge_nvfp4.print_table(bridge_nvfp4.nvfp4_rows())
    from clusterplan.reference import bridge_hybrid

    bridge_hybrid.print_table(bridge_hybrid.hybrid_rows())
    from clusterplan.reference import dgxc

    dgxc.print_table(dgxc.dgxc_rows())
    serving_section()


def serving_section() -> None:
    """Serving: serve-estimate against published engine benchmarks (reference/serving.py)."""
    from clusterplan.reference.serving import serving_table

    print("\nServing: serve-estimate against published engine benchmarks (reference/data/serving_published.csv)")
    for line in serving_table():
        print(line)



def published_in_top5() -> list[tuple[str, int | None, float, float]]:
    """For each Korthikanti row: (label, rank of the published layout in our search or None if below 5,
    published predicted step, our best predicted step) with the paper's fp16, no flash attention, no ZeRO."""
    from clusterplan.solver.search import search

    out = []
    for r in read_rows("korthikanti2022.csv"):
        model = gpt(int(r["hidden"]), int(r["heads"]), int(r["layers"]))
        cluster = selene(int(r["gpus"]))
        published = korthikanti_layouts(r, seqsel=True)
        result = search(model, cluster, published.gbs, published.seq, top=5,
                        fixed={"flash_attn": False, "precision": "fp16", "zero": 0}, stack=get_stack(STACK))
        rank = next((i + 1 for i, p in enumerate(result.plans) if p.layout == published), None)
        out.append((f"{r['model']}", rank, estimate(model, cluster, published, stack=get_stack(STACK)).to_json()["step_time_s"],
                    result.plans[0].to_json()["step_time_s"]))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
