"""Channel synergy of a conv layer: the conv fast path and the hook path vs brute force."""

from __future__ import annotations

import pytest
import torch
from synergy_reference import brute_force, evaluator_of, randomize_norms
from torch import nn

from captum_ext import LayerSynergy
from captum_ext.synergy._evaluators import ContributionEvaluator, LayerHookEvaluator
from captum_ext.synergy._fastpaths import split_after

TOL = 1e-5


def _cnn(dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(11)
    model = nn.Sequential(
        nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 5, 3, stride=2, padding=1),
            nn.BatchNorm2d(5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ),
        nn.Sequential(nn.Flatten(), nn.Linear(5 * 2 * 2, 7), nn.ReLU(), nn.Linear(7, 3)),
    ).to(dtype)
    randomize_norms(model)
    return model.eval()


def _channel_units(groups: list[list[int]], side: int) -> list[list[int]]:
    """Flat element indices of each channel group in one (C, side, side) row."""
    per = side * side
    return [[c * per + e for c in group for e in range(per)] for group in groups]


def test_the_conv_path_is_taken_only_where_it_applies():
    model = _cnn()
    split = split_after(model, model[0][2])
    assert split is not None and split.is_conv and split.linear is model[0][3]
    assert split_after(model, model[0][5]) is None  # feeds a max-pool
    assert split_after(lambda z: model(z), model[0][2]) is None
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    ls = LayerSynergy(model, model[0][2])
    channels = torch.tensor([0, 1, 1, 2, 3, 3]).reshape(1, 6, 1, 1)
    spatial = torch.arange(64).reshape(1, 1, 8, 8) % 2
    assert isinstance(evaluator_of(ls, x, target=0, layer_mask=channels), ContributionEvaluator)
    assert isinstance(evaluator_of(ls, x, target=0, layer_mask=spatial), LayerHookEvaluator)


@pytest.mark.parametrize("mode", ["abs_mean", "signed"])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("rows", [1, 5, 12])
def test_channel_groups_match_brute_force(mode, fast, rows):
    model = _cnn()
    x = torch.randn(rows, 2, 8, 8, dtype=torch.float64)
    layer = model[0][2]
    forward = model if fast else (lambda inp: model(inp))
    mask = torch.tensor([3, 0, 3, 1, 2, 0]).reshape(1, 6, 1, 1)
    groups = [[1, 5], [3], [4], [0, 2]]
    baseline = 0.1 * torch.randn(1, 6, 8, 8, dtype=torch.float64)
    ls = LayerSynergy(forward, layer, output_transform="softmax", mode=mode)
    target = torch.arange(rows) % 3
    res = ls.compute(x, target=target, layer_mask=mask, layer_baselines=baseline, rows_per_chunk=4)

    def score(out):
        return out.softmax(-1)[torch.arange(rows), target]

    delta, synergy, d, s_rows = brute_force(
        model, layer, x, _channel_units(groups, 8), score, mode, baseline[0]
    )
    assert torch.allclose(res.importance, delta, atol=TOL)
    assert torch.allclose(res.synergy, synergy, atol=TOL)
    attr = ls.attribute(x, target=target, layer_mask=mask, layer_baselines=baseline, alpha=5.0)
    z = d + 5.0 * s_rows.clamp(min=0).mean(2)
    assert attr.shape == (rows, 6, 8, 8)
    assert torch.allclose(attr[:, :, 3, 4], z[:, torch.tensor([3, 0, 3, 1, 2, 0])], atol=TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_channel_per_unit_in_float32_and_float64(dtype):
    model = _cnn(dtype)
    x = torch.randn(6, 2, 8, 8, dtype=dtype)
    layer = model[0][2]
    mask = torch.arange(6).reshape(1, 6, 1, 1).expand(1, 6, 8, 8)  # constant per channel
    fast = LayerSynergy(model, layer, output_transform="softmax").compute(
        x, target=2, layer_mask=mask
    )
    slow = LayerSynergy(lambda inp: model(inp), layer, output_transform="softmax").compute(
        x, target=2, layer_mask=mask, perturbations_per_eval=8
    )
    scale = float(fast.pair_importance.abs().max())
    assert fast.synergy.dtype == dtype
    tol = TOL if dtype == torch.float64 else 1e-5 * max(1.0, scale) + 1e-6
    assert torch.allclose(fast.importance, slow.importance, atol=tol)
    assert torch.allclose(fast.synergy, slow.synergy, atol=tol)
