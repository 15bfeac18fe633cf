"""Normalized rules for NRM: every neuron passes on exactly the relevance it receives.

A Zennit rule maps the relevance ``R`` at a layer's output to its input with a matrix that is
linear in ``R``: ``R_in = M̃ R``. NRM (Xiong et al., arXiv:2606.00557, eq. 17) divides each column of
``M̃`` by its sum, so that no bias or ε absorbs relevance. :class:`NormalizedHook` does that
for any Zennit ``BasicHook``: it obtains the column sums ``M̃ᵀ 1`` once per forward pass as
directional derivatives of the rule's own terms (forward-mode AD in the pass that recomputes
them; exact, because the rule is linear in ``R``), and scales the incoming message by their
inverse. A neuron whose column sum is 0 (or whose normalized scale does not fit the dtype)
passes 0; a negative column sum at a neuron that carries relevance violates
the positive-sum condition (eq. 15); NRM's engine checks it on the checked pass
(:mod:`zennit_ext.nrm.engine`), so the hooks themselves hold no switches.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd import forward_ad
from zennit.composites import SpecialFirstLayerMapComposite
from zennit.core import BasicHook, Composite, Hook, ParamMod
from zennit.layer import Sum
from zennit.rules import Flat, Gamma, Norm, Pass, ZBox, ZPlus
from zennit.types import Activation, AvgPool, Convolution
from zennit.types import Linear as AnyLinear

from zennit_ext._rules import RuleWrappingComposite, StatefulHook, mixin_hook
from zennit_ext.attention.canonizers import is_canonized
from zennit_ext.attention.huggingface import HFActivation
from zennit_ext.attention.modules import (
    AttentionScores,
    AttentionWeighting,
    EmbeddingSum,
    GridPad,
    StreamSum,
    TokenConcat,
)
from zennit_ext.attention.swin import CosineNormalize
from zennit_ext.canonizers.auto import AutoCanonizer
from zennit_ext.canonizers.merge import kept_batch_norms
from zennit_ext.layers import MatMul, Multiply, Scale
from zennit_ext.nrm.products import NormalizedProductRule, NormalizedWeightingRule
from zennit_ext.nrm.streams import AbsoluteShares, StreamOnly, TokenRoute
from zennit_ext.rules import ProductRule, Stop

__all__ = ["NormalizedHook", "NormalizedComposite", "nrm_composite", "PositiveSumError"]


class PositiveSumError(ValueError):
    """A layer's propagation matrix has a negative column sum where relevance flows (eq. 15)."""


@dataclass
class _Linearized:
    """A rule's terms for one forward pass (see :meth:`NormalizedHook.linearized`)."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    live: list[int]
    scales: list[torch.Tensor]
    coefs: list[torch.Tensor]
    weights: list[torch.Tensor | None]
    biases: list[torch.Tensor | None]
    sums: torch.Tensor
    normalized: list[torch.Tensor] | None = None

    def normalized_scales(self) -> list[torch.Tensor]:
        """Scales divided by the column sums (0 where a sum is 0)."""
        if self.normalized is None:
            nonzero = self.sums.ne(0)
            inverse = torch.where(nonzero, 1.0 / torch.where(nonzero, self.sums, 1.0), 0.0)
            self.normalized = [scale * inverse for scale in self.scales]
        return self.normalized


def _as_list(mapped: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Zennit's gradient mappers return one tensor (one term) or a sequence of tensors."""
    return [mapped] if isinstance(mapped, torch.Tensor) else list(mapped)


_POST_FORWARD_KWARGS = "kwargs" in inspect.signature(Hook.post_forward).parameters


class _Bridge(torch.autograd.Function):
    """The layer's output, joined to its input by a backward that costs nothing.

    The normalized rule replaces the gradient of the layer's input, so the layer's own
    gradient (a transposed convolution per message for a conv layer) would be thrown away.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        ctx.shape = input.shape
        return output.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.zeros((), dtype=grad.dtype, device=grad.device).expand(ctx.shape), None


def _relevance(linear: _Linearized, message: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``Σ_i c_i ⊙ J_iᵀ (s_i ⊙ m)`` over the live terms, like the layer input (see
    :meth:`NormalizedHook.linearized`); column-normalized scales with ``normalize``."""
    scales = linear.normalized_scales() if normalize else linear.scales
    if not linear.live:  # no term carries relevance (e.g. every input is 0): all stops here
        return torch.zeros_like(linear.inputs[0]) * message.sum()
    gradients = torch.autograd.grad(
        [linear.outputs[i] for i in linear.live],
        [linear.inputs[i] for i in linear.live],
        grad_outputs=[message * scales[i] for i in linear.live],
        retain_graph=True,
        create_graph=message.requires_grad,
    )
    terms = [linear.coefs[i] * g for i, g in zip(linear.live, gradients, strict=True)]
    relevance = terms[0]
    for term in terms[1:]:
        relevance = relevance + term
    return relevance


def _representable(sums: torch.Tensor, scales: list[torch.Tensor]) -> torch.Tensor:
    """``sums`` with 0 where a normalized scale ``s_i / sums`` is not finite in the dtype.

    A column sum can be tiny but not 0 where a layer's inputs underflowed (SiLU of −700 is
    about 1e-304 in float64), while the rule's scale ``s_i = 1 / stabilize(z)`` is large: the
    normalized shares are finite in exact arithmetic, but the message times ``s_i / sums``
    overflows and ``inf · 0`` makes NaN. Such a column passes nothing (like a zero column sum:
    NRM reports its relevance as stopped at the layer, so ``reached + Σ stopped = 1`` holds).
    """
    if not scales:
        return sums
    nonzero = sums.ne(0)
    safe = torch.where(nonzero, sums, torch.ones_like(sums))
    finite = torch.stack([torch.isfinite(scale / safe) for scale in scales]).all(0)
    return torch.where(finite, sums, torch.zeros_like(sums))


def _sums_by_double_backward(linear: _Linearized) -> torch.Tensor:
    """Column sums ``M̃ᵀ 1`` as the gradient of the total relevance for a probe message of
    ones (exact: the rule is linear in the message), for modules whose forward has an
    operation without forward-mode AD (e.g. a custom ``autograd.Function`` without ``jvp``)."""
    with torch.enable_grad():
        probe = torch.ones_like(linear.scales[0], requires_grad=True)
        relevance = _relevance(linear, probe, normalize=False)
        # _relevance always depends on the probe (also with no live term): the gradient exists
        (sums,) = torch.autograd.grad(relevance.sum(), probe)
    return sums.detach()


class NormalizedHook(StatefulHook):
    """Mixin placed before a Zennit ``BasicHook`` rule: column-normalized propagation (eq. 17).

    Attributes
    ----------
    layer_name : str
        Name of the module, for error messages.
    """

    state_names = ("layer_name",)
    layer_name: str
    # the rule linearized for the stored input tensor ``_linear_key`` (one forward pass)
    _linear_key: torch.Tensor
    _linear: _Linearized

    @staticmethod
    def _bridged(inputs: tuple, output: Any) -> Any:
        """``output`` re-attached to the first input through :class:`_Bridge`."""
        if (
            isinstance(output, torch.Tensor)
            and inputs
            and isinstance(inputs[0], torch.Tensor)
            and inputs[0].requires_grad
        ):
            return _Bridge.apply(inputs[0], output.detach())
        return output

    def _post_forward_kwargs(
        self, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> Any:
        """Zennit's ``post_forward`` on the bridged output (zennit >= 1.0)."""
        return super().post_forward(module, args, kwargs, self._bridged(args, output))

    def _post_forward_args(self, module: nn.Module, input: tuple, output: Any) -> Any:
        """Zennit's ``post_forward`` on the bridged output (zennit 0.5)."""
        return super().post_forward(module, input, self._bridged(input, output))

    # Zennit 1.0 reads the signature to decide whether the forward hook gets kwargs
    post_forward = _post_forward_kwargs if _POST_FORWARD_KWARGS else _post_forward_args

    def _terms(
        self, module: nn.Module, plain: list[torch.Tensor], tangents: list[torch.Tensor | None]
    ) -> tuple[
        list[torch.Tensor],
        list[torch.Tensor],
        list[torch.Tensor | None],
        list[torch.Tensor | None],
        list[torch.Tensor | None],
    ]:
        """The rule's terms recomputed as Zennit does, from the modified inputs ``plain``.

        Returns the inputs (leaves requiring grad), the outputs, the directional derivatives
        ``J_i t_i`` of each output for the given tangents ``t_i`` (forward-mode AD in the same
        forward pass; None where the tangent is None), and the parameter-modified weights and
        biases (None where the module has none).
        """
        args = self.stored_tensors["input"][1:]
        kwargs = self.stored_tensors.get("kwargs", {})  # zennit >= 1.0 keeps keyword arguments
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        derivatives: list[torch.Tensor | None] = []
        weights: list[torch.Tensor | None] = []
        biases: list[torch.Tensor | None] = []
        for value, tangent, param_mod, out_mod in zip(
            plain, tangents, self.param_modifiers, self.output_modifiers, strict=True
        ):
            input = value.detach().requires_grad_()  # a fresh leaf, no copy
            with (
                ParamMod.ensure(param_mod)(module) as modified,
                torch.autograd.enable_grad(),
                forward_ad.dual_level(),
            ):
                dual = input if tangent is None else forward_ad.make_dual(input, tangent)
                output, derivative = forward_ad.unpack_dual(
                    out_mod(modified.forward(dual, *args, **kwargs))
                )
                for store, key in ((weights, "weight"), (biases, "bias")):
                    found = getattr(modified, key, None)
                    store.append(found.detach() if isinstance(found, torch.Tensor) else None)
            inputs.append(input)
            outputs.append(output)
            derivatives.append(None if derivative is None else derivative.detach())
        return inputs, outputs, derivatives, weights, biases

    def linearized(self, module: nn.Module, shape: torch.Size) -> _Linearized:
        """The rule as a linear map of the message, for the stored input (cached per forward).

        Zennit's mappers and reducers are elementwise-linear in the message and in the
        gradients (this is checked), so ``R_in = Σ_i c_i ⊙ J_iᵀ (s_i ⊙ m)`` with per-term
        scales ``s_i = mapper(1)_i`` and coefficients ``c_i = reducer(inputs, e_i)``. Terms with
        ``s_i = 0`` or ``c_i = 0`` (e.g. negative inputs after a ReLU, γ's unused branch) are
        dropped, so a batch of messages costs one vector-Jacobian product per live term. The
        column sums of the matrix, ``Σ_i s_i ⊙ J_i c_i``, come from the same forward pass
        (forward-mode AD along ``c_i``).
        """
        first = self.stored_tensors["input"][0]
        if getattr(self, "_linear_key", None) is first:
            return self._linear
        plain = [in_mod(first.detach()) for in_mod in self.input_modifiers]
        # unit and zero gradients as broadcast views: no full-size tensors are filled
        one, zero = first.new_ones(()), first.new_zeros(())
        units = [
            [(one if j == i else zero).expand_as(x) for j, x in enumerate(plain)]
            for i in range(len(plain))
        ]
        coefs = [self.reducer(plain, unit).expand_as(plain[0]) for unit in units]
        # additivity on the first sample (reducers are elementwise): reducer(Σ e_i) = Σ c_i
        together = self.reducer([x[:1] for x in plain], [one.expand_as(x[:1]) for x in plain])
        carrying = [bool(c.any()) for c in coefs]
        tangents = [
            c.expand_as(x).contiguous() if carries else None
            for c, x, carries in zip(coefs, plain, carrying, strict=True)
        ]
        try:
            inputs, outputs, derivatives, weights, biases = self._terms(module, plain, tangents)
            forward_mode = True
        except (NotImplementedError, RuntimeError):  # an operation without forward-mode AD
            inputs, outputs, derivatives, weights, biases = self._terms(
                module, plain, [None] * len(plain)
            )
            forward_mode = False
        ones = torch.ones((), dtype=first.dtype, device=first.device).expand(shape)
        scales = [s.detach() for s in _as_list(self.gradient_mapper(ones, outputs))]
        # homogeneity on the first sample (mappers are elementwise): mapper(-1) = -mapper(1)
        negated = _as_list(self.gradient_mapper(-ones[:1], [o[:1] for o in outputs]))
        linear = all(torch.equal(-s[:1], n.detach()) for s, n in zip(scales, negated, strict=True))
        if not linear or not torch.allclose(together, sum(c[:1] for c in coefs)):
            raise TypeError(
                f"the rule of layer {self.layer_name!r} ({type(self).__bases__[1].__name__}) is "
                "not linear in the relevance; NRM needs LRP rules (z+, gamma, epsilon, box, ...)"
            )
        live = [i for i in range(len(inputs)) if carrying[i] and scales[i].any()]
        sums = torch.zeros_like(scales[0])
        for i in live:
            derivative = derivatives[i]
            if derivative is not None:  # None: the output does not depend on the input
                sums = sums + scales[i] * derivative
        sums = _representable(sums, [scales[i] for i in live])
        self._linear_key = first
        self._linear = _Linearized(inputs, outputs, live, scales, coefs, weights, biases, sums)
        if not forward_mode:
            by_vjp = _sums_by_double_backward(self._linear)
            self._linear.sums = _representable(by_vjp, [scales[i] for i in live])
        return self._linear

    def rule_backward(
        self, module: nn.Module, grad_input: Any, message: torch.Tensor, normalize: bool
    ) -> tuple[torch.Tensor | None, ...]:
        """Relevance of the layer's input for ``message``, (batch, ...) like the input.

        With ``normalize=False`` this is the wrapped rule's own ``BasicHook.backward`` (tested
        against Zennit's); with ``normalize=True`` every column of the rule's matrix is divided
        by its sum (eq. 17; zero sums pass 0).
        """
        linear = self.linearized(module, message.shape)
        relevance = _relevance(linear, message, normalize)
        return tuple(relevance if g.shape == relevance.shape else None for g in grad_input)

    def column_sums(self, module: nn.Module, shape: torch.Size) -> torch.Tensor:
        """Column sums ``Σ_j M̃[j, k]`` of the rule for the stored input, cached per forward.

        Exact because the rule is linear in the message: ``M̃ᵀ 1 = Σ_i s_i ⊙ J_i c_i``, the
        directional derivatives of :meth:`linearized`'s forward pass.

        Parameters
        ----------
        module : torch.nn.Module
            The hooked layer.
        shape : torch.Size
            Shape of the layer's output, (batch, ...).

        Returns
        -------
        torch.Tensor
            Shape ``shape``: the relevance the layer's input receives per unit of relevance at
            each output neuron.
        """
        return self.linearized(module, shape).sums

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """Relevance of the layer's input under the column-normalized rule."""
        message = grad_output[0]
        self.column_sums(module, message.shape)
        return self.rule_backward(module, grad_input, message, normalize=True)


class NormalizedComposite(RuleWrappingComposite):
    """A base composite with every ``BasicHook`` rule column-normalized for NRM.

    Parameters
    ----------
    base : zennit.core.Composite
        Its rules define the unnormalized propagation ``M̃``; its canonizers are applied.
    on_violation : {'raise', 'warn'}
        What a negative column sum at a neuron carrying relevance does (eq. 15), and a checked
        pass that does not conserve relevance; read by NRM's engine after its checked pass.

    Raises
    ------
    ValueError
        On register, if a module with parameters of its own (e.g. a BatchNorm that no
        canonizer merged or kept) or a product module (:class:`~zennit_ext.layers.Multiply`,
        :class:`~zennit_ext.layers.MatMul`) gets no rule: its gradient would not be
        normalized.
    """

    def __init__(self, base: Composite, on_violation: str = "raise") -> None:
        if on_violation not in ("raise", "warn"):
            raise ValueError(f"on_violation must be 'raise' or 'warn', got {on_violation!r}")
        self.on_violation = on_violation
        self.hooked: dict[str, Hook] = {}
        super().__init__(base)

    def wrap_rule(self, ctx: dict, name: str, module: nn.Module, template: Hook) -> Hook:
        """``BasicHook`` rules get normalized, a ``ProductRule`` on a ``Multiply`` becomes
        :class:`~zennit_ext.nrm.products.NormalizedProductRule`; others (e.g. ``Pass``) are
        kept."""
        if isinstance(template, BasicHook):
            template = mixin_hook(template, NormalizedHook, layer_name=name)
        elif isinstance(template, ProductRule) and isinstance(module, Multiply):
            template = NormalizedProductRule(template.shares)
        self.hooked[name] = template
        return template

    def fallback_rule(self, name: str, module: nn.Module) -> Hook | None:
        """``Pass`` for a BatchNorm a canonizer merged into its linear layer or declared kept.

        A merged BatchNorm is the identity up to ``1/sqrt(1 + eps)`` (zennit 0.5 keeps ``eps``);
        its plain gradient would scale the message by that factor, so it passes instead. A
        BatchNorm that no linear layer precedes (DenseNet's BN–ReLU–conv order) cannot be
        merged; a canonizer declares it with
        :class:`~zennit_ext.canonizers.merge.KeepBatchNorm`, and it passes the message as in
        Zennit's composites.
        """
        kept = any(norm is module for norm in kept_batch_norms(self.handles))
        if kept or _is_merged_norm(module):
            self.hooked[name] = Pass()
            return self.hooked[name]
        return None

    def reset(self) -> None:
        """Forget the hooked module names of the previous registration."""
        self.hooked = {}

    def check_registered(self, module: nn.Module) -> None:
        """Raise ValueError if a module with parameters of its own, or a product module, has
        no rule."""
        bare = [
            name
            for name, child in module.named_modules()
            if any(True for _ in child.parameters(recurse=False))
            and name not in self.hooked
            and not is_canonized(child)
            and not isinstance(child, nn.Embedding)  # token ids in: relevance ends at its output
        ]
        if bare:
            raise ValueError(
                f"modules {bare} have parameters but no rule, so NRM cannot normalize "
                "their propagation; merge them with a canonizer (e.g. zennit's "
                "SequentialMergeBatchNorm) or give them a rule in the composite"
            )
        products = [
            name
            for name, child in module.named_modules()
            if isinstance(child, Multiply | MatMul) and name not in self.hooked
        ]
        if products:
            raise ValueError(
                f"product modules {products} have no rule, so their gradient would scale the "
                "relevance by the other factor; give them zennit_ext.rules.ProductRule in the "
                "composite (nrm_composite does for Multiply)"
            )


def _is_merged_norm(module: nn.Module) -> bool:
    """A BatchNorm whose statistics and affine parameters were set to the identity."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.training:
        return False
    values = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
    return all(
        getattr(module, key) is not None and bool((getattr(module, key) == value).all())
        for key, value in values.items()
    )


def _transformer_rules() -> list[tuple[type | tuple[type, ...], Hook | None]]:
    """Rules of the modules the attention canonizers attach (see :mod:`.streams`).

    Fused ``nn.MultiheadAttention`` (an activation to Zennit) gets none: its canonizer's
    modules carry the rules. The softmax and the scores get no relevance (the weighting holds
    ``A`` constant); LayerNorm, RMSNorm, layer scales, transformers' activations and Swin V2's
    cosine normalization pass it.
    """
    norms = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
    return [
        (nn.MultiheadAttention, None),
        ((nn.Softmax, AttentionScores), Stop()),
        (AttentionWeighting, NormalizedWeightingRule()),
        (StreamSum, AbsoluteShares()),
        (EmbeddingSum, StreamOnly()),
        ((TokenConcat, GridPad), TokenRoute()),
        ((*norms, Scale, HFActivation, CosineNormalize), Pass()),
    ]


def nrm_composite(
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    gamma: float | None = 0.25,
    canonizers: list | str | None = None,
) -> Composite:
    """The paper's default rules (§4.4): γ on convolutions, z⁺ on dense layers, and on the
    first layer the box rule (with input bounds) or the flat rule (without); residual
    ``Sum`` modules and average pooling get the ``Norm`` rule, activations ``Pass``, and a
    :class:`~zennit_ext.layers.Multiply` (a squeeze-and-excitation gate, activation first)
    ``ProductRule((1, 0))``: the gate is held constant, which
    :class:`NormalizedComposite` makes
    :class:`~zennit_ext.nrm.products.NormalizedProductRule` (the activation receives the
    message unchanged).

    γ keeps the column sums positive (eq. 15) only where the convolutions see non-negative
    inputs (ReLU networks). Networks whose convolutions read signed activations, such as the
    linear-bottleneck residual stream of MobileNet/EfficientNet, need ``gamma=None``: z⁺ on
    convolutions too, whose sign-aware contributions (x⁺w⁺ + x⁻w⁻) are never negative.

    Parameters
    ----------
    low, high : float or torch.Tensor, optional
        Bounds of the input, both or neither.
    gamma : float or None
        γ of the convolution rule; None puts z⁺ on convolutions.
    canonizers : list of zennit canonizers, 'auto' or None
        Applied while the composite is registered; ``'auto'``:
        :class:`~zennit_ext.canonizers.auto.AutoCanonizer` (those the model needs, chosen
        when registered); None: none.

    Returns
    -------
    zennit.core.Composite
        Unnormalized; :class:`NormalizedComposite` (used by :class:`~zennit_ext.NRM`)
        normalizes it.
    """
    if (low is None) != (high is None):
        raise ValueError(f"give both low and high or neither, got low={low!r}, high={high!r}")
    if isinstance(canonizers, str):
        if canonizers != "auto":
            raise ValueError(f"canonizers must be a list, 'auto' or None, got {canonizers!r}")
        canonizers = [AutoCanonizer()]
    first = Flat() if low is None else ZBox(low=low, high=high)
    layer_map = [
        *_transformer_rules(),
        (Activation, Pass()),
        (Sum, Norm()),
        (AvgPool, Norm()),
        (Multiply, ProductRule((1.0, 0.0))),
        (Convolution, ZPlus() if gamma is None else Gamma(gamma=gamma)),
        (nn.Linear, ZPlus()),
    ]
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map, first_map=[(AnyLinear, first)], canonizers=canonizers
    )
