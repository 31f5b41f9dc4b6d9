"""Hostile input: every reader and option ends in data (exit 0/1) or one line on stderr and exit 2, never more.

Two parts:
- the 18 classes of issue #16 as regression cases, each run as a real CLI process under a 1.5 GiB address-space
  limit (resource.RLIMIT_AS) and a timeout: exit 2, exactly one line on stderr, nothing on stdout, no output file;
- seeded property-based fuzzing (hypothesis, derandomize=True so every run draws the same inputs) over the file
  readers and the free-text options, run in-process. `make test` runs a quick slice (CLUSTERPLAN_FUZZ_EXAMPLES,
  default 12 per property); `make fuzz` the long run (400 per property).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("CLUSTERPLAN_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
MEMORY_LIMIT_BYTES = 1536 << 20
"""Address-space limit of each regression run: the planner with numpy needs about 0.4 GiB; the bombs asked for TiBs."""
TIMEOUT_S = 120
"""Per regression run: the cases answer in about a second; the old behaviour ran for minutes or forever."""
SERVE = ("serve-plan", "--model", "llama3.1-8b", "--ttft-ms", "1000", "--tpot-ms", "100", "--gpus", "H100")
MOE_YAML = ("name: tiny\nn_layers: 2\nhidden: 64\nn_heads: 4\nffn_hidden: 128\nvocab: 100\nn_experts: 4\n"
            "top_k: 2\nexpert_ffn_hidden: 32\n")
EXPERTS = ("experts", "-m", "moe.yaml", "-c", "dgx-h100:1", "--method", "eplb")
BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 9 if p else ['lol'] * 9)}]\n"
               for a, p in zip("abcdefghi", ["", *"abcdefgh"], strict=True))
"""Billion laughs: 535 bytes that expand to 9^9 strings."""


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def cli_process(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m clusterplan ARGS` in its own process, memory-limited, killed after TIMEOUT_S."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "clusterplan", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S, preexec_fn=_limit, check=False)


def assert_refused(proc: subprocess.CompletedProcess[str], expect: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert proc.stdout == "", proc.stdout[:500]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert expect.lower() in proc.stderr.lower(), proc.stderr


# ---- fixtures of the regression cases -------------------------------------------------------------------------

def _hf(model_type: str, **extra: object) -> str:
    base = {"model_type": model_type, "num_hidden_layers": 10**9, "hidden_size": 64, "num_attention_heads": 4,
            "intermediate_size": 128, "vocab_size": 100, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    return json.dumps({**base, **extra})


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    import io

    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1)))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\0" * 64


def _npz_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, tokens_per_expert=np.ones((2, 4)))
    return buf.getvalue()


def _corrupt(data: bytes) -> bytes:
    out = bytearray(data)
    out[60:80] = b"\xff" * 20
    return bytes(out)


CAL = {"format": "clusterplan-calibration", "version": 1}
ESTIMATE = ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", "tp=2,dp=4")
LONG = "x" * 300 + ".csv"
TRACE_HEAD = "arrival_s,input_tokens,output_tokens\n"

# (case id, files to write {name: text or bytes}, CLI args, fragment the one line must contain)
CASES: list[tuple[str, dict[str, str | bytes], tuple[str, ...], str]] = [
    # 1. a tiny file that exhausted memory
    ("qwen3_moe layers 1e9", {"c.json": _hf("qwen3_moe", num_experts=8)}, ("models", "show", "c.json"),
     "num_hidden_layers must be an integer >= 1 and <= 10,000"),
    ("deepseek_v3 layers 1e9", {"c.json": _hf("deepseek_v3", n_routed_experts=8, kv_lora_rank=16, qk_nope_head_dim=8,
                                              qk_rope_head_dim=8, v_head_dim=8)},
     ("models", "show", "c.json"), "num_hidden_layers must be an integer >= 1 and <= 10,000"),
    ("gpt_oss layers 1e9", {"c.json": _hf("gpt_oss", num_local_experts=8, sliding_window=128)},
     ("models", "show", "c.json"), "num_hidden_layers must be an integer >= 1 and <= 10,000"),
    ("capacity slice_factor 1e9", {"cap.json": json.dumps({"gpu_info": {"A": {"cost_per_hour": 1, "tputs": [[1, 1]]}},
                                                           "workload_distribution": [[0.5, 0.5]],
                                                           "total_request_rate": 1, "slice_factor": 10**9})},
     ("serve-plan", "--capacity-table", "cap.json"), "slice_factor must be an integer from 1 to 1000"),
    ("alias bomb as cluster node", {"c.yaml": BOMB + "groups: [{node: *i, count: 1}]\n"},
     ("estimate", "--model", "llama3.1-8b", "--layout", "tp=8", "--cluster", "c.yaml"), "aliases"),
    ("alias bomb as cluster name", {"c.yaml": BOMB + "name: *i\ngroups: [{node: dgx-h100, count: 1}]\n"},
     ("estimate", "--model", "llama3.1-8b", "--layout", "tp=8", "--cluster", "c.yaml"), "aliases"),
    ("alias bomb as model name", {"m.yaml": BOMB.split("\n")[0] + "\nname: *a\n" + MOE_YAML.split("\n", 1)[1]},
     ("models", "show", "m.yaml"), "aliases"),
    # 2. exit 3 instead of 2
    ("deep JSON", {"m.json": "[" * 100_000 + "]" * 100_000}, ("models", "show", "m.json"), "nested more than"),
    ("deep YAML", {"m.yaml": "a: " + "[" * 100_000 + "]" * 100_000}, ("models", "show", "m.yaml"), "nested more than"),
    ("5001-digit int YAML", {"m.yaml": "name: x\nn_layers: " + "9" * 5001 + "\n"}, ("models", "show", "m.yaml"),
     "5001 digits"),
    ("5001-digit int JSON", {"m.json": '{"n_layers": ' + "9" * 5001 + "}"}, ("models", "show", "m.json"),
     "5001 digits"),
    ("int key in model", {"m.yaml": "1: 1\n" + MOE_YAML}, ("models", "show", "m.yaml"), "key 1 (int)"),
    ("null key in cluster", {"c.yaml": "~: 1\ngroups: [{node: dgx-h100, count: 1}]\n"},
     ("estimate", "--model", "llama3.1-8b", "--layout", "tp=8", "--cluster", "c.yaml"), "key None"),
    ("int key in plan", {"p.yaml": "1: 1\n"}, ("check", "p.yaml"), "key 1 (int)"),
    ("trace arrival 1e308", {"t.csv": TRACE_HEAD + "0,10,10\n1e308,10,10\n"}, (*SERVE, "--trace", "t.csv"),
     "arrival_s must be a finite number of seconds up to"),
    ("histogram weights sum to inf", {"h.csv": "100,1e308\n200,1e308\n"},
     (*SERVE, "--rate", "1", "--input-len", "h.csv", "--output-len", "10"), "finite, positive sum of weights"),
    ("truncated npz", {"moe.yaml": MOE_YAML, "s.npz": _npz_bytes()[:200]}, (*EXPERTS, "--stats", "s.npz"),
     "cannot read statistics"),
    ("corrupt npz", {"moe.yaml": MOE_YAML, "s.npz": _corrupt(_npz_bytes())}, (*EXPERTS, "--stats", "s.npz"),
     "cannot read statistics"),
    ("experts CSV row 1e20,0,1", {"moe.yaml": MOE_YAML, "s.csv": "layer,expert,tokens\n1e20,0,1\n"},
     (*EXPERTS, "--stats", "s.csv"), "layer must be whole numbers from 0 to 9,999"),
    ("npy header (1e6, 1e6)", {"moe.yaml": MOE_YAML, "s.npy": _npy_header_only((10**6, 10**6))},
     (*EXPERTS, "--stats", "s.npy"), "1,000,000,000,000 numbers"),
    ("--input-len uniform:1:1e30", {}, (*SERVE, "--rate", "1", "--input-len", "uniform:1:1e30", "--output-len", "10"),
     "not a valid length distribution"),
    ("--trace name over 255 bytes", {}, (*SERVE, "--trace", LONG), "over the 255"),
    ("--stats name over 255 bytes", {"moe.yaml": MOE_YAML}, (*EXPERTS, "--stats", LONG), "over the 255"),
    ("--input-len name over 255 bytes", {}, (*SERVE, "--rate", "1", "--input-len", LONG, "--output-len", "10"),
     "over the 255"),
    ("calibration latency 1e308 (JSON)", {"cal.json": json.dumps(
        {**CAL, "collectives": {"all_reduce": {"scale_up": {"latency_s": 1e308, "busbw_bytes_per_s": 1e11}}}})},
     (*ESTIMATE, "--calibration", "cal.json", "--format", "json"), "latency_s 1e+308 is outside"),
    ("calibration bandwidth 1e-300 (table)", {"cal.json": json.dumps(
        {**CAL, "collectives": {"all_reduce": {"scale_up": {"latency_s": 1e-5, "busbw_bytes_per_s": 1e-300}}}})},
     (*ESTIMATE, "--calibration", "cal.json"), "busbw_bytes_per_s 1e-300 is outside"),
    ("plan on 1e9 nodes", {}, ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1000000000", "--gbs",
                               "1000000000000", "--seq", "4096"), "node count must be a positive integer up to"),
    ("deep TOML launch config", {"t.toml": "a = " + "[" * 3000 + "1" + "]" * 3000 + "\n"},
     ("check", "t.toml", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1"), "nested too deeply"),
    ("5001-digit int in TOML", {"t.toml": "x = " + "9" * 5001 + "\n"},
     ("check", "t.toml", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1"), "integer too long"),
    # 3. rule breaks
    ("newline in name: models show", {}, ("models", "show", "a\nb.yaml"), "'a\\nb.yaml'"),
    ("newline in name: experts --stats", {"moe.yaml": MOE_YAML}, (*EXPERTS, "--stats", "a\nb.npz"), "'a\\nb.npz'"),
    ("newline in name: check", {}, ("check", "a\nb.yaml"), "'a\\nb.yaml'"),
    ("--out under a file", {"moe.yaml": MOE_YAML, "s.npz": _npz_bytes(), "f": "x"},
     (*EXPERTS, "--stats", "s.npz", "--format", "json", "--out", "f/x.json"), "f is a file, not a folder"),
    # 4. accepted silently
    ("duplicate --layout key", {}, ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout",
                                    "tp=8,tp=4"), "tp is given twice"),
    ("duplicate --fix key", {}, ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "8", "--seq",
                                 "4096", "--fix", "tp=8,tp=4"), "tp given twice"),
    ("--kv-link nope with --disaggregate off", {}, (*SERVE, "--rate", "1", "--input-len", "100", "--output-len", "10",
                                                    "--disaggregate", "off", "--kv-link", "nope"), "unknown link"),
    ("--kv-link with --disaggregate off", {}, (*SERVE, "--rate", "1", "--input-len", "100", "--output-len", "10",
                                               "--disaggregate", "off", "--kv-link", "ib-ndr"), "has no effect"),
    ("--rate 0 with a trace", {"t.csv": TRACE_HEAD + "0,10,10\n1,10,10\n"}, (*SERVE, "--trace", "t.csv", "--rate", "0"),
     "give a finite request rate > 0"),
    ("experts synth --zipf inf", {}, ("experts", "synth", "--experts", "4", "--top-k", "2", "--layers", "2", "--zipf",
                                      "inf", "--out", "z.npz"), "must be finite"),
]


@pytest.mark.parametrize(("files", "args", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_issue_16_class_is_one_line_exit_2_in_bounded_memory(tmp_path, files, args, expect):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    before = set(tmp_path.rglob("*"))
    assert_refused(cli_process(tmp_path, *args), expect)
    assert set(tmp_path.rglob("*")) == before  # no output file, no temp file left on error


# ---- property-based fuzzing (in-process) -----------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
def _nested(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=5))


DOCS = st.recursive(SCALARS, _nested, max_leaves=20)
KEYS = {
    "model": ("name", "n_layers", "hidden", "n_heads", "n_kv_heads", "ffn_hidden", "vocab", "n_experts", "top_k",
              "expert_ffn_hidden", "model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
              "intermediate_size", "vocab_size", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
              "mlp_only_layers", "decoder_sparse_step"),
    "cluster": ("groups", "name", "node", "count", "gpus_per_node", "scale_up_busbw_gb_per_s", "node_bandwidth_gb_per_s"),
    "calibration": ("format", "version", "gemm", "bf16", "max_tflops", "half_flops", "collectives", "all_reduce",
                    "scale_up", "latency_s", "busbw_bytes_per_s", "memory", "copy_bytes_per_s", "overlap"),
    "capacity": ("gpu_info", "A10G", "cost_per_hour", "tputs", "workload_distribution", "total_request_rate",
                 "slice_factor"),
}


def _docs_for(kind: str) -> st.SearchStrategy[object]:
    """Mappings with the reader's own keys (so the fuzzing reaches past 'unknown key') and hostile values."""
    keys = st.sampled_from(KEYS[kind])
    values = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
    return st.one_of(DOCS, st.dictionaries(keys, values, max_size=8))


def _dump(doc: object, suffix: str) -> str:
    import yaml

    if suffix == ".json":
        return json.dumps(doc)
    return yaml.safe_dump(doc)


def check_outcome(run_cli, *args: str, out_file: Path | None = None) -> tuple[int, str, str]:
    code, out, err = run_cli(*args)
    assert code in (0, 1, 2), (code, args, err[-1500:])
    assert "Traceback" not in err and "internal error" not in err, (args, err[-1500:])
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("error: "), (args, err)
        assert out == "", (args, out[:300])
        if out_file is not None:
            assert not out_file.exists(), args
    return code, out, err


def _cases(kind: str, path: Path) -> tuple[str, ...]:
    return {
        "model": ("models", "show", str(path), "--format", "json"),
        "cluster": ("estimate", "--model", "llama3.1-8b", "--cluster", str(path), "--layout", "tp=8"),
        "calibration": ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", "tp=8",
                        "--calibration", str(path), "--format", "json"),
        "capacity": ("serve-plan", "--capacity-table", str(path), "--format", "json"),
    }[kind]


@pytest.mark.parametrize("kind", sorted(KEYS))
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_fuzz_settings_files(run_cli, tmp_path, kind, suffix):
    if kind == "capacity" and suffix == ".yaml":
        pytest.skip("capacity tables are Melange JSON")

    @FUZZ
    @given(doc=_docs_for(kind))
    def run(doc):
        path = tmp_path / f"f{suffix}"
        path.write_text(_dump(doc, suffix), encoding="utf-8")
        check_outcome(run_cli, *_cases(kind, path))

    run()


@FUZZ
@given(text=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.lists(st.tuples(st.sampled_from(["0", "1", "3", "1e20", "-1", "nan", "x", "1e400",
                                                          "9" * 40]), st.sampled_from(["0", "1", "2", "1e308", "inf"]),
                                         st.sampled_from(["5", "0", "-5", "nan", "1e300"])),
                               max_size=6).map(lambda rows: "layer,expert,tokens\n" +
                                               "".join(f"{a},{b},{c}\n" for a, b, c in rows))))
def test_fuzz_stats_csv(run_cli, tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("csv")
    (tmp / "moe.yaml").write_text(MOE_YAML)
    (tmp / "s.csv").write_text(text, encoding="utf-8", errors="surrogateescape")
    check_outcome(run_cli, "experts", "-m", str(tmp / "moe.yaml"), "-c", "dgx-h100:1", "--method", "eplb",
                  "--stats", str(tmp / "s.csv"))


@FUZZ
@given(data=st.binary(max_size=400), cut=st.integers(min_value=0, max_value=400))
def test_fuzz_npy_and_npz_bytes(run_cli, tmp_path_factory, data, cut):
    tmp = tmp_path_factory.mktemp("np")
    (tmp / "moe.yaml").write_text(MOE_YAML)
    good = _npz_bytes()
    (tmp / "a.npz").write_bytes(good[:cut] + data + good[cut + len(data):])
    (tmp / "b.npy").write_bytes(_npy_header_only((2, 4))[:cut] + data)
    for name in ("a.npz", "b.npy"):
        check_outcome(run_cli, "experts", "-m", str(tmp / "moe.yaml"), "-c", "dgx-h100:1", "--method", "eplb",
                      "--stats", str(tmp / name))


NUM = st.sampled_from(["0", "1", "-1", "2", "8", "1e30", "1e308", "nan", "inf", "-inf", "0.5", "x", "", "9" * 30])


@FUZZ
@given(trace_rows=st.lists(st.tuples(NUM, NUM, NUM), max_size=5),
       hist_rows=st.lists(st.tuples(NUM, NUM), max_size=5),
       length=st.one_of(NUM, st.builds(lambda k, a, b: f"{k}:{a}:{b}", st.sampled_from(["uniform", "normal",
                                                                                          "lognormal", "zipf"]),
                                       NUM, NUM)),
       rate=st.one_of(st.none(), NUM))
def test_fuzz_serving_inputs(run_cli, tmp_path_factory, trace_rows, hist_rows, length, rate):
    tmp = tmp_path_factory.mktemp("serve")
    trace = tmp / "t.csv"
    trace.write_text(TRACE_HEAD + "".join(f"{a},{b},{c}\n" for a, b, c in trace_rows))
    hist = tmp / "h.csv"
    hist.write_text("".join(f"{a},{b}\n" for a, b in hist_rows))
    rate_args = () if rate is None else ("--rate", rate)
    check_outcome(run_cli, *SERVE, "--trace", str(trace), *rate_args)
    check_outcome(run_cli, *SERVE, "--rate", "1", "--input-len", str(hist), "--output-len", length)
    check_outcome(run_cli, *SERVE, "--rate", rate or "1", "--input-len", length, "--output-len", "16")


LAYOUT_KEYS = st.sampled_from(["tp", "pp", "dp", "cp", "ep", "mbs", "gbs", "seq", "zero", "recompute", "sp", "vpp",
                               "schedule", "bogus", ""])


@FUZZ
@given(items=st.lists(st.tuples(LAYOUT_KEYS, NUM), max_size=5),
       cluster=st.builds(lambda p, n: f"{p}:{n}", st.sampled_from(["dgx-h100", "nope", ""]),
                         st.sampled_from(["0", "1", "2", "131072", "131073", "1000000000", "9" * 5001, "-1"])))
def test_fuzz_layout_fix_and_cluster_options(run_cli, tmp_path_factory, items, cluster):
    text = ",".join(f"{k}={v}" for k, v in items)
    out = tmp_path_factory.mktemp("plan") / "plan.yaml"
    check_outcome(run_cli, "estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", text)
    check_outcome(run_cli, "plan", "--model", "llama3.1-8b", "--cluster", cluster, "--gbs", "64", "--seq", "2048",
                  "--fix", text, "--top", "1", "--out", str(out), out_file=out)


PLAN_KEYS = st.sampled_from(["format", "version", "model", "cluster", "layout", "tp", "pp", "dp", "gbs", "seq"])
PLAN_VALUES = st.one_of(SCALARS, st.sampled_from(["clusterplan-plan", "llama3.1-8b", "dgx-h100:1"]),
                        st.dictionaries(PLAN_KEYS, SCALARS, max_size=4))


@FUZZ
@given(doc=st.dictionaries(PLAN_KEYS, PLAN_VALUES, max_size=6),
       toml=st.lists(st.tuples(st.sampled_from(["tensor_parallel_degree", "pipeline_parallel_degree",
                                                "data_parallel_shard_degree", "local_batch_size", "seq_len"]),
                               st.sampled_from(["0", "1", "8", "-1", "1e400", "9" * 30, '"x"', "[1]", "true"])),
                     max_size=4),
       args=st.lists(st.sampled_from(["--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                                      "--micro-batch-size", "--global-batch-size", "--seq-length", "8", "0", "-3",
                                      "x", "9" * 30, "'", "\\"]), max_size=8))
def test_fuzz_plan_files_and_launch_configs(run_cli, tmp_path_factory, doc, toml, args):
    import yaml

    tmp = tmp_path_factory.mktemp("configs")
    (tmp / "p.yaml").write_text(yaml.safe_dump(doc))
    (tmp / "t.toml").write_text("[parallelism]\n" + "".join(f"{k} = {v}\n" for k, v in toml))
    (tmp / "args.txt").write_text(" ".join(args))
    out = tmp / "out.sh"
    check_outcome(run_cli, "check", str(tmp / "p.yaml"))
    check_outcome(run_cli, "export", str(tmp / "p.yaml"), "--to", "megatron", "--out", str(out), out_file=out)
    for name in ("t.toml", "args.txt"):
        check_outcome(run_cli, "check", str(tmp / name), "--model", "llama3.1-8b", "--cluster", "dgx-h100:1")


def test_json_is_byte_identical_across_runs(run_cli):
    args = ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq", "4096", "--format",
            "json", "--top", "2")
    first, second = run_cli(*args), run_cli(*args)
    assert first[0] == 0 and first[1] == second[1]


def test_experts_time_limit_reports_unsolved_layers_and_no_gap(run_cli, tmp_path):
    # issue #16: `--time-limit` too short for any solve used to say "0 subproblems, gap 0.00 %", hit_time_limit 0.
    (tmp_path / "moe.yaml").write_text(MOE_YAML)
    (tmp_path / "s.npz").write_bytes(_npz_bytes())
    code, out, err = run_cli("experts", "-m", str(tmp_path / "moe.yaml"), "-c", "dgx-h100:1", "--stats",
                             str(tmp_path / "s.npz"), "--method", "ilp", "--time-limit", "0.000001", "--format", "json")
    assert code == 0, err
    solver = json.loads(out)["solver"]
    assert solver["gap"] is None and solver["subproblems"] == 0
    assert solver["solved_layers"] == 0 and len(solver["unsolved_layers"]) == 2
    assert solver["hit_time_limit"] >= 2
    code, out, err = run_cli("experts", "-m", str(tmp_path / "moe.yaml"), "-c", "dgx-h100:1", "--stats",
                             str(tmp_path / "s.npz"), "--method", "ilp", "--time-limit", "0.000001")
    assert code == 0 and "no layer solved (no gap to report)" in out, (out, err)
