"""Hardware database: GPUs, links and node presets as YAML data with sources.

    from clusterplan.hardware_db import get_gpu, get_node, get_link
    get_gpu("H100").peak_tflops["bf16"]   # 989.4
    get_stack("torchtitan").fsdp_granularity   # "block"
"""

from clusterplan.hardware_db.catalog import (
    find_name,
    get_attention_curves,
    get_gemm_tiling,
    get_gpu,
    get_link,
    get_node,
    get_sdpa_fa2_measurement,
    get_sdpa_family,
    load_db,
)
from clusterplan.hardware_db.schema import (
    GPU,
    AttentionCurve,
    GemmTiling,
    HardwareDB,
    Link,
    NodeType,
    PriceRow,
    SdpaFa2Measurement,
)
from clusterplan.hardware_db.stacks import DEFAULT_STACK, ExecutionStack, get_stack, list_stacks

__all__ = [
    "AttentionCurve",
    "DEFAULT_STACK",
    "GPU",
    "ExecutionStack",
    "GemmTiling",
    "HardwareDB",
    "Link",
    "NodeType",
    "PriceRow",
    "SdpaFa2Measurement",
    "find_name",
    "get_attention_curves",
    "get_gemm_tiling",
    "get_gpu",
    "get_link",
    "get_node",
    "get_sdpa_fa2_measurement",
    "get_sdpa_family",
    "get_stack",
    "list_stacks",
    "load_db",
]
