"""Synergy pruning: masks the lowest-scored units, recalibrates BatchNorm, restores the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_ext.pruning import masked_units, pruning_curve, recalibrate_batchnorm


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)
    ).eval()  # fmt: skip


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).float()


def test_masked_units_zeroes_exactly_those_units():
    model = _model()
    x, _ = _data()
    with masked_units(model[2], torch.tensor([1, 5])):
        out = model[:3](x)
    assert not out[:, [1, 5]].any() and torch.equal(out[:, 0], model[:3](x)[:, 0])
    assert not model[2]._forward_hooks


def test_pruning_all_but_nothing_matches_manual_masking():
    model = _model()
    x, y = _data()
    scores = torch.arange(8.0).flip(0)  # unit 7 is the least important
    curve = pruning_curve(model, model[2], scores, x, y, fractions=(0.0, 0.25), progress=False)
    assert curve["pruned"] == [0, 2]
    from sklearn.metrics import roc_auc_score

    with masked_units(model[2], torch.tensor([7, 6])), torch.no_grad():
        p = torch.sigmoid(model(x))[:, 0]
    assert curve["roc_auc"][1] == pytest.approx(roc_auc_score(y, p))
    assert curve["accuracy"][1] == pytest.approx(((p > 0.5).float() == y).float().mean().item())


def test_recalibration_uses_the_pruned_statistics_and_model_is_restored():
    model = _model()
    x, y = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curve = pruning_curve(model, model[2], "random", x, y, fractions=(0.0, 0.5),
                          x_recalibrate=x, progress=False)  # fmt: skip
    assert len(curve["roc_auc"]) == 2
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training and not model[2]._forward_hooks

    recalibrate_batchnorm(model, x, batch_size=50)
    assert torch.allclose(model[1].running_mean, model[0](x).mean(0), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


def test_pruning_rejects_bad_arguments():
    model = _model()
    x, y = _data()
    with pytest.raises(ValueError, match="scores"):
        pruning_curve(model, model[2], torch.ones(3), x, y, progress=False)
    with pytest.raises(ValueError, match="scores"):
        pruning_curve(model, model[2], "best", x, y, progress=False)
    with pytest.raises(ValueError, match="fractions"):
        pruning_curve(model, model[2], torch.ones(8), x, y, fractions=(1.0,), progress=False)
    with pytest.raises(ValueError, match="not called"):
        pruning_curve(model, nn.ReLU(), torch.ones(8), x, y, progress=False)
