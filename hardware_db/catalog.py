"""Loading and validating the YAML hardware data into frozen records."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from clusterplan.errors import BadInputError
from clusterplan.fileio import load_shipped_yaml
from clusterplan.hardware_db.schema import (
    DTYPES,
    GPU,
    AttentionCurve,
    GemmTiling,
    HardwareDB,
    Link,
    NodeType,
    SdpaFa2Measurement,
)

DATA_DIR = Path(__file__).parent / "data"
GPU_SOURCE_KEYS = ("tflops", "memory", "scale_up", "tdp", "achieved")

T = TypeVar("T")


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


LIST_ALL_UP_TO = 12
"""An unknown name with nothing close to it lists every name of a table this short; a longer one points to its list
command instead (one line either way)."""


def find_name(
    kind: str, name: str, table: Mapping[str, T], aliases: Mapping[str, str] | None = None, list_cmd: str = "hw list"
) -> T:
    """Look `name` up case- and punctuation-insensitively; unknown names suggest the closest ones."""
    index = {_norm(k): k for k in table}
    for alias, target in (aliases or {}).items():
        index.setdefault(_norm(alias), target)
    key = index.get(_norm(name))
    if key is None and not _norm(name):  # nothing to match: no list of every name
        raise BadInputError(f"empty {kind} name; give one (`clusterplan {list_cmd}` shows all)")
    if key is None:
        close = difflib.get_close_matches(_norm(name), list(index), n=3, cutoff=0.5)
        if close or len(table) <= LIST_ALL_UP_TO:
            hint = ", ".join(sorted({index[c] for c in close} if close else table))
            raise BadInputError(f"unknown {kind} {name!r}; did you mean: {hint}? (`clusterplan {list_cmd}` shows all)")
        raise BadInputError(f"unknown {kind} {name!r}, and no name is close to it; `clusterplan {list_cmd}` shows all")
    return table[key]


def _num(where: str, raw: Mapping[str, Any], key: str, *, positive: bool = True) -> float:
    if key not in raw:
        raise BadInputError(f"{where}: missing field {key!r}")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInputError(f"{where}: field {key!r} must be a number, got {value!r}")
    if positive and value <= 0:
        raise BadInputError(f"{where}: field {key!r} must be > 0, got {value}")
    return float(value)


def _str(where: str, raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"{where}: missing or empty text field {key!r}")
    return value


HOST_CPUS = ("x86", "grace")

US = 1e-6
"""Seconds per microsecond (gemm.yaml kernel times are given in us)."""


def _host_cpu(where: str, raw: Mapping[str, Any]) -> str:
    value = raw.get("host_cpu", "x86")
    if value not in HOST_CPUS:
        raise BadInputError(f"{where}: host_cpu={value!r}; choose one of {', '.join(HOST_CPUS)}")
    return value


def _host_link_gb_per_s(where: str, raw: Mapping[str, Any], links: Mapping[str, Link], host_cpu: str) -> float:
    """Per-direction host-memory copy bandwidth of one GPU (GPU.host_link_gb_per_s): gpus.yaml host_link (with its
    source) where given, which the superchips need (their CPU link is NVLink-C2C, not PCIe), else the PCIe x16
    line rate of the GPU's generation (links.yaml pcie<gen>)."""
    given = raw.get("host_link")
    if given is not None:
        if not str((raw.get("sources") or {}).get("host_link", "")).strip():
            raise BadInputError(f"{where}: host_link without a source; add sources.host_link")
        return _num(where + " host_link", given, "gb_per_s")
    if host_cpu != "x86":
        raise BadInputError(f"{where}: a {host_cpu} superchip copies to host memory over NVLink-C2C, not PCIe; "
                            "add host_link: {gb_per_s: ...} with sources.host_link")
    pcie = f"pcie{int(_num(where, raw, 'pcie_gen'))}"
    if pcie not in links:
        raise BadInputError(f"{where}: pcie_gen has no {pcie} entry in links.yaml; add it or give host_link")
    return links[pcie].gb_per_s


def _parse_gpu(name: str, raw: Mapping[str, Any], links: Mapping[str, Link]) -> GPU:
    where = f"gpus.yaml: {name}"
    sources = raw.get("sources") or {}
    missing = [k for k in GPU_SOURCE_KEYS if not str(sources.get(k, "")).strip()]
    if missing:
        raise BadInputError(f"{where}: numbers without a source: {', '.join(missing)}")
    tflops = raw.get("tflops_dense") or {}
    bad = [k for k in tflops if k not in DTYPES]
    if bad or not tflops:
        raise BadInputError(f"{where}: tflops_dense needs dtypes from {DTYPES}, got {sorted(tflops)}")
    scale_up = raw.get("scale_up") or {}
    if "gb_per_s" in scale_up:
        raise BadInputError(f"{where}: scale_up takes the link's bandwidth from links.yaml; drop gb_per_s")
    host_cpu = _host_cpu(where, raw)
    up_link = _str(where + " scale_up", scale_up, "link")
    if up_link not in links:
        raise BadInputError(f"{where}: unknown scale_up link {up_link!r}")
    if "price" in raw:  # one price table: a second source of prices would drift from it
        raise BadInputError(f"{where}: prices live in prices.yaml (rows of gpu, provider, pricing, usd_per_gpu_hour, "
                            "date, source); move this one there")
    achieved = raw.get("achieved") or {}
    return GPU(
        name=name,
        vendor=_str(where, raw, "vendor"),
        aliases=tuple(raw.get("aliases") or ()),
        peak_tflops=MappingProxyType({k: _num(where, tflops, k) for k in tflops}),
        memory_gib=_num(where, raw, "memory_gib"),
        memory_tb_per_s=_num(where, raw, "memory_tb_per_s"),
        scale_up_link=up_link,
        scale_up_gb_per_s=links[up_link].gb_per_s,
        scale_up_domain=int(_num(where + " scale_up", scale_up, "domain")),
        pcie_gen=int(_num(where, raw, "pcie_gen")),
        tdp_w=_num(where, raw, "tdp_w"),
        gemm_peak_fraction=_num(where + " achieved", achieved, "gemm_peak_fraction"),
        hbm_fraction=_num(where + " achieved", achieved, "hbm_fraction"),
        sources=MappingProxyType(dict(sources)),
        mx_formats=bool(raw.get("mx_formats", False)),
        host_cpu=host_cpu,
        host_link_gb_per_s=_host_link_gb_per_s(where, raw, links, host_cpu),
    )


def _parse_link(name: str, raw: Mapping[str, Any]) -> Link:
    where = f"links.yaml: {name}"
    kind = _str(where, raw, "kind")
    if kind not in ("scale_up", "scale_out"):
        raise BadInputError(f"{where}: kind must be scale_up or scale_out, got {kind!r}")
    frac = _num(where, raw, "busbw_fraction")
    if frac > 1.2:
        raise BadInputError(f"{where}: busbw_fraction {frac} is a fraction of line rate, expected <= 1.2")
    return Link(
        name=name,
        kind=kind,
        gb_per_s=_num(where, raw, "gb_per_s"),
        latency_us=_num(where, raw, "latency_us"),
        busbw_fraction=frac,
        source=_str(where, raw, "source"),
        nccl_ctas=int(_num(where, raw, "nccl_ctas")) if raw.get("nccl_ctas") is not None else None,
    )


def _parse_node(name: str, raw: Mapping[str, Any]) -> NodeType:
    where = f"nodes.yaml: {name}"
    price = raw.get("usd_per_node_hour")
    return NodeType(
        name=name,
        gpu=_str(where, raw, "gpu"),
        gpus_per_node=int(_num(where, raw, "gpus_per_node")),
        scale_up_link=_str(where, raw, "scale_up_link"),
        scale_up_domain=int(_num(where, raw, "scale_up_domain")),
        nic_link=_str(where, raw, "nic_link"),
        nics_per_node=int(_num(where, raw, "nics_per_node")),
        description=_str(where, raw, "description"),
        source=_str(where, raw, "source"),
        aliases=tuple(raw.get("aliases") or ()),
        usd_per_node_hour=float(price) if price is not None else None,
    )


def _parse_gemm(name: str, raw: Mapping[str, Any]) -> GemmTiling:
    where = f"gemm.yaml: {name}"
    sources = raw.get("sources") or {}
    missing = [k for k in ("sm_count", "tile", "mamf") if not str(sources.get(k, "")).strip()]
    if missing:
        raise BadInputError(f"{where}: numbers without a source: {', '.join(missing)}")
    tile = raw.get("tile")
    if not (isinstance(tile, list) and len(tile) == 2 and all(isinstance(t, int) and t > 0 for t in tile)):
        raise BadInputError(f"{where}: tile must be [tile_m, tile_n] positive integers, got {tile!r}")
    shape = raw.get("mamf_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3
                                  and all(isinstance(t, int) and t > 0 for t in shape)):
        raise BadInputError(f"{where}: mamf_shape must be [m, n, k] positive integers, got {shape!r}")
    fp8 = raw.get("fp8_mamf_fraction")
    ratios = {key: _slowdown_ratio(where, raw, sources, key, source)
              for key, source in (("mxfp8_gemm_time_ratio", "mxfp8"), ("rowwise_gemm_time_ratio", "rowwise"))}
    k_overheads = {key: _k_overhead(where, raw, sources, key, source)
                   for key, source in (("fp8_k_overhead", "k_depth"), ("bf16_k_overhead", "k_depth_bf16"),
                                         ("blockwise_fp8_k_overhead", "k_depth_blockwise"))}
    kernels = {f"{dtype}_kernel_s": _k_overhead(where, raw, sources, f"{dtype}_kernel_us", source) * US
               for dtype, source in (("bf16", "k_depth_bf16"), ("fp8", "k_depth"))}
    sustained = {key: _fraction(where, raw, sources, key, "sustained")
                 for key in ("sustained_fraction_bf16", "sustained_fraction_fp8")}
    # an NVFP4 GEMM does the fp8 GEMM's work on tensor cores of two to three times its peak: a ratio in (0, 1]
    sustained["nvfp4_gemm_time_ratio"] = _fraction(where, raw, sources, "nvfp4_gemm_time_ratio", "nvfp4")
    return GemmTiling(gpu=name, sm_count=int(_num(where, raw, "sm_count")), tile_m=tile[0], tile_n=tile[1],
                      mamf_shape=tuple(shape) if shape else None, **k_overheads, **kernels, **sustained,
                      fp8_mamf_fraction=None if fp8 is None else _num(where, raw, "fp8_mamf_fraction"),
                      sources=MappingProxyType(dict(sources)), **ratios)


def _k_overhead(where: str, raw: Mapping[str, Any], sources: Mapping[str, Any], key: str, source: str) -> float:
    """A reduction-depth k_0 of gemm.yaml (`key`, its source under sources[`source`]): 0 when absent, else > 0."""
    if raw.get(key) is None:
        return 0.0
    if not str(sources.get(source, "")).strip():
        raise BadInputError(f"{where}: {key} without a source: add sources.{source}")
    return _num(where, raw, key)


def _fraction(where: str, raw: Mapping[str, Any], sources: Mapping[str, Any], key: str, source: str) -> float:
    """A measured fraction of gemm.yaml (`key`, its source under sources[`source`]): 0 when absent, else in (0, 1]."""
    value = _k_overhead(where, raw, sources, key, source)  # the same "absent: 0, given: needs its source" rule
    if raw.get(key) is not None and not 0.0 < value <= 1.0:
        raise BadInputError(f"{where}: {key} must be in (0, 1], got {value}")
    return value


def _slowdown_ratio(where: str, raw: Mapping[str, Any], sources: Mapping[str, Any], key: str, source: str) -> float:
    """A GEMM time ratio of gemm.yaml (`key`, its source under sources[`source`]): 1 when absent, else >= 1."""
    if raw.get(key) is None:
        return 1.0
    if not str(sources.get(source, "")).strip():
        raise BadInputError(f"{where}: numbers without a source: {source}")
    ratio = _num(where, raw, key)
    if ratio < 1.0:
        raise BadInputError(f"{where}: {key} must be >= 1 (the scaled GEMM does the same work and more), got {ratio}")
    return ratio


ATTENTION_KERNELS = ("fa1", "fa2", "fa3", "cudnn", "sdpa_fa2", "aotriton")


def _parse_attention(data: Mapping[str, Any], gpus: Mapping[str, GPU]) -> tuple[AttentionCurve, ...]:
    curves = []
    for i, raw in enumerate(data.get("rows") or []):
        where = f"attention_kernels.yaml: rows[{i}]"
        gpu, kernel = _str(where, raw, "gpu"), _str(where, raw, "kernel")
        if gpu not in gpus or kernel not in ATTENTION_KERNELS:
            raise BadInputError(f"{where}: unknown gpu {gpu!r} or kernel {kernel!r} (kernels: {ATTENTION_KERNELS})")
        seq, tflops = raw.get("seq") or [], raw.get("tflops") or []
        if (len(seq) != len(tflops) or len(seq) < 2 or sorted(seq) != list(seq)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in seq + tflops)):
            raise BadInputError(f"{where}: seq and tflops must be equally long (>= 2) lists of positive numbers, "
                                "seq increasing")
        direction, causal = raw.get("direction"), raw.get("causal")
        if direction not in ("forward", "backward") or not isinstance(causal, bool):
            raise BadInputError(f"{where}: direction must be forward or backward and causal true or false")
        window = raw.get("window")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window <= 0
                                   or not causal):
            raise BadInputError(f"{where}: window must be a positive integer on a causal row")
        curves.append(AttentionCurve(gpu=gpu, kernel=kernel, direction=direction, causal=causal,
                                     head_dim=int(_num(where, raw, "head_dim")),
                                     seq=tuple(int(v) for v in seq), tflops=tuple(float(v) for v in tflops),
                                     source=_str(where, raw, "source"), window=window))
    measured_curves = list(curves)
    for measured, others in (data.get("also") or {}).items():
        for other in others:
            if other not in gpus:
                raise BadInputError(f"attention_kernels.yaml: also: unknown GPU {other!r}")
            curves += [replace(c, gpu=other, source=f"{c.source} (measured on {measured}, same die and clocks)")
                       for c in measured_curves if c.gpu == measured]
    for other, raw in (data.get("scaled") or {}).items():
        measured = raw.get("from") if isinstance(raw, Mapping) else None
        if other not in gpus or measured not in gpus or not isinstance(raw.get("why"), str):
            raise BadInputError(f"attention_kernels.yaml: scaled: {other!r} needs a known GPU, `from` a known GPU "
                                "and `why` a reason")
        kernels = raw.get("kernels", ATTENTION_KERNELS)
        if not isinstance(kernels, list | tuple) or not set(kernels) <= set(ATTENTION_KERNELS):
            raise BadInputError(f"attention_kernels.yaml: scaled: {other!r} kernels must be a list of "
                                f"{', '.join(ATTENTION_KERNELS)}, got {kernels!r}")
        own = {(c.kernel, c.direction, c.causal, c.head_dim, c.window) for c in curves if c.gpu == other}
        # Same die at another clock: the measured curve x the ratio of the dense BF16 peaks (yaml header).
        scale = gpus[other].peak_tflops["bf16"] / gpus[measured].peak_tflops["bf16"]
        taken = [c for c in measured_curves if c.gpu == measured and c.kernel in kernels]
        clash = [c for c in taken if (c.kernel, c.direction, c.causal, c.head_dim, c.window) in own]
        if clash:
            raise BadInputError(f"attention_kernels.yaml: scaled: {other!r} has its own {clash[0].kernel} "
                                f"{clash[0].direction} row; list only the kernels it lacks")
        curves += [replace(c, gpu=other, tflops=tuple(v * scale for v in c.tflops),
                           source=f"{c.source} (measured on {measured}, x {scale:.3f} BF16 peak ratio: {raw['why']})")
                   for c in taken]
    return tuple(curves)


def _parse_sdpa_backend(data: Mapping[str, Any], gpus: Mapping[str, GPU]) -> Mapping[str, str]:
    table = dict(data.get("sdpa_backend") or {})
    for gpu, family in table.items():
        if gpu not in gpus or family not in ATTENTION_KERNELS:
            raise BadInputError(f"attention_kernels.yaml: sdpa_backend: unknown GPU {gpu!r} or kernel {family!r} "
                                f"(kernels: {ATTENTION_KERNELS})")
    return MappingProxyType(table)


def _parse_sdpa_fa2(data: Mapping[str, Any], gpus: Mapping[str, GPU]) -> Mapping[str, SdpaFa2Measurement]:
    """attention_kernels.yaml sdpa_fa2: one measurement per GPU whose fa2 / fa3 curves are the upstream kernels,
    carried to the GPUs that use those curves as measured (`also`)."""
    table: dict[str, SdpaFa2Measurement] = {}
    for gpu, raw in (data.get("sdpa_fa2") or {}).items():
        where = f"attention_kernels.yaml: sdpa_fa2: {gpu}"
        if gpu not in gpus or not isinstance(raw, Mapping) or not isinstance(raw.get("causal"), bool):
            raise BadInputError(f"{where}: needs a known GPU and seq, head_dim, causal, sdpa_tflops, fa3_tflops, "
                                "source")
        table[gpu] = SdpaFa2Measurement(gpu=gpu, seq=int(_num(where, raw, "seq")),
                                        head_dim=int(_num(where, raw, "head_dim")), causal=raw["causal"],
                                        sdpa_tflops=_num(where, raw, "sdpa_tflops"),
                                        fa3_tflops=_num(where, raw, "fa3_tflops"), source=_str(where, raw, "source"))
    for measured, others in (data.get("also") or {}).items():
        if measured in table:
            table.update({other: replace(table[measured], gpu=other) for other in others if other not in table})
    return MappingProxyType(table)


def _read(name: str) -> Mapping[str, Any]:
    return load_shipped_yaml(DATA_DIR / name) or {}


@lru_cache(maxsize=1)
def load_db() -> HardwareDB:
    """Load and cross-check the shipped data (each node's GPU and links must exist)."""
    links = {n: _parse_link(n, r) for n, r in _read("links.yaml")["links"].items()}
    gpus = {n: _parse_gpu(n, r, links) for n, r in _read("gpus.yaml")["gpus"].items()}
    nodes = {n: _parse_node(n, r) for n, r in _read("nodes.yaml")["nodes"].items()}
    gemm = {n: _parse_gemm(n, r) for n, r in _read("gemm.yaml")["gemm"].items()}
    unknown = sorted(set(gemm) - set(gpus))
    if unknown:
        raise BadInputError(f"gemm.yaml: unknown GPU(s) {', '.join(unknown)}")
    for node in nodes.values():
        for ref, table in ((node.gpu, gpus), (node.scale_up_link, links), (node.nic_link, links)):
            if ref not in table:
                raise BadInputError(f"nodes.yaml: {node.name}: unknown reference {ref!r}")
    attention_data = _read("attention_kernels.yaml")
    attention = _parse_attention(attention_data, gpus)
    return HardwareDB(MappingProxyType(gpus), MappingProxyType(links), MappingProxyType(nodes), MappingProxyType(gemm),
                      attention, _parse_sdpa_backend(attention_data, gpus), _parse_sdpa_fa2(attention_data, gpus))


def _aliases(table: Mapping[str, Any]) -> dict[str, str]:
    return {alias: name for name, rec in table.items() for alias in rec.aliases}


def unknown_record(name: str, stack_names: tuple[str, ...]) -> BadInputError:
    """The one-line error for a name that is no GPU, node preset, link or stack, naming the closest of every kind
    (GPU and node aliases included)."""
    db = load_db()
    try:
        find_name("GPU, node preset, link or stack", name, {**db.gpus, **db.nodes, **db.links,
                                                             **{n: n for n in stack_names}},
                  {**_aliases(db.gpus), **_aliases(db.nodes)})
    except BadInputError as err:
        return err
    return BadInputError(f"{name!r}: found only under another kind; `clusterplan hw list` shows all")


def get_gpu(name: str) -> GPU:
    db = load_db()
    return find_name("GPU", name, db.gpus, _aliases(db.gpus))


def get_link(name: str) -> Link:
    return find_name("link", name, load_db().links)


def get_gemm_tiling(gpu_name: str) -> GemmTiling | None:
    """The GEMM tiling of a GPU (by its record name), None when gemm.yaml has no entry for it."""
    return load_db().gemm.get(gpu_name)


def get_attention_curves(gpu_name: str) -> tuple[AttentionCurve, ...]:
    """Published causal attention curves of a GPU (by its record name); empty when none is published."""
    return tuple(c for c in load_db().attention if c.gpu == gpu_name)


def get_sdpa_fa2_measurement(gpu_name: str) -> SdpaFa2Measurement | None:
    """PyTorch SDPA's FA2-backend measurement for a GPU (attention_kernels.yaml sdpa_fa2); None where none applies."""
    return load_db().sdpa_fa2.get(gpu_name)


def get_sdpa_family(gpu_name: str) -> str:
    """Kernel family PyTorch's scaled_dot_product_attention runs on a GPU (attention_kernels.yaml sdpa_backend):
    cuDNN where PyTorch puts it first, else its FlashAttention-2 backend."""
    return load_db().sdpa_backend.get(gpu_name, "fa2")


def get_node(name: str) -> NodeType:
    db = load_db()
    return find_name("node preset", name, db.nodes, _aliases(db.nodes))
