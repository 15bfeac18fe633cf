"""NRM: normalized joint, marginal and conditional relevance of neuron sets across layers.

Implements the framework of ``papers/nrm-normalized-relevance.txt`` (equations in
``notes/nrm-equations.md``). A :class:`NormalizedComposite` makes every layer pass on exactly
the relevance it receives (eq. 17) and the output relevance sums to 1 (eq. 18), so relevance
is a normalized measure on the walks through the network. By Theorem 1 the joint relevance of
sets ``S_l`` on several layers is a masked message passing: starting from the output, the
message is multiplied by the set's mask at each set layer on its way down, and the relevance
is the total message arriving at the input.

Conditions (different sets) run together along a new leading axis: the message is computed
once down to the top set layer, then masked per condition and pushed through each segment of
the network with one batched partial backward (``is_grads_batched``), which reuses the
layer's forward quantities for all conditions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from zennit.core import Composite

from zennit_ext.neuron_sets import SetSpec, reduce_units, set_mask, unit_count, unit_masks
from zennit_ext.normalize import NormalizedComposite, NormalizedHook, nrm_composite

__all__ = ["NRM"]

Sets = Mapping[str, SetSpec]
Level = str | torch.Tensor


class _Pass:
    """One registered forward pass: input, output and its normalized relevance, the captured
    layer outputs and the order in which the layers ran."""

    def __init__(
        self, inputs: torch.Tensor, output: torch.Tensor, relevance: torch.Tensor,
        outputs: dict[str, torch.Tensor], order: list[str],
    ) -> None:  # fmt: skip
        self.inputs, self.output, self.relevance = inputs, output, relevance
        self.outputs, self.order = outputs, order

    def shape(self, name: str) -> torch.Size:
        return self.outputs[name].shape

    def descending(self, names: Sequence[str]) -> list[str]:
        """``names`` from the layer closest to the output down to the input."""
        return sorted(names, key=self.order.index, reverse=True)


class NRM:
    """Normalized relevance of neuron sets (joint, marginal, conditional, pairwise, additive).

    Parameters
    ----------
    model : torch.nn.Module
        A feed-forward network; residual adds need a canonizer that makes them Zennit ``Sum``
        modules. Its train/eval mode is not changed.
    layers : sequence of str
        Names (as in ``model.named_modules()``) of the layers whose output neurons may carry
        sets. They must lie on one path from input to output.
    composite : zennit.core.Composite, optional
        Rules of the unnormalized propagation (eq. 14). Default :func:`nrm_composite`: γ on
        convolutions, z⁺ on dense layers, flat on the first layer (use
        ``nrm_composite(low, high)`` for the box rule).
    canonizers : list, optional
        Canonizers of the default composite (give them to ``composite`` otherwise).
    on_violation : {'raise', 'warn'}
        What a negative column sum at a neuron carrying relevance (eq. 15) does.
    batch_size : int
        Conditions per batched backward pass.
    progress : bool
        Progress bar over condition batches (shown only on a terminal).

    Examples
    --------
    >>> nrm = NRM(model, layers=['features.26', 'features.28'])          # doctest: +SKIP
    >>> nrm.joint(x, target, sets={'features.26': [3], 'features.28': [7]})
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        composite: Composite | None = None,
        canonizers: list | None = None,
        on_violation: str = "raise",
        batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(layers, str) or not layers:
            raise TypeError(f"layers must be a non-empty sequence of module names, got {layers!r}")
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules or name == ""]
        if unknown:
            raise ValueError(
                f"layers {unknown} are not modules of the model; "
                f"expected names from model.named_modules(), e.g. {list(modules)[1:6]}"
            )
        if composite is not None and canonizers is not None:
            raise ValueError("give canonizers to the composite, not to NRM, when composite= is set")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.modules = {name: modules[name] for name in self.layers}
        base = composite if composite is not None else nrm_composite(canonizers=canonizers)
        self.composite = NormalizedComposite(base, on_violation=on_violation)
        self.batch_size = batch_size
        self.progress = progress

    # ----------------------------------------------------------------------------- public API

    def joint(
        self, x: torch.Tensor, target: Any, sets: Sets, level: str = "neuron"
    ) -> torch.Tensor:
        """Joint relevance ``R(S_Λ)`` of the walks through every set (eq. 9, 24–25).

        Parameters
        ----------
        x : torch.Tensor
            Input batch, (batch, ...).
        target : int, sequence of int, or torch.Tensor
            Explained class per sample ((batch,) or one int), or unnormalized output
            relevance r̃ of shape (batch, n_outputs) with a positive sum per sample (eq. 13).
        sets : mapping of str to indices or boolean mask
            ``{layer: set}``; see :func:`zennit_ext.neuron_sets.set_mask`.
        level : {'neuron', 'channel'}
            How integer indices are read.

        Returns
        -------
        torch.Tensor
            Shape (batch,).
        """
        return self.heatmap(x, target, sets, level).flatten(1).sum(1)

    def marginal(
        self, x: torch.Tensor, target: Any, layer: str, units: SetSpec, level: str = "neuron"
    ) -> torch.Tensor:
        """Marginal relevance ``R(n_layer ∈ units)``, shape (batch,): one-layer :meth:`joint`."""
        return self.joint(x, target, {layer: units}, level)

    def conditional(
        self, x: torch.Tensor, target: Any, sets: Sets, given: Sets, level: str = "neuron"
    ) -> torch.Tensor:
        """Conditional relevance ``R(S | G) = R(S, G) / R(G)`` (eq. 11), shape (batch,).

        Where ``R(G)`` is 0 the conditional is defined as 0. A layer in both ``sets`` and
        ``given`` is conditioned on the intersection of its two sets.
        """
        self._check_sets(sets, "sets")
        self._check_sets(given, "given")
        both = {**given, **sets}
        shared = set(sets) & set(given)
        with self._session(x, target) as run:
            masks = [self._masks(run, given, level), self._masks(run, both, level)]
            for name in shared:
                masks[1][name] = masks[1][name] * set_mask(
                    given[name], run.shape(name), level, name
                )
            denominator, numerator = self._propagate(run, masks).flatten(2).sum(2)
        safe = torch.where(denominator != 0, denominator, 1.0)
        return torch.where(denominator != 0, numerator / safe, 0.0)

    def heatmap(
        self, x: torch.Tensor, target: Any, sets: Sets | None = None, level: str = "neuron"
    ) -> torch.Tensor:
        """Input relevance of the walks through the sets (eq. 37; CRP-style), shape of ``x``.

        Without sets it is the normalized LRP heatmap, which sums to 1 per sample.
        """
        sets = {} if sets is None else sets
        self._check_sets(sets, "sets")
        with self._session(x, target) as run:
            return self._propagate(run, [self._masks(run, sets, level)])[0]

    def heatmaps(
        self, x: torch.Tensor, target: Any, conditions: Sequence[Sets], level: str = "neuron"
    ) -> torch.Tensor:
        """:meth:`heatmap` of many set combinations in batched passes, (n_conditions, *x.shape)."""
        for index, sets in enumerate(conditions):
            self._check_sets(sets, f"conditions[{index}]")
        with self._session(x, target) as run:
            return self._propagate(run, [self._masks(run, sets, level) for sets in conditions])

    def joint_many(
        self, x: torch.Tensor, target: Any, conditions: Sequence[Sets], level: str = "neuron"
    ) -> torch.Tensor:
        """:meth:`joint` of many set combinations in batched passes, (n_conditions, batch)."""
        return self.heatmaps(x, target, conditions, level).flatten(2).sum(2)

    def additive(
        self, x: torch.Tensor, target: Any, sets: Sets, level: str = "neuron"
    ) -> torch.Tensor:
        """Additive relevance of a neuron set spread over layers (Def. 3, §3.5.2), (batch,).

        Every walk spreads its relevance equally over the ``L + 1`` neurons it visits, so
        ``R_add(S) = Σ_l R(n_l ∈ S_l) / (L + 1)``: additive over neurons of the whole network.
        ``L`` counts the layers with a (normalized) ``BasicHook`` rule; activations, pooling
        and flattening do not add walk steps.
        """
        self._check_sets(sets, "sets")
        with self._session(x, target) as run:
            masks = [self._masks(run, {name: spec}, level) for name, spec in sets.items()]
            marginals = self._propagate(run, masks).flatten(2).sum(2)
            hooks = self.composite.hooked.values()
            steps = sum(isinstance(hook, NormalizedHook) for hook in hooks)
        return marginals.sum(0) / (steps + 1)

    def pairwise(
        self,
        x: torch.Tensor,
        target: Any,
        layer_a: str,
        layer_b: str,
        level: Level | Mapping[str, Level] = "channel",
    ) -> torch.Tensor:
        """Joint relevance ``R(n_a = i, n_b = j)`` of every pair of units, (batch, |A|, |B|).

        The message at the upper layer is masked to each of its units, all these messages go
        down to the lower layer in batched partial backward passes, and all lower units are
        read at once.

        Parameters
        ----------
        x, target
            As in :meth:`joint`.
        layer_a, layer_b : str
            Two of ``layers``, in either order; the result's axes follow the argument order.
        level : {'neuron', 'channel'}, torch.Tensor, or mapping
            Unit kind for both layers, or per layer ``{name: level}``; a tensor gives stacked
            boolean unit masks (n_units, batch or 1, ...), e.g. from
            :func:`~zennit_ext.neuron_sets.cluster_masks`.
        """
        return self.interactions(x, target, [layer_a, layer_b], level)

    def interactions(
        self,
        x: torch.Tensor,
        target: Any,
        layers: Sequence[str],
        level: Level | Mapping[str, Level] = "channel",
    ) -> torch.Tensor:
        """Joint relevance of every combination of one unit per layer, (batch, |L1|, |L2|, …).

        The generalization of :meth:`pairwise` to any number of layers (e.g. triples).
        """
        if len(set(layers)) != len(layers) or len(layers) < 2:
            raise ValueError(f"layers must be at least two distinct layer names, got {layers!r}")
        self._check_sets(dict.fromkeys(layers), "layers")
        levels = level if isinstance(level, Mapping) else dict.fromkeys(layers, level)
        with self._session(x, target) as run:
            ordered = run.descending(layers)
            table = self._interactions(run, ordered, {name: levels[name] for name in ordered})
        # table axes: (batch, lowest, ..., top); reorder to the argument order
        position = {name: axis + 1 for axis, name in enumerate(reversed(ordered))}
        return table.permute(0, *[position[name] for name in layers])

    def top_interactions(
        self,
        x: torch.Tensor,
        target: Any,
        layers: Sequence[str],
        k: int = 5,
        level: Level | Mapping[str, Level] = "channel",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most relevant unit combinations per sample.

        Returns
        -------
        indices : torch.Tensor
            Shape (batch, k, len(layers)): unit index per layer, in the order of ``layers``.
        values : torch.Tensor
            Shape (batch, k): their joint relevance, descending.
        """
        table = self.interactions(x, target, layers, level)
        if not isinstance(k, int) or not 1 <= k <= table[0].numel():
            raise ValueError(f"k must be an int in [1, {table[0].numel()}], got {k!r}")
        values, flat = table.flatten(1).topk(k, dim=1)
        indices = torch.stack(torch.unravel_index(flat, table.shape[1:]), dim=-1)
        return indices, values

    # -------------------------------------------------------------------------- the machinery

    def _check_sets(self, sets: Mapping, argument: str) -> None:
        if not isinstance(sets, Mapping):
            raise TypeError(
                f"{argument} must be a mapping {{layer: set}}, got {type(sets).__name__}"
            )
        outside = [name for name in sets if name not in self.modules]
        if outside:
            raise ValueError(
                f"{argument} names layers {outside} that are not in NRM's layers {self.layers}"
            )

    @contextlib.contextmanager
    def _session(self, x: torch.Tensor, target: Any) -> Iterator[_Pass]:
        """Register the normalized rules, run the forward pass, check eq. 15 once, clean up."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise TypeError(f"x must be a (batch, ...) tensor, got {type(x).__name__}")
        outputs: dict[str, torch.Tensor] = {}
        order: list[str] = []

        def capture(name: str):
            def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
                outputs[name] = output
                order.append(name)

            return hook

        self.composite.register(self.model)
        handles = []
        try:  # capture hooks come after the composite's: zennit 1.0 wraps the outputs
            handles = [module.register_forward_hook(capture(name)) for name, module in
                       self.modules.items()]  # fmt: skip
            inputs = x.detach().clone().requires_grad_()
            with torch.enable_grad():
                output = self.model(inputs)
            missing = [name for name in self.layers if name not in outputs]
            if missing:
                raise ValueError(f"layers {missing} were not called in the forward pass")
            run = _Pass(inputs, output, self._output_relevance(output, target), outputs, order)
            self.composite.settings.check, self.composite.settings.lost = True, False
            torch.autograd.grad(output, inputs, run.relevance, retain_graph=True)  # eq. 15
            self.composite.settings.check = False
            yield run
        finally:
            self.composite.settings.check = True
            for handle in handles:
                handle.remove()
            self.composite.remove()

    @staticmethod
    def _output_relevance(output: torch.Tensor, target: Any) -> torch.Tensor:
        """Normalized output relevance ``R(n_L = k)`` (eq. 18), shape of ``output``."""
        if output.dim() != 2:
            raise ValueError(
                f"NRM needs a (batch, n_outputs) model output, got {tuple(output.shape)}"
            )
        batch, n_out = output.shape
        if isinstance(target, torch.Tensor) and target.is_floating_point():
            if target.shape != output.shape:
                raise ValueError(
                    f"target relevance must have the output's shape {tuple(output.shape)}, "
                    f"got {tuple(target.shape)}"
                )
            total = target.sum(1, keepdim=True)
            if (total <= 0).any():
                raise ValueError("target relevance must have a positive sum per sample (eq. 16)")
            return (target / total).to(output.dtype)
        index = torch.as_tensor(target).long().reshape(-1)
        if index.numel() == 1:
            index = index.expand(batch)
        if index.numel() != batch or index.min() < 0 or index.max() >= n_out:
            raise ValueError(
                f"target must be one class or one per sample in [0, {n_out}), got {target!r}"
            )
        return nn.functional.one_hot(index, n_out).to(output.dtype)

    def _masks(self, run: _Pass, sets: Mapping, level: str) -> dict[str, torch.Tensor]:
        return {name: set_mask(spec, run.shape(name), level, name) for name, spec in sets.items()}

    def _chunks(self, count: int, size: int, desc: str) -> Iterator[torch.Tensor]:
        chunks = torch.arange(count).split(max(1, size))
        return iter(tqdm(chunks, desc=desc, disable=None if self.progress else True))

    def _segment(self, upper: torch.Tensor, lower: torch.Tensor, messages: torch.Tensor):
        """Push a batch of messages (n, *upper.shape) down to ``lower`` (one partial backward)."""
        (result,) = torch.autograd.grad(
            upper, lower, messages, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        if result is None:
            raise ValueError("NRM's layers must lie on one path from the input to the output")
        return result

    def _propagate(self, run: _Pass, conditions: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Input relevance of the walks through each condition's masks, (n, *x.shape)."""
        names = run.descending({name for masks in conditions for name in masks})
        below = run.outputs[names[0]] if names else run.inputs
        (top,) = torch.autograd.grad(run.output, below, run.relevance, retain_graph=True)
        if not names:
            return top[None].expand(len(conditions), *top.shape)
        results = []
        for chunk in self._chunks(len(conditions), self.batch_size, "NRM conditions"):
            message, upper = top[None], None
            for name in names:
                if upper is not None:
                    message = self._segment(upper, run.outputs[name], message)
                ones = torch.ones(run.shape(name))
                mask = torch.stack([conditions[i].get(name, ones) for i in chunk.tolist()])
                upper, message = run.outputs[name], message * mask
            results.append(self._segment(upper, run.inputs, message))
        return torch.cat(results)

    def _reach(self, run: _Pass, name: str) -> torch.Tensor | float:
        """Fraction of a unit message at each neuron of ``name`` that reaches the input.

        ``Mᵀ 1`` of the normalized propagation below the layer: 1 for every neuron, except
        where relevance ends at a neuron with zero column sum (eq. 17's dead neurons). The
        session's checked pass tells whether any relevance ended; if none did, it is 1.
        """
        if not self.composite.settings.lost:
            return 1.0
        layer = run.outputs[name]
        with torch.enable_grad():
            probe = torch.ones_like(layer, requires_grad=True)
            (heat,) = torch.autograd.grad(layer, run.inputs, probe, retain_graph=True,
                                          create_graph=True)  # fmt: skip
            (reach,) = torch.autograd.grad(heat.sum(), probe, retain_graph=True)
        return reach

    def _interactions(self, run: _Pass, names: list[str], levels: dict[str, Level]) -> torch.Tensor:
        """(batch, n_lowest, ..., n_top) joint relevance, ``names`` from top to lowest."""
        top, lowest = names[0], names[-1]
        counts = [unit_count(levels[name], run.shape(name)) for name in names]
        (message,) = torch.autograd.grad(run.output, run.outputs[top], run.relevance,
                                         retain_graph=True)  # fmt: skip
        reach = self._reach(run, lowest)
        per_top = max(1, self.batch_size // max(1, math.prod(counts[1:-1])))
        blocks = []
        for chunk in self._chunks(counts[0], per_top, "NRM interactions"):
            messages = message[None] * unit_masks(levels[top], run.shape(top), chunk)
            for upper, lower in zip(names[:-1], names[1:], strict=False):
                messages = self._segment(run.outputs[upper], run.outputs[lower], messages)
                if lower != lowest:  # split every message over the units of the next layer
                    units = torch.arange(unit_count(levels[lower], run.shape(lower)))
                    masks = unit_masks(levels[lower], run.shape(lower), units)
                    messages = (messages[:, None] * masks[None]).flatten(0, 1)
            blocks.append(
                reduce_units(messages * reach, levels[lowest], len(run.shape(lowest)) - 1)
            )
        table = torch.cat(blocks).view(*counts[:-1], *blocks[0].shape[1:])  # (top.., B, n_low)
        dims = table.dim()
        return table.permute(dims - 2, dims - 1, *reversed(range(dims - 2)))
