"""The fast path at exact values: a layer output equal to its baseline (no contribution) or
exactly one above it, contributions of exactly one, and channel units of 1×1 feature maps
(captum_ext.synergy._fastpaths). The reference is the hook path, checked against brute force in
test_layer_synergy.py."""

from __future__ import annotations

import pytest
import torch
from captum.attr import NeuronFeatureAblation
from torch import nn

from captum_ext import LayerSynergy, NeuronSynergy
from captum_ext.synergy._fastpaths import channel_groups
from captum_ext.synergy._masking import Units

NAMES = ("layer_mask", "layer_baselines")


def _model():
    torch.manual_seed(12)
    model = nn.Sequential(nn.Identity(), nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[1].weight[:, 0] = 1.0  # unit 0's contribution is its value in every output
    return model.eval()


# one unit per column; a group; one unit per column in another order (no element at its own
# position, so it is not the identity grouping)
@pytest.mark.parametrize("mask", [None, torch.tensor([[0, 1, 1]]), torch.tensor([[2, 0, 1]])])
def test_inputs_of_exactly_zero_and_one_match_the_hook_path(mask):
    model = _model()
    x = torch.randn(8, 3, dtype=torch.float64)
    x[::2, 0] = 1.0  # contribution exactly 1 (RankOne: delta 1; grouped: C = 1 everywhere)
    x[1::4, 0] = 0.0  # no contribution
    x[3, 1:] = 0.0
    fast = LayerSynergy(model, model[0]).attribute(x, layer_mask=mask, alpha=5.0)
    slow = LayerSynergy(lambda inp: model(inp), model[0]).attribute(x, layer_mask=mask, alpha=5.0)
    assert slow[::2, 0].abs().min() > 0
    assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-14)


def test_a_single_unit_has_importance_and_no_synergy():
    model = _model()
    x = torch.randn(6, 3, dtype=torch.float64)
    everything = torch.zeros(1, 3, dtype=torch.long)
    fast = LayerSynergy(model, model[0]).compute(x, layer_mask=everything)
    slow = LayerSynergy(lambda inp: model(inp), model[0]).compute(x, layer_mask=everything)
    assert fast.n == 1 and fast.synergy.shape == (1, 1) and not fast.synergy.any()
    assert float(fast.importance[0]) > 0
    assert torch.allclose(fast.importance, slow.importance, rtol=1e-12, atol=0)
    # the hook paths used to run an empty block of pairs and fail in the reshape
    attr = LayerSynergy(lambda inp: model(inp), model[0]).attribute(x, layer_mask=everything)
    assert attr.shape == (6, 3) and torch.equal(attr[:, 0], attr[:, 2])
    neuron = NeuronSynergy(model, model[1]).compute(x, 0, feature_mask=everything)
    theirs = NeuronFeatureAblation(model, model[1]).attribute(x, 0, feature_mask=everything)
    assert neuron.n == 1 and not neuron.synergy.any()
    assert torch.allclose(neuron.importance, theirs[:, 0].abs().mean(0), rtol=1e-12, atol=0)


def test_channel_groups_of_whole_channels_only():
    one_by_one = torch.zeros(2, 3, 1, 1)
    units = Units(
        (one_by_one,), torch.tensor([2, 0, 2]).reshape(1, 3, 1, 1), None, NAMES, "layer output", 2
    )
    assert torch.equal(channel_groups(units), torch.tensor([1, 0, 1]))
    maps = torch.zeros(2, 3, 2, 2)
    per_row = Units(
        (maps,),
        torch.arange(3).reshape(1, 3, 1, 1).repeat(2, 1, 1, 1),
        None,
        NAMES,
        "layer output",
        2,
    )
    assert channel_groups(per_row) is None
    dense = Units((torch.zeros(2, 3),), None, None, NAMES, "layer output", 2)
    assert channel_groups(dense) is None
    spatial = Units((maps,), torch.arange(4).reshape(1, 1, 2, 2), None, NAMES, "layer output", 2)
    assert channel_groups(spatial) is None
