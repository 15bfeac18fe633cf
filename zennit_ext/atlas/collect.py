"""The atlas engine: per-unit statistics of one batch and the explicit, mergeable state.

One NRM explanation per batch (one forward pass, one checked backward pass from the output for
each sample's class) gives, per unit of every layer (a channel of a (B, C, ...) output, a neuron
of a (B, n) output):

- ``actmax``: the activation's maximum over space; ``actmean``: its spatial mean;
- ``relmax``: the unit's share of the explained output, ``R(n_l = unit)`` = the spatial sum of
  NRM's normalized relevance at the layer (eq. 9 of "Normalized Relevance Measure as a Unifying
  Framework to Explain Neural Network Latent Structures", arXiv:2606.00557), accumulated in
  float64.

:class:`AtlasState` keeps, per layer and mode, the top-k samples and, per class and unit, exact
sums of the relevance and of the spatial mean activation (:mod:`zennit_ext.atlas.merge`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from zennit_ext._checks import check_finite
from zennit_ext.atlas.merge import FixedSum, empty_topk, merge_topk
from zennit_ext.nrm.api import NRM
from zennit_ext.paths.views import layer_outputs

__all__ = ["MODES", "AtlasState", "batch_statistics", "probe", "evaluating"]

#: Top-k orders: activation maximum over space, spatial mean activation, NRM relevance.
MODES = ("actmax", "actmean", "relmax")


def batch_statistics(nrm: NRM, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict]:
    """Per-unit statistics of one batch, ``{layer: {mode: (B, n_units) float64}}``.

    Parameters
    ----------
    nrm : NRM
        Over the atlas's layers.
    x : torch.Tensor
        (B, ...) inputs on the model's device, in its dtype.
    y : torch.Tensor
        (B,) int64 classes: each sample is explained for its own class.

    Returns
    -------
    dict
        Per layer the modes of :data:`MODES`. The activation is the layer's output in a forward
        pass of the model as it is: read in NRM's own forward pass where no canonizer changed
        the model, else from one more forward pass without them (a canonizer may change a
        layer's output, e.g. a Conv2d with a merged BatchNorm).
    """
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(_recorder(name, outputs))
        for name, module in nrm.modules.items()
    ]
    try:
        with nrm.explain(x, y.to(x.device)) as explanation:
            relevance = explanation.layer_relevance()
            canonized = explanation.canonized
    finally:
        for handle in handles:
            handle.remove()
    if canonized:
        outputs = layer_outputs(nrm.model, nrm.modules, x)
    found = {}
    for name in nrm.layers:
        activation = _spatial(outputs[name]).to(torch.float64)
        found[name] = {
            "actmax": activation.amax(2),
            "actmean": activation.mean(2),
            "relmax": _spatial(relevance[name].detach()).to(torch.float64).sum(2),
        }
        for mode, values in found[name].items():
            check_finite(f"the {mode} statistics of layer {name!r}", values)
    return found


def _recorder(
    name: str, outputs: dict[str, torch.Tensor]
) -> Callable[[nn.Module, object, object], None]:
    """A forward hook keeping a copy of the layer's output taken when it is made (an in-place
    rectifier after the layer cannot change it); the last call of the layer wins, as in
    :func:`~zennit_ext.paths.views.layer_outputs`."""

    def record(module: nn.Module, args: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            outputs[name] = output.detach().clone()

    return record


def probe(
    model: nn.Module, modules: Mapping[str, nn.Module], x: torch.Tensor
) -> tuple[dict[str, int], int]:
    """Units per layer and classes from one forward pass of ``x`` (1, ...) without gradients.

    Raises
    ------
    ValueError
        If a layer is not called, or the model output is not (1, n_classes).
    """
    units: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def record(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                units[name] = output.shape[1]

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in modules if name not in units]
    if missing:
        raise ValueError(
            f"layers {missing} were not called with a (batch, units, ...) tensor output in the "
            "forward pass"
        )
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"the model output must be (batch, n_classes), got {shape}")
    return units, output.shape[1]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the context (no BatchNorm update, no dropout); every module's mode is
    restored on exit, also on error."""
    modes = [module.training for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in zip(model.modules(), modes, strict=True):
            module.training = mode


def _spatial(values: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) → (B, C, positions); (B, n) → (B, n, 1)."""
    return values.flatten(2) if values.dim() > 2 else values[:, :, None]


@dataclass
class _Layer:
    top: dict[str, tuple[torch.Tensor, torch.Tensor]]
    relevance: FixedSum
    activation: FixedSum


@dataclass
class AtlasState:
    """Top-k tables and per-class sums of every layer: everything a fit has learnt.

    Parameters
    ----------
    units : mapping of str to int
        Units per layer.
    n_classes : int
        Model outputs (classes).
    k : int
        Kept samples per unit and mode.

    Attributes
    ----------
    layers : dict of str to _Layer
        Per layer: ``top[mode] = (values (n_units, k) float64, indices (n_units, k) int64)``,
        best first, and the sums (n_classes, n_units) of relevance and spatial mean activation.
    counts : torch.Tensor
        (n_classes,) int64: samples seen per class.
    batches_done : int
        Global batches ``0 … batches_done − 1`` are in the state (a prefix; see
        :class:`zennit_ext.atlas.data.Source`).
    """

    units: dict[str, int]
    n_classes: int
    k: int
    layers: dict[str, _Layer] = field(init=False)
    counts: torch.Tensor = field(init=False)
    batches_done: int = 0

    def __post_init__(self) -> None:
        self.layers = {
            name: _Layer(
                {mode: empty_topk(n, self.k) for mode in MODES},
                FixedSum((self.n_classes, n)),
                FixedSum((self.n_classes, n)),
            )
            for name, n in self.units.items()
        }
        self.counts = torch.zeros(self.n_classes, dtype=torch.int64)

    def update(self, indices: torch.Tensor, y: torch.Tensor, stats: Mapping[str, dict]) -> None:
        """Add one batch: sample ``indices`` (B,), classes ``y`` (B,), :func:`batch_statistics`."""
        indices, y = indices.cpu(), y.cpu()
        for name, layer in self.layers.items():
            for mode in MODES:
                values = stats[name][mode].cpu().T  # (n_units, B)
                old_values, old_indices = layer.top[mode]
                layer.top[mode] = merge_topk(
                    torch.cat([old_values, values], 1),
                    torch.cat([old_indices, indices.expand(len(values), -1)], 1),
                    self.k,
                )
            layer.relevance.add_at(y, stats[name]["relmax"].cpu())
            layer.activation.add_at(y, stats[name]["actmean"].cpu())
        self.counts += torch.bincount(y, minlength=self.n_classes)

    def merge(self, other: AtlasState) -> None:
        """Add the state of disjoint samples (another shard, or a resumed run's part)."""
        for name, layer in self.layers.items():
            theirs = other.layers[name]
            for mode in MODES:
                ours_v, ours_i = layer.top[mode]
                their_v, their_i = theirs.top[mode]
                layer.top[mode] = merge_topk(
                    torch.cat([ours_v, their_v], 1), torch.cat([ours_i, their_i], 1), self.k
                )
            layer.relevance.add(theirs.relevance.limbs)
            layer.activation.add(theirs.activation.limbs)
        self.counts += other.counts

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state as named CPU tensors (for safetensors)."""
        out = {"counts": self.counts}
        for name, layer in self.layers.items():
            for mode, (values, indices) in layer.top.items():
                out[f"{name}/{mode}/values"] = values
                out[f"{name}/{mode}/indices"] = indices
            out[f"{name}/relevance_sum"] = layer.relevance.limbs
            out[f"{name}/activation_sum"] = layer.activation.limbs
        return {key: value.contiguous() for key, value in out.items()}

    def load_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Replace the state by :meth:`tensors` of a state of the same configuration."""
        self.counts = tensors["counts"].clone()
        for name, layer in self.layers.items():
            for mode in MODES:
                layer.top[mode] = (
                    tensors[f"{name}/{mode}/values"].clone(),
                    tensors[f"{name}/{mode}/indices"].clone(),
                )
            layer.relevance.limbs = tensors[f"{name}/relevance_sum"].clone()
            layer.activation.limbs = tensors[f"{name}/activation_sum"].clone()

    def empty_like(self) -> AtlasState:
        """A state of the same configuration without samples."""
        return AtlasState(dict(self.units), self.n_classes, self.k, self.batches_done)
