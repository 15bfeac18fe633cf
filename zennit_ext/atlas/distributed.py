"""Scale-out on torch.distributed: shards of global batches and the exact merge of states.

When a process group is initialised (``torchrun --nproc_per_node=N script.py``), rank ``r`` of
``W`` explains the global batches ``start + s·W + r`` (step ``s``); the partial states are merged
exactly: top-k tables by an ``all_gather`` of every rank's candidates and one top-k merge (ties
to the lower sample index), the fixed-point sums and class counts by an ``all_reduce`` of
integers. So ``W`` processes give the one-process result bit for bit.

A rank that raises (its loader, its model) would leave the others blocked in the next
collective until the process group's timeout; :func:`failed_ranks`, called by every rank after
each step, lets all of them stop at the same step instead.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from zennit_ext.atlas.collect import MODES, AtlasState
from zennit_ext.atlas.merge import merge_topk

__all__ = ["world", "rank_batches", "failed_ranks", "merged"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_batches(start: int, n_batches: int, rank: int, size: int) -> list[int | None]:
    """Per step, the global batch rank ``rank`` explains (None where it has none left).

    Every rank runs the same number of steps, ``ceil((n_batches − start) / size)``.
    """
    steps = -(-(n_batches - start) // size)
    batches = [start + step * size + rank for step in range(steps)]
    return [number if number < n_batches else None for number in batches]


def failed_ranks(failed: bool) -> list[int]:
    """The ranks that report ``failed`` at this step (one ``all_reduce`` of a flag per rank).

    Without a process group, ``[0]`` or ``[]`` without communication. Every rank must call it
    at the same step.
    """
    rank, size = world()
    if size == 1:
        return [0] if failed else []
    flags = torch.zeros(size, dtype=torch.int32, device=_device())
    flags[rank] = int(failed)
    dist.all_reduce(flags)
    return flags.nonzero().flatten().tolist()


def _device() -> torch.device:
    """Where collectives run: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def merged(state: AtlasState) -> AtlasState:
    """The union of every rank's partial ``state`` (a new state; ``state`` is unchanged).

    Without a process group, a copy of ``state``. Every rank must call it at the same step.
    """
    out = state.empty_like()
    _, size = world()
    if size == 1:
        out.merge(state)
        return out
    device = _device()
    for name, layer in state.layers.items():
        target = out.layers[name]
        for mode in MODES:
            values, indices = (t.to(device) for t in layer.top[mode])
            all_values = [torch.empty_like(values) for _ in range(size)]
            all_indices = [torch.empty_like(indices) for _ in range(size)]
            dist.all_gather(all_values, values)
            dist.all_gather(all_indices, indices)
            top_values, top_indices = merge_topk(
                torch.cat(all_values, 1), torch.cat(all_indices, 1), state.k
            )
            target.top[mode] = (top_values.cpu(), top_indices.cpu())
        for sums, into in (
            (layer.relevance, target.relevance),
            (layer.activation, target.activation),
        ):
            limbs = sums.limbs.to(device, copy=True)
            dist.all_reduce(limbs)
            into.add(limbs.cpu())
    counts = state.counts.to(device, copy=True)
    dist.all_reduce(counts)
    out.counts = counts.cpu()
    return out
