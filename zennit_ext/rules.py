"""Zennit rules for operations Zennit has none for: products of two activations, LayerNorm
and RMSNorm, softmax, and a stop for activations held constant.

Each rule is a Zennit :class:`~zennit.core.Hook` (the normalization and softmax rules are
:class:`~zennit.core.BasicHook` subclasses, so PLRP-M can recompute them), so any composite
can assign it to a module; it works on zennit 0.5 and 1.0. Relevance flows in Zennit's frame:
the gradient that reaches a hooked module's input is that input's relevance. For element-wise
non-linearities (GELU, SiLU, Hardswish, Sigmoid, Tanh) AttnLRP's identity rule (eq. 9 of
arXiv:2402.05602) is Zennit's own :class:`~zennit.rules.Pass`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from zennit.core import BasicHook, Hook, Stabilizer

__all__ = ["ProductRule", "LayerNormRule", "SoftmaxRule", "Stop", "normalized_linear"]


def _stabilized(value: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``value + ε·sign(value)`` with sign(0) = +1 (Zennit's stabilizer, written out)."""
    return value + epsilon * torch.where(value >= 0, 1.0, -1.0).to(value.dtype)


class ProductRule(Hook):
    """Relevance of a product of two activations, ``y = a * b`` or ``y = a @ b``.

    With ``z_ij`` the contribution of the pair ``(a_i, b_j)`` to an output ``y_k`` (``a_i b_j``
    for the element-wise product, ``a_ik b_kj`` for the matrix product), each factor receives
    a fixed share of every contribution's relevance:

    .. math::

        R_{a_i} = s_a \\sum_k \\frac{z_{ik}}{y_k + \\epsilon\\,\\mathrm{sign}(y_k)} R_k, \\qquad
        R_{b_j} = s_b \\sum_k \\frac{z_{jk}}{y_k + \\epsilon\\,\\mathrm{sign}(y_k)} R_k.

    ``shares=(0.5, 0.5)`` is AttnLRP's uniform rule (Achtibat et al., "AttnLRP:
    Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML 2024,
    arXiv:2402.05602, eq. 7). ``shares=(1, 0)`` holds ``b`` constant (a squeeze-and-excitation
    gate, or CP-LRP's constant attention weights with ``(0, 1)`` for ``A @ v``: Ali et al.,
    "XAI for Transformers: Better Explanations through Conservative Propagation", ICML 2022).
    With ``s_a + s_b = 1`` the rule conserves relevance up to the stabilizer.

    Parameters
    ----------
    shares : (float, float)
        ``(s_a, s_b)``, each in [0, 1].
    epsilon : float
        Stabilizer of the denominator (≥ 0).
    """

    def __init__(self, shares: Sequence[float] = (0.5, 0.5), epsilon: float = 1e-6) -> None:
        super().__init__()
        values = tuple(float(s) for s in shares)
        if len(values) != 2 or not all(0.0 <= s <= 1.0 for s in values):
            raise ValueError(f"shares must be two numbers in [0, 1], got {shares!r}")
        if not epsilon >= 0.0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        self.shares = values
        self.epsilon = float(epsilon)

    def forward(self, module: nn.Module, input: tuple, output: Any) -> None:
        """Store the two factors."""
        self.stored_tensors["input"] = input

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """Relevance of both factors, each shaped like its factor."""
        factors = self.stored_tensors["input"]
        if len(factors) != 2:
            raise TypeError(
                f"ProductRule needs a module with two tensor inputs, {type(module).__name__} "
                f"got {len(factors)}"
            )
        a, b = (f.detach().requires_grad_() for f in factors)
        relevance = grad_output[0]
        with torch.enable_grad():
            product = module.forward(a, b)
            ratio = relevance / _stabilized(product.detach(), self.epsilon)
            grad_a, grad_b = torch.autograd.grad(product, (a, b), ratio)
        out_a = self.shares[0] * a.detach() * grad_a
        out_b = self.shares[1] * b.detach() * grad_b
        return (out_a, out_b)

    def copy(self) -> ProductRule:
        """A fresh hook with the same shares and stabilizer (and class, for mixins)."""
        copy = type(self).__new__(type(self))
        ProductRule.__init__(copy, self.shares, self.epsilon)
        return copy


def _input_relevance(grad_input: Any, relevance: torch.Tensor) -> tuple:
    """``relevance`` for the first tensor input, None for the others (zennit 0.5 and 1.0)."""
    return (relevance, *(None for _ in range(len(grad_input) - 1)))


def _is_channels_first_layer_norm(module: nn.Module) -> bool:
    """torchvision's ``LayerNorm2d`` (ConvNeXt): LayerNorm over the channels of (N, C, H, W)."""
    return type(module).__name__ == "LayerNorm2d" and type(module).__module__.startswith(
        "torchvision"
    )


def _rms_norm_type() -> type[nn.RMSNorm] | None:
    return getattr(nn, "RMSNorm", None)  # torch >= 2.4


def normalized_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalization's forward with its scale (std or rms) held constant (detached).

    Equal in value to ``module(x)``; its gradient is that of the linear map the LN rule
    explains: centering (LayerNorm), division by the constant scale, diagonal affine weight.

    Parameters
    ----------
    module : torch.nn.LayerNorm, torchvision LayerNorm2d or torch.nn.RMSNorm
        The normalization layer.
    x : torch.Tensor
        Its input: ``(..., *normalized_shape)``, or (N, C, H, W) for LayerNorm2d.

    Returns
    -------
    torch.Tensor
        Shaped like ``x``.

    Raises
    ------
    TypeError
        For any other module type.
    """
    rms_norm = _rms_norm_type()
    if isinstance(module, nn.LayerNorm):
        channels_first = _is_channels_first_layer_norm(module)
        if channels_first:
            x = x.permute(0, 2, 3, 1)
        dims = tuple(range(-len(module.normalized_shape), 0))
        centered = x - x.mean(dims, keepdim=True)
        scale = (centered.detach().pow(2).mean(dims, keepdim=True) + module.eps).sqrt()
        y = centered / scale
        if module.weight is not None:
            y = y * module.weight
        if module.bias is not None:
            y = y + module.bias
        return y.permute(0, 3, 1, 2) if channels_first else y
    if rms_norm is not None and isinstance(module, rms_norm):
        dims = tuple(range(-len(module.normalized_shape), 0))
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        y = x / (x.detach().pow(2).mean(dims, keepdim=True) + eps).sqrt()
        return y if module.weight is None else y * module.weight
    raise TypeError(
        f"LayerNormRule explains nn.LayerNorm, torchvision's LayerNorm2d and nn.RMSNorm, "
        f"got {type(module).__name__}"
    )


class LayerNormRule(BasicHook):
    """The LN rule for LayerNorm and RMSNorm: the normalizing scale is held constant.

    With the standard deviation (LayerNorm) or root mean square (RMSNorm) ``σ`` of the
    input treated as a constant, ``y = w ⊙ (x − mean(x)) / σ + b`` is linear in ``x``;
    its contributions ``z_ik = w_k (δ_ik − 1/D) x_i / σ`` (``z_ik = w_k δ_ik x_i / σ`` for
    RMSNorm) are explained by the ε-rule, which lets the bias ``b`` absorb its share:

    .. math::

        R_i = \\sum_k \\frac{z_{ik}}{y_k + \\epsilon\\,\\mathrm{sign}(y_k)} R_k .

    Ali et al., "XAI for Transformers: Better Explanations through Conservative Propagation",
    ICML 2022 (arXiv:2202.07304), section 3.2 (LayerNorm scale constant); the same rule in
    Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
    Transformers", ICML 2024 (arXiv:2402.05602), section 3.3.2. Without bias it conserves
    relevance up to ε. Applies to ``nn.LayerNorm`` over the last axes, torchvision's
    ``LayerNorm2d`` (channels of (N, C, H, W)) and ``nn.RMSNorm``; a subclass whose forward
    differs from these raises on the forward pass instead of being explained wrongly.

    Parameters
    ----------
    epsilon : float or callable
        Stabilizer of the denominator, as Zennit's :class:`~zennit.rules.Epsilon`.
    """

    def __init__(self, epsilon: float | Callable[[torch.Tensor], torch.Tensor] = 1e-6) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.stabilizer = Stabilizer.ensure(epsilon)

    def forward(self, module: nn.Module, input: tuple, output: Any) -> None:
        """Store the input; raise if the module's output is not the rule's linearization."""
        self.stored_tensors["input"] = input
        with torch.no_grad():
            linear = normalized_linear(module, input[0])
        reference = output.detach()
        tolerance = 1e3 * torch.finfo(reference.dtype).eps * (1.0 + reference.abs().max())
        if linear.shape != reference.shape or (linear - reference).abs().max() > tolerance:
            raise RuntimeError(
                f"LayerNormRule: the forward of {type(module).__name__} is not the LayerNorm "
                "or RMSNorm the rule explains (its output differs from the linearization)"
            )

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """Relevance of the input, shaped like it."""
        x = self.stored_tensors["input"][0].detach().requires_grad_()
        relevance = grad_output[0]
        with torch.enable_grad():
            y = normalized_linear(module, x)
            (gradient,) = torch.autograd.grad(
                y,
                x,
                relevance / self.stabilizer(y.detach()),
                create_graph=relevance.requires_grad,
            )
        return _input_relevance(grad_input, x.detach() * gradient)

    def copy(self) -> LayerNormRule:
        """A fresh hook with the same stabilizer (and class, for mixins)."""
        copy = type(self).__new__(type(self))
        LayerNormRule.__init__(copy, self.epsilon)
        return copy


class SoftmaxRule(BasicHook):
    """AttnLRP's softmax rule: the softmax linearized at its input, its bias term absorbed.

    For ``s = softmax(x)`` along ``module.dim`` and relevance ``R`` of ``s``,

    .. math::

        R^{\\mathrm{in}}_i = x_i \\Big(R_i - s_i \\sum_j R_j\\Big)

    (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
    Transformers", ICML 2024, arXiv:2402.05602, eq. 13). It is ``x ⊙ Jᵀ (R / s)``: the
    first-order Taylor expansion at ``x``, whose bias ``s − J x`` keeps its share of the
    relevance, so the rule does not conserve relevance, by design
    (``Σ R_in = Σ_i x_i R_i − (Σ_i x_i s_i) Σ_j R_j``). Masked entries (``x = −∞``) get 0.
    Applies to ``nn.Softmax`` with an explicit ``dim``.
    """

    def forward(self, module: nn.Module, input: tuple, output: Any) -> None:
        """Store the input (the logits)."""
        self.stored_tensors["input"] = input

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """Relevance of the logits, shaped like them."""
        dim = getattr(module, "dim", None)
        if not isinstance(dim, int):
            raise TypeError(
                f"SoftmaxRule needs an nn.Softmax with an integer dim, got "
                f"{type(module).__name__} with dim={dim!r}"
            )
        x = self.stored_tensors["input"][0].detach()
        relevance = grad_output[0]
        s = torch.softmax(x, dim=dim)
        logits = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
        result = logits * (relevance - s * relevance.sum(dim, keepdim=True))
        return _input_relevance(grad_input, result)

    def copy(self) -> SoftmaxRule:
        """A fresh hook (of the same class, for mixins)."""
        copy = type(self).__new__(type(self))
        SoftmaxRule.__init__(copy)
        return copy


class Stop(Hook):
    """No relevance passes: the module's output is held constant (its input gets 0).

    CP-LRP's constant attention weights (Ali et al., "XAI for Transformers: Better
    Explanations through Conservative Propagation", ICML 2022, arXiv:2202.07304): with the
    weighting ``A @ v`` explained by ``ProductRule((0, 1))``, no relevance reaches the
    softmax; this rule makes sure no gradient does either.
    """

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> tuple:
        """Zeros shaped like every input that has a gradient."""
        return tuple(None if g is None else torch.zeros_like(g) for g in grad_input)
