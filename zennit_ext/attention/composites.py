"""AttnLRP and CP-LRP as Zennit composites (registry names ``'attnlrp'`` and ``'cp_lrp'``).

Both assign rules by module type after canonizing the model (``canonizers='auto'``: the
:class:`~zennit_ext.canonizers.auto.AutoCanonizer`, chosen for the model when the
composite is registered) and check, when registering, that every module the forward pass
uses is explained: an ``nn.MultiheadAttention`` no canonizer rewrote, a module with
parameters and no rule, a non-linearity without a rule, or a torchvision block known to hide
residual adds in its ``forward`` raises a ValueError naming it, instead of letting its plain
gradient stand in for relevance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from zennit.composites import register_composite
from zennit.core import Composite, Hook
from zennit.layer import Sum
from zennit.rules import Epsilon, Norm, Pass
from zennit.types import Activation, AvgPool, BatchNorm, MaxPool
from zennit.types import Linear as AnyLinear

from zennit_ext._lxt import check_no_lxt_patch
from zennit_ext._rules import ModuleState
from zennit_ext.attention.canonizers import is_canonized
from zennit_ext.attention.huggingface import HFActivation
from zennit_ext.attention.modules import AttentionWeighting
from zennit_ext.attention.swin import CosineNormalize
from zennit_ext.canonizers.auto import AutoCanonizer
from zennit_ext.gamma import FastGamma
from zennit_ext.layers import MatMul, Multiply, Scale
from zennit_ext.rules import LayerNormRule, ProductRule, SoftmaxRule, Stop

__all__ = ["AttnLRP", "CPLRP", "uncovered_modules"]

LayerMap = list[tuple[type | tuple[type, ...], Hook]]

#: Leaf modules without parameters that are linear or the identity in eval mode: no rule
#: needed (their gradient moves relevance unchanged); max pooling passes it to the winner.
PASSIVE_NAMES = frozenset(
    {
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "Dropout3d",
        "AlphaDropout",
        "Identity",
        "Flatten",
        "Unflatten",
        "Permute",
        "StochasticDepth",
        "WindowPartition",
        "WindowDepartition",
        "SwapAxes",
        "TokenConcat",
        "GridPad",
    }
)

#: torchvision blocks whose ``forward`` holds residual adds, gates or scales: they need a
#: canonizer (an overloaded ``forward``) or relevance is created or lost there.
FUNCTIONAL_NAMES = frozenset(
    {
        "EncoderBlock",
        "Encoder",
        "VisionTransformer",
        "CNBlock",
        "SwinTransformerBlock",
        "SwinTransformerBlockV2",
        "ShiftedWindowAttention",
        "ShiftedWindowAttentionV2",
        "MBConv",
        "PartitionAttentionLayer",
        "RelativePositionalMultiHeadAttention",
        "BasicBlock",
        "Bottleneck",
        "InvertedResidual",
        "SqueezeExcitation",
        "FusedMBConv",
        "ResBottleneckBlock",
        "BertSelfAttention",
        "BertSdpaSelfAttention",
        "BertSelfOutput",
        "BertOutput",
        "BertEmbeddings",
        "ViTSelfAttention",
        "ViTOutput",
        "ViTLayer",
        "ViTEmbeddings",
    }
)

#: Modules whose input is not differentiable (token ids): relevance ends at their output,
#: e.g. at ``inputs_embeds`` (see :mod:`zennit_ext.attention.huggingface`).
LOOKUP_TYPES = (nn.Embedding,)


def _norm_types() -> tuple[type, ...]:
    rms = getattr(nn, "RMSNorm", None)
    return (nn.LayerNorm,) if rms is None else (nn.LayerNorm, rms)


def _adds(module: nn.Module) -> bool:
    """False for inverted-residual blocks without their skip (``use_res_connect=False``) and
    for ShuffleNetV2's blocks (chunk, concatenation and channel shuffle route relevance
    exactly; nothing is added)."""
    if type(module).__module__ == "torchvision.models.shufflenetv2":
        return False
    return bool(getattr(module, "use_res_connect", True))


def uncovered_modules(
    model: nn.Module, has_rule: dict[str, bool]
) -> list[tuple[str, nn.Module, str]]:
    """The modules of ``model`` a composite leaves unexplained, with the reason.

    Parameters
    ----------
    model : torch.nn.Module
        The (canonized) model.
    has_rule : dict of str to bool
        Module name → whether the composite assigns it a rule.

    Returns
    -------
    list of (str, torch.nn.Module, str)
        ``(name, module, reason)`` for every unexplained module, in module order.
    """
    found: list[tuple[str, nn.Module, str]] = []
    for name, module in model.named_modules():
        if has_rule.get(name, False) or isinstance(module, LOOKUP_TYPES):
            continue
        kind = type(module).__name__
        if isinstance(module, nn.MultiheadAttention) and not is_canonized(module):
            found.append((name, module, "fused attention without a canonizer"))
        elif kind in FUNCTIONAL_NAMES and not is_canonized(module) and _adds(module):
            found.append((name, module, "its forward adds or multiplies without a canonizer"))
        elif any(True for _ in module.parameters(recurse=False)) and not is_canonized(module):
            found.append((name, module, "it has parameters but no rule"))
        elif not any(True for _ in module.children()) and kind not in PASSIVE_NAMES:
            # an empty container is the identity (ShuffleNetV2's stride-1 ``branch1``)
            if not isinstance(module, MaxPool | nn.Sequential | nn.ModuleList):
                found.append((name, module, "no rule for this operation"))
    return found


class _AttentionComposite(Composite):
    """Shared machinery of :class:`AttnLRP` and :class:`CPLRP` (see their docstrings)."""

    method = ""

    def __init__(
        self,
        epsilon: float = 1e-6,
        gamma: float | None = 0.25,
        first_rule: Hook | None = None,
        stabilizer: float = 1e-6,
        layer_map: LayerMap | None = None,
        canonizers: str | Sequence[Any] | None = "auto",
    ) -> None:
        if gamma is not None and not gamma >= 0.0:
            raise ValueError(f"gamma must be a number >= 0 or None, got {gamma!r}")
        if first_rule is not None and not isinstance(first_rule, Hook):
            raise TypeError(f"first_rule must be a zennit Hook, got {type(first_rule).__name__}")
        if isinstance(canonizers, str):
            if canonizers != "auto":
                raise ValueError(f"canonizers must be 'auto', a list or None, got {canonizers!r}")
            canonizer_list: list[Any] = [AutoCanonizer()]
        else:
            canonizer_list = list(canonizers or [])
        self.epsilon = epsilon
        self.gamma = gamma
        self.first_rule = first_rule
        linear = Epsilon(epsilon) if gamma is None else FastGamma(gamma, stabilizer)
        self.layer_map: LayerMap = list(layer_map or []) + [
            *self.attention_rules(stabilizer),
            (_norm_types(), LayerNormRule(epsilon)),
            ((Multiply, MatMul), ProductRule((0.5, 0.5), stabilizer)),
            ((Activation, HFActivation, CosineNormalize), Pass()),
            ((Sum, AvgPool), Norm(stabilizer=stabilizer)),
            (BatchNorm, Pass()),
            ((AnyLinear, Scale), linear),
        ]
        self.module_state: ModuleState | None = None
        super().__init__(module_map=self.mapping, canonizers=canonizer_list)

    def attention_rules(self, stabilizer: float) -> LayerMap:
        """Rules for the softmax and the weighting ``A @ v`` (the methods differ there)."""
        raise NotImplementedError

    def rule(self, ctx: dict, name: str, module: nn.Module) -> Hook | None:
        """The rule template of ``module`` (None: no rule)."""
        if isinstance(module, nn.MultiheadAttention):
            return None  # canonized: its children carry the rules; else uncovered
        if self.first_rule is not None and isinstance(module, AnyLinear):
            if not ctx.get("attention_first_seen", False):
                ctx["attention_first_seen"] = True
                return self.first_rule
        return next((hook for types, hook in self.layer_map if isinstance(module, types)), None)

    def mapping(self, ctx: dict, name: str, module: nn.Module) -> Hook | None:
        """Zennit's ``module_map``; at the root it checks that every module is explained and
        that LXT's global patch is not active (also when PLRP wraps this composite)."""
        if not ctx.get("attention_checked", False):
            ctx["attention_checked"] = True
            check_no_lxt_patch(type(self).__name__)
            probe: dict = {}
            has_rule = {n: self.rule(probe, n, m) is not None for n, m in module.named_modules()}
            missing = uncovered_modules(module, has_rule)
            if missing:
                listed = "; ".join(
                    f"{n or '<root>'} ({type(m).__name__}): {why}" for n, m, why in missing
                )
                raise ValueError(
                    f"{type(self).__name__} cannot explain {len(missing)} module(s): {listed}. "
                    "Give them a rule (layer_map=) or a canonizer (canonizers=)"
                )
        return self.rule(ctx, name, module)

    def register(self, module: nn.Module) -> None:
        """Canonize ``module`` and register the rules; on error the model is left unchanged.

        Raises
        ------
        ValueError
            If a module of the model is not explained (see :func:`uncovered_modules`).
        RuntimeError
            If LXT's global patch of Zennit is active (see :mod:`zennit_ext._lxt`).
        """
        self.remove()
        state = ModuleState(module)
        try:
            super().register(module)
        except BaseException:
            self.module_state = state
            self.remove()
            raise
        self.module_state = state

    def remove(self) -> None:
        """Remove the hooks and canonizers; restore the model's parameters and attributes."""
        super().remove()
        if self.module_state is not None:
            self.module_state.restore()
            self.module_state = None


_PARAMETERS = """
    Parameters
    ----------
    epsilon : float
        Stabilizer of the ε-rule for linear layers, LayerNorm and products' denominators.
    gamma : float or None
        The γ-rule (Zennit's generalized ``Gamma``, computed by
        :class:`~zennit_ext.gamma.FastGamma`) for every linear and convolutional layer
        (default 0.25, as LXT's ViT recipe); None for the ε-rule. Measured on torchvision's
        CNNs with random weights (``benchmarks zoo``): the ε-rule's input relevance reaches
        10¹⁴–10³³ × the output on EfficientNet, RegNet-Y and DenseNet (near-zero
        denominators compound), γ = 0.25 gives 0.5–1.3 and conserves to 3e-5 on bias-free
        copies.
    first_rule : zennit.core.Hook, optional
        Rule of the first linear or convolutional layer (e.g. ``Flat()``, ``ZBox(low,
        high)``); by default the rule of the other linear layers.
    stabilizer : float
        Stabilizer of the other rules (products, sums, γ).
    layer_map : list of (types, Hook), optional
        Rules matched before the method's own.
    canonizers : 'auto', list or None
        ``'auto'`` (default): :class:`~zennit_ext.canonizers.auto.AutoCanonizer`,
        chosen for the model when registered; a list: these canonizers; None: none.

    Raises
    ------
    ValueError
        On register: a module the composite cannot explain (named in the message); the model
        is left unchanged.
"""


@register_composite("attnlrp")
class AttnLRP(_AttentionComposite):
    __doc__ = (
        """AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation
    for Transformers", ICML 2024, arXiv:2402.05602) as a Zennit composite.

    LayerNorm/RMSNorm: LN rule (:class:`~zennit_ext.rules.LayerNormRule`); element-wise
    activations: identity (eq. 9, Zennit's ``Pass``); products ``q·kᵀ``, ``A·v`` and gates:
    uniform rule (eq. 7, ``ProductRule((0.5, 0.5))``); softmax: eq. 13
    (:class:`~zennit_ext.rules.SoftmaxRule`, not conservative by design); linear and
    convolutional layers: ε (or γ); residual sums: proportional (Zennit's ``Norm``).
    Registered in ``zennit.composites.COMPOSITES`` as ``'attnlrp'``.
"""
        + _PARAMETERS
    )

    def attention_rules(self, stabilizer: float) -> LayerMap:
        """Softmax: eq. 13; the weighting: uniform (by the generic product rule)."""
        return [(nn.Softmax, SoftmaxRule())]


@register_composite("cp_lrp")
class CPLRP(_AttentionComposite):
    __doc__ = (
        """CP-LRP (Ali et al., "XAI for Transformers: Better Explanations through Conservative
    Propagation", ICML 2022, arXiv:2202.07304) as a Zennit composite.

    LayerNorm/RMSNorm: LN rule (scale constant); attention weights held constant: the
    weighting ``A·v`` passes all relevance to ``v`` (``ProductRule((0, 1))``), nothing goes
    through the softmax (:class:`~zennit_ext.rules.Stop`); element-wise activations: identity
    (``Pass``); other products: uniform; linear layers: ε (or γ). Without biases it conserves
    relevance up to ε. Registered in ``zennit.composites.COMPOSITES`` as ``'cp_lrp'``.
"""
        + _PARAMETERS
    )

    def attention_rules(self, stabilizer: float) -> LayerMap:
        """Softmax: stop; the weighting ``A @ v``: all relevance to ``v``."""
        return [(nn.Softmax, Stop()), (AttentionWeighting, ProductRule((0.0, 1.0), stabilizer))]
