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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from zennit.core import Composite

from zennit_ext._checks import parse_target, real_number
from zennit_ext.nrm.api import NRM
from zennit_ext.nrm.sets import per_sample_mask, unit_count
from zennit_ext.paths import views
from zennit_ext.paths.graph import NeuronGraph, Paths, select_units
from zennit_ext.paths.scores import RELEVANCES, lrp_unit_relevance, unit_sums
from zennit_ext.paths.threshold import Threshold, tune_threshold

__all__ = ["Threshold", "NeuronPaths"]  # Threshold lives in .threshold

SCORES = ("relevance", "activation")


class NeuronPaths:
    """Neuron graphs, top-k paths and their heatmaps on top of one :class:`~zennit_ext.NRM`.

    Every method opens one NRM explanation (one forward pass and one checked pass) for its
    inputs and composes its queries.

    Parameters
    ----------
    model : torch.nn.Module
        A feed-forward network (as for :class:`~zennit_ext.NRM`).
    layers : sequence of str
        Layers whose units form the graph, bottom → top (names from ``model.named_modules()``,
        or of modules the canonizers attach, as for :class:`~zennit_ext.NRM`).
    level : str or mapping of str to str
        The units of every layer, or ``{layer: level}``: ``'channel'`` (default: channels of
        (batch, C, ...) outputs, neurons of (batch, n) outputs), ``'token'`` or
        ``'feature'`` of a transformer block's (batch, T, D) output (e.g. MLP neurons),
        ``'head'`` of an attention's weighting output (see :data:`zennit_ext.nrm.sets.LEVELS`).
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
        level: str | Mapping[str, str] = "channel",
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
        self.levels = _levels(level, self.layers)

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
            edges = explanation.consecutive_edges(level=self.levels)
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
            self._check_own_modules("relevance='lrp'")
            return lrp_unit_relevance(self.model, base, self.nrm.modules, x, target, self.levels)
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
        return tune_threshold(self, x, target, grid, max_error, relevance)

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
        self._check_channels("deconvolution")
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
        self._check_channels("reconstruct_block")
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
        self._check_channels("activation_heatmap")
        if x.dim() != 4:
            raise ValueError(f"x must be a (batch, C, H, W) image batch, got {tuple(x.shape)}")
        outputs = views.layer_outputs(self.model, self.nrm.modules, x)
        return views.activation_heatmap(outputs, paths.units, x.shape[-2:])

    # -------------------------------------------------------------------------- the machinery

    @contextlib.contextmanager
    def _explain(self, x: torch.Tensor, target: Any) -> Iterator[tuple]:
        """One NRM explanation, with the layers' outputs summed per unit and their shapes."""
        with self.nrm.explain(x, target) as explanation:
            outputs = explanation.session.outputs
            shapes = {name: outputs[name].shape for name in self.layers}
            activation = {
                name: unit_sums(outputs[name].detach(), self.levels[name]) for name in self.layers
            }
            yield explanation, activation, shapes

    def _unit_relevance(self, explanation: Any) -> dict[str, torch.Tensor]:
        relevance = explanation.layer_relevance()
        return {name: unit_sums(relevance[name], self.levels[name]) for name in self.layers}

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
                    name: self._one_unit(paths.units[:, rank, depth], name, shapes[name])
                    for depth, name in enumerate(self.layers)
                }
            )
        return conditions

    def _one_unit(self, units: torch.Tensor, name: str, shape: torch.Size) -> torch.Tensor:
        """Bool mask of one unit per sample (``units``: (batch,)), broadcastable to ``shape``."""
        count = unit_count(self.levels[name], shape)
        selected = torch.zeros(len(units), count, dtype=torch.bool, device=units.device)
        selected[torch.arange(len(units), device=units.device), units] = True
        return per_sample_mask(selected, self.levels[name], shape)

    def _kept_sets(self, kept: Mapping[str, torch.Tensor], shapes: Mapping) -> dict:
        return {
            name: per_sample_mask(mask, self.levels[name], shapes[name])
            for name, mask in kept.items()
        }

    def _check_own_modules(self, what: str) -> None:
        """Raise if a layer is a module the canonizers attach (it exists only while open)."""
        attached = [name for name in self.layers if name not in self.nrm.modules]
        if attached:
            raise ValueError(
                f"{what} needs the model's own modules; layers {attached} are attached by "
                "canonizers"
            )

    def _check_channels(self, what: str) -> None:
        """Raise unless every layer's units are channels (the image views need them)."""
        others = {n: level for n, level in self.levels.items() if level != "channel"}
        if others:
            raise ValueError(f"{what} needs level 'channel' on every layer, got {others}")

    def _class_score(self, x: torch.Tensor, target: Any, kept: Mapping | None) -> torch.Tensor:
        """Class score per sample, (batch,), with the unkept units' outputs set to 0."""

        def zero_unkept(name: str, keep: torch.Tensor) -> Callable[..., torch.Tensor]:
            def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
                mask = per_sample_mask(keep.to(output.dtype), self.levels[name], output.shape)
                return output * mask

            return hook

        handles = []
        if kept is not None:
            self._check_own_modules("zeroing the unkept units")
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


def _levels(level: str | Mapping[str, str], layers: Sequence[str]) -> dict[str, str]:
    """``{layer: level}`` for every layer, from one level or a mapping over all of them."""
    if isinstance(level, str):
        return dict.fromkeys(layers, level)
    if not isinstance(level, Mapping) or set(level) != set(layers):
        raise ValueError(
            f"level must be a level or a mapping with one level per layer {list(layers)}, "
            f"got {level!r}"
        )
    return {name: level[name] for name in layers}
