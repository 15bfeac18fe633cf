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
