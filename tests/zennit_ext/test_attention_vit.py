"""AttnLRP and CP-LRP on torchvision's ViT and ConvNeXt: canonized outputs, restoration,
conservation, an independent gradient × input reference, PLRP over AttnLRP, the registry."""

from __future__ import annotations

import pytest
import torch
import torchvision
from attention_common import assert_same, snapshot
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import COMPOSITES

from zennit_ext import CPLRP, PLRPM, AttnLRP, PLRPLambda
from zennit_ext.attention import MultiheadAttentionCanonizer, lxt_patch_active

TINY = 1e-12


def small_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision initializes it to 0
    return model.double().eval()


def small_convnext(seed: int = 0) -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(seed)
    settings = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]
    model = ConvNeXt(settings, layer_scale=0.5, num_classes=5)
    return model.double().eval()


def bias_free(model: nn.Module) -> nn.Module:
    """Every bias, LayerNorm shift, class token and position embedding set to 0."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("bias", "class_token", "pos_embedding")):
                parameter.zero_()
    return model


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)).double()


def explain(model, composite, x, target=(0, 1, 2)):
    with Gradient(model, composite) as attributor:
        output, relevance = attributor(x, torch.eye(5, dtype=x.dtype)[list(target)])
    return output, relevance


@pytest.mark.parametrize("build", [small_vit, small_convnext])
@pytest.mark.parametrize("method", [AttnLRP, CPLRP])
def test_canonized_outputs_equal_and_the_model_is_restored(build, method, images):
    model = build()
    before, reference = snapshot(model), model(images)
    composite = method()
    composite.register(model)
    try:
        torch.testing.assert_close(model(images), reference, rtol=0, atol=1e-6)
    finally:
        composite.remove()
    assert_same(before, snapshot(model))
    torch.testing.assert_close(model(images), reference, rtol=0, atol=0)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "bool", "float", "padding"])
def test_explicit_attention_equals_the_fused_one(batch_first, masks):
    torch.manual_seed(1)
    attention = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=6, vdim=5).double()
    attention.eval()

    def shape(s: int) -> tuple[int, int]:
        return (3, s) if batch_first else (s, 3)

    q = torch.randn(*shape(4), 8).double()
    k, v = torch.randn(*shape(7), 6).double(), torch.randn(*shape(7), 5).double()
    kwargs: dict = {}
    if masks == "bool":
        kwargs["attn_mask"] = torch.rand(4, 7) > 0.7
        kwargs["attn_mask"][:, 0] = False
    elif masks == "float":
        kwargs["attn_mask"] = torch.randn(3 * 2, 4, 7).double()
    elif masks == "padding":
        kwargs["key_padding_mask"] = torch.tensor([[False] * 6 + [True]] * 3)
    for average in (True, False):
        expected = attention(q, k, v, average_attn_weights=average, **kwargs)
        instances = MultiheadAttentionCanonizer().apply(attention)
        try:
            got = attention(q, k, v, average_attn_weights=average, **kwargs)
        finally:
            for instance in instances:
                instance.remove()
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-12)


def test_unsupported_attention_fails_and_restores_the_model(images):
    model = small_vit()
    layers = model.encoder.layers
    layers.encoder_layer_1.self_attention = nn.MultiheadAttention(
        16, 2, add_bias_kv=True, batch_first=True
    ).double()
    before = snapshot(model)
    with pytest.raises(NotImplementedError, match="encoder_layer_1.self_attention"):
        AttnLRP().register(model)
    assert_same(before, snapshot(model))


def test_uncovered_modules_are_named(images):
    model = small_vit()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"encoder_layer_0\.self_attention .*fused attention"):
        AttnLRP(canonizers=None).register(model)
    model.heads.add_module("extra", nn.Bilinear(5, 5, 5).double())
    model.heads.add_module("swish", nn.Mish())
    with pytest.raises(ValueError, match=r"heads\.extra \(Bilinear\).*heads\.swish \(Mish\)"):
        CPLRP().register(model)
    del model.heads.extra, model.heads.swish
    assert_same(before, snapshot(model))


def test_cp_lrp_conserves_relevance_without_biases(images):
    model = bias_free(small_vit())
    output, relevance = explain(model, CPLRP(epsilon=TINY, stabilizer=TINY, gamma=None), images)
    torch.testing.assert_close(relevance.sum((1, 2, 3)), torch.ones(3).double(), atol=1e-8, rtol=0)


def test_cp_lrp_conserves_relevance_on_convnext_without_biases():
    model = bias_free(small_convnext())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).double()
    _, relevance = explain(
        model, CPLRP(epsilon=TINY, stabilizer=TINY, gamma=None), x, target=(0, 3)
    )
    torch.testing.assert_close(relevance.sum((1, 2, 3)), torch.ones(2).double(), atol=1e-8, rtol=0)


# ---- an independent reference: gradient × input with the rules written as gradients ----


def _scaled_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Value ``x``, gradient multiplied by ``factor``."""
    return x * factor + (x * (1 - factor)).detach()


def _identity_rule(fn, x: torch.Tensor) -> torch.Tensor:
    """Value ``fn(x)``, gradient ``fn(x) / x``: relevance passes unchanged (eq. 9)."""
    return x * (fn(x) / x).detach()


def reference_relevance(model: nn.Module, x: torch.Tensor, target, method: str) -> torch.Tensor:
    """AttnLRP / CP-LRP on torchvision's ViT as ``input × gradient`` (LRP-0 for linear maps)."""

    def layer_norm(module, h):
        centered = h - h.mean(-1, keepdim=True)
        scale = (centered.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
        return centered / scale.detach() * module.weight + module.bias

    def attention(module, h):
        n, length, e = h.shape
        heads, d = module.num_heads, e // module.num_heads
        q, k, v = nn.functional.linear(h, module.in_proj_weight, module.in_proj_bias).chunk(3, -1)
        q, k, v = (t.view(n, length, heads, d).transpose(1, 2) for t in (q, k, v))
        if method == "attnlrp":  # uniform on q kᵀ (1/2) and on A v (1/2 for A and for v)
            q, k, v = _scaled_gradient(q, 0.25), _scaled_gradient(k, 0.25), _scaled_gradient(v, 0.5)
        else:  # CP-LRP: the attention weights are constants
            q, k = q.detach(), k.detach()
        weights = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(n, length, e)
        return module.out_proj(out)

    x = x.clone().requires_grad_()
    h = model._process_input(x)
    h = torch.cat([model.class_token.expand(h.shape[0], -1, -1), h], dim=1)
    h = h + model.encoder.pos_embedding
    for block in model.encoder.layers:
        h = h + attention(block.self_attention, layer_norm(block.ln_1, h))
        mlp = block.mlp
        y = mlp[3](_identity_rule(mlp[1], mlp[0](layer_norm(block.ln_2, h))))
        h = h + y
    logits = model.heads(layer_norm(model.encoder.ln, h)[:, 0])
    seed = torch.eye(logits.shape[1], dtype=x.dtype)[list(target)]
    (gradient,) = torch.autograd.grad(logits, x, seed / logits.detach())
    return x.detach() * gradient


@pytest.mark.parametrize(("method", "composite"), [("attnlrp", AttnLRP), ("cp_lrp", CPLRP)])
def test_composites_equal_the_gradient_times_input_reference(method, composite, images):
    model = small_vit(seed=2)
    _, relevance = explain(model, composite(epsilon=TINY, stabilizer=TINY, gamma=None), images)
    expected = reference_relevance(model, images, (0, 1, 2), method)
    torch.testing.assert_close(relevance, expected, rtol=1e-6, atol=1e-9)


def test_attnlrp_absorbs_a_share_at_the_softmax_only(images):
    """Without biases only the softmax rule (eq. 13) changes the total relevance."""
    model = bias_free(small_vit())
    _, attn = explain(model, AttnLRP(epsilon=TINY, stabilizer=TINY, gamma=None), images)
    ratio = attn.sum((1, 2, 3))
    # the reference has no other non-conservative step; it is the same number
    expected = reference_relevance(model, images, (0, 1, 2), "attnlrp").sum((1, 2, 3))
    torch.testing.assert_close(ratio, expected, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(ratio, torch.ones(3).double(), atol=1e-3)


# ---- PLRP over AttnLRP ----


def _prune_reference(relevance: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-mask and rescaled relevance of PLRP-λ, per sample and sign, by sorting."""
    flat = relevance.reshape(relevance.shape[0], -1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    pruned = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for sign in (1.0, -1.0):
            part = (sign * flat[n]).clamp(min=0)
            total, mass = part.sum().item(), 0.0
            for index in torch.argsort(part).tolist():
                if part[index] == 0:
                    continue
                mass += part[index].item()
                if mass > p * total:
                    break
                keep[n, index] = False
            kept = part * keep[n]
            if kept.sum() > 0:
                pruned[n] += sign * kept * (total / kept.sum())
    return keep.reshape(relevance.shape), pruned.reshape(relevance.shape)


@pytest.mark.parametrize("plrp", [PLRPLambda, PLRPM])
def test_plrp_over_attnlrp_prunes_as_plrp_says(plrp, images):
    model, records = small_vit(), {}
    layer = "encoder.layers.encoder_layer_0.mlp.0"

    def recorder(name, unpruned, pruned):
        records[name] = (unpruned, pruned)

    composite = plrp(p=0.3, composite=AttnLRP(), recorder=recorder)
    _, relevance = explain(model, composite, images)
    assert torch.isfinite(relevance).all()
    assert "conv_proj" not in composite.pruned_names and layer in composite.pruned_names
    unpruned, pruned = records[layer]
    keep, expected = _prune_reference(unpruned, 0.3)
    if plrp is PLRPLambda:
        torch.testing.assert_close(pruned, expected)
    else:  # PLRP-M: pruned neurons get exactly 0 (the rest is recomputed)
        assert torch.equal(pruned[~keep], torch.zeros_like(pruned[~keep]))
        carried = keep & (unpruned != 0)
        assert (pruned[carried] != 0).float().mean() > 0.9


def test_registry_names():
    assert COMPOSITES["attnlrp"] is AttnLRP and COMPOSITES["cp_lrp"] is CPLRP
    model, x = small_vit(), torch.randn(1, 3, 32, 32).double()
    _, relevance = explain(model, COMPOSITES["attnlrp"](), x, target=(4,))
    assert torch.isfinite(relevance).all()


def test_a_global_lxt_patch_is_refused(images):
    from zennit.core import BasicHook

    original = BasicHook.__dict__["backward"]

    def backward(self, module, grad_input, grad_output):  # stands in for LXT's patch
        return original(self, module, grad_input, grad_output)

    backward.__module__ = "lxt.efficient.zennit_patches"
    BasicHook.backward = backward
    try:
        assert lxt_patch_active()
        model = small_vit()
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="BasicHook.backward"):
            AttnLRP().register(model)
        assert_same(before, snapshot(model))
        with pytest.raises(RuntimeError, match="PLRPLambda.*BasicHook.backward"):
            PLRPLambda(p=0.1, composite=AttnLRP()).register(model)
        assert_same(before, snapshot(model))
    finally:
        BasicHook.backward = original
    assert not lxt_patch_active()
