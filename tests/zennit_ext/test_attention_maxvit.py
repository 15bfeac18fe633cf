"""AttnLRP and CP-LRP on torchvision's MaxViT: canonized outputs, model restoration (also after
an error), conservation on a bias-free float64 copy; maxvit_t itself once (slow)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from attention_common import (
    TINY,
    check_outputs_and_restoration,
    check_restored_after_failure,
    explain,
    relative_difference,
    zero_parameters,
)
from random_modules import random_bn
from torch import nn
from torchvision.models.maxvit import MaxVit

from zennit_ext import CPLRP, AttnLRP
from zennit_ext.attention.maxvit import MaxViTCanonizer


def small_maxvit(seed: int = 0) -> nn.Module:
    """Two MaxViT blocks (MBConv with SE, window and grid attention) at 32² in float64."""
    torch.manual_seed(seed)
    model = MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=5,
    )
    for module in model.modules():  # torchvision draws std 0.02: activations near 0, where
        if isinstance(module, nn.Conv2d | nn.Linear):  # ε decides; torch's init keeps O(1)
            module.reset_parameters()
    return model.double().eval()


def bias_free(model: nn.Module) -> nn.Module:
    """Biases, LayerNorm shifts and relative position bias tables set to 0 (BatchNorm running
    means are 0 in a fresh model)."""
    return zero_parameters(model, ("bias", "relative_position_bias_table"))


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3)).double()


@pytest.mark.parametrize("method", [AttnLRP, CPLRP])
def test_canonized_outputs_equal_and_the_model_is_restored(method):
    check_outputs_and_restoration(small_maxvit(), method, images())


def test_the_model_is_restored_after_an_error_midway(monkeypatch):
    model, x = small_maxvit(), images()
    check_restored_after_failure(
        monkeypatch, model, x, MaxViTCanonizer, "blocks.1.layers.0.layers.grid_attention", CPLRP()
    )


def test_cp_lrp_conserves_relevance_without_biases():
    model = bias_free(small_maxvit())
    _, relevance = explain(
        model, CPLRP(epsilon=TINY, stabilizer=TINY, gamma=None), images(), (0, 3), 5
    )
    torch.testing.assert_close(relevance.sum((1, 2, 3)), torch.ones(2).double(), atol=1e-8, rtol=0)


def test_attnlrp_relevance_is_finite():
    model = bias_free(small_maxvit())
    _, relevance = explain(
        model, AttnLRP(epsilon=TINY, stabilizer=TINY, gamma=None), images(), (0, 3), 5
    )
    assert torch.isfinite(relevance).all() and (relevance.sum((1, 2, 3)) != 0).all()


@pytest.mark.zoo  # maxvit_t needs 224² inputs: about 10 s per forward pass on 2 cores
def test_composites_without_arguments_accept_maxvit_t():
    torch.manual_seed(0)
    model = torchvision.models.maxvit_t().eval()
    x = torch.randn(1, 3, 224, 224)
    reference = model(x)
    for method in (AttnLRP, CPLRP):
        composite = method()
        composite.register(model)
        try:
            assert relative_difference(model(x), reference) < 1e-5  # float32
        finally:
            composite.remove()
    assert torch.equal(model(x), reference)


def _random_batch_norms(model: nn.Module) -> nn.Module:
    """Every BatchNorm with non-trivial statistics and affine parameters (a fresh model's are
    the identity, which would hide an unmerged or wrongly merged one)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for seed, norm in enumerate(norms):
        found = random_bn(norm.num_features, seed).double()
        norm.load_state_dict(found.state_dict())
    return model


def test_batch_norms_are_merged_or_kept_with_unchanged_outputs():
    from zennit_ext.canonizers.auto import AutoCanonizer
    from zennit_ext.canonizers.merge import kept_batch_norms

    model, x = _random_batch_norms(small_maxvit()), images()
    reference = model(x)
    handles = AutoCanonizer().apply(model)
    try:
        torch.testing.assert_close(model(x), reference, atol=1e-12, rtol=1e-10)
        kept = kept_batch_norms(handles)  # the group returns its applied leaves
        names = {module: name for name, module in model.named_modules()}
        assert sorted(names[m] for m in kept) == [
            "blocks.0.layers.0.layers.MBconv.layers.pre_norm",
            "blocks.1.layers.0.layers.MBconv.layers.pre_norm",
        ]
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(model(x), reference)


def test_nrm_with_auto_canonizers_conserves_on_maxvit():
    """NRM with 'auto' canonizers: every BatchNorm merged or kept, Σ = 1 per sample with the
    biases, the BatchNorm shifts and the position bias in place (z⁺ on the convolutions: they
    read GELU outputs of both signs, where γ's column sums can be negative)."""
    from zennit_ext import NRM
    from zennit_ext.nrm.rules import nrm_composite

    model = _random_batch_norms(small_maxvit())
    layers = ["blocks.0.layers.0.layers.MBconv.layers.conv_b.0", "blocks.1.layers.0"]
    composite = nrm_composite(gamma=None, canonizers="auto")
    with NRM(model, layers, composite=composite).explain(images(), [0, 3]) as explanation:
        total = explanation.reached + sum(explanation.stopped.values())
        marginal = explanation.layer_relevance()
    torch.testing.assert_close(total, torch.ones(2).double(), atol=1e-10, rtol=0)
    assert all(torch.isfinite(r).all() and r.abs().sum() > 0 for r in marginal.values())
