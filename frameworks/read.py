"""Reading launch configs back into a Layout: clusterplan plan files, torchtitan TOML (v0.2.x `[parallelism]` keys),
torchtitan 0.3 Python recipes, Megatron-LM launch scripts or argument files (`megatron/training/arguments.py` names,
shell variables expanded from the script's own assignments) and DeepSpeed ds_config JSON. No torch here.

    read_config(path, model, world) -> ReadConfig(layout, kind, stack, notes, mismatches)

`check` reads every config through this; the round-trip law (tests/test_roundtrip.py) is
read_config(export(plan)).layout == runs_as(plan) for every exporter.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError, UnsupportedModelError
from clusterplan.fileio import check_name, is_file, load_mapping, loads_json, read_text, show
from clusterplan.frameworks.bridge import bridge_values, looks_like_bridge, override_doc
from clusterplan.frameworks.megatron import CP_COMM_TYPE, activation_args
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import (
    Layout,
    canonical_fp8_recipe,
    chunk_layers,
    keeps_master_remainders,
)
from clusterplan.models.training.planfile import FORMAT as PLAN_FORMAT

# torch.distributed.pipelining schedule names (case-insensitive) -> our schedule names
TORCHTITAN_SCHEDULES = {"1f1b": "1f1b", "gpipe": "gpipe", "interleaved1f1b": "interleaved-1f1b",
                        "loopedbfs": "interleaved-1f1b", "interleavedzerobubble": "zb", "zbvzerobubble": "zbv",
                        "dualpipev": "zbv"}
SINGLE_STAGE_SCHEDULES = ("1f1b", "gpipe")
"""torch's PipelineScheduleSingle subclasses: one stage per rank; every other schedule runs several (default 2)."""
V_SCHEDULES = ("zbvzerobubble", "dualpipev")
"""V-shaped schedules: rank r holds chunks r and 2 pp - 1 - r (torchtitan `stage_ids_this_rank`, style "v")."""
TORCHTITAN_FP8_CONVERTERS = ("float8", "quantize.linear.float8", "mx", "quantize.linear.mx", "Float8LinearConverter",
                             "MXFP8LinearConverter")
TORCHTITAN_MODELS = {
    # clusterplan preset -> (torchtitan model name, flavor) for the models torchtitan ships.
    "llama3.1-8b": ("llama3", "8B"),
    "llama3.1-70b": ("llama3", "70B"),
    "llama3.1-405b": ("llama3", "405B"),
    "deepseek-v3": ("deepseek_v3", "671B"),
    "qwen3-32b": ("qwen3", "32B"),
    "qwen3-30b-a3b": ("qwen3", "30B-A3B"),
    "qwen3-235b-a22b": ("qwen3", "235B-A22B"),
}
MEGATRON_FSDP_STRATEGIES = {"no_shard": 0, "optim": 1, "optim_grads": 2, "optim_grads_params": 3}
"""Megatron-FSDP `--data-parallel-sharding-strategy` -> ZeRO stage (Megatron-FSDP README)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReadConfig:
    """What a launch config says: the layout it runs, the execution stack, and what does not match the model."""

    layout: Layout
    kind: str
    """plan, torchtitan, torchtitan-py, megatron, megatron-bridge or deepspeed."""
    stack: str
    """ExecutionStack name (hardware_db/data/stacks.yaml) the config runs on."""
    notes: tuple[str, ...] = ()
    """Where the reading had to assume something (a default the config leaves to the framework)."""
    mismatches: tuple[str, ...] = ()
    """Model dimensions in the config that differ from the model given to check (a true reason to fail)."""
    env: Mapping[str, str] | None = None
    """Environment variables a launch script sets (Megatron)."""
    rank_layers: tuple[int, ...] = ()
    """Transformer layers of each pipeline rank when the config lists them (torchtitan module lists, Megatron's
    --pipeline-model-parallel-layout), else empty (the layout's first/middle/last split says it)."""
    fp8_recipe: str | None = None
    """The fp8 recipe the config runs (Megatron-LM --fp8-recipe; its default delayed), None where it does not say or
    trains without fp8."""
    stage_gpus: tuple[tuple[str, str], ...] = ()
    """(GPU, node preset) of each pipeline stage from a mixed-GPU export's `# stage S: ...` lines, else empty."""
    launch: tuple[int, int] | None = None
    """(nodes, GPUs per node) a launch script's torchrun line starts (--nnodes, --nproc-per-node), None where the
    config has no such line or does not say them as integers (script_launch_shape)."""


def config_kind(path: Path) -> str:
    """`plan`, `torchtitan`, `torchtitan-py`, `megatron`, `megatron-bridge` or `deepspeed`, from the suffix and
    content."""
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return "torchtitan"
    if suffix == ".py":
        return "torchtitan-py"
    if suffix in (".yaml", ".yml"):
        doc = load_mapping(_checked(path))
        return "megatron-bridge" if doc.get("format") != PLAN_FORMAT and looks_like_bridge(doc) else "plan"
    if suffix == ".json":
        doc = _json(path)
        if isinstance(doc, dict) and doc.get("format") != "clusterplan-plan" and (
                {"train_batch_size", "train_micro_batch_size_per_gpu", "zero_optimization"} & set(doc)):
            return "deepspeed"
        return "plan"
    return "megatron"


def _checked(path: Path) -> Path:
    if not is_file(check_name(path)):
        raise BadInputError(f"{show(path)}: no such file; give a plan YAML, a torchtitan TOML or recipe, a Megatron-LM "
                            "script, a Megatron-Bridge config YAML or a DeepSpeed JSON")
    return path


def _read(path: Path) -> str:
    if not is_file(check_name(path)):
        raise BadInputError(f"{show(path)}: no such file; give a plan YAML, a torchtitan TOML or recipe, a Megatron-LM "
                            "script or a DeepSpeed JSON")
    return read_text(path, "launch config")  # size-bounded, one-line errors (fileio)


def _json(path: Path) -> Any:
    """A JSON launch config through the input layer (bounded depth and integers, no duplicate keys)."""
    return loads_json(_read(path), show(path))


def _sections(doc: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Each of `keys` the config gives is a table (a JSON object / TOML table): one line, exit 2, otherwise."""
    for key in keys:
        if key in doc and doc[key] is not None and not isinstance(doc[key], Mapping):
            raise BadInputError(f"{where}: {key} must be a section of settings ({{...}}), got "
                                f"{type(doc[key]).__name__} {doc[key]!r}")


TITAN_SECTIONS = ("parallelism", "training", "activation_checkpoint", "model", "compile", "job", "quantize",
                  "float8", "mx", "optimizer")
"""torchtitan job-config tables the reader looks into."""
DEEPSPEED_SECTIONS = ("pipeline", "tensor_parallel", "zero_optimization", "bf16", "fp16", "activation_checkpointing")
"""ds_config sections the reader looks into (and PLAN_KEY, the plan's own)."""


def _int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(str(value))
        except ValueError:
            raise BadInputError(f"{where}: expected an integer, got {value!r}") from None
    return value


STAGE_LINE = re.compile(r"^\s*#\s*stage (\d+): layers (\d+)-(\d+) \((\d+)\) on (\S+) \(([^)\s]+)\)")
"""A mixed-GPU export's stage line (frameworks/common.py stage_lines): `# stage 0: layers 0-15 (16) on GPU (node)`."""


def stage_comments(text: str, where: str) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...]]:
    """((GPU, node) of each stage, layers of each stage) from a mixed-GPU export's stage lines; empty when none."""
    found = [m for m in (STAGE_LINE.match(line) for line in text.splitlines()) if m]
    if not found:
        return (), ()
    if [int(m.group(1)) for m in found] != list(range(len(found))):
        raise BadInputError(f"{where}: `# stage S:` lines must run 0, 1, 2, ... in order, one per pipeline stage")
    return tuple((m.group(5), m.group(6)) for m in found), tuple(int(m.group(4)) for m in found)


def _with_stages(read: ReadConfig, text: str, where: str, model: ModelSpec) -> ReadConfig:
    """A config read with its stage lines: per-stage GPU types, and a note where they disagree with its split."""
    from dataclasses import replace

    from clusterplan.models.training.layout import stage_layers

    gpus, commented = stage_comments(text, where)
    if not gpus:
        return read
    L = read.layout
    if len(gpus) != L.pp or L.vpp != 1:
        raise BadInputError(f"{where}: {len(gpus)} `# stage` lines for pipeline degree {L.pp} (vpp {L.vpp}); a "
                            "mixed-GPU config has one chunk per pipeline rank and one line per stage")
    notes = [n for n in read.notes if not n.startswith("pipeline ranks hold")]  # priced per stage, not evened out
    ranks = read.rank_layers
    if not ranks:
        first, middle, last = stage_layers(model, L)
        ranks = (first, *([middle] * (L.pp - 2)), last)
    if commented != ranks:
        notes.append(f"the `# stage` lines list {list(commented)} layers, the config splits {list(ranks)}; "
                     "checked as the config runs")
    return replace(read, stage_gpus=gpus, rank_layers=ranks, notes=tuple(notes))


def read_config(path: Path, model: ModelSpec, world: int) -> ReadConfig:
    """A launch config of any kind but `plan` as the layout the framework runs."""
    kind = config_kind(path)
    readers = {"torchtitan": torchtitan_config, "torchtitan-py": torchtitan_py_config,
               "deepspeed": deepspeed_config, "megatron": megatron_config, "megatron-bridge": bridge_config}
    if kind not in readers:
        raise BadInputError(f"{path}: a plan file; read it with read_plan")
    read = readers[kind](path, model, world)
    if kind == "megatron":  # a launch script (Megatron-LM flags or Megatron-Bridge overrides): its torchrun line
        text = _read(path)
        read = replace(read, launch=script_launch_shape(shell_words(text, str(path))[0], text))
    # the recipe the config names, in the layout it runs, in its one spelling ("" where it is the stack's first)
    if read.layout.precision == "fp8" and read.fp8_recipe:
        read = replace(read, layout=replace(read.layout,
                                            fp8_recipe=canonical_fp8_recipe(read.fp8_recipe, get_stack(read.stack))))
    return read if kind in ("deepspeed", "megatron-bridge") else _with_stages(read, _read(path), str(path), model)


# ---- torchtitan ------------------------------------------------------------------------------------------------
def pipeline_chunks(model: ModelSpec, par: Mapping[str, Any], pp: int, where: str) -> list[int]:
    """Transformer layers of each pipeline chunk in model order, as torchtitan splits them.

    An explicit `module_fqns_per_model_part` wins; else `pipeline_parallel_layers_per_stage` gives
    ceil((n + first_less + last_less) / layers_per_stage) stages, else a single-stage schedule runs one stage per rank
    and a looped one two (torchtitan distributed/pipeline_parallel.py `_get_pipeline_metadata`); the layers are dealt
    as `_generate_llm_fqn_per_model_part` deals them, the embedding and head weighing first/last_less layers.
    """
    parts = par.get("module_fqns_per_model_part")
    if parts:
        if not isinstance(parts, list) or not all(isinstance(p, list) for p in parts):
            raise BadInputError(f"{where}: module_fqns_per_model_part must be a list of lists of module names")
        counts = [len([m for m in p if isinstance(m, str) and m.startswith("layers.")]) for p in parts]
        if sum(counts) != model.n_layers:
            raise BadInputError(f"{where}: module_fqns_per_model_part places {sum(counts)} layers, the model has "
                                f"{model.n_layers}; list every layer once")
        return counts
    schedule = str(par.get("pipeline_parallel_schedule", "1F1B")).lower()
    in_w = _int(f"{where}: first_stage_less_layers", par.get("pipeline_parallel_first_stage_less_layers", 1))
    out_w = _int(f"{where}: last_stage_less_layers", par.get("pipeline_parallel_last_stage_less_layers", 1))
    per_stage = par.get("pipeline_parallel_layers_per_stage")
    if per_stage is not None:
        per_stage = _int(f"{where}: pipeline_parallel_layers_per_stage", per_stage)
        if per_stage < 1:
            raise BadInputError(f"{where}: pipeline_parallel_layers_per_stage must be >= 1")
        stages = -(-(model.n_layers + in_w + out_w) // per_stage)
    else:
        stages = pp * (1 if schedule in SINGLE_STAGE_SCHEDULES else 2)
    effective = model.n_layers + in_w + out_w
    base, extra = divmod(effective, stages)
    if base < 1 or max(in_w, out_w) > base:
        raise BadInputError(f"{where}: {stages} pipeline stages over {model.n_layers} layers leave a stage empty; "
                            "raise pipeline_parallel_layers_per_stage")
    counts, left = [], model.n_layers
    for s in range(stages):
        take = base + (1 if s < extra else 0) - (in_w if s == 0 else 0) - (out_w if s == stages - 1 else 0)
        take = max(0, min(take, left))
        counts.append(take)
        left -= take
    return counts


def _layout_from_chunks(model: ModelSpec, counts: list[int], pp: int, schedule: str,
                        where: str) -> tuple[int, int, int, tuple[int, ...], list[str], tuple[int, ...]]:
    """(vpp, first_stage_layers, last_stage_layers, pp_layers, notes, layers of each rank) from the chunks (0, 0, ():
    an even split; pp_layers where first/last and an even middle cannot say the ranks' totals).

    The rank totals give the stage sizes; when the chunks inside a rank are not the split clusterplan prices
    (layout.chunk_layers), the estimate uses the totals and says so.
    """
    from clusterplan.frameworks.common import canonical  # frameworks.common imports this module

    if pp == 1:
        return 1, 0, 0, (), [], ()
    if len(counts) % pp:
        raise BadInputError(f"{where}: {len(counts)} pipeline chunks do not divide over pipeline_parallel_degree({pp})")
    vpp = len(counts) // pp
    v_shape = schedule.lower() in V_SCHEDULES
    totals = [0] * pp
    for c, n in enumerate(counts):
        totals[(c if c < pp else 2 * pp - 1 - c) if v_shape else c % pp] += n
    trial = canonical(model, Layout(pp=pp, vpp=vpp, schedule="interleaved-1f1b" if vpp > 1 else "1f1b",
                                    pp_layers=tuple(totals)))
    notes = []
    if not v_shape and chunk_layers(model, trial) != counts:
        notes.append(f"pipeline chunks hold {counts} layers; estimated with the ranks' totals {totals}")
    return vpp, trial.first_stage_layers, trial.last_stage_layers, trial.pp_layers, notes, tuple(totals)


def titan_layout(doc: Mapping[str, Any], model: ModelSpec, world: int,
                 where: str) -> tuple[Layout, list[str], tuple[int, ...]]:
    """The layout of a torchtitan job config given as tables: parallelism, training, activation_checkpoint, model.

    FSDP2 shards over dp_shard (and cp); fsdp_reshard_after_forward "always" frees gathered weights after each
    forward (ZeRO-3), "never" keeps them to the backward with gradients reduce-scattered (ZeRO-2), "default" is
    "always" without pp and "never" with it (torchtitan parallelize `get_fsdp_reshard_after_forward_policy`).
    dp_shard 1 without cp applies no FSDP: DDP over dp_replicate, or nothing (ZeRO-0).
    """
    _sections(doc, TITAN_SECTIONS, where)
    par, train = doc.get("parallelism") or {}, doc.get("training") or {}
    ac, model_table = doc.get("activation_checkpoint") or {}, doc.get("model") or {}
    get = lambda table, key, default: _int(f"{where}: {key}", table.get(key, default))  # noqa: E731
    tp, pp, cp = get(par, "tensor_parallel_degree", 1), get(par, "pipeline_parallel_degree", 1), \
        get(par, "context_parallel_degree", 1)
    for key, value in (("tensor_parallel_degree", tp), ("pipeline_parallel_degree", pp),
                       ("context_parallel_degree", cp)):
        if value < 1:
            raise BadInputError(f"{where}: {key} {value}: must be >= 1")
    rep, shard = get(par, "data_parallel_replicate_degree", 1), get(par, "data_parallel_shard_degree", -1)
    if shard == -1:  # torchtitan: -1 takes the leftover ranks
        shard = max(1, world // max(1, rep * tp * pp * cp))
    if rep < 1 or shard < 1:
        raise BadInputError(f"{where}: data_parallel degrees must be >= 1 (or shard -1 for the leftover ranks)")
    notes: list[str] = []
    reshard = str(par.get("fsdp_reshard_after_forward", "default"))
    if reshard not in ("default", "always", "never"):
        raise BadInputError(f"{where}: fsdp_reshard_after_forward {reshard!r}; use default, always or never")
    if shard == 1 and cp == 1:
        zero = 0
    elif reshard == "always" or (reshard == "default" and pp == 1):
        zero = 3
    else:
        zero = 2
    dp = rep * shard
    local = get(train, "local_batch_size", 8)
    gbs = get(train, "global_batch_size", -1)
    mbs = get(par, "pipeline_parallel_microbatch_size", 1) if pp > 1 else local
    sp = bool(par.get("enable_sequence_parallel", True)) and tp > 1
    schedule_name = str(par.get("pipeline_parallel_schedule", "1F1B"))
    if schedule_name.lower() not in TORCHTITAN_SCHEDULES:
        raise BadInputError(f"{where}: pipeline_parallel_schedule {schedule_name!r}; known: "
                            f"{', '.join(TORCHTITAN_SCHEDULES)}")
    schedule = TORCHTITAN_SCHEDULES[schedule_name.lower()] if pp > 1 else "1f1b"
    vpp, first, last, pp_layers, ranks = 1, 0, 0, (), ()
    if pp > 1:
        counts = pipeline_chunks(model, par, pp, where)
        vpp, first, last, pp_layers, more, ranks = _layout_from_chunks(model, counts, pp, schedule_name, where)
        notes += more
        if schedule == "zb":
            vpp = 1  # clusterplan's zero-bubble schedule (one chunk per rank)
        elif schedule == "zbv" and vpp != 2:
            raise BadInputError(f"{where}: {schedule_name} runs 2 chunks per rank, the config gives {vpp}")
        elif vpp == 1 and schedule == "interleaved-1f1b":
            schedule = "1f1b"
        elif vpp > 1 and schedule not in ("interleaved-1f1b", "zbv"):
            raise BadInputError(f"{where}: {vpp} chunks per rank need a looped schedule (Interleaved1F1B), "
                                f"not {schedule_name}")
    mode = str(ac.get("mode", "selective"))
    recompute, recompute_layers = {"selective": "selective", "full": "full", "none": "none",
                                   "memory_budget": "selective"}.get(mode), 0
    if recompute is None:
        raise BadInputError(f"{where}: activation_checkpoint.mode {mode!r}; use none, selective or full")
    if mode == "memory_budget":
        notes.append("activation_checkpoint.mode memory_budget is estimated as selective recompute")
    option = str(ac.get("selective_ac_option", "op"))
    if recompute == "selective" and option != "op" and not option.isdigit():
        # torchtitan's _apply_ac_to_transformer_block: "Invalid selective AC option ... 'op' or a positive int"
        raise BadInputError(f"{where}: activation_checkpoint.selective_ac_option {option!r}: torchtitan takes 'op' "
                            "(op-level) or an integer n >= 0 (every n-th block; 0 every block)")
    if recompute == "selective" and option.isdigit() and int(option) == 0:
        recompute = "full"  # torchtitan: `if not ac_freq or ...` checkpoints every block
    elif recompute == "selective" and option.isdigit():
        # every n-th layer fully checkpointed (torchtitan activation_checkpoint `_apply_layer_sac`)
        per_rank = model.n_layers // pp
        every = int(option)
        recompute, recompute_layers = "full", per_rank // every
        if recompute_layers == per_rank:
            recompute_layers = 0
        elif recompute_layers == 0:
            recompute = "none"
    raw_converters = model_table.get("converters", [])
    if not isinstance(raw_converters, list):
        raise BadInputError(f"{where}: model.converters must be a list (e.g. converters = [\"float8\"]), got "
                            f"{raw_converters!r}")
    converters = [str(c) for c in raw_converters]
    mixed = str(train.get("mixed_precision_param", "bfloat16"))
    precision = "fp8" if any(c in TORCHTITAN_FP8_CONVERTERS for c in converters) else \
        "fp32" if mixed == "float32" else "bf16"
    ep = get(par, "expert_parallel_degree", 1) if model.is_moe else 1
    etp = get(par, "expert_tensor_parallel_degree", 1) if model.is_moe and ep > 1 else 1
    # torch context_parallel: "alltoall" passes K/V around a ring, "allgather" (the default, and torchtitan 0.3's
    # only way) all-gathers them
    rotate = str(par.get("context_parallel_rotate_method", "allgather"))
    if rotate not in ("allgather", "alltoall"):
        raise BadInputError(f"{where}: context_parallel_rotate_method {rotate!r}; use allgather or alltoall")
    cp_kind = ("ring" if rotate == "alltoall" else "allgather") if cp > 1 else "ring"
    layout = Layout(dp=dp, dp_replicate=rep if dp > 1 and zero > 0 else 1, tp=tp, pp=pp, cp=cp, cp_kind=cp_kind,
                    ep=ep, etp=etp, sp=sp, zero=zero,
                    mbs=mbs, gbs=gbs if gbs > 0 else local * dp, seq=get(train, "seq_len", 2048),
                    recompute=recompute, recompute_layers=recompute_layers, schedule=schedule, vpp=vpp,
                    precision=precision, first_stage_layers=first, last_stage_layers=last, pp_layers=pp_layers)
    return layout, notes, ranks


TORCHTITAN_DEFAULT_MODEL = ("llama3", "debugmodel")
"""[model] name and flavor when a job config leaves them out: torchtitan's JobConfig `Model` dataclass defaults
(torchtitan/config/job_config.py: name: str = "llama3", flavor: str = "debugmodel"), the debug model."""


def _titan_mismatches(doc: Mapping[str, Any], model: ModelSpec) -> list[str]:
    table = doc.get("model") or {}
    name = table.get("name", TORCHTITAN_DEFAULT_MODEL[0])
    flavor = table.get("flavor", TORCHTITAN_DEFAULT_MODEL[1])
    expected = TORCHTITAN_MODELS.get(model.name)
    if expected and (str(name), str(flavor)) != expected:
        return [f"the config trains torchtitan {name} {flavor}, not {model.name} ({expected[0]} {expected[1]}); "
                "check --model"]
    return []


TITAN_COMPILE_COMPONENTS = ("model", "loss")
"""torchtitan's default compile.components (torchtitan/config/job_config.py Compile: ["model", "loss"])."""


def _titan_fp8_recipe(doc: Mapping[str, Any], where: str) -> tuple[str, list[str]]:
    """The fp8 recipe a torchtitan config runs, and a note where it is priced as another: torchtitan 0.3's converter
    call (recipe_tables: rowwise by default), else v0.2's [float8] / [quantize.linear.float8] recipe_name (None =
    tensorwise) or an MX converter (mxfp8). rowwise_with_gw_hp keeps the weight-gradient GEMM in bf16, which no
    recipe here prices: rowwise."""
    model_table = doc.get("model") or {}
    recipe = model_table.get("fp8_recipe")
    if recipe is None:
        quantize = ((doc.get("quantize") or {}).get("linear") or {})
        table = doc.get("float8") or quantize.get("float8") or {}
        converters = [str(c) for c in model_table.get("converters", [])]
        mx = any(c in ("mx", "quantize.linear.mx") for c in converters)
        recipe = "mxfp8" if mx else str(table.get("recipe_name") or "tensorwise")
    if recipe not in ("tensorwise", "rowwise", "rowwise_with_gw_hp", "mxfp8"):
        raise BadInputError(f"{where}: float8 recipe_name {recipe!r}; use tensorwise, rowwise or rowwise_with_gw_hp")
    if recipe == "rowwise_with_gw_hp":
        return "rowwise", ["float8 rowwise_with_gw_hp keeps the weight-gradient GEMM in bf16: priced as rowwise "
                           "(every GEMM in fp8), faster than it runs"]
    return recipe, []


def _titan_stack(doc: Mapping[str, Any]) -> str:
    """torchtitan (eager), torchtitan-compile (blocks compiled, eager loss) or torchtitan-compile-loss (the loss
    compiled too: 'loss' in compile.components, the default; pytorch/torchtitan#1033)."""
    compile_table = doc.get("compile") or {}
    if not compile_table.get("enable"):
        return "torchtitan"
    components = compile_table.get("components", TITAN_COMPILE_COMPONENTS)
    return "torchtitan-compile-loss" if "loss" in components else "torchtitan-compile"


def _titan_doc(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise BadInputError(f"{path}: reading TOML needs Python 3.11 or later") from None
    text = _read(path)  # its own errors (no such file, unreadable) stand as they are
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{show(path)}: malformed TOML ({exc}); fix the syntax") from exc
    except (RecursionError, ValueError) as exc:  # nesting past the stack, a 5,000-digit integer
        raise BadInputError(f"{show(path)}: TOML nested too deeply or with an integer too long "
                            f"({type(exc).__name__}); is this a torchtitan config?") from None


def torchtitan_model_preset(path: Path) -> str:
    """The preset a torchtitan TOML trains: its [model] name and flavor, for the models torchtitan ships
    (TORCHTITAN_MODELS); `check` without --model prices that."""
    doc = _titan_doc(path)
    model = doc.get("model") if isinstance(doc.get("model"), Mapping) else {}
    key = (str(model.get("name", "")), str(model.get("flavor", "")))
    presets = {v: k for k, v in TORCHTITAN_MODELS.items()}
    if key not in presets:
        known = ", ".join(f"{n} {f}" for n, f in TORCHTITAN_MODELS.values())
        raise BadInputError(f"{show(path)}: [model] name {key[0]!r} flavor {key[1]!r} is not one clusterplan knows "
                            f"({known}); give --model (a preset, config.json or model YAML)")
    return presets[key]


def torchtitan_config(path: Path, model: ModelSpec, world: int) -> ReadConfig:
    """A torchtitan v0.2 job TOML."""
    doc = _titan_doc(path)
    layout, notes, ranks = titan_layout(doc, model, world, str(path))
    if not doc.get("parallelism") and not doc.get("training"):
        notes.insert(0, "the file sets no [parallelism] or [training] keys: checked torchtitan's defaults (FSDP over "
                        "every GPU, its default batch and sequence length)")
    recipe, more = _titan_fp8_recipe(doc, str(path)) if layout.precision == "fp8" else (None, [])
    return ReadConfig(layout=layout, kind="torchtitan", stack=_titan_stack(doc), notes=(*notes, *more),
                      mismatches=tuple(_titan_mismatches(doc, model)), rank_layers=ranks, fp8_recipe=recipe)


# ---- torchtitan 0.3 Python recipe --------------------------------------------------------------------------------
_RECIPE_TABLES = {"ParallelismConfig": "parallelism", "TrainingConfig": "training", "CompileConfig": "compile"}


def _literal(node: ast.AST, where: str) -> Any:
    """A recipe's keyword value: literals, lists, and + - * // of them (nothing is executed)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e, where) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand, where)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Add | ast.Sub | ast.FloorDiv):
        a, b = _literal(node.left, where), _literal(node.right, where)
        ops = {ast.Mult: lambda: a * b, ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.FloorDiv: lambda: a // b}
        return ops[type(node.op)]()
    raise BadInputError(f"{where}: line {getattr(node, 'lineno', '?')}: only literal values can be read "
                        f"({ast.unparse(node)}); write the number itself")


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):  # FullAC.Config -> FullAC
        inner = func.value
        return inner.id if isinstance(inner, ast.Name) else inner.attr if isinstance(inner, ast.Attribute) else ""
    return func.id if isinstance(func, ast.Name) else ""


def recipe_tables(source: str, where: str) -> dict[str, Any]:
    """The first ParallelismConfig / TrainingConfig / CompileConfig / AC / converter / model_registry calls."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise BadInputError(f"{where}: not valid Python ({exc.msg}, line {exc.lineno})") from exc
    doc: dict[str, Any] = {"model": {"converters": []}}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name in _RECIPE_TABLES and _RECIPE_TABLES[name] not in doc:
            doc[_RECIPE_TABLES[name]] = {k.arg: _literal(k.value, where) for k in node.keywords if k.arg}
        elif name in ("FullAC", "SelectiveAC") and "activation_checkpoint" not in doc:
            mode = "full" if name == "FullAC" else "selective"
            table = {"mode": mode}
            for k in node.keywords:
                if k.arg in ("selective_ac_option", "mode"):
                    table["selective_ac_option" if k.arg == "selective_ac_option" else "sac_mode"] = \
                        _literal(k.value, where)
            doc["activation_checkpoint"] = table
        elif name in ("Float8LinearConverter", "MXFP8LinearConverter"):
            doc["model"]["converters"].append(name)
            kwargs = {k.arg: _literal(k.value, where) for k in node.keywords if k.arg == "recipe_name"}
            # torchtitan 0.3 Float8LinearConverter.Config.recipe_name: "rowwise" (default) or "rowwise_with_gw_hp"
            doc["model"]["fp8_recipe"] = "mxfp8" if name == "MXFP8LinearConverter" else \
                str(kwargs.get("recipe_name", "rowwise"))
        elif name == "model_registry" and "flavor" not in doc["model"] and node.args:
            doc["model"]["flavor"] = _literal(node.args[0], where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torchtitan.models."):
            if any(a.name == "model_registry" for a in node.names):
                doc["model"]["name"] = node.module.split(".")[2]
    doc.setdefault("activation_checkpoint", {"mode": "none"})
    return doc


def torchtitan_py_config(path: Path, model: ModelSpec, world: int) -> ReadConfig:
    """A torchtitan 0.3 recipe module (`Trainer.Config(...)`), read without running it."""
    doc = recipe_tables(_read(path), str(path))
    layout, notes, ranks = titan_layout(doc, model, world, str(path))
    recipe, more = _titan_fp8_recipe(doc, str(path)) if layout.precision == "fp8" else (None, [])
    return ReadConfig(layout=layout, kind="torchtitan-py", stack=_titan_stack(doc), notes=(*notes, *more),
                      mismatches=tuple(_titan_mismatches(doc, model)), rank_layers=ranks, fp8_recipe=recipe)


# ---- Megatron-LM ------------------------------------------------------------------------------------------------
MEGATRON_INT = {"--tensor-model-parallel-size": "tp", "--pipeline-model-parallel-size": "pp",
                "--context-parallel-size": "cp", "--expert-model-parallel-size": "ep",
                "--expert-tensor-parallel-size": "etp", "--micro-batch-size": "mbs", "--global-batch-size": "gbs",
                "--seq-length": "seq", "--num-layers-per-virtual-pipeline-stage": "layers_per_vstage",
                "--num-virtual-stages-per-pipeline-rank": "vstages",
                "--decoder-first-pipeline-num-layers": "first_stage_layers",
                "--decoder-last-pipeline-num-layers": "last_stage_layers",
                "--num-distributed-optimizer-instances": "dp_replicate", "--recompute-num-layers": "recompute_num",
                "--num-layers": "n_layers", "--hidden-size": "hidden", "--num-attention-heads": "n_heads",
                "--ffn-hidden-size": "ffn_hidden", "--num-query-groups": "kv_heads", "--num-experts": "n_experts",
                "--mamba-num-heads": "mamba_heads", "--mamba-head-dim": "mamba_head_dim",
                "--mamba-state-dim": "mamba_state_dim", "--mamba-num-groups": "mamba_groups",
                "--moe-latent-size": "moe_latent", "--num-layers-at-start-in-bf16": "bf16_start",
                "--num-layers-at-end-in-bf16": "bf16_end"}
MEGATRON_STR = {"--recompute-granularity": "recompute", "--recompute-method": "recompute_method",
                "--data-parallel-sharding-strategy": "sharding", "--fp8-format": "fp8", "--cp-comm-type": "cp_comm",
                "--attention-backend": "attention", "--optimizer": "optimizer", "--rotary-base": "rotary_base",
                "--moe-router-score-function": "router_score", "--mtp-num-layers": "mtp_layers",
                "--pipeline-model-parallel-layout": "pp_layout", "--moe-token-dispatcher-type": "dispatcher",
                "--moe-flex-dispatcher-backend": "flex_backend", "--moe-expert-capacity-factor": "capacity_factor",
                "--fp8-recipe": "fp8_recipe", "--exp-avg-dtype": "exp_avg_dtype",
                "--exp-avg-sq-dtype": "exp_avg_sq_dtype", "--main-grads-dtype": "main_grads_dtype",
                "--main-params-dtype": "main_params_dtype", "--window-size": "window_size",
                "--rotary-percent": "rotary_percent", "--softmax-type": "softmax_type",
                "--window-attn-skip-freq": "window_skip", "--fp4-format": "fp4", "--fp4-recipe": "fp4_recipe",
                "--hybrid-override-pattern": "hybrid_pattern"}
MEGATRON_FLAGS = {"--sequence-parallel": "sp", "--use-distributed-optimizer": "distopt",
                  "--recompute-activations": "recompute_activations",  # means selective
                  "--use-megatron-fsdp": "megatron_fsdp", "--use-torch-fsdp2": "torch_fsdp2", "--bf16": "bf16",
                  "--fp16": "fp16", "--group-query-attention": "gqa", "--use-flash-attn": "flash",
                  "--use-rope-scaling": "rope_scaling", "--moe-router-enable-expert-bias": "expert_bias",
                  "--grad-reduce-in-bf16": "grad_bf16", "--moe-enable-deepep": "enable_deepep",
                  "--overlap-moe-expert-parallel-comm": "a2a_overlap",
                  "--moe-pad-expert-input-to-capacity": "pad_to_capacity", "--fp8-param-gather": "fp8_param_gather",
                  "--use-precision-aware-optimizer": "precision_aware", "--swiglu": "swiglu",
                  "--squared-relu": "squared_relu", "--quick-geglu": "quick_geglu",
                  "--delay-wgrad-compute": "delay_wgrad", "--apply-layernorm-1p": "layernorm_1p",
                  "--fp4-param-gather": "fp4_param_gather", "--first-last-layers-bf16": "first_last_bf16",
                  "--is-hybrid-model": "hybrid"}
MEGATRON_LISTS = {"--recompute-modules": "recompute_modules",
                  "--hierarchical-context-parallel-sizes": "hierarchical_cp_sizes"}
"""Flags that take every following word up to the next flag (argparse nargs='*')."""
_VAR = re.compile(r"\$\{(\w+)(?::?[-=]([^}]*))?\}|\$(\w+)")
_ASSIGN = re.compile(r"^([A-Za-z_]\w*)=(.*)$", re.S)


def _expand(word: str, env: Mapping[str, str]) -> str:
    """$VAR, ${VAR} and ${VAR:-default} from the script's own assignments; unknown names stay as written."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in env:
            return env[name]
        if m.group(2) is not None:
            return _expand(m.group(2), env)
        return m.group(0)
    return _VAR.sub(sub, word)


def _closes_array(line: str) -> bool:
    """Whether `line` ends a bash array: its last unquoted character, comments and a trailing `;` aside, is `)`
    (`)` alone, `--flag value)`, `X=(a b)  # note`, `X=(a b);`; a quoted `'([0]*3+[1]*58)'` element does not)."""
    code = line.split(" #", 1)[0].rstrip().rstrip(";").rstrip()
    return code.endswith(")")


TORCHRUN_NPROC = ("--nproc-per-node", "--nproc_per_node")
"""torchrun's GPUs-per-node option in both its spellings (torch.distributed.run accepts either)."""
TORCHRUN_WORDS = ("torchrun", "torch.distributed.run", "torch.distributed.launch")
"""How a script starts torchrun's launcher (`python -m torch.distributed.run` is the same program)."""


LAUNCHER_VARIABLE = re.compile(r"(--nnodes|--nproc[-_]per[-_]node)[=\s]+[\"']?\$")
"""A torchrun size given by a variable (`--nnodes ${SLURM_NNODES:-1}`, `--nnodes $NNODES`): the scheduler sets it at
launch, so the script's default is not its size."""


def script_launch_shape(words: list[str], text: str = "") -> tuple[int, int] | None:
    """(nodes, GPUs per node) of a script's torchrun line (`--nnodes N --nproc-per-node G`, or `=` forms), None
    without a torchrun word, without --nnodes, where a value is not a positive integer (an elastic MIN:MAX range,
    `gpu`, `auto`, a variable the script leaves unset) or where the script's `text` gives either by a variable
    (LAUNCHER_VARIABLE: what the scheduler sets, unknown here)."""
    if not any(w in TORCHRUN_WORDS for w in words) or LAUNCHER_VARIABLE.search(text):
        return None
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        key, eq, inline = word.partition("=")
        if key == "--nnodes" or key in TORCHRUN_NPROC:
            found["nproc" if key in TORCHRUN_NPROC else "nnodes"] = inline if eq else (
                words[i + 1] if i + 1 < len(words) else "")
    nodes, per_node = found.get("nnodes"), found.get("nproc")
    if nodes is None or per_node is None or not (nodes.isdigit() and per_node.isdigit()):
        return None
    if int(nodes) < 1 or int(per_node) < 1:
        return None
    return int(nodes), int(per_node)


def shell_words(text: str, where: str) -> tuple[list[str], dict[str, str]]:
    """The words of a launch script with variables expanded in script order, and the assignments it makes. Inside
    an array (NAME=( ... )) every token is an element, `key=value` ones too (Megatron-Bridge overrides)."""
    joined = re.sub(r"\\\r?\n", " ", text)
    words: list[str] = []
    env: dict[str, str] = {}
    in_array = False
    for n, line in enumerate(joined.splitlines(), 1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise BadInputError(f"{where}: line {n}: cannot split arguments ({exc})") from exc
        opens = any(_ASSIGN.match(t) and _ASSIGN.match(t).group(2).startswith("(") for t in tokens)
        closing = (in_array or opens) and _closes_array(line)
        if closing and tokens:  # the closing `)` (and a `;`) off the array's last element
            tokens[-1] = tokens[-1].rstrip(";").removesuffix(")")
            if not tokens[-1]:
                tokens.pop()
        declared = bool(tokens) and tokens[0] in ("export", "local", "declare", "readonly")
        for i, tok in enumerate(tokens):
            m = None if in_array else _ASSIGN.match(tok)
            if m and (i == 0 or declared or _ASSIGN.match(tokens[0])):
                if not m.group(2).startswith("("):
                    env[m.group(1)] = _expand(m.group(2), env)
                    continue
                in_array = True
                rest = m.group(2)[1:].strip()
                if rest:
                    words.append(_expand(rest, env))
                continue
            word = _expand(tok, env)
            # "--fp8-format hybrid" inside an array expanded unquoted (${ARGS[@]}) is two arguments
            words.extend(word.split() if word.startswith("--") else [word])
        if closing:
            in_array = False
    return words, env


MODEL_INT = {"--vocab-size": "vocab_size", "--kv-channels": "kv_channels",
             "--max-position-embeddings": "seq_length", "--moe-router-topk": "moe_router_topk",
             "--moe-ffn-hidden-size": "moe_ffn_hidden_size",
             "--moe-shared-expert-intermediate-size": "moe_shared_expert_intermediate_size",
             "--moe-router-num-groups": "moe_router_num_groups", "--moe-router-group-topk": "moe_router_group_topk",
             "--q-lora-rank": "q_lora_rank", "--kv-lora-rank": "kv_lora_rank", "--qk-head-dim": "qk_head_dim",
             "--qk-pos-emb-head-dim": "qk_pos_emb_head_dim", "--v-head-dim": "v_head_dim"}
"""Megatron-LM arguments.py flags of the model's sizes -> the TransformerConfig / GPT provider field they set
(read only to build the model itself, `check` without --model: megatron_model_fields)."""
MODEL_STR = {"--normalization": "normalization", "--position-embedding-type": "position_embedding_type",
             "--moe-layer-freq": "moe_layer_freq", "--moe-router-topk-scaling-factor": "moe_router_topk_scaling_factor",
             "--rope-scaling-factor": "scale_factor", "--activation-func-clamp-value": "activation_func_clamp_value"}
MODEL_FLAGS = {"--untie-embeddings-and-output-weights": "untie", "--disable-bias-linear": "no_bias",
               "--add-qkv-bias": "add_qkv_bias", "--qk-layernorm": "qk_layernorm",
               "--multi-latent-attention": "multi_latent_attention", "--moe-router-pre-softmax": "moe_router_pre_softmax"}


def megatron_args(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    words, env = shell_words(_read(path), str(path))
    values: dict[str, Any] = {}
    for i, tok in enumerate(words):
        key, eq, inline = tok.partition("=")
        if key in MEGATRON_FLAGS:
            values[MEGATRON_FLAGS[key]] = True
        elif key in MEGATRON_LISTS:
            following = [inline] if eq else []
            for word in words[i + 1:]:
                if word.startswith("--"):
                    break
                following.append(word)
            values[MEGATRON_LISTS[key]] = following
        elif key in MEGATRON_INT or key in MEGATRON_STR:
            raw = inline if eq else (words[i + 1] if i + 1 < len(words) else "")
            if "$" in raw:
                name = _VAR.search(raw)
                var = (name.group(1) or name.group(3)) if name else raw
                raise BadInputError(f"{path}: {key} {raw}: ${var} is not assigned in the script; set {var}=... in it "
                                    "or write the value")
            if key in MEGATRON_INT:
                values[MEGATRON_INT[key]] = _int(f"{path}: {key}", raw)
            else:
                values[MEGATRON_STR[key]] = raw
    return values, env


def _moe_layer_freq(raw: str, where: str) -> int | list[int]:
    """--moe-layer-freq: an integer, or Megatron-LM's list expression ([0]*3+[1]*58, optionally in parentheses)."""
    text = raw.replace(" ", "").strip("()")
    if text.isdigit():
        return int(text)
    out: list[int] = []
    for part in text.split("+"):
        m = re.fullmatch(r"\[([01,]*)\](?:\*(\d+))?", part)
        if not m:
            raise BadInputError(f"{where}: --moe-layer-freq {raw!r}: give an integer or a 0/1 list expression such "
                                "as ([0]*3+[1]*58)")
        out += [int(c) for c in m.group(1).split(",") if c] * int(m.group(2) or 1)
    return out


def megatron_model_fields(path: Path) -> dict[str, Any]:
    """The model a Megatron-LM script trains, as Megatron-Core TransformerConfig / GPT provider fields
    (models/architecture/mcore.py spec_from_mcore reads them): what `check` prices without --model. arguments.py's
    defaults where a flag is absent (learned absolute positions, LayerNorm, biases on, tied embeddings)."""
    v, _ = megatron_args(path)
    words, _ = shell_words(_read(path), str(path))
    where = show(path)
    out: dict[str, Any] = {}
    for i, tok in enumerate(words):
        key, eq, inline = tok.partition("=")
        raw = inline if eq else (words[i + 1] if i + 1 < len(words) else "")
        if key in MODEL_INT:
            out[MODEL_INT[key]] = _int(f"{where}: {key}", raw)
        elif key in MODEL_STR:
            out[MODEL_STR[key]] = raw
        elif key in MODEL_FLAGS:
            out[MODEL_FLAGS[key]] = True
    if not all(k in v for k in ("n_layers", "hidden", "n_heads")):
        raise BadInputError(f"{where}: the script names no model sizes (--num-layers, --hidden-size, "
                            "--num-attention-heads; a Megatron-Bridge launch takes them from its recipe); give --model "
                            "(a preset, config.json or model YAML)")
    if "vocab_size" not in out:
        raise BadInputError(f"{where}: the script names no --vocab-size (its tokenizer sets it), so its model cannot "
                            "be built from it; give --model (a preset, config.json or model YAML)")
    fields: dict[str, Any] = {
        "num_layers": v.get("n_layers"), "hidden_size": v.get("hidden"), "num_attention_heads": v.get("n_heads"),
        "num_query_groups": v.get("kv_heads") if v.get("gqa") else None, "ffn_hidden_size": v.get("ffn_hidden"),
        "vocab_size": out["vocab_size"], "kv_channels": out.get("kv_channels"),
        "seq_length": out.get("seq_length", v.get("seq")),
        "normalization": out.get("normalization", "LayerNorm"),
        "layernorm_zero_centered_gamma": bool(v.get("layernorm_1p")),
        "position_embedding_type": out.get("position_embedding_type", "learned_absolute"),
        "share_embeddings_and_output_weights": not out.get("untie"), "add_bias_linear": not out.get("no_bias"),
        "add_qkv_bias": bool(out.get("add_qkv_bias")), "qk_layernorm": bool(out.get("qk_layernorm")),
        "gated_linear_unit": bool(v.get("swiglu") or v.get("quick_geglu")),
        "activation_func": "quick_gelu" if v.get("quick_geglu") else "squared_relu" if v.get("squared_relu")
        else "silu" if v.get("swiglu") else "gelu",
        "softmax_type": v.get("softmax_type", "vanilla"), "rotary_base": _float(v.get("rotary_base", "10000")),
        "rotary_percent": _float(v.get("rotary_percent", "1.0")),
        "num_moe_experts": v.get("n_experts"), "moe_router_score_function": v.get("router_score", "softmax"),
        "moe_router_enable_expert_bias": bool(v.get("expert_bias")), "moe_latent_size": v.get("moe_latent"),
        "mtp_num_layers": int(_float(v["mtp_layers"])) if "mtp_layers" in v else None,
        "is_hybrid_model": bool(v.get("hybrid")), "hybrid_override_pattern": v.get("hybrid_pattern"),
        "mamba_num_heads": v.get("mamba_heads"), "mamba_head_dim": v.get("mamba_head_dim"),
        "mamba_state_dim": v.get("mamba_state_dim"), "mamba_num_groups": v.get("mamba_groups"),
    }
    if out.get("multi_latent_attention") and "q_lora_rank" not in out:  # arguments.py --q-lora-rank: None
        fields["q_lora_rank"] = 0  # no q compression
    for key in ("moe_router_topk", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size",
                "moe_router_num_groups", "moe_router_group_topk", "multi_latent_attention", "q_lora_rank",
                "kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim", "moe_router_pre_softmax"):
        if key in out:
            fields[key] = out[key]
    for key in ("moe_router_topk_scaling_factor", "activation_func_clamp_value"):
        if key in out:
            fields[key] = _float(out[key])
    if "moe_layer_freq" in out:
        fields["moe_layer_freq"] = _moe_layer_freq(out["moe_layer_freq"], where)
    if v.get("rope_scaling"):  # --use-rope-scaling: Llama 3.1's rule, factor --rope-scaling-factor (default 8)
        fields |= {"old_context_len": 8192, "scale_factor": _float(out.get("scale_factor", "8"))}
    window = _megatron_window(v)
    if window is not None:
        fields["window_size"] = [window - 1, 0]
        skip = str(v.get("window_skip", "")).strip()
        if skip:
            if not skip.isdigit():
                raise UnsupportedModelError(f"{where}: --window-attn-skip-freq {skip}: only an integer is read to "
                                            "build the model; give --model")
            fields["window_attn_skip_freq"] = int(skip)
    return {k: val for k, val in fields.items() if val is not None}


def _megatron_mismatches(v: Mapping[str, Any], model: ModelSpec) -> list[str]:
    expected = {"n_layers": ("--num-layers", model.n_layers), "hidden": ("--hidden-size", model.hidden),
                "n_heads": ("--num-attention-heads", model.n_heads), "ffn_hidden": ("--ffn-hidden-size", model.ffn_hidden),
                "n_experts": ("--num-experts", model.n_experts)}
    if v.get("gqa") and not model.is_mla:
        expected["kv_heads"] = ("--num-query-groups", model.kv_heads)
    # a hybrid Mamba stack (pretrain_mamba.py): its block pattern and Mamba-2 sizes
    expected.update({"hybrid_pattern": ("--hybrid-override-pattern", model.hybrid_pattern or "none"),
                     "mamba_heads": ("--mamba-num-heads", model.mamba_heads),
                     "mamba_head_dim": ("--mamba-head-dim", model.mamba_head_dim),
                     "mamba_state_dim": ("--mamba-state-dim", model.mamba_state_dim),
                     "mamba_groups": ("--mamba-num-groups", model.mamba_groups),
                     "moe_latent": ("--moe-latent-size", model.moe_latent)})
    found = [f"{flag} {v[key]} but {model.name} has {want}; check --model"
             for key, (flag, want) in expected.items() if key in v and v[key] != want]
    if model.is_hybrid and "hybrid_pattern" not in v:
        found.append(f"no --hybrid-override-pattern but {model.name} is a hybrid Mamba stack "
                     f"({model.hybrid_pattern}); check --model")
    return found


def _megatron_model_notes(v: Mapping[str, Any], model: ModelSpec) -> list[str]:
    """Settings beyond the shapes where the script trains otherwise than the model's config (exports carry them):
    notes, not failures, since pre-training may choose them (Megatron's own Llama 3 example sets its own base)."""
    out: list[str] = []
    if "rotary_base" in v and model.position == "rope" and _float(v["rotary_base"]) != model.rope_theta:
        out.append(f"--rotary-base {v['rotary_base']} but {model.name} has rope_theta {model.rope_theta:g}; "
                   "positions would be encoded with another base")
    if model.is_moe and v.get("router_score", model.router_score) != model.router_score:
        out.append(f"--moe-router-score-function {v['router_score']} but {model.name} routes with "
                   f"{model.router_score}")
    if model.is_moe and bool(v.get("expert_bias")) != model.router_expert_bias and model.router_expert_bias:
        out.append(f"no --moe-router-enable-expert-bias but {model.name} balances experts with a routing bias")
    if model.rope_scaling == "llama3" and not v.get("rope_scaling"):
        out.append(f"no --use-rope-scaling but {model.name} scales RoPE (llama3, factor "
                   f"{model.rope_scaling_factor:g})")
    if "mtp_layers" in v and _float(v["mtp_layers"]) != model.mtp_layers:
        out.append(f"--mtp-num-layers {v['mtp_layers']} but {model.name} has {model.mtp_layers} MTP layers")
    if model.position == "rope" and _float(v.get("rotary_percent", "1")) != model.rotary_fraction:
        out.append(f"--rotary-percent {v.get('rotary_percent', '1.0 (the default)')} but {model.name} rotates "
                   f"{model.rotary_fraction:g} of each head")
    runs = megatron_activation(v)
    # What the model's own export writes (a GeGLU exports as SwiGLU, ReLU as GELU: export notes say so)
    exported = megatron_activation({MEGATRON_FLAGS[a]: True for a in activation_args(model) if a in MEGATRON_FLAGS})
    if runs != exported:
        out.append(f"the script trains a {runs} MLP but {model.name} has a "
                   f"{'gated ' if model.gated_ffn else ''}{model.activation_fn} one")
    window = _megatron_window(v)
    want = model.sliding_window if model.local_attention == "sliding" else None
    if window != want:
        has = f"a {want}-token window" if want else "no window"
        out.append(f"the script attends {f'over {window}-token windows' if window else 'over the whole sequence'} "
                   f"but {model.name} has {has} on its local layers")
    elif window is not None:
        windowed = _megatron_windowed_layers(v.get("window_skip"), model.n_layers)
        if windowed is None:
            out.append(f"--window-attn-skip-freq {v['window_skip']}: not read (an integer or a list of 0 / 1, "
                       "optionally [..]*n); the windowed layers are not checked")
        elif windowed != [model.is_sliding_layer(i) for i in range(model.n_layers)]:
            out.append(f"the script windows layers {[i for i, w in enumerate(windowed) if w][:8]}... but "
                       f"{model.name} windows {[i for i in range(model.n_layers) if model.is_sliding_layer(i)][:8]}...")
    if bool(v.get("layernorm_1p")) != model.norm_zero_centered:
        out.append(f"{'--apply-layernorm-1p' if v.get('layernorm_1p') else 'no --apply-layernorm-1p'} but {model.name}'s "
                   f"norms scale by {'1 + weight' if model.norm_zero_centered else 'their weight'}")
    if model.attn_sinks and v.get("softmax_type") != "learnable":
        out.append(f"no --softmax-type learnable but {model.name} has a learned sink logit per head")
    return out


def _megatron_windowed_layers(raw: str | None, n_layers: int) -> list[bool] | None:
    """Which layers --window-attn-skip-freq windows (Megatron-Core is_layer_window_attention, 1-based layer_number):
    none given, every layer; an integer N, all but every N-th; a 0 / 1 list (or [..]*n), the listed ones. None when
    the value is another expression."""
    if raw is None:
        return [True] * n_layers
    text = str(raw).replace(" ", "")
    if text.isdigit() and int(text) > 0:
        return [(i + 1) % int(text) != 0 for i in range(n_layers)]
    m = re.fullmatch(r"\(?\[([01,]*)\]\)?(?:\*(\d+))?", text)
    if not m:
        return None
    pattern = [c == "1" for c in m.group(1).split(",") if c] * int(m.group(2) or 1)
    return pattern if len(pattern) == n_layers else None


def megatron_activation(v: Mapping[str, Any]) -> str:
    """The MLP pretrain_gpt.py builds from the activation flags (arguments.py core_transformer_config_from_args):
    --swiglu gated SiLU, --quick-geglu gated quick GELU, --squared-relu, else plain GELU."""
    return ("gated silu" if v.get("swiglu") else "gated quick_gelu" if v.get("quick_geglu")
            else "relu2" if v.get("squared_relu") else "gelu")


def _megatron_window(v: Mapping[str, Any]) -> int | None:
    """Keys a windowed layer attends to: --window-size left,right (left + 1; Transformer Engine's window)."""
    raw = v.get("window_size")
    if raw is None:
        return None
    try:
        left = int(str(raw).strip("()").split(",")[0])
    except ValueError:
        return None
    return left + 1 if left >= 0 else None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return float("nan")


def megatron_config(path: Path, model: ModelSpec, world: int) -> ReadConfig:
    """A Megatron-LM launch script or arguments file as the layout `pretrain_gpt.py` runs."""
    v, env = megatron_args(path)
    if not v:
        overrides = override_doc(shell_words(_read(path), str(path))[0], show(path))
        if overrides:  # a Megatron-Bridge launch: recipe KEY=VALUE overrides, no Megatron-LM flags
            return bridge_read(overrides, path, model, world)
    if not v:  # an empty file, or one that is not a Megatron-LM launch (check names configs by suffix only)
        raise BadInputError(f"{show(path)}: no Megatron-LM argument in it (e.g. --tensor-model-parallel-size, "
                            "--micro-batch-size); give a Megatron-LM launch script, or name a torchtitan config .toml, "
                            "a plan .yaml, a DeepSpeed config .json")
    return megatron_read(v, env, path, model, world)


def bridge_config(path: Path, model: ModelSpec, world: int) -> ReadConfig:
    """A Megatron-Bridge ConfigContainer (its printed YAML, or an override file of the same shape) as the layout
    Megatron-Core runs: its fields read as the Megatron-LM arguments they stand for (frameworks/bridge.py), plus
    activation offloading and CUDA graphs, which pretrain_gpt.py has no flag for."""
    return bridge_read(load_mapping(path), path, model, world)


def bridge_read(doc: Mapping[str, Any], path: Path, model: ModelSpec, world: int) -> ReadConfig:
    """A ConfigContainer (printed, an override file, or a launch line's overrides) as the layout it runs."""
    v, notes, extra = bridge_values(doc, show(path))
    # TransformerConfig.__post_init__ on the container's own values (recompute_num_layers defaults to None there):
    # full recompute needs a layer count, selective none
    if v.get("recompute") == "full" and "recompute_num" not in v:
        raise BadInputError(f"{show(path)}: model.recompute_granularity full needs model.recompute_num_layers "
                            "(Megatron-Core refuses it without: 'recompute_num_layers must be between 1 and "
                            "num_layers_per_pipeline_rank'); e.g. recompute_method uniform, recompute_num_layers 1")
    if v.get("recompute") == "selective" and "recompute_num" in v:
        raise BadInputError(f"{show(path)}: model.recompute_num_layers {v['recompute_num']} with "
                            "recompute_granularity selective: Megatron-Core refuses it ('recompute_num_layers must be "
                            "None'); set it null")
    # overrides leave the architecture to their recipe: no notes on fields they do not state
    read = megatron_read(v, {}, path, model, world, model_notes=extra["whole"], layout_with_vpp=True)
    layout = read.layout
    if extra["offload_layers"] and layout.pp > 1:
        notes.append(f"cpu_offloading_num_layers {extra['offload_layers']} with pipeline parallelism: Megatron-Core "
                     "offloads only at pp 1; not priced")
    elif extra["offload_layers"]:
        layout = replace(layout, offload_layers=extra["offload_layers"])
    layout = replace(layout, cuda_graphs=extra["cuda_graphs"])
    # MixedPrecisionConfig.setup hands its fp8_recipe to the optimizer config whatever the compute precision (bf16,
    # NVFP4): Megatron-Core keeps the 2-byte remainders only when it is None or delayed (OptimizerConfig
    # use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    recipe = extra["optimizer_fp8_recipe"]
    if (layout.precision_aware and keeps_master_remainders(layout, read.fp8_recipe or "")
            and recipe not in ("delayed", None)):
        if layout.bf16_moments:  # the Layout cannot say "precision-aware optimizer, full master": priced light
            notes.append(f"bf16 moments with mixed_precision.fp8_recipe {recipe}: Megatron-Core keeps a full fp32 "
                         "master beside them; priced with 2-byte remainders (2 B per parameter / dp light)")
        else:
            if v.get("precision_aware"):
                notes.append(f"the precision-aware optimizer with mixed_precision.fp8_recipe {recipe}: Megatron-Core "
                             "keeps a full fp32 master (its 2-byte remainders need fp8_recipe delayed); priced so")
            layout = replace(layout, precision_aware=False)
    return replace(read, layout=layout, kind="megatron-bridge", notes=(*notes, *read.notes))


def megatron_read(v: Mapping[str, Any], env: Mapping[str, str], path: Path, model: ModelSpec,
                  world: int, *, model_notes: bool = True, layout_with_vpp: bool = False) -> ReadConfig:
    """The layout Megatron-Core runs from the reader's values (MEGATRON_INT / STR / FLAGS keys), whether they came
    from Megatron-LM flags or from a Megatron-Bridge ConfigContainer (messages name the Megatron-LM flag, which
    Megatron-Bridge's docs/megatron-lm-to-megatron-bridge.md maps one to one to its field)."""
    for flag, key in MEGATRON_INT.items():
        if key in ("tp", "pp", "cp", "layers_per_vstage", "vstages", "mbs", "gbs", "seq", "ep", "etp",
                   "dp_replicate") and key in v and v[key] < 1:
            raise BadInputError(f"{path}: {flag} {v[key]}: must be >= 1")
    tp, pp, cp = v.get("tp", 1), v.get("pp", 1), v.get("cp", 1)
    dp = max(1, world // (tp * pp * cp))  # Megatron derives dp itself
    first, last = v.get("first_stage_layers", 0), v.get("last_stage_layers", 0)
    vpp = v.get("vstages", 1)
    if v.get("layers_per_vstage"):
        # Megatron-LM validate_args: "please use --num-virtual-stages-per-pipeline-rank to specify virtual pipeline
        # parallel degree when enable uneven pipeline parallelism"; with even stages "number of layers per pipeline
        # stage must be divisible number of layers per virtual pipeline stage"
        if first or last:
            raise BadInputError(f"{path}: --num-layers-per-virtual-pipeline-stage with --decoder-first/last-pipeline-"
                                "num-layers: Megatron-LM refuses it at start-up; give --num-virtual-stages-per-"
                                "pipeline-rank instead")
        per_stage, per_chunk = model.n_layers // pp, v["layers_per_vstage"]
        if not (first or last) and (model.n_layers % pp or per_stage % per_chunk):
            raise BadInputError(f"{path}: --num-layers-per-virtual-pipeline-stage {per_chunk} does not divide the "
                                f"{model.n_layers / pp:g} layers per pipeline stage ({model.n_layers} over pp {pp}); "
                                "Megatron-LM refuses it at start-up: give a divisor")
        vpp = max(1, per_stage // per_chunk)
    if vpp > 1 and "pp_layout" not in v and any(n % vpp for n in (first, last)):
        # Megatron-Core TransformerConfig: "number of layers at first stage: N must be divisible by virtual pipeline
        # parallel degree"
        raise BadInputError(f"{path}: --decoder-first/last-pipeline-num-layers {first}/{last} with {vpp} virtual "
                            f"stages per rank: Megatron-Core wants each a multiple of {vpp}; give such ends or a "
                            "--pipeline-model-parallel-layout")
    notes: list[str] = []
    ranks: tuple[int, ...] = ()
    pp_layers: tuple[int, ...] = ()
    if "pp_layout" in v:
        # Megatron-LM's validate_args allows one of the layout and the virtual-stage flags; Megatron-Core (a
        # Megatron-Bridge container, `layout_with_vpp`) takes virtual stages that agree with the layout
        refused = ("first_stage_layers", "last_stage_layers", "layers_per_vstage") + (() if layout_with_vpp
                                                                                        else ("vstages",))
        if any(k in v for k in refused):
            raise BadInputError(f"{path}: --pipeline-model-parallel-layout cannot be combined with --decoder-first/"
                                "last-pipeline-num-layers or virtual-stage flags (Megatron-LM validate_args); "
                                "keep one of them")
        counts = megatron_layout_chunks(v["pp_layout"], model, str(path))
        # virtual stages given beside the layout must agree with its chunks (Megatron-Core TransformerConfig asserts
        # it; a printed Megatron-Bridge container carries both)
        if "vstages" in v and v["vstages"] * pp != len(counts):
            raise BadInputError(f"{path}: {v['vstages']} virtual stages per rank but the pipeline layout has "
                                f"{len(counts)} chunks over pp {pp}; make them agree or drop one")
        vpp, first, last, pp_layers, more, ranks = _layout_from_chunks(model, counts, pp, "interleaved1f1b",
                                                                       str(path))
        notes += more
    if "megatron_fsdp" in v:
        sharding = v.get("sharding", "optim_grads_params")
        if sharding not in MEGATRON_FSDP_STRATEGIES:
            raise BadInputError(f"{path}: --data-parallel-sharding-strategy {sharding!r}; use one of "
                                f"{', '.join(MEGATRON_FSDP_STRATEGIES)}")
        zero = MEGATRON_FSDP_STRATEGIES[sharding]
    elif v.get("torch_fsdp2"):
        zero = 3
    else:
        zero = 1 if v.get("distopt") else 0
    recompute = v.get("recompute", "selective" if v.get("recompute_activations") else "none")
    if recompute not in ("none", "selective", "full"):
        raise BadInputError(f"{path}: --recompute-granularity {recompute!r}; use full or selective")
    # Megatron-Core TransformerConfig.__post_init__ (and Megatron-LM's checkpointed forward before it) refuses full
    # recompute without a method
    method = v.get("recompute_method")
    if recompute == "full" and method not in ("block", "uniform"):
        raise BadInputError(f"{path}: --recompute-granularity full needs --recompute-method block or uniform "
                            "(Megatron-Core refuses it without: 'recompute_method must be \"block\" or \"uniform\"'); "
                            "e.g. --recompute-method uniform --recompute-num-layers 1")
    recompute_layers = 0
    if recompute == "full" and method == "block":
        # block N: the first N layers of each model chunk recompute
        recompute_layers = v.get("recompute_num", 1) * vpp
        if recompute_layers >= model.n_layers // pp:
            recompute_layers = 0
    # --fp4-format e2m1 (Megatron-Core's fp4 and fp8 exclude each other): NVFP4 GEMMs, priced as fp8 with that recipe
    precision = "fp8" if v.get("fp8") or v.get("fp4") else "bf16" if v.get("bf16") else "fp16" if v.get("fp16") \
        else "fp32"
    bf16_moments, more = megatron_moments(v, str(path))
    notes += more
    mbs = v.get("mbs", 1)
    if "seq" not in v:
        notes.append("no --seq-length: estimated at 4096 tokens")
    cp_kind, cp_a2a = megatron_cp_kind(v, str(path), cp, notes) if cp > 1 else ("ring", 1)
    layout = Layout(dp=dp, dp_replicate=v.get("dp_replicate", 1) if zero >= 1 else 1, tp=tp, pp=pp, cp=cp, vpp=vpp,
                    ep=v.get("ep", 1) if model.is_moe else 1,
                    # Megatron-LM shards the experts by --expert-tensor-parallel-size at any ep (default: tp)
                    etp=v.get("etp", tp) if model.is_moe else 1,
                    sp=bool(v.get("sp")) and tp > 1, zero=zero, mbs=mbs, gbs=v.get("gbs", mbs * dp),
                    seq=v.get("seq", 4096), recompute=recompute, recompute_layers=recompute_layers,
                    schedule="interleaved-1f1b" if vpp > 1 else "1f1b", precision=precision,
                    flash_attn=v.get("attention", "auto") != "unfused",
                    cp_kind=cp_kind, cp_a2a=cp_a2a,
                    optimizer="sgd" if v.get("optimizer") == "sgd" else "adam-master",
                    first_stage_layers=first if pp > 1 else 0, last_stage_layers=last if pp > 1 else 0,
                    pp_layers=pp_layers if pp > 1 else (),
                    recompute_modules="+".join(v.get("recompute_modules", [])) if recompute == "selective" else "",
                    fp32_grads=not v.get("grad_bf16"),
                    # kept as the script gives it: without fp8 or the distributed optimizer / FSDP Megatron-LM
                    # refuses it at launch, and so does the FP8_PARAMS rule
                    # --fp4-param-gather keeps NVFP4 parameters only (Megatron-LM dest fp4_param): the FP8_PARAMS
                    # rule then says NVFP4 is priced with bf16 ones
                    fp8_params=bool(v.get("fp8_param_gather") or v.get("fp4_param_gather")),
                    bf16_moments=bf16_moments, **megatron_bf16_layers(v, precision, str(path)))
    # without --use-precision-aware-optimizer a full fp32 master shard (read only where it matters: canonical).
    # Megatron-LM copies --fp8-recipe (default delayed) into OptimizerConfig.fp8_recipe whatever the precision, and
    # the remainders need it delayed: a bf16 or NVFP4 script that passes another keeps a full fp32 master
    recipe = megatron_fp8_recipe(v, str(path)) if precision == "fp8" else ""
    opt_recipe = str(v.get("fp8_recipe", "delayed"))
    aware = bool(v.get("precision_aware")) or not keeps_master_remainders(layout, recipe)
    if (aware and opt_recipe != "delayed" and (precision != "fp8" or v.get("fp4"))
            and keeps_master_remainders(layout, recipe)):
        run = "NVFP4" if v.get("fp4") else precision
        if bf16_moments:  # the Layout cannot say "precision-aware optimizer, full master": priced light
            notes.append(f"bf16 moments with --fp8-recipe {opt_recipe} in a {run} run: Megatron-Core keeps a "
                         "full fp32 master beside them (its 2-byte remainders need the recipe delayed); priced with "
                         "2-byte remainders (2 B per parameter / dp light)")
        else:
            notes.append(f"--use-precision-aware-optimizer with --fp8-recipe {opt_recipe} in a {run} run: "
                         "Megatron-Core keeps a full fp32 master (its 2-byte remainders need the recipe delayed); "
                         "priced so")
            aware = False
    layout = replace(layout, precision_aware=aware)
    dispatcher = megatron_dispatcher(v, str(path))
    capacity, more = megatron_capacity_factor(v, str(path))
    notes += more
    layout = replace(layout, moe_dispatcher=dispatcher if model.is_moe else "alltoall",
                     moe_a2a_overlap=bool(v.get("a2a_overlap")) and model.is_moe,
                     moe_capacity_factor=capacity if model.is_moe else None)
    if model_notes:
        notes += _megatron_model_notes(v, model)
    if layout.moe_a2a_overlap:
        notes += a2a_overlap_notes(v, env)
    if precision == "fp8" and "fp8_recipe" not in v and not v.get("fp4"):
        notes.append("no --fp8-recipe: priced at Megatron-LM's default, delayed scaling")
    if precision != "fp8" and v.get("first_last_bf16"):
        notes.append("--first-last-layers-bf16 without fp8 / fp4 training: no effect (every layer is bf16)")
    return ReadConfig(layout=layout, kind="megatron", stack="megatron-core", notes=tuple(notes),
                      mismatches=tuple(_megatron_mismatches(v, model)), env=env, rank_layers=ranks,
                      fp8_recipe=megatron_fp8_recipe(v, str(path)) if precision == "fp8" else None)


def megatron_bf16_layers(v: Mapping[str, Any], precision: str, path: str) -> dict[str, int]:
    """Layout.bf16_first_layers / bf16_last_layers from --first-last-layers-bf16 with --num-layers-at-start-in-bf16
    / --num-layers-at-end-in-bf16 (Megatron-LM defaults 1 and 1); none without the flag or without fp8 / fp4."""
    if not v.get("first_last_bf16") or precision != "fp8":
        return {}
    counts = {"bf16_first_layers": v.get("bf16_start", 1), "bf16_last_layers": v.get("bf16_end", 1)}
    for name, count in counts.items():
        if count < 0:
            raise BadInputError(f"{path}: --num-layers-at-{'start' if 'first' in name else 'end'}-in-bf16 {count}; "
                                "give a count >= 0")
    return counts


def a2a_overlap_notes(v: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """What a script with --overlap-moe-expert-parallel-comm leaves out of the overlap the plan priced
    (frameworks/megatron.py exports both): delayed weight gradients, and more than one CUDA connection."""
    out = []
    if not v.get("delay_wgrad"):
        out.append("--overlap-moe-expert-parallel-comm without --delay-wgrad-compute: the experts' weight gradients "
                   "run before the backward all-to-all is issued, so less of it hides than planned")
    if env.get("CUDA_DEVICE_MAX_CONNECTIONS") == "1":
        out.append("CUDA_DEVICE_MAX_CONNECTIONS=1 runs the all-to-all overlap's two streams on one hardware queue "
                   "(Megatron-LM PR #6311: about half the overlap's gain); the ModelZoo sets 32 with it")
    return out


MEGATRON_CP_COMM = {comm: kind for kind, comm in CP_COMM_TYPE.items()}
"""Megatron-LM --cp-comm-type choices (arguments.py) and the Layout.cp_kind each runs as."""


def megatron_cp_kind(v: Mapping[str, Any], where: str, cp: int, notes: list[str]) -> tuple[str, int]:
    """(Layout.cp_kind, Layout.cp_a2a) of --cp-comm-type (default p2p) and, for the hierarchical a2a+p2p, its
    --hierarchical-context-parallel-sizes A cp/A (the all-to-all group first; Megatron-Core asserts their product is
    the context parallel size)."""
    comm = str(v.get("cp_comm", "p2p"))
    if comm not in MEGATRON_CP_COMM:
        raise BadInputError(f"{where}: --cp-comm-type {comm!r}; use one of {', '.join(MEGATRON_CP_COMM)}")
    if comm != "a2a+p2p":
        return MEGATRON_CP_COMM[comm], 1
    sizes = v.get("hierarchical_cp_sizes", [])
    try:
        a2a, ring = (int(x) for x in sizes)
    except ValueError:
        raise BadInputError(f"{where}: --cp-comm-type a2a+p2p needs --hierarchical-context-parallel-sizes A "
                            f"{{cp/A}} (two integers whose product is cp({cp})), got {' '.join(sizes) or 'none'}") from None
    if a2a * ring != cp:
        raise BadInputError(f"{where}: --hierarchical-context-parallel-sizes {a2a} {ring}: product {a2a * ring} != "
                            f"--context-parallel-size {cp}")
    if 1 in (a2a, ring):  # Transformer Engine attn_forward_func_with_cp runs a one-rank level as the other alone
        kind = "ring" if a2a == 1 else "a2a"
        notes.append(f"--hierarchical-context-parallel-sizes {a2a} {ring}: one level of one rank, which Transformer "
                     f"Engine runs as {'p2p' if a2a == 1 else 'a2a'} alone: priced as cp_kind={kind}")
        return kind, 1
    return "a2a+p2p", a2a


def megatron_fp8_recipe(v: Mapping[str, Any], where: str) -> str:
    """The fp8 recipe of a Megatron-LM script: --fp8-recipe, or Megatron-LM's default (delayed) without it; one the
    megatron-core stack prices (stacks.yaml fp8_recipes; Megatron-LM's arguments.py also takes custom)."""
    if v.get("fp4"):  # --fp4-format e2m1 with --fp4-recipe (Megatron-LM's default and only choice: nvfp4)
        if v.get("fp8"):
            raise BadInputError(f"{where}: --fp4-format and --fp8-format together; Megatron-Core runs one of them "
                                "(TransformerConfig: fp4 and fp8 exclude each other)")
        fp4 = (str(v["fp4"]), str(v.get("fp4_recipe", "nvfp4")))
        if fp4[0].startswith("-") or fp4[1].startswith("-"):
            raise BadInputError(f"{where}: --fp4-format and --fp4-recipe need a value; use --fp4-format e2m1 "
                                "--fp4-recipe nvfp4")
        if fp4 != ("e2m1", "nvfp4"):
            raise BadInputError(f"{where}: --fp4-format {fp4[0]} --fp4-recipe {fp4[1]}; use e2m1 with nvfp4")
        return "nvfp4"
    recipe = v.get("fp8_recipe", "delayed")
    priced = get_stack("megatron-core").fp8_recipes
    if recipe not in priced:
        raise BadInputError(f"{where}: --fp8-recipe {recipe!r}; use one of {', '.join(priced)}")
    return recipe


def megatron_capacity_factor(v: Mapping[str, Any], where: str) -> tuple[float | None, list[str]]:
    """Layout.moe_capacity_factor of --moe-expert-capacity-factor C with --moe-pad-expert-input-to-capacity (the
    drop-and-pad path); without padding Megatron-Core drops over capacity but keeps the dropless path's uneven
    splits and host sync, which the balanced routing priced here makes dropless: read as dropless, with a note."""
    raw = v.get("capacity_factor")
    if raw is None:
        if v.get("pad_to_capacity"):
            raise BadInputError(f"{where}: --moe-pad-expert-input-to-capacity needs --moe-expert-capacity-factor "
                                "(Megatron-LM validate_args); add it or drop the padding flag")
        return None, []
    value = _float(raw)
    if not value > 0 or value == float("inf"):
        raise BadInputError(f"{where}: --moe-expert-capacity-factor {raw}: must be a number > 0 (e.g. 1.0)")
    if not v.get("pad_to_capacity"):
        return None, [f"--moe-expert-capacity-factor {raw} without --moe-pad-expert-input-to-capacity: token "
                      "dropping without padding keeps the dropless path's host sync and uneven splits (Layout has "
                      "no unpadded token dropping): estimated dropless"]
    return value, []


OPTIMIZER_STATE_DTYPES = ("fp32", "fp16", "bf16", "fp8")
"""Megatron-LM --exp-avg-dtype / --exp-avg-sq-dtype choices (arguments.py)."""


def megatron_moments(v: Mapping[str, Any], where: str) -> tuple[bool, list[str]]:
    """Layout.bf16_moments from Megatron-LM's precision-aware optimizer flags, and notes on what is not priced: only
    bf16 m and v together are modelled; the dtypes do nothing without --use-precision-aware-optimizer (Megatron-Core
    OptimizerConfig reads them only then); lower-precision main gradients or master weights are not priced."""
    notes = []
    dtypes = {k: str(v.get(k, "fp32")) for k in ("exp_avg_dtype", "exp_avg_sq_dtype", "main_grads_dtype",
                                                  "main_params_dtype")}
    for key, dtype in dtypes.items():
        if dtype not in OPTIMIZER_STATE_DTYPES:
            raise BadInputError(f"{where}: --{key.replace('_', '-')} {dtype!r}; use one of "
                                f"{', '.join(OPTIMIZER_STATE_DTYPES)}")
    moments = (dtypes["exp_avg_dtype"], dtypes["exp_avg_sq_dtype"])
    if not v.get("precision_aware"):
        if moments != ("fp32", "fp32"):
            notes.append("--exp-avg-dtype / --exp-avg-sq-dtype without --use-precision-aware-optimizer: Megatron-Core "
                         "keeps the moments in fp32; priced so")
        return False, notes
    if moments not in (("bf16", "bf16"), ("fp32", "fp32")):
        notes.append(f"Adam moments {moments[0]} / {moments[1]}: priced in fp32 (only bf16 for both is modelled)")
    if (dtypes["main_grads_dtype"], dtypes["main_params_dtype"]) != ("fp32", "fp32"):
        notes.append(f"main gradients {dtypes['main_grads_dtype']}, master weights {dtypes['main_params_dtype']}: "
                     "priced in fp32 (not modelled)")
    return moments == ("bf16", "bf16"), notes


def megatron_dispatcher(v: Mapping[str, Any], where: str) -> str:
    """Layout.moe_dispatcher of --moe-token-dispatcher-type alltoall | flex (+ --moe-flex-dispatcher-backend
    deepep | hybridep, or the older --moe-enable-deepep) | allgather."""
    kind = v.get("dispatcher", "allgather")
    backend = v.get("flex_backend", "deepep" if v.get("enable_deepep") else None)
    if kind == "flex":
        if backend not in ("deepep", "hybridep"):
            raise BadInputError(f"{where}: --moe-token-dispatcher-type flex needs --moe-flex-dispatcher-backend "
                                f"deepep or hybridep, got {backend!r}")
        return backend
    if kind not in ("alltoall", "allgather"):
        raise BadInputError(f"{where}: --moe-token-dispatcher-type {kind!r}; use alltoall, flex or allgather")
    if v.get("enable_deepep"):
        return "deepep"
    return "alltoall"  # allgather (Megatron's default) is priced as the alltoall dispatcher, as before


_LAYOUT_GROUP = re.compile(r"\(([^()]*)\)\*(\d+)")
_LAYOUT_REPEAT = re.compile(r"(.)\*(\d+)")
MAX_LAYOUT_CHARS = 1_000_000
"""Most characters an unrolled --pipeline-model-parallel-layout may have (a 100k-layer model is far beyond any)."""


def megatron_layout_chunks(text: str, model: ModelSpec, where: str) -> list[int]:
    """Transformer layers of each chunk of a Megatron-Core --pipeline-model-parallel-layout, in chunk order.

    Grammar (megatron/core/transformer/pipeline_parallel_layer_layout.py `parse_str_to_list`): E embedding,
    t transformer layer, m MTP layer, L loss; `|` ends a chunk; `x*N` and `(...)*N` repeat; commas are cosmetic.
    Chunk c runs on pipeline rank c % pp.
    """
    flat = text.replace(",", "").replace(" ", "")
    for pattern in (_LAYOUT_GROUP, _LAYOUT_REPEAT):
        def unroll(m: re.Match[str]) -> str:
            if len(m.group(1)) * int(m.group(2)) > MAX_LAYOUT_CHARS:
                raise BadInputError(f"{where}: --pipeline-model-parallel-layout repeats too much ({m.group(0)})")
            return m.group(1) * int(m.group(2))
        flat = pattern.sub(unroll, flat)
    bad = sorted(set(flat) - set("EtmL|"))
    if bad:
        raise BadInputError(f"{where}: --pipeline-model-parallel-layout {text!r}: unknown layer character(s) "
                            f"{''.join(bad)}; use E, t, m, L, | and x*N")
    chunks = flat.split("|")
    if flat.count("E") != 1 or flat.count("L") != 1 or not chunks[0].startswith("E") or not chunks[-1].endswith("L"):
        raise BadInputError(f"{where}: --pipeline-model-parallel-layout {text!r}: the embedding E must open the "
                            "first chunk and the loss L close the last, once each (Megatron-Core)")
    counts = [c.count("t") for c in chunks]
    if sum(counts) != model.n_layers:
        raise BadInputError(f"{where}: --pipeline-model-parallel-layout places {sum(counts)} transformer layers, "
                            f"{model.name} has {model.n_layers}; give each layer one t")
    return counts


# ---- DeepSpeed ----------------------------------------------------------------------------------------------------
PLAN_KEY = "clusterplan"
"""ds_config section with what DeepSpeed's JSON does not carry but train.py needs (DeepSpeed ignores unknown keys)."""


def deepspeed_config(path: Path, model: ModelSpec, world: int) -> ReadConfig:
    """A DeepSpeed ds_config: dp = world / (pp * sequence_parallel_size * autotp_size) (DeepSpeed's
    _batch_assertion; AutoTP's tensor_parallel.autotp_size)."""
    where = str(path)
    doc = _json(path)
    if not isinstance(doc, dict):
        raise BadInputError(f"{where}: a ds_config is a JSON object")
    _sections(doc, (*DEEPSPEED_SECTIONS, PLAN_KEY), where)
    extra = doc.get(PLAN_KEY) or {}
    pp = _int(f"{where}: pipeline.stages", (doc.get("pipeline") or {}).get("stages", extra.get("pipeline_parallel_size", 1)))
    cp = _int(f"{where}: sequence_parallel_size", doc.get("sequence_parallel_size", 1))
    tp = _int(f"{where}: tensor_parallel.autotp_size", (doc.get("tensor_parallel") or {}).get("autotp_size", 1))
    if pp < 1 or cp < 1 or tp < 1:
        raise BadInputError(f"{where}: pipeline stages, sequence_parallel_size and tensor_parallel.autotp_size must "
                            "be >= 1")
    dp = max(1, world // (pp * cp * tp))
    mbs = _int(f"{where}: train_micro_batch_size_per_gpu", doc.get("train_micro_batch_size_per_gpu", 1))
    gas = _int(f"{where}: gradient_accumulation_steps", doc.get("gradient_accumulation_steps", 1))
    gbs = _int(f"{where}: train_batch_size", doc.get("train_batch_size", mbs * gas * dp))
    zero_table = (doc.get("zero_optimization") or {})
    zero = _int(f"{where}: zero_optimization.stage", zero_table.get("stage", 0))
    mics = _int(f"{where}: mics_shard_size", zero_table.get("mics_shard_size", -1))
    rep = dp // mics if zero == 3 and mics > 0 and dp % mics == 0 else 1
    notes = []
    if "seq_len" not in extra:
        notes.append("a ds_config has no sequence length: estimated at 4096 tokens")
    recompute = extra.get("recompute")
    if recompute is None:
        interval = (doc.get("pipeline") or {}).get("activation_checkpoint_interval", 0)
        recompute = "full" if "activation_checkpointing" in doc or interval else "none"
    precision = "bf16" if (doc.get("bf16") or {}).get("enabled") else "fp16" if (doc.get("fp16") or {}).get("enabled") \
        else "fp32"
    ep = _int(f"{where}: expert_parallel_size", extra.get("expert_parallel_size", 1)) if model.is_moe else 1
    layout = Layout(dp=dp, dp_replicate=rep, tp=tp, sp=False, pp=pp, cp=cp, cp_kind="a2a" if cp > 1 else "ring", ep=ep,
                    zero=zero,
                    mbs=mbs, gbs=gbs, seq=_int(f"{where}: seq_len", extra.get("seq_len", 4096)), recompute=recompute,
                    flash_attn=bool(extra.get("flash_attn", True)), precision=precision,
                    optimizer="sgd" if extra.get("optimizer") == "sgd" else "adam-master")
    return ReadConfig(layout=layout, kind="deepspeed", stack="deepspeed", notes=tuple(notes))
