"""OLMo-core's README throughput on H100 (tests/reference/olmo_core_h100.csv; research/olmo-core-throughput.md): OLMo 2
1B / 7B / 13B and Llama 3 8B at 4K, bf16 and torchao float8 tensorwise, FSDP2 sharded in a node and replicated across
nodes, compiled blocks and loss, PyTorch SDPA. Held out: priced on stack torchtitan-compile-loss with SDPA's published
curves, nothing fitted. The source does not give the node count; the rows are priced at the scripts' usage example,
2 nodes.

Each row is asserted against the larger of 20 % and its error when this test landed plus 3 points (BOUNDS); the
median against MEDIAN_BOUND (landed + 1 point). History (stop 39, first measured): median 6.1 %, max 25.7 %: 1B +2.4 /
-1.8 %, 7B +8.7 / +5.0 %, 8B +7.2 / +2.9 %, 13B +20.0 / +25.7 % (bf16 / fp8; the 13B at micro-batch 1 runs at 41.5 %
bf16-peak MFU by OLMo-core's own count where the 7B runs at 48 %: not priced).
"""

from __future__ import annotations

from statistics import median

import pytest

from clusterplan.reference import olmo_core

BOUNDS = {  # landed + 3 points, at least 20 %
    ("1B", "bf16"): 0.20, ("1B", "fp8"): 0.20,  # +2.4 %, -1.8 %
    ("7B", "bf16"): 0.20, ("7B", "fp8"): 0.20,  # +8.7 %, +5.0 %
    ("8B", "bf16"): 0.20, ("8B", "fp8"): 0.20,  # +7.2 %, +2.9 %
    ("13B", "bf16"): 0.23, ("13B", "fp8"): 0.287,  # +20.0 %, +25.7 %
}
MEDIAN_BOUND = 0.071  # achieved 6.1 %


@pytest.fixture(scope="module")
def rows() -> list:
    return olmo_core.olmo_core_rows()


def test_rows_run_the_scripts_settings(rows):
    assert len(rows) == len(BOUNDS) == 8
    for r in rows:
        L = r.layout
        assert not r.refused, r.label
        # HSDP: sharded over a node's 8 GPUs, one replica per node; no AC, no TP / CP / PP
        assert (L.zero, L.dp, L.dp_replicate, L.tp, L.pp, L.cp, L.recompute) == (3, 16, 2, 1, 1, 1, "none")
        assert L.seq == 4096 and L.precision == r.precision
    stack = olmo_core.olmo_core_stack()
    assert stack.compiled and stack.attention_kernel == "sdpa" and stack.fp8_allgather


def test_the_1b_is_olmo_cores_factory_not_a_released_checkpoint():
    m = olmo_core.olmo_core_model("olmo-core-1b")
    assert (m.n_layers, m.hidden, m.n_heads, m.ffn_hidden, m.vocab, m.qk_norm) == (18, 2048, 16, 5632, 100352, True)
    assert olmo_core.olmo_core_model("llama3-8b-dolma2").vocab == 100352


def test_every_row_within_its_bound_and_the_median(rows):
    for r in rows:
        assert abs(r.error) <= BOUNDS[(r.size, r.precision)], f"{r.label}: {r.error:+.1%}"
    assert median(abs(r.error) for r in rows) <= MEDIAN_BOUND


def test_the_unpublished_node_count_moves_no_row_past_its_bound(rows):
    # 1 to 8 nodes changes the replicas' all-reduce and the micro-batches per step (1,024 or 2,048 sequences over
    # 8 to 64 GPUs): the spread is widest at 13B fp8 (+30.9 % at 1 node .. +15.1 % at 8), under 16 points, and no
    # node count takes a row more than 6 points past its bound.
    for r in rows:
        spread = [t / r.published_tokens_per_s - 1 for t in r.spread]
        assert max(spread) - min(spread) < 0.16, r.label
        assert all(abs(e) <= BOUNDS[(r.size, r.precision)] + 0.06 for e in spread), r.label
