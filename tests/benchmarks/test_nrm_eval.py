"""NRM's evaluation: on a network that stays linear under removals, the joint contribution
(inclusion–exclusion of removals) equals NRM's joint relevance under LRP-0 times f(x)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon, Pass
from zennit.types import Activation

from benchmarks.nrm_eval import (
    INPUT,
    UnitSpace,
    baselines,
    joint_contributions,
    pearson,
    sum_of_contributions,
)
from zennit_ext import NRM


def _positive_mlp() -> nn.Sequential:
    """Bias-free, positive weights: with positive inputs no ReLU ever switches off."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 5, bias=False),
        nn.ReLU(),
        nn.Linear(5, 4, bias=False),
        nn.ReLU(),
        nn.Linear(4, 3, bias=False),
    ).double()
    for linear in model[::2]:
        linear.weight.data.uniform_(0.1, 1.0)
    return model.eval()


def _lrp0() -> LayerMapComposite:
    return LayerMapComposite([(Activation, Pass()), (nn.Linear, Epsilon(epsilon=1e-12))])


def _pairs(shape):
    return np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 2)


def test_joint_contribution_equals_nrm_times_output_on_a_linear_regime():
    model, x = _positive_mlp(), torch.rand(1, 6, dtype=torch.float64) + 0.1
    target, f = 2, float(model(x)[0, 2].detach())
    nrm = NRM(model, ["1", "3"], composite=_lrp0())
    table = nrm.pairwise(x, target, "1", "3", level="neuron")[0].numpy()
    space = UnitSpace(model, x, {"1": "neuron", "3": "neuron"})
    contribution, occlusion = joint_contributions(space, ["1", "3"], _pairs(table.shape), target)
    np.testing.assert_allclose(contribution, f * table.reshape(-1), rtol=1e-9, atol=1e-12)
    removed = space.outputs([{"1": int(i), "3": int(j)} for i, j in _pairs(table.shape)], target)
    np.testing.assert_allclose(occlusion, f - removed.numpy())


def test_third_order_with_the_input_layer():
    model, x = _positive_mlp(), torch.rand(1, 6, dtype=torch.float64) + 0.1
    target, f = 0, float(model(x)[0, 0].detach())
    nrm = NRM(model, ["1", "3"], composite=_lrp0())
    triples = np.array([[p, i, j] for p in range(6) for i in range(5) for j in range(4)])
    conditions = [{"1": [int(i)], "3": [int(j)]} for _, i, j in triples]
    heat = nrm.heatmaps(x, target, conditions)[:, 0]  # (n, 6)
    expected = heat[torch.arange(len(triples)), torch.as_tensor(triples[:, 0])].numpy()
    space = UnitSpace(model, x, {INPUT: "neuron", "1": "neuron", "3": "neuron"})
    contribution, _ = joint_contributions(space, [INPUT, "1", "3"], triples, target)
    np.testing.assert_allclose(contribution, f * expected, rtol=1e-9, atol=1e-12)


def test_baselines_sum_unit_scores():
    model, x = _positive_mlp(), torch.rand(1, 6, dtype=torch.float64)
    space = UnitSpace(model, x, {"1": "neuron", "3": "neuron"})
    tuples = _pairs((5, 4))
    scores = baselines(space, ["1", "3"], tuples, 1, _lrp0())
    a1, a3 = space.activations["1"][0].numpy(), space.activations["3"][0].numpy()
    np.testing.assert_allclose(scores["Act"], a1[tuples[:, 0]] + a3[tuples[:, 1]])
    # LRP-0 on a bias-free network conserves the one-hot output relevance in every layer
    lrp_single = baselines(space, ["1"], np.arange(5)[:, None], 1, _lrp0())["LRP"]
    assert lrp_single.sum() == pytest.approx(1.0, rel=1e-9)


def test_pearson_and_sum_of_contributions():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert np.isnan(pearson(a, np.ones(4)))
    np.testing.assert_allclose(
        sum_of_contributions(a, np.array([10, 20, 30, 40.0]), 3), [40, 70, 90]
    )
