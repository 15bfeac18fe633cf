"""NRM's evaluation (paper §4.1–4.2, notes eq. 34–35): joint contribution by inclusion–exclusion
of unit removals, the baselines LRP / activation / occlusion, Pearson correlation and SC_k.

A *unit* is ``(layer, index)``: a neuron, channel or cluster of a layer's output, or of the input
(layer ``"input"``). Removing units sets their activations to 0 in the forward pass. A *tuple*
holds one unit per layer; its joint contribution is

    C(S_1, …, S_K) = Σ_{T ⊆ {1..K}} (-1)^{|T|} f_c(x with ∪_{t ∈ T} S_t removed).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from zennit.core import Composite

from zennit_ext.nrm.sets import reduce_units, unit_masks

__all__ = ["UnitSpace", "joint_contributions", "baselines", "pearson", "sum_of_contributions"]

INPUT = "input"


class UnitSpace:
    """The units of some layers of one model for one input sample.

    Parameters
    ----------
    model : torch.nn.Module
        Eval-mode model.
    x : torch.Tensor
        One sample, (1, ...).
    levels : mapping of str to level
        ``{layer: 'neuron' | 'channel' | masks}`` for each layer used (``"input"`` allowed).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, levels: Mapping[str, object]):
        self.model, self.x, self.levels = model, x, dict(levels)
        self.modules = dict(model.named_modules())
        self.activations = self._activations()

    def _activations(self) -> dict[str, torch.Tensor]:
        found: dict[str, torch.Tensor] = {INPUT: self.x}
        handles = [
            self.modules[name].register_forward_hook(
                lambda m, a, out, name=name: found.__setitem__(name, out.detach())
            )
            for name in self.levels
            if name != INPUT
        ]
        try:
            with torch.no_grad():
                self.model(self.x)
        finally:
            for handle in handles:
                handle.remove()
        return found

    def masks(self, layer: str, units: torch.Tensor) -> torch.Tensor:
        """(len(units), 1, ...) 0/1 masks of the units of ``layer``."""
        return unit_masks(self.levels[layer], self.activations[layer].shape, units)

    def unit_sums(self, layer: str, values: torch.Tensor) -> torch.Tensor:
        """Sum per unit of per-neuron ``values`` (1, ...) of ``layer``: (n_units,)."""
        return reduce_units(values, self.levels[layer], values.dim() - 1)[0]

    def outputs(
        self, removals: Sequence[Mapping[str, int]], target: int, batch_size: int = 1024
    ) -> torch.Tensor:
        """f_target(x) with at most one unit per layer removed, one row per removal, (n,)."""
        layers = [name for name in self.levels if name != INPUT]
        results = []
        for start in range(0, len(removals), batch_size):
            chunk = removals[start : start + batch_size]
            keep = {n: self._keep(n, [r.get(n, -1) for r in chunk]) for n in self.levels}
            handles = [
                self.modules[name].register_forward_hook(lambda m, a, out, k=keep[name]: out * k)
                for name in layers
            ]
            try:
                with torch.no_grad():
                    x = self.x.expand(len(chunk), *self.x.shape[1:])
                    results.append(self.model(x * keep.get(INPUT, 1.0))[:, target])
            finally:
                for handle in handles:
                    handle.remove()
        return torch.cat(results)

    def _keep(self, layer: str, removed: list[int]) -> torch.Tensor:
        """(n, ...) masks that zero the removed unit of each row (-1: nothing removed)."""
        shape = self.activations[layer].shape
        units = torch.as_tensor(removed)
        present = units >= 0
        keep = torch.ones(len(removed), *shape[1:], dtype=self.x.dtype)
        if present.any():
            chosen = units[present]
            masks = self.masks(layer, chosen.unique())
            lookup = torch.searchsorted(chosen.unique(), chosen)
            keep[present] = 1.0 - masks[lookup, 0].to(keep.dtype)
        return keep


def joint_contributions(
    space: UnitSpace, layers: Sequence[str], tuples: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Joint contribution (eq. 34) and occlusion score of each unit tuple.

    Parameters
    ----------
    space : UnitSpace
        Units of the layers.
    layers : sequence of str
        The K layers, in the order of the tuple columns.
    tuples : np.ndarray
        (n, K) unit indices.
    target : int
        Explained output.

    Returns
    -------
    contribution : np.ndarray
        (n,) inclusion–exclusion of the removals.
    occlusion : np.ndarray
        (n,) ``f(x) − f(x without all K units)``, the Occ baseline (§4.1).
    """
    subsets = [
        s for r in range(len(layers) + 1) for s in itertools.combinations(range(len(layers)), r)
    ]
    keys: dict[tuple, int] = {}
    for row in tuples:
        for subset in subsets:
            keys.setdefault(tuple((k, int(row[k])) for k in subset), len(keys))
    removals = [{layers[k]: unit for k, unit in key} for key in keys]
    values = space.outputs(removals, target).double().numpy()
    contribution = np.zeros(len(tuples))
    for subset in subsets:
        index = [keys[tuple((k, int(row[k])) for k in subset)] for row in tuples]
        contribution += (-1) ** len(subset) * values[index]
    full = [keys[tuple((k, int(row[k])) for k in range(len(layers)))] for row in tuples]
    return contribution, values[keys[()]] - values[full]


def baselines(
    space: UnitSpace, layers: Sequence[str], tuples: np.ndarray, target: int, composite: Composite
) -> dict[str, np.ndarray]:
    """The LRP (sum of marginal LRP relevances) and Act (sum of activations) scores, (n,) each.

    LRP uses the unnormalized rules of ``composite`` (Zennit's ``Gradient``); the relevance of
    a unit is the sum over its neurons of the relevance arriving at the layer's output.
    """
    modules = space.modules
    captured: dict[str, torch.Tensor] = {}
    with composite.context(space.model):
        handles = [
            modules[name].register_forward_hook(
                lambda m, a, out, name=name: captured.__setitem__(name, out)
            )
            for name in layers
            if name != INPUT
        ]  # after the composite: zennit 1.0 wraps outputs
        try:
            x = space.x.clone().requires_grad_()
            with torch.enable_grad():
                output = space.model(x)
            onehot = torch.zeros_like(output)
            onehot[:, target] = 1.0
            names = [name for name in layers if name != INPUT]
            grads = torch.autograd.grad(output, [captured[n] for n in names] + [x], onehot)
        finally:
            for handle in handles:
                handle.remove()
    relevance = dict(zip([*names, INPUT], grads, strict=True))
    lrp = np.zeros(len(tuples))
    act = np.zeros(len(tuples))
    for k, name in enumerate(layers):
        per_unit_r = space.unit_sums(name, relevance[name].detach()).double().numpy()
        per_unit_a = space.unit_sums(name, space.activations[name]).double().numpy()
        lrp += per_unit_r[tuples[:, k]]
        act += per_unit_a[tuples[:, k]]
    return {"LRP": lrp, "Act": act}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN if either side is constant."""
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def sum_of_contributions(score: np.ndarray, contribution: np.ndarray, k_max: int) -> np.ndarray:
    """SC_k for k = 1..k_max: summed joint contribution of the k top-scored tuples."""
    order = np.argsort(-score, kind="stable")[:k_max]
    return np.cumsum(contribution[order])
