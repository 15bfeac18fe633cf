"""Agreement with LXT 2.1's documented recipe for torchvision's ViT (optional extra
``transformers``), and what LXT's global patch does to PLRP.

LXT's ViT recipe (``lxt.efficient.monkey_patch(torchvision.models.vision_transformer)`` and
``monkey_patch_zennit()``, Zennit's ``Gamma`` on ``nn.Conv2d``/``nn.Linear``, heatmap
``x · ∂y_c/∂x``) is CP-LRP inside attention: LN rule, identity for GELU, ``q`` and ``k``
detached; the attention's projections run as ``F.linear`` (LRP-0). The patches are global:
every test here saves and restores the patched attributes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_attention_vit import small_vit
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.core import BasicHook
from zennit.rules import Epsilon, Gamma

from zennit_ext.attention import CPLRP, lxt_patch_active
from zennit_ext.attention.modules import AttentionProjection

lxt_efficient = pytest.importorskip(
    "lxt.efficient",
    reason="LXT is not installed (pip install 'neuron-xai[transformers]': lxt 2.1, "
    "transformers>=4.50,<5)",
)

TINY = 1e-12
PATCHED = [
    (BasicHook, ("forward", "backward")),
    (nn.LayerNorm, ("forward",)),
    (nn.GELU, ("forward", "original_forward")),
    (nn.MultiheadAttention, ("forward", "original_forward")),
]
MISSING = object()


@pytest.fixture
def restore_lxt_patch():
    """Save the class attributes LXT patches; restore them after the test."""
    saved = [(cls, name, vars(cls).get(name, MISSING)) for cls, names in PATCHED for name in names]
    try:
        yield
    finally:
        for cls, name, value in saved:
            if value is not MISSING:
                setattr(cls, name, value)
            elif name in vars(cls):
                delattr(cls, name)
    assert not lxt_patch_active()


def apply_lxt_patch() -> None:
    """LXT's documented patches for torchvision's ViT (global, see the fixture)."""
    from torchvision.models import vision_transformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lxt_efficient.monkey_patch(vision_transformer, verbose=False)
        lxt_efficient.monkey_patch_zennit(verbose=False)


def ours(model, x, target, gamma):
    """CP-LRP with LXT's rule choice: γ for conv/linear, LRP-0 in the attention projections."""
    attention_linear = (AttentionProjection, nn.modules.linear.NonDynamicallyQuantizableLinear)
    composite = CPLRP(
        epsilon=TINY,
        stabilizer=TINY,
        layer_map=[
            (attention_linear, Epsilon(TINY)),
            ((nn.Conv2d, nn.Linear), Gamma(gamma, stabilizer=TINY)),
        ],
    )
    x = x.clone().requires_grad_()
    composite.register(model)
    try:
        output = model(x)
        seed = torch.zeros_like(output)
        seed[range(len(target)), target] = output[range(len(target)), target].detach()
        (relevance,) = torch.autograd.grad(output, x, seed)
    finally:
        composite.remove()
    return relevance


def lxt(model, x, target, gamma):
    """LXT's documented recipe: input × gradient of the target logit."""
    composite = LayerMapComposite(
        [(nn.Conv2d, Gamma(gamma, stabilizer=TINY)), (nn.Linear, Gamma(gamma, stabilizer=TINY))]
    )
    x = x.clone().requires_grad_()
    composite.register(model)
    try:
        output = model(x)
        seed = torch.zeros_like(output)
        seed[range(len(target)), target] = 1.0
        (gradient,) = torch.autograd.grad(output, x, seed)
    finally:
        composite.remove()
    return x.detach() * gradient


@pytest.mark.parametrize("gamma", [0.0, 0.25])
def test_cp_lrp_agrees_with_lxts_vit_recipe(gamma, restore_lxt_patch):
    model = small_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()
    target = [0, 3]
    got = ours(model, x, target, gamma)  # in Zennit's frame: before LXT's patch
    apply_lxt_patch()
    assert lxt_patch_active()
    expected = lxt(model, x, target, gamma)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_fast_gamma_is_the_patched_gamma_under_lxts_patch(restore_lxt_patch):
    """LXT's patched ``BasicHook.backward`` (gradient × input frame) is what Gamma runs; FastGamma
    must run the same, not its own Zennit-frame fast path."""
    from zennit_ext import FastGamma

    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    apply_lxt_patch()
    results = []
    for rule in (Gamma(0.25), FastGamma(0.25)):
        inputs = x.clone().requires_grad_()
        with LayerMapComposite([(nn.Linear, rule)]).context(model):
            (gradient,) = torch.autograd.grad(model(inputs)[:, 0].sum(), inputs)
        results.append(gradient)
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", ["PLRPLambda", "PLRPM"])
@pytest.mark.parametrize("base", ["AttnLRP", "EpsilonPlusFlat"])
def test_plrp_refuses_to_run_under_lxts_patch(variant, base, restore_lxt_patch):
    """Under the patch PLRP would prune relevance ÷ input (86 % off on ResNet-18): refused,
    also over Zennit's own composites, and the model is left without hooks."""
    import zennit.composites

    import zennit_ext

    composite = getattr(zennit_ext, base)() if base == "AttnLRP" else None
    if composite is None:
        composite = zennit.composites.EpsilonPlusFlat()
    plrp = getattr(zennit_ext, variant)(composite=composite)
    model = small_vit()
    apply_lxt_patch()
    with pytest.raises(RuntimeError, match=f"{variant}.*monkey_patch_zennit"):
        plrp.register(model)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
