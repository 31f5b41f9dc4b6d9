"""Expert-parallel token dispatch: token copies travel to the ranks owning their experts with an all-to-all,
are processed there, and come back with a second all-to-all (GShard, Lepikhin et al. 2020; the `alltoall`
dispatcher of Megatron-Core). Autograd flows through torch.distributed.nn.functional.all_to_all_single.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_to_all_single


def dispatch_combine(rows: torch.Tensor, expert_ids: torch.Tensor, experts: nn.Module,
                     group: dist.ProcessGroup) -> torch.Tensor:
    """Expert outputs for `rows` (token copies sorted by global expert id `expert_ids`), experts spread evenly
    over the ranks of `group` in order."""
    ranks, me = dist.get_world_size(group), dist.get_rank(group)
    per_rank = experts.w1.shape[0] // ranks  # global shape: the module is sharded, the DTensor knows the whole
    send_counts = torch.bincount(expert_ids // per_rank, minlength=ranks)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()
    recv_ids = expert_ids.new_empty(sum(recv))
    dist.all_to_all_single(recv_ids, expert_ids, recv, send, group=group)
    x_recv = all_to_all_single(rows.new_empty(sum(recv), rows.shape[1]), rows, recv, send, group=group)
    y_recv = experts(x_recv, recv_ids - me * per_rank)
    return all_to_all_single(rows.new_empty(sum(send), rows.shape[1]), y_recv, send, recv, group=group)
