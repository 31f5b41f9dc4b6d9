"""Benchmark: `clusterplan serve-plan` end to end on 6 GPU types x 3 tp options (1, 2, 4) x 16 request buckets, and
`clusterplan serve-estimate` on one configuration per load kind.

Prints wall seconds per run (targets: serve-plan colocated < 2 s, serve-estimate < 1 s).
Run: .venv/bin/python bench/bench_serve.py
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time

from clusterplan.cli.main import main

GPUS = "A10G,L4,L40S,A100-80GB,H100,H200"
CASES = {
    "llama3.1-8b colocated (off)": ["--model", "llama3.1-8b", "--rate", "40", "--input-len", "lognormal:6.5:1",
                                    "--output-len", "lognormal:5:0.8", "--ttft-ms", "1000", "--tpot-ms", "50",
                                    "--disaggregate", "off"],
    "llama3.1-8b auto (both modes)": ["--model", "llama3.1-8b", "--rate", "40", "--input-len", "lognormal:6.5:1",
                                      "--output-len", "lognormal:5:0.8", "--ttft-ms", "1000", "--tpot-ms", "50",
                                      "--disaggregate", "auto"],
    "llama3.1-70b colocated (off)": ["--model", "llama3.1-70b", "--rate", "10", "--input-len", "uniform:100:4000",
                                     "--output-len", "uniform:50:500", "--ttft-ms", "2000", "--tpot-ms", "80",
                                     "--disaggregate", "off"],
}


def run(args: list[str]) -> tuple[float, dict]:
    out = io.StringIO()
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out):
        try:
            # the default price rule (each GPU type's cheapest on-demand row) prices them all but L40S (spot only)
            main(["serve-plan", "--gpus", GPUS, "--tp", "1,2,4", "--format", "json", *args])
        except SystemExit as exc:
            if exc.code:
                raise
    # CPU time of this process (the CBC solver runs as a child and is not counted): what load does not inflate.
    return time.perf_counter() - start, time.process_time() - cpu, json.loads(out.getvalue())


ESTIMATES = {
    "serve-estimate llama3.1-70b H100 tp2, 32 clients 4000/500": ["--model", "llama3.1-70b", "--gpu", "H100", "--tp", "2",
                                                              "--weight-dtype", "fp8", "--concurrency", "32",
                                                              "--input-len", "4000", "--output-len", "500"],
    "serve-estimate llama3.1-8b H100, Poisson 20 req/s, 1000 requests": ["--model", "llama3.1-8b", "--gpu", "H100",
                                                                        "--rate", "20", "--input-len", "lognormal:6.5:1",
                                                                        "--output-len", "lognormal:5:0.8"],
}


def run_estimate(args: list[str]) -> float:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        main(["serve-estimate", "--format", "json", *args])
    return time.perf_counter() - start


def main_bench() -> None:
    run_estimate(next(iter(ESTIMATES.values())))  # warm imports
    for name, args in ESTIMATES.items():
        wall = sorted(run_estimate(args) for _ in range(3))
        print(f"{name}: wall {wall[0]:.2f} s best of 3 (median {wall[1]:.2f} s)")
    run(CASES["llama3.1-8b colocated (off)"])  # warm imports (pulp, numpy) once
    for name, args in CASES.items():
        runs = [run(args) for _ in range(3)]
        wall = sorted(r[0] for r in runs)
        cpu = min(r[1] for r in runs)
        data = runs[0][2]
        pools = ", ".join(f"{p['instances']}x {p['gpu']} tp{p['tp']} ({p['role']})" for p in data["pools"])
        print(f"{name}: wall {wall[0]:.2f} s best of 3 (median {wall[1]:.2f} s), python CPU {cpu:.2f} s; "
              f"{data['buckets']} buckets; {data['mode']} ${data['usd_per_hour']:.2f}/h: {pools}")
    sys.stdout.flush()


if __name__ == "__main__":
    main_bench()
