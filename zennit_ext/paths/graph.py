"""Relevant units of a layer and the neuron graph: unit selection, exact k-best paths.

Pure tensor math on per-unit scores and dense edge tensors (no hooks, no model); see
:mod:`zennit_ext.paths.api` for the definitions and
:class:`~zennit_ext.paths.api.NeuronPaths`, which builds the graphs from NRM explanations.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from zennit_ext._checks import check_finite, real_number
from zennit_ext.plrp.masks import mass_threshold_mask

__all__ = ["select_units", "Paths", "NeuronGraph"]

SELECTIONS = ("std", "topk", "mass")


def select_units(
    scores: torch.Tensor,
    c: float = 1.0,
    selection: str = "std",
    k: int | None = None,
    mass: float | None = None,
) -> torch.Tensor:
    """Relevant units of one layer per sample.

    Parameters
    ----------
    scores : torch.Tensor
        (batch, n) unit scores (e.g. spatially summed relevance).
    c : float
        ``selection='std'``: keep ``score ≥ mean − c·σ`` per sample (population σ; σ = 0 keeps
        every unit). The paper's value is 1; negative ``c`` keeps units above the mean.
    selection : {'std', 'topk', 'mass'}
        'topk' keeps the ``k`` highest scores (ties to the lower index); 'mass' keeps the
        largest scores holding at least ``mass`` of each sign's mass
        (:func:`zennit_ext.plrp.masks.mass_threshold_mask` with ``p = 1 − mass``).
    k : int, optional
        Units kept per sample for 'topk', in [1, n].
    mass : float, optional
        Kept mass fraction for 'mass', in (0, 1].

    Returns
    -------
    torch.Tensor
        Bool, (batch, n): True where the unit is kept.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a (batch, n) tensor, got {shape}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    check_finite("scores", scores)
    if selection == "std":
        c = real_number("c", c)
        mean = scores.mean(1, keepdim=True)
        std = scores.std(1, correction=0, keepdim=True)
        return (scores >= mean - c * std) | (std == 0)
    if selection == "topk":
        n = scores.shape[1]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"k must be an int in [1, {n}] for selection='topk', got {k!r}")
        order = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
        return torch.zeros_like(scores, dtype=torch.bool).scatter(1, order, True)
    if mass is None or not 0.0 < real_number("mass", mass) <= 1.0:
        raise ValueError(f"mass must be a fraction in (0, 1] for selection='mass', got {mass!r}")
    return mass_threshold_mask(scores, p=1.0 - float(mass))


@dataclass(frozen=True)
class Paths:
    """The top-k paths of each sample.

    Attributes
    ----------
    units : torch.Tensor
        (batch, k, L) long: the path's unit (channel or neuron) in each layer, bottom → top.
    score : torch.Tensor
        (batch, k): sum of the path's edge weights, descending.
    layers : tuple of str
        The L layer names, bottom → top.
    """

    units: torch.Tensor
    score: torch.Tensor
    layers: tuple[str, ...]


@dataclass(frozen=True)
class NeuronGraph:
    """Per-unit scores, kept units and channel edges of one explanation (see the module doc).

    Attributes
    ----------
    layers : tuple of str
        Layer names, bottom → top.
    relevance, activation : dict of str to torch.Tensor
        Per layer (batch, n_units): unit relevance (NRM's or LRP's, see ``relevance_kind``)
        and output activation, summed over space.
    kept : dict of str to torch.Tensor
        Per layer bool (batch, n_units): units selected by :func:`select_units`.
    edges : dict of (str, str) to torch.Tensor
        Per adjacent pair ``(lower, upper)``, (batch, n_lower, n_upper): joint relevance.
    c : float
        The threshold multiplier used.
    score : str
        'relevance' or 'activation': what ``kept`` was selected on.
    relevance_kind : str
        'nrm' or 'lrp': what ``relevance`` holds (:meth:`with_relevance`).
    output_edges : torch.Tensor, optional
        (batch, n_top): weights of the output node's edges to the top layer's units; None:
        the top layer's ``relevance`` (NRM's marginals give the edges a common scale).
    """

    layers: tuple[str, ...]
    relevance: dict[str, torch.Tensor]
    activation: dict[str, torch.Tensor]
    kept: dict[str, torch.Tensor]
    edges: dict[tuple[str, str], torch.Tensor]
    c: float
    score: str
    relevance_kind: str = "nrm"
    output_edges: torch.Tensor | None = None

    def top_edges(self) -> torch.Tensor:
        """Weights of the output node's edges to the top layer's units, (batch, n_top)."""
        return self.relevance[self.layers[-1]] if self.output_edges is None else self.output_edges

    def with_relevance(self, relevance: dict[str, torch.Tensor], kind: str) -> NeuronGraph:
        """This graph with other unit relevance (e.g. LRP's), reselected if selected on it.

        The edges and the output node's edges (:meth:`top_edges`) stay as they are; with
        ``score='relevance'`` the kept units are :func:`select_units` of the new relevance
        at ``c``.

        Parameters
        ----------
        relevance : dict of str to torch.Tensor
            Per layer (batch, n_units), shaped like :attr:`relevance`.
        kind : str
            What it is ('lrp', 'nrm', …), stored as :attr:`relevance_kind`.
        """
        shapes = {n: tuple(v.shape) for n, v in self.relevance.items()}
        given = {n: tuple(v.shape) for n, v in relevance.items()}
        if given != shapes:
            raise ValueError(f"relevance must have the shapes {shapes}, got {given}")
        kept = self.kept
        if self.score == "relevance":
            kept = {name: select_units(relevance[name], self.c) for name in self.layers}
        return dataclasses.replace(
            self,
            relevance=dict(relevance),
            kept=kept,
            relevance_kind=kind,
            output_edges=self.top_edges(),
        )

    def kept_fraction(self) -> torch.Tensor:
        """Fraction of kept units per layer, (batch, L)."""
        return torch.stack(
            [self.kept[n].to(self.relevance[n].dtype).mean(1) for n in self.layers], 1
        )

    def top_paths(self, k: int = 5) -> Paths:
        """The ``k`` maximum-sum paths from the output down to ``layers[0]`` per sample.

        A path visits one kept unit per layer; its score is the output edge
        (:meth:`top_edges`, the top unit's NRM relevance) plus the ``L − 1`` edges between
        its units. Exact k-best dynamic programming from the top layer down: each unit keeps
        its ``k`` best partial paths. Ties go to the lower unit index, bottom layer first.

        Raises
        ------
        ValueError
            If ``k`` is not a positive int, exceeds the number of paths through kept units
            of some sample, or the graph holds non-finite values.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        top = self.layers[-1]
        for name, values in [(top, self.top_edges()), *self.edges.items()]:
            if not torch.isfinite(values).all():
                raise ValueError(f"the graph has non-finite relevance or edges at {name!r}")
        score = self._masked(self.top_edges(), top)[:, :, None]  # (batch, n_top, 1)
        pointers = []  # per layer from layers[-2] down: (batch, n, width) into (n_up, width_up)
        for lower, upper in zip(self.layers[-2::-1], self.layers[:0:-1], strict=True):
            candidates = self.edges[(lower, upper)][..., None] + score[:, None]  # (b, n, n_up, w)
            score, pointer = self._best(self._masked(candidates.flatten(2), lower), k)
            pointers.append(pointer)
        pointers.reverse()
        score, flat = self._best(score.flatten(1), k)
        if score.shape[1] < k or not torch.isfinite(score).all():
            counts = torch.stack([self.kept[n].sum(1) for n in self.layers]).prod(0)
            raise ValueError(
                f"k={k} exceeds the number of paths through kept units ({counts.tolist()} "
                f"per sample)"
            )
        widths = [pointer.shape[-1] for pointer in pointers] + [1]
        rows = torch.arange(len(flat), device=flat.device)[:, None]
        units, rank = [flat // widths[0]], flat % widths[0]
        for pointer, width in zip(pointers, widths[1:], strict=True):
            flat = pointer[rows, units[-1], rank]
            units.append(flat // width)
            rank = flat % width
        return Paths(torch.stack(units, -1), score, self.layers)

    def _masked(self, values: torch.Tensor, layer: str) -> torch.Tensor:
        kept = self.kept[layer].view(*self.kept[layer].shape, *[1] * (values.dim() - 2))
        return values.masked_fill(~kept, -math.inf)

    @staticmethod
    def _best(candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` largest entries along the last axis, ties to the lower index."""
        values, index = candidates.sort(dim=-1, descending=True, stable=True)
        return values[..., :k], index[..., :k]

    def to_networkx(self, sample: int = 0, in_edges: int = 8, k: int = 5) -> Any:
        """A ``networkx.DiGraph`` of one sample for drawing (never all channel edges).

        Nodes: ``'output'`` and ``(layer, unit)`` for every unit, with attributes
        ``relevance``, ``activation``, ``kept``, ``depth`` (0 = ``layers[0]``). Edges point
        down (output → top layer → … → ``layers[0]``) with attribute ``weight``: each kept
        node's ``in_edges`` strongest incoming edges from kept units, and every edge of the
        top-``k`` paths, which carry ``path`` = the best rank (0 = best) of a path using them.
        """
        import networkx as nx

        if isinstance(in_edges, bool) or not isinstance(in_edges, int) or in_edges < 0:
            raise ValueError(f"in_edges must be a non-negative int, got {in_edges!r}")
        batch = len(self.relevance[self.layers[0]])
        if not isinstance(sample, int) or not 0 <= sample < batch:
            raise ValueError(f"sample must be an int in [0, {batch}), got {sample!r}")
        graph = nx.DiGraph()
        graph.add_node("output", depth=len(self.layers), kept=True)
        for depth, name in enumerate(self.layers):
            rel, act = self.relevance[name][sample], self.activation[name][sample]
            kept = self.kept[name][sample]
            for unit in range(len(rel)):
                graph.add_node(
                    (name, unit),
                    relevance=float(rel[unit]),
                    depth=depth,
                    activation=float(act[unit]),
                    kept=bool(kept[unit]),
                )
        top = self.layers[-1]
        for unit in self.kept[top][sample].nonzero()[:, 0].tolist():
            graph.add_edge("output", (top, unit), weight=float(self.top_edges()[sample, unit]))
        for lower, upper in zip(self.layers[:-1], self.layers[1:], strict=True):
            weights = self.edges[(lower, upper)][sample]
            weights = weights.masked_fill(~self.kept[upper][sample][None], -math.inf)
            count = min(in_edges, int(self.kept[upper][sample].sum()))
            strongest = weights.sort(dim=1, descending=True, stable=True).indices[:, :count]
            for unit in self.kept[lower][sample].nonzero()[:, 0].tolist():
                for source in strongest[unit].tolist():
                    graph.add_edge(
                        (upper, source), (lower, unit), weight=float(weights[unit, source])
                    )
        paths = self.top_paths(k)
        for rank in reversed(range(paths.units.shape[1])):
            units = paths.units[sample, rank].flip(0).tolist()
            sinks = list(zip(self.layers[::-1], units, strict=True))
            sources: list[str | tuple[str, int]] = ["output", *sinks[:-1]]
            for source, sink in zip(sources, sinks, strict=True):
                weight = self._edge_weight(sample, source, sink)
                graph.add_edge(source, sink, weight=weight, path=rank)
        return graph

    def _edge_weight(self, sample: int, source: Any, sink: tuple[str, int]) -> float:
        if source == "output":
            return float(self.top_edges()[sample, sink[1]])
        return float(self.edges[(sink[0], source[0])][sample, sink[1], source[1]])
