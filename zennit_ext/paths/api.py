"""Relevant-neuron paths: neuron graphs, k-best paths, k-path heatmaps and deconvolution views.

After "Neural Network Interpretability With Layer-Wise Relevance Propagation: Novel
Techniques for Neuron Selection and Visualization" (Bhati et al., 2024, arXiv:2412.05686).
The paper scores each neuron (channel of a convolution) by its spatially summed relevance,
keeps those above ``mean − 1·std`` of their layer, links kept neurons of consecutive layers
into paths from the output to the input, and shows the top-k paths as heatmaps and
deconvolution reconstructions (Zeiler & Fergus, "Visualizing and Understanding Convolutional
Networks", arXiv:1311.2901). Its algorithm section is not public; what follows are **our
definitions**, all built on NRM ("Normalized relevance of neuron sets", see
:class:`zennit_ext.NRM`):

- an edge between unit ``i`` of a lower and ``j`` of the next upper layer is their joint NRM
  relevance ``R(n_lower = i, n_upper = j)`` (the relevance of the walks through both); the
  output node links to each top-layer unit with that unit's relevance;
- a path's score is the sum of its ``L`` edge weights; the top-k paths are found exactly by
  k-best dynamic programming over the dense edge tensors;
- the heatmap of k paths is the sum of the k single-path NRM joint heatmaps (not the heatmap
  of the union of their units, which would also count walks mixing units of different paths);
- a threshold ``c`` is tuned by comparing the heatmap restricted to kept units with the full
  one (:meth:`NeuronPaths.tune_threshold`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from zennit.core import Composite

from zennit_ext._checks import parse_target, real_number
from zennit_ext.nrm.api import NRM
from zennit_ext.paths import views
from zennit_ext.paths.graph import NeuronGraph, Paths, select_units
from zennit_ext.paths.scores import RELEVANCES, lrp_unit_relevance, unit_sums

__all__ = ["Threshold", "NeuronPaths"]

SCORES = ("relevance", "activation")


@dataclass(frozen=True)
class Threshold:
    """Curves of :meth:`NeuronPaths.tune_threshold` over the grid of ``c`` (our definition).

    Attributes
    ----------
    grid : tuple of float
        The multipliers ``c``.
    kept_fraction : torch.Tensor
        (n_c, batch, L): kept units per layer.
    nmse, smape : torch.Tensor
        (n_c, batch): errors of the restricted heatmap against the full one.
    kept_relevance : torch.Tensor
        (n_c, batch): joint relevance ``R(S_Λ)`` of the kept units of all layers.
    score_ratio : torch.Tensor
        (n_c, batch): class score with the unkept units zeroed over the class score.
    chosen : float
        The ``c`` with the smallest mean kept fraction among those with mean nMSE ≤
        ``max_error``; if none, the ``c`` with the smallest mean nMSE (``met`` False).
    met : bool
        Whether ``chosen`` meets ``max_error``.
    """

    grid: tuple[float, ...]
    kept_fraction: torch.Tensor
    nmse: torch.Tensor
    smape: torch.Tensor
    kept_relevance: torch.Tensor
    score_ratio: torch.Tensor
    chosen: float
    met: bool


class NeuronPaths:
    """Neuron graphs, top-k paths and their heatmaps on top of one :class:`~zennit_ext.NRM`.

    Every method opens one NRM explanation (one forward pass and one checked pass) for its
    inputs and composes its queries.

    Parameters
    ----------
    model : torch.nn.Module
        A feed-forward network (as for :class:`~zennit_ext.NRM`).
    layers : sequence of str
        Layers whose units form the graph, bottom → top (names from ``model.named_modules()``).
        Units are channels of (batch, C, ...) outputs and neurons of (batch, n) outputs.
    composite, canonizers, on_violation, messages_per_pass, show_progress, fast
        Every option of :class:`~zennit_ext.NRM`, with its default, passed on to the NRM
        built here.

    Examples
    --------
    >>> paths = NeuronPaths(model, ['features.0', 'features.3', 'features.6'])  # doctest: +SKIP
    >>> graph = paths.graph(x, target)                   # c = 1: the paper's threshold
    >>> top = graph.top_paths(k=5)
    >>> heat = paths.heatmap(x, target, top)             # like x
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        composite: Composite | None = None,
        canonizers: list | None = None,
        on_violation: str = "raise",
        messages_per_pass: int = 64,
        show_progress: bool = False,
        fast: bool = True,
    ) -> None:
        self.nrm = NRM(
            model,
            layers,
            composite=composite,
            canonizers=canonizers,
            on_violation=on_violation,
            messages_per_pass=messages_per_pass,
            show_progress=show_progress,
            fast=fast,
        )
        if len(self.nrm.layers) != len(layers):
            raise ValueError(f"layers must be distinct, got {list(layers)!r}")
        self.model = model
        self.layers = tuple(self.nrm.layers)

    # ----------------------------------------------------------------------------- public API

    def graph(
        self,
        x: torch.Tensor,
        target: Any,
        c: float = 1.0,
        score: str = "relevance",
        *,
        relevance: str = "nrm",
    ) -> NeuronGraph:
        """The neuron graph of ``x``: unit scores, kept units (``mean − c·σ``) and edges.

        Parameters
        ----------
        x : torch.Tensor
            (batch, ...) inputs.
        target : int, tuple, list, torch.Tensor or None
            Captum's ``TargetType``, or output relevance (as in :meth:`NRM.explain`).
        c : float
            Threshold multiplier of :func:`select_units`.
        score : {'relevance', 'activation'}
            What selects the kept units: relevance (the paper's "difference of forward and
            backward results", read as relevance) or the activation, summed over space.
        relevance : {'nrm', 'lrp'}
            The unit relevance (node weights, and the selection with ``score='relevance'``):
            NRM's marginal ``R(n_l = i)`` (default), or plain LRP relevance with the same
            rules, as in the paper's Algorithm 1 (:func:`~zennit_ext.paths.scores.
            lrp_unit_relevance`, one more forward and backward pass). The edges, and the
            output node's edges, are NRM joint relevance either way.

        Returns
        -------
        NeuronGraph
        """
        real_number("c", c)
        self._check_score(score)
        lrp = self._lrp_scores(x, target, relevance)
        with self._explain(x, target) as (explanation, activation, _):
            nrm = self._unit_relevance(explanation)
            edges = explanation.consecutive_edges(level="channel")
        pairs = list(zip(self.layers[:-1], self.layers[1:], strict=True))
        missing = [pair for pair in pairs if pair not in edges]
        if missing:
            raise ValueError(
                f"layers must be given bottom → top in forward order; NRM has no edges for "
                f"{missing} (it has {list(edges)})"
            )
        scores = nrm if score == "relevance" else activation
        kept = {name: select_units(scores[name], c) for name in self.layers}
        graph = NeuronGraph(
            self.layers, nrm, activation, kept, {p: edges[p] for p in pairs}, float(c), score
        )
        return graph if lrp is None else graph.with_relevance(lrp, "lrp")

    def unit_relevance(
        self, x: torch.Tensor, target: Any, relevance: str = "nrm"
    ) -> dict[str, torch.Tensor]:
        """Spatially summed relevance of every unit, ``{layer: (batch, n_units)}``.

        ``relevance='nrm'``: NRM's marginals ``R(n_l = i)`` (they sum to at most 1 per layer);
        ``'lrp'``: plain LRP with the NRM composite's rules, unnormalized
        (:func:`~zennit_ext.paths.scores.lrp_unit_relevance`).
        """
        self._check_relevance(relevance)
        if relevance == "lrp":
            base = self.nrm.composite.base
            return lrp_unit_relevance(self.model, base, self.nrm.modules, x, target)
        with self._explain(x, target) as (explanation, _, _):
            return self._unit_relevance(explanation)

    def path_relevance(self, x: torch.Tensor, target: Any, paths: Paths) -> torch.Tensor:
        """Exact NRM joint relevance of each path (all walks through its L units), (batch, k)."""
        with self._explain(x, target) as (explanation, _, shapes):
            conditions = self._path_sets(paths, shapes, len(x))
            return explanation.joint_many(conditions).T

    def heatmap(self, x: torch.Tensor, target: Any, paths: Paths) -> torch.Tensor:
        """Relevance-based k-path heatmap, like ``x``: Σ over paths of their NRM joint heatmaps.

        Distinct paths have disjoint sets of walks, so this is the input relevance of the
        walks that follow any one of the paths.
        """
        with self._explain(x, target) as (explanation, _, shapes):
            conditions = self._path_sets(paths, shapes, len(x))
            return explanation.heatmaps(conditions).sum(0)

    def restricted_heatmap(
        self,
        x: torch.Tensor,
        target: Any,
        c: float = 1.0,
        score: str = "relevance",
        *,
        relevance: str = "nrm",
    ) -> torch.Tensor:
        """NRM heatmap of the walks through kept units only (in every layer), like ``x``.

        The units are kept as in :meth:`graph` (``score``, ``relevance``).
        """
        real_number("c", c)
        self._check_score(score)
        lrp = self._lrp_scores(x, target, relevance)
        with self._explain(x, target) as (explanation, activation, shapes):
            if score == "activation":
                scores = activation
            else:
                scores = self._unit_relevance(explanation) if lrp is None else lrp
            kept = {name: select_units(scores[name], c) for name in self.layers}
            return explanation.heatmap(self._kept_sets(kept, shapes))

    def tune_threshold(
        self,
        x: torch.Tensor,
        target: Any,
        grid: Sequence[float] = (1, 0.5, 0, -0.5, -1, -1.5, -2),
        max_error: float = 0.05,
        *,
        relevance: str = "nrm",
    ) -> Threshold:
        """Error of the restricted heatmap against the full one over a grid of ``c``.

        Our definition (the paper tunes by "averaging MSE" without details). Per ``c`` and
        sample, over the colour-summed pixels of the restricted heatmap ``H_c`` (the NRM
        heatmap of the walks through the units kept by ``relevance``, see :meth:`graph`) and
        the full NRM heatmap ``H``: nMSE = mean((H_c − H)²) / mean(H²), ``SMAPE = mean
        2|H_c − H| / (|H_c| + |H|)`` with 0/0 := 0; the kept relevance ``R(S_Λ)`` (the sum of
        ``H_c``); and the ratio of the class score with every unkept unit's output set to 0
        to the class score. ``chosen`` is the ``c`` with the smallest mean kept fraction whose
        mean nMSE is ≤ ``max_error``.

        Returns
        -------
        Threshold
        """
        if isinstance(grid, str | bytes) or not isinstance(grid, Sequence) or not grid:
            raise ValueError(f"grid must be a non-empty sequence of numbers, got {grid!r}")
        grid = tuple(real_number("grid values", value) for value in grid)
        if len(set(grid)) != len(grid):
            raise ValueError(f"grid must not repeat values, got {grid!r}")
        if real_number("max_error", max_error) <= 0:
            raise ValueError(f"max_error must be positive, got {max_error!r}")
        lrp = self._lrp_scores(x, target, relevance)
        with self._explain(x, target) as (explanation, _, shapes):
            scores = self._unit_relevance(explanation) if lrp is None else lrp
            kept = [{n: select_units(scores[n], c) for n in self.layers} for c in grid]
            restricted = explanation.heatmaps([self._kept_sets(k, shapes) for k in kept])
            full = explanation.heatmap()
        plane, restricted_plane = _colour_sum(full, x.dim()), _colour_sum(restricted, x.dim())
        difference = restricted_plane - plane
        nmse = _ratio(difference.square().mean(-1), plane.square().mean(-1))
        smape = _ratio(2 * difference.abs(), restricted_plane.abs() + plane.abs()).mean(-1)
        fraction = torch.stack(
            [torch.stack([k[n].to(x.dtype).mean(1) for n in self.layers], 1) for k in kept]
        )
        class_scores = torch.stack([self._class_score(x, target, k) for k in kept])
        baseline = self._class_score(x, target, None)
        mean_nmse, mean_kept = nmse.mean(1), fraction.mean((1, 2))
        feasible = (mean_nmse <= max_error).nonzero()[:, 0]
        if len(feasible):
            index = int(feasible[mean_kept[feasible].argmin()])
        else:
            index = int(mean_nmse.argmin())
        return Threshold(
            grid,
            fraction,
            nmse,
            smape,
            restricted.flatten(2).sum(2),
            class_scores / baseline,
            grid[index],
            bool(len(feasible)),
        )

    def deconvolution(
        self,
        x: torch.Tensor,
        paths: Paths,
        layer: str | None = None,
        rectifiers: Sequence[type[nn.Module]] = (nn.ReLU,),
    ) -> torch.Tensor:
        """Activation-based view of the paths' units: deconvolution (Zeiler & Fergus), like x.

        The paper's Algorithm 3 (:func:`zennit_ext.paths.views.deconvolution`): zero every
        map of ``layer`` but the channels the paths visit there, unpool with the max
        switches, rectify, transposed convolutions without bias, down to the pixels.

        Parameters
        ----------
        x : torch.Tensor
            (batch, ...) inputs.
        paths : Paths
            From :meth:`NeuronGraph.top_paths` of these inputs.
        layer : str, optional
            One of ``layers``; default the top one.
        rectifiers : sequence of module classes
            The rectifier modules of the model, a subset of (nn.ReLU, nn.ReLU6); every one of
            them is rectified in the backward pass. Any other activation module raises.

        Raises
        ------
        TypeError
            If the model has an activation module that is not one of ``rectifiers``.
        """
        layer = self.layers[-1] if layer is None else layer
        index = self._layer_index(layer)
        self._check_paths(paths, len(x))
        module = self.nrm.modules[layer]
        return views.deconvolution(self.model, module, x, paths.units[:, :, index], rectifiers)

    def reconstruct_block(
        self,
        x: torch.Tensor,
        units: Paths | torch.Tensor,
        layer: str | None = None,
        rectifiers: Sequence[type[nn.Module]] = (nn.ReLU,),
    ) -> torch.Tensor:
        """The paper's Algorithm 2: the input of ``layer``'s block rebuilt from kept channels.

        ``layer`` (a ``Conv2d``), its rectifiers and the ``MaxPool2d`` right after them (if
        any) form the block: pool its output with the switches, zero every channel but the
        kept ones, unpool, transposed convolution with ``layer``'s weights
        (:func:`zennit_ext.paths.views.block_reconstruction`). Unlike :meth:`deconvolution`
        it stops at the block's input (the feature maps of the layer below), not the pixels.

        Parameters
        ----------
        x : torch.Tensor
            (batch, C, H, W) inputs.
        units : Paths or torch.Tensor
            The paths (their channels in ``layer`` are kept), or a bool (batch, C_out) mask,
            e.g. ``graph.kept[layer]``.
        layer : str, optional
            One of ``layers``; default the top one.
        rectifiers : sequence of module classes
            Rectifiers between the convolution and the pool, a subset of (nn.ReLU, nn.ReLU6).

        Returns
        -------
        torch.Tensor
            (batch, C_in, H_in, W_in), like ``layer``'s input.
        """
        layer = self.layers[-1] if layer is None else layer
        index = self._layer_index(layer)
        module = self.nrm.modules[layer]
        if isinstance(units, Paths):
            self._check_paths(units, len(x))
            channels = getattr(module, "out_channels", None)
            if not isinstance(channels, int):
                raise TypeError(f"layer {layer!r} must be an nn.Conv2d, got {module!r}")
            keep = torch.zeros(len(x), channels, dtype=torch.bool, device=x.device)
            keep = keep.scatter(1, units.units[:, :, index].to(x.device), True)
        elif isinstance(units, torch.Tensor):
            keep = units
        else:
            raise TypeError(f"units must be a Paths or a bool tensor, got {type(units).__name__}")
        return views.block_reconstruction(self.model, module, x, keep, rectifiers)

    def activation_heatmap(self, x: torch.Tensor, paths: Paths) -> torch.Tensor:
        """Activation-based k-path heatmap (the paper's Fig. 7; our definition), (batch, H, W).

        Σ over the paths and their layers of the unit's activation map (the layer's output
        channel), resized to the input's spatial size and divided by the layer's largest
        absolute activation (:func:`zennit_ext.paths.views.activation_heatmap`). One forward
        pass.

        Parameters
        ----------
        x : torch.Tensor
            (batch, C, H, W) inputs.
        paths : Paths
            From :meth:`NeuronGraph.top_paths` of these inputs.
        """
        self._check_paths(paths, len(x))
        if x.dim() != 4:
            raise ValueError(f"x must be a (batch, C, H, W) image batch, got {tuple(x.shape)}")
        outputs = views.layer_outputs(self.model, self.nrm.modules, x)
        return views.activation_heatmap(outputs, paths.units, x.shape[-2:])

    # -------------------------------------------------------------------------- the machinery

    @contextlib.contextmanager
    def _explain(self, x: torch.Tensor, target: Any) -> Iterator[tuple]:
        """One NRM explanation, with the layers' spatially summed outputs and output shapes."""
        activation: dict[str, torch.Tensor] = {}
        shapes: dict[str, torch.Size] = {}

        def capture(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
                shapes[name] = output.shape
                activation[name] = unit_sums(output.detach())

            return hook

        handles = [
            self.nrm.modules[name].register_forward_hook(capture(name)) for name in self.layers
        ]
        try:
            with self.nrm.explain(x, target) as explanation:
                for handle in handles:
                    handle.remove()
                yield explanation, activation, shapes
        finally:
            for handle in handles:
                handle.remove()

    def _unit_relevance(self, explanation: Any) -> dict[str, torch.Tensor]:
        relevance = explanation.layer_relevance()
        return {name: unit_sums(relevance[name]) for name in self.layers}

    @staticmethod
    def _check_score(score: str) -> None:
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")

    @staticmethod
    def _check_relevance(relevance: str) -> None:
        if relevance not in RELEVANCES:
            raise ValueError(f"relevance must be one of {RELEVANCES}, got {relevance!r}")

    def _lrp_scores(self, x: torch.Tensor, target: Any, relevance: str) -> dict | None:
        """LRP unit relevance for ``relevance='lrp'`` (before NRM's hooks go on), else None."""
        self._check_relevance(relevance)
        return self.unit_relevance(x, target, "lrp") if relevance == "lrp" else None

    def _layer_index(self, layer: str) -> int:
        if layer not in self.layers:
            raise ValueError(f"layer must be one of {list(self.layers)}, got {layer!r}")
        return self.layers.index(layer)

    def _check_paths(self, paths: Paths, batch: int) -> None:
        if not isinstance(paths, Paths):
            raise TypeError(f"paths must be a Paths (NeuronGraph.top_paths), got {paths!r}")
        if paths.layers != self.layers or paths.units.shape[0] != batch:
            raise ValueError(
                f"paths are for layers {list(paths.layers)} and batch {paths.units.shape[0]}; "
                f"expected layers {list(self.layers)} and batch {batch}"
            )

    def _path_sets(self, paths: Paths, shapes: Mapping, batch: int) -> list[dict]:
        """One condition per path rank: per layer a per-sample one-unit boolean mask."""
        self._check_paths(paths, batch)
        conditions = []
        for rank in range(paths.units.shape[1]):
            conditions.append(
                {
                    name: _unit_mask(paths.units[:, rank, depth], shapes[name])
                    for depth, name in enumerate(self.layers)
                }
            )
        return conditions

    @staticmethod
    def _kept_sets(kept: Mapping[str, torch.Tensor], shapes: Mapping) -> dict:
        return {
            name: mask.view(*mask.shape, *[1] * (len(shapes[name]) - 2))
            for name, mask in kept.items()
        }

    def _class_score(self, x: torch.Tensor, target: Any, kept: Mapping | None) -> torch.Tensor:
        """Class score per sample, (batch,), with the unkept units' outputs set to 0."""

        def zero_unkept(name: str, keep: torch.Tensor) -> Callable[..., torch.Tensor]:
            def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
                mask = keep.to(output.dtype)
                return output * mask.view(*mask.shape, *[1] * (output.dim() - 2))

            return hook

        handles = []
        try:
            if kept is not None:
                handles = [
                    self.nrm.modules[n].register_forward_hook(zero_unkept(n, kept[n]))
                    for n in self.layers
                ]
            with torch.no_grad():
                output = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        if isinstance(target, torch.Tensor) and target.is_floating_point():
            return (output * target.to(output)).sum(1)
        index = parse_target(target, len(output), output.shape).to(output.device)
        rows = torch.arange(len(output), device=output.device)
        return output[(rows, *index.t())].reshape(len(output))


def _unit_mask(units: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Bool (batch, C, 1, ...): one unit per sample, broadcastable to ``shape``."""
    mask = torch.zeros(shape[:2], dtype=torch.bool, device=units.device)
    mask[torch.arange(len(units), device=units.device), units] = True
    return mask.view(*mask.shape, *[1] * (len(shape) - 2))


def _colour_sum(heatmap: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per sample pixels: (..., batch, C, H, W) → (..., batch, H·W) for images (``ndim`` 4),
    else the sample's values flattened."""
    if ndim == 4:
        return heatmap.sum(-3).flatten(-2)
    return heatmap.flatten(heatmap.dim() - ndim + 1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator with 0/0 := 0 (and x/0 := inf for x > 0)."""
    safe = torch.where(denominator != 0, denominator, 1.0)
    zero_case = torch.where(numerator == 0, 0.0, math.inf).to(numerator.dtype)
    return torch.where(denominator != 0, numerator / safe, zero_case)
