"""NeuronSynergy: input features of one neuron, against brute force and NeuronFeatureAblation."""

from __future__ import annotations

import itertools

import pytest
import torch
from captum.attr import NeuronFeatureAblation
from synergy_reference import randomize_norms
from torch import nn

from captum_ext import NeuronSynergy

TOL = 1e-5


class TwoInputs(nn.Module):
    """(x (N, 4), y (N, 2, 3)) → conv-free MLP whose hidden layer ``act`` holds the neurons."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.lin = nn.Linear(10, 6)
        self.norm = nn.BatchNorm1d(6)
        self.act = nn.Tanh()
        self.out = nn.Linear(6, 2)

    def forward(self, x, y, scale=1.0):
        return self.out(self.act(self.norm(self.lin(torch.cat([x, scale * y.flatten(1)], 1)))))


def _model() -> TwoInputs:
    model = TwoInputs().double()
    randomize_norms(model)
    return model.eval()


def _inputs(rows=9):
    return torch.randn(rows, 4, dtype=torch.float64), torch.randn(rows, 2, 3, dtype=torch.float64)


def _brute_force(model, inputs, units, neuron, baselines, mode):
    """Δ, S and per-row d, s of input units; ``units[k]`` lists (tensor, flat index) pairs."""
    captured = {}
    handle = model.act.register_forward_hook(lambda _m, _i, out: captured.update(out=out))

    def run(masked):
        parts = [x.clone().reshape(len(x), -1) for x in inputs]
        for k in masked:
            for t, e in units[k]:
                parts[t][:, e] = baselines[t].reshape(-1)[e]
        with torch.no_grad():
            model(*(p.reshape(x.shape) for p, x in zip(parts, inputs, strict=True)))
        return neuron(captured["out"])

    def diff(a, b):
        return (a - b).abs() if mode == "abs_mean" else a - b

    try:
        p = run(())
        n = len(units)
        d = torch.stack([diff(p, run((i,))) for i in range(n)], dim=1)
        s_rows = torch.zeros(len(p), n, n, dtype=p.dtype)
        for i, j in itertools.combinations(range(n), 2):
            s_rows[:, i, j] = s_rows[:, j, i] = diff(p, run((i, j))) - d[:, i] - d[:, j]
    finally:
        handle.remove()
    return d.mean(0), s_rows.mean(0), d, s_rows


@pytest.mark.parametrize("mode", ["abs_mean", "signed"])
@pytest.mark.parametrize(
    ("selector", "neuron"),
    [
        (2, lambda out: out[:, 2]),
        ((slice(1, 4),), lambda out: out[:, 1:4].sum(1)),
        (lambda out: out.pow(2).sum(1), lambda out: out.pow(2).sum(1)),
    ],
)
def test_feature_groups_match_brute_force(mode, selector, neuron):
    model = _model()
    inputs = _inputs()
    # ids global across the two inputs, as in Captum's FeatureAblation
    mask = (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[[3, 3, 2], [4, 0, 4]]]))
    units = [
        [(0, 0), (1, 4)],
        [(0, 1), (0, 2)],
        [(0, 3), (1, 2)],
        [(1, 0), (1, 1)],
        [(1, 3), (1, 5)],
    ]
    baselines = (0.5, 0.2 * torch.randn(1, 2, 3, dtype=torch.float64))
    ns = NeuronSynergy(model, model.act, mode=mode)
    res = ns.compute(
        inputs, selector, baselines=baselines, feature_mask=mask, perturbations_per_eval=3
    )
    full_baselines = (torch.full((1, 4), 0.5, dtype=torch.float64), baselines[1])
    delta, synergy, d, s_rows = _brute_force(model, inputs, units, neuron, full_baselines, mode)
    assert torch.allclose(res.importance, delta, atol=TOL)
    assert torch.allclose(res.synergy, synergy, atol=TOL)
    x_attr, y_attr = ns.attribute(inputs, selector, baselines=baselines, feature_mask=mask)
    z = d + 20.0 * s_rows.clamp(min=0).mean(2)
    assert x_attr.shape == (9, 4) and y_attr.shape == (9, 2, 3)
    assert torch.allclose(x_attr, z[:, mask[0][0]], atol=TOL)
    assert torch.allclose(y_attr, z[:, mask[1][0]], atol=TOL)


@pytest.mark.parametrize("selector", [0, (3,), (slice(0, 6, 2),), lambda out: out[:, 1] * 2])
def test_importance_equals_captum_neuron_feature_ablation(selector):
    model = _model()
    inputs = _inputs(12)
    baselines = (torch.randn(12, 4, dtype=torch.float64), 0.3)
    mask = (torch.tensor([[0, 0, 1, 2]]), torch.arange(3, 9).reshape(1, 2, 3))
    ablation = NeuronFeatureAblation(model, model.act)
    for kwargs in ({}, {"baselines": baselines}, {"feature_mask": mask}):
        ours = NeuronSynergy(model, model.act).compute(inputs, selector, **kwargs)
        theirs = ablation.attribute(inputs, selector, **kwargs)
        for k, t in enumerate(theirs):
            groups = kwargs.get(
                "feature_mask", (torch.arange(4)[None], torch.arange(4, 10).reshape(1, 2, 3))
            )[k]
            position = torch.searchsorted(ours.group_ids, groups[0])
            assert torch.allclose(ours.importance[position], t.abs().mean(0), atol=1e-10)


def test_tensor_in_tensor_out_and_batch_independence():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(10, 5, dtype=torch.float64)
    ns = NeuronSynergy(model, model[1])
    whole = ns.attribute(x, 1)
    assert isinstance(whole, torch.Tensor) and whole.shape == x.shape
    halves = torch.cat([ns.attribute(x[:4], 1), ns.attribute(x[4:], 1)])
    assert torch.allclose(whole, halves, atol=1e-12)
    (as_tuple,) = ns.attribute((x,), 1)
    assert torch.allclose(as_tuple, whole, atol=1e-12)


def test_clear_errors_and_no_hooks_left():
    model = _model()
    inputs = _inputs(4)
    ns = NeuronSynergy(model, model.act)
    with pytest.raises(ValueError, match="neuron_selector"):
        ns.attribute(inputs, 6)
    with pytest.raises(ValueError, match="neuron_selector"):
        ns.attribute(inputs, (1, 2))
    with pytest.raises(ValueError, match="neuron_selector"):
        ns.attribute(inputs, (slice(7, 9),))
    with pytest.raises(ValueError, match="neuron_selector"):
        ns.attribute(inputs, 1.5)
    with pytest.raises(ValueError, match="neuron_selector"):
        ns.attribute(inputs, lambda out: out)  # six values per row
    with pytest.raises(ValueError, match="feature_mask"):
        ns.attribute(inputs, 1, feature_mask=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="feature_mask"):
        ns.compute(torch.randn(2, 4097), 0)
    big = nn.Sequential(nn.Linear(4097, 2))
    groups = torch.arange(4097)[None] % 3
    assert NeuronSynergy(big, big[0]).compute(torch.randn(2, 4097), 0, feature_mask=groups).n == 3
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
