"""Hardware database: GPUs, links and node presets as YAML data with sources.

    from clusterplan.hardware_db import get_gpu, get_node, get_link
    get_gpu("H100").peak_tflops["bf16"]   # 989.4
"""

from clusterplan.hardware_db.catalog import (
    find_name,
    get_attention_curves,
    get_gemm_tiling,
    get_gpu,
    get_link,
    get_node,
    load_db,
)
from clusterplan.hardware_db.schema import GPU, AttentionCurve, GemmTiling, HardwareDB, Link, NodeType, Price

__all__ = [
    "AttentionCurve",
    "GPU",
    "GemmTiling",
    "HardwareDB",
    "Link",
    "NodeType",
    "Price",
    "find_name",
    "get_attention_curves",
    "get_gemm_tiling",
    "get_gpu",
    "get_link",
    "get_node",
    "load_db",
]
