"""The fast paths of NRM's engine: one rule layer between two set layers, read from its
linearization.

Where the segment between two set layers of a :class:`zennit_ext.nrm.engine.Session` is one
rule layer (Conv2d or Linear, one group) plus modules whose backward is the identity (Pass-ruled
activations, merged BatchNorms, Dropout in eval mode, Identity) and, for edges, pooling, a
:class:`RuleSegment` holds the rule's live terms (coefficient ``c_t``, normalized scale ``s̃_t``,
modified weight ``W'_t``) from :meth:`zennit_ext.nrm.rules.NormalizedHook.linearized`. From
them come the channel-confined messages (one grouped transposed convolution) and the edge
weights of adjacent layers (per-sample weight gradients). Callers check the results against the
batched backward and fall back to it (:func:`close`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
import torch.nn.grad
from torch import nn
from zennit.rules import Pass

from zennit_ext.nrm.rules import NormalizedComposite, NormalizedHook
from zennit_ext.nrm.sets import Level


class SessionView(Protocol):
    """What a fast path reads of the engine's session (:class:`zennit_ext.nrm.engine.Session`):
    declared here, so this module does not import the engine that imports it."""

    fast: bool
    segments: dict[tuple[str, str, bool], Any]
    calls: list[str]
    modules: dict[str, nn.Module]
    hooks: dict[str, NormalizedHook]
    outputs: dict[str, torch.Tensor]
    composite: NormalizedComposite

    def shape(self, name: str) -> torch.Size:
        """Shape of layer ``name``'s output, (batch, ...)."""
        ...


__all__ = ["RuleSegment", "rule_segment", "close"]


def close(ours: torch.Tensor, reference: torch.Tensor) -> bool:
    """Equal up to rounding (√eps of the dtype, relative to the largest value); never where
    ``reference`` is not finite (an infinite scale would accept anything)."""
    scale = reference.abs().max().clamp(min=torch.finfo(reference.dtype).tiny)
    error = (ours - reference).abs().max()
    return bool(scale.isfinite() and error <= torch.finfo(reference.dtype).eps ** 0.5 * scale)


_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_POOLING = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


@dataclass
class RuleSegment:
    """One rule layer (Conv2d or Linear) between two set layers, read from its linearization.

    Attributes
    ----------
    module : nn.Conv2d or nn.Linear
        The rule layer.
    terms : list of (torch.Tensor, torch.Tensor, torch.Tensor)
        Per live term of the rule: coefficient ``c_t`` (like the layer input), normalized scale
        ``s̃_t`` (like its output) and modified weight ``W'_t``.
    """

    module: nn.Module
    terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    def carries_channels(self, level: Level) -> bool:
        """Whether unit messages at ``level`` are confined to one output channel."""
        if isinstance(level, torch.Tensor):
            return False
        return level == "channel" or isinstance(self.module, nn.Linear)

    def _conv(self) -> dict[str, Any]:
        module = self.module
        return {"stride": module.stride, "padding": module.padding, "dilation": module.dilation}

    def channel_messages(self, message: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """The message at the layer's input of each channel-confined part of ``message``.

        Parameters
        ----------
        message : torch.Tensor
            Message at the layer's output, (batch, C_out, ...).
        channels : torch.Tensor
            Long (n,): the output channels whose parts are pushed down.

        Returns
        -------
        torch.Tensor
            (n, batch, C_in, ...): ``Σ_t c_t ⊙ J_tᵀ (s̃_t ⊙ m ⊙ 1_channel)``, for a convolution
            one grouped transposed convolution per term (group k: the filter of channel k).
        """
        result = message.new_zeros(())  # a 0-d zero: the first term is added exactly
        for coef, scale, weight in self.terms:
            values = (scale * message)[:, channels]  # (B, n, ...)
            if isinstance(self.module, nn.Linear):
                pushed = values[..., None] * weight[channels][None]  # (B, n, C_in)
            else:
                batch, count = values.shape[:2]
                size = (batch, count * coef.shape[1], *coef.shape[2:])
                pushed = torch.nn.grad.conv2d_input(
                    size, weight[channels], values, groups=count, **self._conv()
                ).view(batch, count, *coef.shape[1:])
            result = result + coef[:, None] * pushed
        return result.transpose(0, 1)

    def edges(self, message: torch.Tensor, reaches: torch.Tensor | float) -> torch.Tensor:
        """Joint relevance of every (input channel, output channel) pair, (batch, C_in, C_out).

        ``reaches`` (1 or like the layer input) weights each input neuron by the share of its
        relevance that reaches the network input.
        """
        table = message.new_zeros(())
        for coef, scale, weight in self.terms:
            values, coef = scale * message, coef * reaches
            if isinstance(self.module, nn.Linear):
                table = table + weight[None] * values[:, :, None] * coef[:, None, :]
                continue
            gradient = functools.partial(_weight_gradient, weight=weight, options=self._conv())
            grads = torch.func.vmap(gradient)(coef, values)  # (B, C_out, C_in, kh, kw)
            table = table + (weight[None] * grads).flatten(3).sum(3)
        return table.transpose(1, 2)


def _weight_gradient(
    coef: torch.Tensor, values: torch.Tensor, weight: torch.Tensor, options: dict[str, Any]
) -> torch.Tensor:
    """∂⟨values, conv(coef; W)⟩/∂W at ``weight`` for one sample (coef (C_in, ...), values
    (C_out, ...)): the weight gradient, shape of ``weight``."""

    def convolve(w: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(coef[None], w, None, **options)

    return torch.func.vjp(convolve, weight)[1](values[None])[0]


def rule_segment(
    session: SessionView, lower: str, upper: str, pooling: bool = False
) -> RuleSegment | None:
    """The rule layer between ``lower`` and ``upper`` if the segment is one Conv2d/Linear with
    a normalized rule plus modules whose backward is the identity (and, with ``pooling``,
    pooling layers below the rule layer); None otherwise or without the fast path."""
    if not session.fast:
        return None
    key = (lower, upper, pooling)
    if key not in session.segments:
        session.segments[key] = _find_segment(session, lower, upper, pooling)
    return session.segments[key]


def _find_segment(
    session: SessionView, lower: str, upper: str, pooling: bool
) -> RuleSegment | None:
    calls = session.calls  # the set layers ran (checked by the session): both are in it
    start = len(calls) - 1 - calls[::-1].index(lower)
    stop = len(calls) - 1 - calls[::-1].index(upper)
    between = [
        name
        for name in calls[start + 1 : stop + 1]
        if next(session.modules[name].children(), None) is None
    ]
    rules = [name for name in between if isinstance(session.modules[name], (nn.Conv2d, nn.Linear))]
    if len(rules) != 1 or rules[0] not in session.hooks:
        return None
    name = rules[0]
    position = between.index(name)
    if not all(_identity(session, n) for n in between[position + 1 :]):
        return None
    below = between[:position]
    if not all(_identity(session, n) or (pooling and _pool(session, n)) for n in below):
        return None
    module, hook = session.modules[name], session.hooks[name]
    if isinstance(module, nn.Conv2d) and (
        module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
    ):
        return None
    output = session.outputs[name]
    if session.shape(upper) != output.shape:
        return None
    linear = hook.linearized(module, output.shape)
    inputs, below_shape = linear.inputs[0].shape, session.shape(lower)
    if inputs != below_shape and not (
        pooling and inputs[:2] == below_shape[:2] and len(inputs) == len(below_shape)
    ):
        return None
    scales = linear.normalized_scales()
    terms = []
    for t in linear.live:
        weight, bias = linear.weights[t], linear.biases[t]
        if weight is None or not _is_affine(
            module, linear.inputs[t], weight, bias, linear.outputs[t]
        ):
            return None
        terms.append((linear.coefs[t], scales[t], weight))
    return RuleSegment(module, terms)


def _identity(session: SessionView, name: str) -> bool:
    module = session.modules[name]
    if isinstance(session.composite.hooked.get(name), Pass):
        return True
    dropout = isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d))
    return isinstance(module, _IDENTITY) and not (dropout and module.training)


def _pool(session: SessionView, name: str) -> bool:
    return isinstance(session.modules[name], _POOLING)


def _is_affine(
    module: nn.Module,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    output: torch.Tensor,
) -> bool:
    """Whether the rule's term of a Linear or Conv2d ``module`` is the layer's own affine map
    with the modified parameters (no output modifier), so that its transpose is a transposed
    convolution with ``weight``."""
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            expected = nn.functional.linear(input, weight, bias)
        else:  # a segment's rule layer is a Linear or a Conv2d
            conv = cast(nn.Conv2d, module)
            expected = nn.functional.conv2d(
                input, weight, bias, conv.stride, conv.padding, conv.dilation
            )
    return expected.shape == output.shape and close(expected, output.detach())
