"""Reading launch configs into a Layout: clusterplan plan files, torchtitan TOML (v0.2.x `[parallelism]` keys) and
Megatron-LM command-line arguments (`megatron/training/arguments.py` names). No torch here; `check` uses it.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import check_name, is_file, read_text, show
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import Layout

# torch.distributed.pipelining schedule names (case-insensitive) -> our schedule names
TORCHTITAN_SCHEDULES = {"1f1b": "1f1b", "gpipe": "gpipe", "interleaved1f1b": "interleaved-1f1b",
                        "interleavedzerobubble": "zb", "zbvzerobubble": "zb"}


def config_kind(path: Path) -> str:
    """`plan`, `torchtitan` or `megatron`, from the suffix and content."""
    if path.suffix == ".toml":
        return "torchtitan"
    if path.suffix in (".yaml", ".yml", ".json"):
        return "plan"
    return "megatron"


def _read(path: Path) -> str:
    if not is_file(check_name(path)):
        raise BadInputError(f"{show(path)}: no such file; give a plan YAML, a torchtitan TOML or a Megatron-LM args file")
    return read_text(path, "launch config")  # size-bounded, one-line errors (fileio)


def _int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(str(value))
        except ValueError:
            raise BadInputError(f"{where}: expected an integer, got {value!r}") from None
    return value


def torchtitan_layout(path: Path, world: int) -> Layout:
    """A torchtitan job TOML: [parallelism], [training], [activation_checkpoint]."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise BadInputError(f"{path}: reading TOML needs Python 3.11 or later") from None
    try:
        doc = tomllib.loads(_read(path))
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{show(path)}: malformed TOML ({exc}); fix the syntax") from exc
    except (RecursionError, ValueError) as exc:  # nesting past the stack, a 5,000-digit integer
        raise BadInputError(f"{show(path)}: TOML nested too deeply or with an integer too long "
                            f"({type(exc).__name__}); is this a torchtitan config?") from None
    par, train, ac = doc.get("parallelism", {}), doc.get("training", {}), doc.get("activation_checkpoint", {})
    get = lambda table, key, default: _int(f"{path}: {key}", table.get(key, default))  # noqa: E731
    tp, pp, cp = get(par, "tensor_parallel_degree", 1), get(par, "pipeline_parallel_degree", 1), \
        get(par, "context_parallel_degree", 1)
    rep, shard = get(par, "data_parallel_replicate_degree", 1), get(par, "data_parallel_shard_degree", -1)
    if shard == -1:  # torchtitan: -1 takes the leftover ranks
        shard = max(1, world // max(1, rep * tp * pp * cp))
    local = get(train, "local_batch_size", 8)
    dp = rep * shard
    gbs = get(train, "global_batch_size", -1)
    mbs = get(par, "pipeline_parallel_microbatch_size", 1) if pp > 1 else local
    sp = par.get("enable_sequence_parallel", doc.get("tensor_parallel", {}).get("enable_sequence_parallel", tp > 1))
    schedule = str(par.get("pipeline_parallel_schedule", "1F1B")).lower()
    if schedule not in TORCHTITAN_SCHEDULES:
        raise BadInputError(f"{path}: pipeline_parallel_schedule {schedule!r}; known: {', '.join(TORCHTITAN_SCHEDULES)}")
    mode = str(ac.get("mode", "selective"))
    recompute = {"selective": "selective", "full": "full", "none": "none"}.get(mode)
    if recompute is None:
        raise BadInputError(f"{path}: activation_checkpoint.mode {mode!r}; use none, selective or full")
    return Layout(dp=dp, dp_replicate=rep, tp=tp, pp=pp, cp=cp, ep=get(par, "expert_parallel_degree", 1),
                  etp=get(par, "expert_tensor_parallel_degree", 1), sp=bool(sp) and tp > 1,
                  zero=3 if shard > 1 else 0, mbs=mbs, gbs=gbs if gbs > 0 else local * dp,
                  seq=get(train, "seq_len", 2048), recompute=recompute, schedule=TORCHTITAN_SCHEDULES[schedule],
                  vpp=2 if TORCHTITAN_SCHEDULES[schedule] == "interleaved-1f1b" else 1)


MEGATRON_INT = {"--tensor-model-parallel-size": "tp", "--pipeline-model-parallel-size": "pp",
                "--context-parallel-size": "cp", "--expert-model-parallel-size": "ep",
                "--expert-tensor-parallel-size": "etp", "--micro-batch-size": "mbs", "--global-batch-size": "gbs",
                "--seq-length": "seq", "--num-layers-per-virtual-pipeline-stage": "layers_per_vstage",
                "--num-virtual-stages-per-pipeline-rank": "vstages",
                "--decoder-first-pipeline-num-layers": "first_stage_layers",
                "--decoder-last-pipeline-num-layers": "last_stage_layers"}
MEGATRON_FLAGS = {"--sequence-parallel": "sp", "--use-distributed-optimizer": "distopt",
                  "--recompute-activations": "recompute_activations"}  # the last one means selective


def _megatron_args(path: Path) -> dict[str, Any]:
    text = " ".join(line.split("#", 1)[0] for line in _read(path).splitlines()).replace("\\", " ")
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise BadInputError(f"{path}: cannot split arguments ({exc})") from exc
    values: dict[str, Any] = {}
    for i, tok in enumerate(tokens):
        key, _, inline = tok.partition("=")
        if key in MEGATRON_FLAGS:
            values[MEGATRON_FLAGS[key]] = True
        elif key in MEGATRON_INT or key == "--recompute-granularity":
            raw = inline or (tokens[i + 1] if i + 1 < len(tokens) else "")
            values[MEGATRON_INT.get(key, "recompute")] = raw if key == "--recompute-granularity" else \
                _int(f"{path}: {key}", raw)
    return values


def megatron_layout(path: Path, world: int, model: ModelSpec) -> Layout:
    """Megatron-LM arguments (a file of CLI flags, e.g. the MODEL_PARALLEL_ARGS of a launch script)."""
    v = _megatron_args(path)
    for flag, key in MEGATRON_INT.items():  # divided by below, before Layout checks them
        if key in ("tp", "pp", "cp", "layers_per_vstage") and key in v and v[key] < 1:
            raise BadInputError(f"{path}: {flag} {v[key]}: must be >= 1")
    tp, pp, cp = v.get("tp", 1), v.get("pp", 1), v.get("cp", 1)
    dp = max(1, world // (tp * pp * cp))
    vpp = v.get("vstages", 1)
    if v.get("layers_per_vstage"):
        vpp = max(1, model.n_layers // (pp * v["layers_per_vstage"]))
    recompute = v.get("recompute", "selective" if v.get("recompute_activations") else "none")
    if recompute not in ("none", "selective", "full"):
        raise BadInputError(f"{path}: --recompute-granularity {recompute!r}; use full or selective")
    mbs = v.get("mbs", 1)
    return Layout(dp=dp, tp=tp, pp=pp, cp=cp, vpp=vpp, ep=v.get("ep", 1), etp=v.get("etp", 1),
                  sp=bool(v.get("sp")) and tp > 1, zero=1 if v.get("distopt") else 0, mbs=mbs,
                  gbs=v.get("gbs", mbs * dp), seq=v.get("seq", 4096), recompute=recompute,
                  schedule="interleaved-1f1b" if vpp > 1 else "1f1b",
                  first_stage_layers=v.get("first_stage_layers", 0), last_stage_layers=v.get("last_stage_layers", 0))
