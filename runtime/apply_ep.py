"""Expert parallelism: routed experts split over ep ranks (and each expert's FFN over etp ranks).

The expert axes fold over dp_shard x cp x tp as in torchtitan (`efsdp`, `ep`, `etp` from the same ranks;
ParallelDims "sparse region") and Megatron-Core (expert-data-parallel = dp_shard*cp*tp / (ep*etp)). Expert
weights that FSDP shards are sharded over `efsdp` only.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Shard, distribute_tensor

from clusterplan.models.training.layout import Layout


def expert_mesh(mesh: DeviceMesh, layout: Layout) -> DeviceMesh:
    """(efsdp, ep, etp) over the ranks of dp_shard x cp x tp, etp innermost."""
    fold = layout.dp_shard * layout.cp * layout.tp
    flat = mesh["dp_shard", "cp", "tp"]._flatten("ep_fold")
    efsdp = fold // (layout.ep * layout.etp)
    return flat._unflatten(0, (efsdp, layout.ep, layout.etp), ("efsdp", "ep", "etp"))


def _shard_experts(experts: nn.Module, ep_mesh: DeviceMesh) -> None:
    # w1, w3: (expert, ffn, hidden) -> ffn is split by etp; w2: (expert, hidden, ffn) -> ffn is dim 2.
    for name, ffn_dim in (("w1", 1), ("w2", 2), ("w3", 1)):
        weight = getattr(experts, name)
        if weight is None:
            continue
        placed = distribute_tensor(weight.data, ep_mesh, [Shard(0), Shard(ffn_dim)])
        setattr(experts, name, nn.Parameter(placed))


def apply_ep(model: nn.Module, mesh: DeviceMesh, layout: Layout, fsdp: bool, dispatch: bool = False) -> None:
    """Shard every MoE layer's experts over (ep, etp); with FSDP also over the expert-data-parallel ranks."""
    sparse = expert_mesh(mesh, layout)
    for layer in model.layers.values():
        experts = getattr(layer.feed_forward, "experts", None)
        if experts is None:
            continue
        _shard_experts(experts, sparse["ep", "etp"])
        if dispatch:  # a real run: tokens go to their experts' ranks by all-to-all
            layer.feed_forward.ep_group = sparse["ep"].get_group()
        if fsdp:  # also when efsdp is 1: keeps the dense FSDP unit off the expert mesh
            # Fewer experts than efsdp x ep ranks: shard the FFN dim instead (torchtitan's shard_placement_fn).
            few = experts.w1.shape[0] < sparse["efsdp"].size() * layout.ep
            fully_shard(experts, mesh=sparse["efsdp"], mp_policy=MixedPrecisionPolicy(),
                        shard_placement_fn=(lambda _p: Shard(1)) if few else None)
