"""Step-time prediction error of `clusterplan validate` on this machine's CPU, per rank count (issue #8).

For each rank count: `clusterplan profile --device cpu --quick --nproc N` (every rank busy at once, as in the runs),
then `clusterplan validate PLAN --scale 1 --calibration FILE` for the layouts of N ranks, on a 4-layer, 512-wide
Llama-style model at 256 tokens, fp32, AdamW. Prints predicted and measured step time, the error, and the
calibration's terms that shape it (eager-layer factor, TP dispatch overhead, comm/compute overlap, cores per rank).
About 5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "{name: m512, n_layers: 4, hidden: 512, n_heads: 8, n_kv_heads: 4, ffn_hidden: 1536, vocab: 2048}"
LAYOUTS = {
    1: ["mbs: 1, gbs: 4", "mbs: 1, gbs: 4, recompute: full", "mbs: 1, gbs: 4, recompute: selective"],
    2: ["tp: 2, mbs: 1, gbs: 4", "dp: 2, zero: 3, mbs: 1, gbs: 8", "dp: 2, zero: 0, mbs: 1, gbs: 8",
        "pp: 2, schedule: 1f1b, mbs: 1, gbs: 4", "pp: 2, schedule: gpipe, mbs: 1, gbs: 4",
        "pp: 2, vpp: 2, schedule: interleaved-1f1b, mbs: 1, gbs: 8"],
    4: ["tp: 2, dp: 2, zero: 3, mbs: 1, gbs: 8", "pp: 2, dp: 2, zero: 3, schedule: 1f1b, mbs: 1, gbs: 8",
        "tp: 2, pp: 2, mbs: 1, gbs: 4", "pp: 4, schedule: 1f1b, mbs: 1, gbs: 4",
        "dp: 4, dp_replicate: 2, zero: 3, mbs: 1, gbs: 16"],
}


def _cli(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "clusterplan", *args], capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise SystemExit(f"clusterplan {' '.join(args)} failed: {run.stderr.strip().splitlines()[-1]}")
    return run.stdout


def main() -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print("needs torch (make test installs it): skipped")
        return
    print(f"{'ranks':>5}  {'layout':<56} {'predicted s':>11} {'measured s':>10} {'error':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for nproc, layouts in LAYOUTS.items():
            calib = Path(tmp) / f"cpu{nproc}.json"
            _cli("profile", "--device", "cpu", "--quick", "--nproc", str(nproc), "--out", str(calib))
            doc = json.loads(calib.read_text())
            layer, overlap = doc.get("layer", {}), doc.get("overlap", {}).get("scale_up", {})
            meta = doc["meta"]
            print(f"# {nproc} rank(s): eager-layer factor {layer.get('time_factor', 1):.2f}, TP dispatch "
                  f"{layer.get('tp_overhead_s', 0) * 1e3:.1f} ms/layer, overlap "
                  f"{overlap.get('comm_compute_overlap', float('nan')):+.2f}, "
                  f"{nproc * meta['cpu_threads'] / meta['host_cpus']:.1f} rank threads per core")
            for text in layouts:
                plan = Path(tmp) / "plan.yaml"
                plan.write_text("format: clusterplan-plan\nversion: 1\n"
                                f"model: {MODEL}\ncluster: {{groups: [{{node: dgx-h100, count: 1, gpus_per_node: "
                                f"{nproc}}}]}}\nlayout: {{{text}, seq: 256, precision: fp32, optimizer: adam}}\n")
                t = json.loads(_cli("validate", str(plan), "--scale", "1", "--steps", "3", "--calibration",
                                    str(calib), "--format", "json"))["time"]
                print(f"{nproc:>5}  {text:<56} {t['predicted_s']:>11.3f} {t['measured_median_s']:>10.3f} "
                      f"{t['error_pct']:>+6.1f}%")


if __name__ == "__main__":
    main()
