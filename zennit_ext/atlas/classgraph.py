"""The neuron graph of a class: data-set means of unit relevance and channel edges.

For the samples of one class, the per-sample neuron graphs of
:class:`~zennit_ext.paths.NeuronPaths` (unit relevance ``R(n_l = i)``, activation and the joint
relevance ``R(n_a = i, n_b = j)`` of units of consecutive layers, all explained for that class)
are averaged in one streamed pass with exact, order-free sums
(:class:`~zennit_ext.atlas.merge.FixedSum`; ``all_reduce`` across processes). The mean graph is
a :class:`~zennit_ext.paths.NeuronGraph` of one row, so its ``top_paths(k)`` are the paths
the class uses most on average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from zennit_ext._checks import real_number
from zennit_ext.atlas.collect import evaluating, probe
from zennit_ext.atlas.data import Source, model_placement
from zennit_ext.atlas.distributed import world
from zennit_ext.atlas.merge import FixedSum
from zennit_ext.paths.api import NeuronPaths
from zennit_ext.paths.graph import NeuronGraph, select_units

__all__ = ["ClassGraph", "class_graph"]


@dataclass(frozen=True)
class ClassGraph(NeuronGraph):
    """A :class:`~zennit_ext.paths.NeuronGraph` of one row: the mean over one class's samples.

    Attributes
    ----------
    target : int
        The class.
    count : int
        Its samples in the data.
    """

    target: int = 0
    count: int = 0


def class_graph(
    paths: NeuronPaths,
    data: Any,
    target: int,
    *,
    c: float = 1.0,
    batch_size: int = 32,
    show_progress: bool = False,
) -> ClassGraph:
    """Mean unit relevance, activation and consecutive edges over the samples of ``target``.

    Parameters
    ----------
    paths : NeuronPaths
        The layers (bottom → top) and NRM options.
    data : torch.utils.data.Dataset or torch.utils.data.DataLoader
        ``(x, y)`` items (:class:`~zennit_ext.atlas.data.Source`); only those with
        ``y == target`` are explained, all are read. With a process group, each rank reads a
        shard of the batches and the sums are ``all_reduce``-d.
    target : int
        The class.
    c : float
        Threshold multiplier of the kept units of the mean graph
        (:func:`~zennit_ext.paths.select_units` on the mean relevance).
    batch_size : int
        Samples per read batch (for a data set).
    show_progress : bool
        Progress bar over the batches.

    Returns
    -------
    ClassGraph
        Per layer (1, n_units) mean relevance and activation (spatial sums), (1, n_lower,
        n_upper) mean edges, in the model's dtype; ``top_paths(k)`` as for any graph.

    Raises
    ------
    ValueError
        If no sample of ``data`` has class ``target``, or the arguments are bad.
    """
    c = real_number("c", c)
    if isinstance(target, bool) or not isinstance(target, int):
        raise ValueError(f"target must be an int class, got {target!r}")
    source = Source(data, batch_size)
    model = paths.model
    layers = paths.layers
    rank, size = world()
    with evaluating(model):
        x, _ = source.fetch([0])
        device, dtype = model_placement(model, x)
        units, n_classes = probe(model, paths.nrm.modules, x.to(device, dtype))
        if not 0 <= target < n_classes:
            raise ValueError(f"target must be a class in [0, {n_classes}), got {target}")
        relevance = {name: FixedSum((1, units[name])) for name in layers}
        activation = {name: FixedSum((1, units[name])) for name in layers}
        pairs = list(zip(layers[:-1], layers[1:], strict=True))
        edges = {pair: FixedSum((1, units[pair[0]], units[pair[1]])) for pair in pairs}
        count = torch.zeros(1, dtype=torch.int64)
        mine = list(range(rank, source.n_batches, size))
        bar = tqdm(mine, desc="class graph", disable=None if show_progress and rank == 0 else True)
        for x, y in source.batches(mine):
            keep = y == target
            bar.update()
            if not bool(keep.any()):
                continue
            graph = paths.graph(x[keep].to(device, dtype), target, c)
            rows = torch.zeros(int(keep.sum()), dtype=torch.int64)
            for name in layers:
                relevance[name].add_at(rows, graph.relevance[name].cpu())
                activation[name].add_at(rows, graph.activation[name].cpu())
            for pair in pairs:
                edges[pair].add_at(rows, graph.edges[pair].cpu())
            count += int(keep.sum())
        bar.close()
    sums = [*relevance.values(), *activation.values(), *edges.values()]
    if size > 1:
        for table in sums:
            dist.all_reduce(table.limbs)
            table.add(torch.zeros_like(table.limbs))  # normalize the carries
        dist.all_reduce(count)
    total = int(count[0])
    if total == 0:
        raise ValueError(f"data holds no sample of class target={target}")

    def mean(table: FixedSum) -> torch.Tensor:
        return (table.value() / total).to(dtype)

    mean_relevance = {name: mean(relevance[name]) for name in layers}
    return ClassGraph(
        layers,
        mean_relevance,
        {name: mean(activation[name]) for name in layers},
        {name: select_units(mean_relevance[name], c) for name in layers},
        {pair: mean(edges[pair]) for pair in pairs},
        c,
        "relevance",
        target=target,
        count=total,
    )
