"""Taylor channel scores against finite differences of the loss; the model is left unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_ext.synergy.pruning import taylor_scores

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(5 * 6 * 6, 3),
    ).to(dtype)
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.3, 0.3)
    return model


def _data(n=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 6, 6, generator=g, dtype=dtype), torch.arange(n) % 3


def _reference(model, x, y, split, h=1e-5):
    """|Σ_m a ∂C/∂a| / M per image and channel by central differences of C in a channel scale."""
    model = model.eval()
    head, tail = model[:split], model[split:]
    with torch.no_grad():
        a = head(x)
    channels, positions = a.shape[1], a[0, 0].numel()
    scores = torch.zeros(channels, dtype=x.dtype)
    for t in range(len(x)):
        for c in range(channels):
            losses = []
            for s in (1 + h, 1 - h):
                scaled = a[t : t + 1].clone()
                scaled[:, c] *= s
                with torch.no_grad():
                    losses.append(F.cross_entropy(tail(scaled), y[t : t + 1]))
            scores[c] += abs((losses[0] - losses[1]) / (2 * h)) / positions
    return scores / len(x)


@pytest.mark.parametrize("split", [3, 5])  # the first ReLU (4 channels); the second (5)
def test_scores_match_finite_differences_of_the_loss(split):
    model, (x, y) = _model(), _data()
    scores = taylor_scores(model, model[split - 1], x, y, batch_size=4)
    ref = _reference(model, x, y, split)
    assert scores.shape == ref.shape and (ref > 0.01 * ref.max()).all()
    assert torch.allclose(scores, ref, rtol=1e-7, atol=1e-10)
    assert torch.allclose(taylor_scores(model, model[split - 1], x, y), scores, rtol=1e-12)


def test_dense_layers_are_scored_per_unit():
    model, (x, y) = _model(), _data()
    scores = taylor_scores(model, model[5], x, y)  # Flatten output: one score per unit
    assert scores.shape == (5 * 36,) and (scores >= 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_is_unchanged_hooks_removed_also_on_error(device, dtype):
    model = _model(dtype).to(device).train()
    x, y = _data(dtype=dtype)
    x, y = x.to(device), y.to(device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = taylor_scores(model, model[2], x, y)
    assert scores.dtype == dtype and scores.device.type == device
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training and not model[2]._forward_hooks
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="y must hold class indices"):
        taylor_scores(model, model[2], x, y + 10)  # labels out of range: checked per batch
    assert model.training and not model[2]._forward_hooks
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():  # works inside no_grad as well
        assert torch.equal(taylor_scores(model, model[2], x, y), scores)


def test_bad_inputs_are_rejected():
    model, (x, y) = _model(), _data()
    with pytest.raises(ValueError, match="same"):
        taylor_scores(model, model[2], x, y[:3])
    with pytest.raises(ValueError, match="not called"):
        taylor_scores(model, nn.ReLU(), x, y)
    assert not model[2]._forward_hooks
