"""NeuronSynergy against a one-forward-per-mask brute force, Captum, and SynXAI's definitions."""

from __future__ import annotations

import itertools

import pytest
import torch
from captum.attr import LayerFeatureAblation
from torch import nn

from captum_ext import NeuronSynergy, synergistic_importance, synergy_ranking

TOL = 1e-5


def _mlp(activation: type[nn.Module] = nn.ReLU, outputs: int = 1) -> nn.Sequential:
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6), activation(), nn.Dropout(0.3),
        nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, outputs),
    ).double()  # fmt: skip
    with torch.no_grad():  # non-trivial running statistics
        for bn in (model[1], model[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _brute_force(model, layer, x, transform, mode, target=None, mask_value=0.0):
    """Δ_i and S_ij with one forward pass per mask."""

    def score(units):
        def hook(_m, _i, out):
            masked = torch.zeros(out.shape[1], dtype=torch.bool)
            masked[list(units)] = True
            return torch.where(masked, torch.as_tensor(mask_value, dtype=out.dtype), out)

        handle = layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = transform(model(x))
        finally:
            handle.remove()
        return out[:, 0] if target is None else out[:, target]

    p = score(())
    diff = (lambda a, b: (a - b).abs()) if mode == "abs_mean" else (lambda a, b: a - b)
    n = 6  # units of the layers these tests mask
    delta = torch.stack([diff(p, score((i,))).mean() for i in range(n)])
    synergy = torch.zeros(n, n, dtype=x.dtype)
    for i, j in itertools.combinations(range(n), 2):
        synergy[i, j] = synergy[j, i] = diff(p, score((i, j))).mean() - delta[i] - delta[j]
    return delta, synergy


TRANSFORMS = {None: lambda out: out, "sigmoid": torch.sigmoid}


@pytest.mark.parametrize("mode", ["abs_mean", "signed"])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.GELU])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("per_eval", [1, 4, 64])
def test_matches_brute_force(mode, activation, fast, per_eval):
    model = _mlp(activation)
    x = torch.randn(37, 5, dtype=torch.float64)
    layer = model[2]
    forward = model if fast else (lambda inp: model(inp))
    ns = NeuronSynergy(forward, layer, output_transform="sigmoid", mode=mode)
    delta, synergy = _brute_force(model, layer, x, torch.sigmoid, mode)
    assert torch.allclose(ns.importance(x, perturbations_per_eval=per_eval), delta, atol=TOL)
    s = ns.synergy_matrix(x, perturbations_per_eval=per_eval)
    assert torch.allclose(s, synergy, atol=TOL)
    assert torch.equal(s, s.t()) and not s.diagonal().any()


def test_fast_path_is_taken_only_where_it_applies():
    from captum_ext._masking import LowRankEvaluator

    model = _mlp()
    x = torch.randn(8, 5, dtype=torch.float64)
    fast, _ = NeuronSynergy(model, model[2])._evaluator(x, None, None, 4)
    slow, _ = NeuronSynergy(lambda z: model(z), model[2])._evaluator(x, None, None, 4)
    last, _ = NeuronSynergy(model, model[7])._evaluator(x, None, None, 4)
    assert isinstance(fast, LowRankEvaluator)
    assert not isinstance(slow, LowRankEvaluator) and not isinstance(last, LowRankEvaluator)


@pytest.mark.parametrize("fast", [True, False])
def test_importance_equals_captum_layer_feature_ablation(fast):
    model = _mlp(outputs=2)
    x = torch.randn(25, 5, dtype=torch.float64)
    layer = model[6]
    forward = model if fast else (lambda inp: model(inp))
    ours = NeuronSynergy(forward, layer, output_transform=None).importance(x, target=1)
    ablation = LayerFeatureAblation(model, layer)
    per_row = ablation.attribute(x, target=1, layer_baselines=0.0,
                                 layer_mask=torch.arange(4)[None])  # fmt: skip
    assert torch.allclose(ours, per_row.abs().mean(0), atol=1e-10)


def test_signed_synergy_vanishes_when_the_rest_is_linear():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.Linear(4, 1))
    model = model.double().eval()
    x = torch.randn(30, 5, dtype=torch.float64)
    for forward in (model, lambda inp: model(inp)):
        s = NeuronSynergy(forward, model[1], mode="signed").synergy_matrix(x)
        assert s.abs().max() < 1e-12
    # the paper's absolute mean is not additive, so it does not vanish in general
    assert NeuronSynergy(model, model[1]).synergy_matrix(x).abs().max() > 1e-6


def test_signed_synergy_is_minus_the_joint_contribution():
    model = _mlp()
    x = torch.randn(20, 5, dtype=torch.float64)
    ns = NeuronSynergy(model, model[2], mode="signed")
    delta, synergy = _brute_force(model, model[2], x, lambda o: o, "signed")

    def f(units):
        return _brute_force_score(model, model[2], x, units)

    i, j = 1, 4
    contribution = (f(()) - f((i,)) - f((j,)) + f((i, j))).mean()
    assert torch.allclose(ns.synergy_matrix(x)[i, j], -contribution, atol=1e-10)
    assert torch.allclose(synergy[i, j], -contribution, atol=1e-10)


def _brute_force_score(model, layer, x, units):
    def hook(_m, _i, out):
        out = out.clone()
        out[:, list(units)] = 0.0
        return out

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)[:, 0]
    finally:
        handle.remove()


@pytest.mark.parametrize("fast", [True, False])
def test_attribute_rows_average_to_the_synergy_row(fast):
    model = _mlp()
    x = torch.randn(19, 5, dtype=torch.float64)
    forward = model if fast else (lambda inp: model(inp))
    ns = NeuronSynergy(forward, model[2], output_transform="sigmoid")
    rows = ns.attribute(x, neuron_selector=2, perturbations_per_eval=3)
    assert rows.shape == (19, 6) and not rows[:, 2].any()
    assert torch.allclose(rows.mean(0), ns.synergy_matrix(x)[2], atol=TOL)
    (as_tuple,) = ns.attribute((x,), neuron_selector=(2,))
    assert torch.allclose(as_tuple, rows, atol=TOL)


def test_batching_invariance_and_rows_independence():
    model = _mlp()
    x = torch.randn(40, 5, dtype=torch.float64)
    ns = NeuronSynergy(model, model[2], output_transform="sigmoid")
    whole = ns.attribute(x, neuron_selector=0)
    halves = torch.cat([ns.attribute(x[:13], 0), ns.attribute(x[13:], 0)])
    assert torch.allclose(whole, halves, atol=1e-12)


def test_mask_value_baseline_matches_brute_force():
    model = _mlp()
    x = torch.randn(21, 5, dtype=torch.float64)
    baseline = torch.linspace(-0.2, 0.3, 6, dtype=torch.float64)
    delta, synergy = _brute_force(model, model[2], x, torch.sigmoid, "abs_mean",
                                  mask_value=baseline)  # fmt: skip
    for forward in (model, lambda inp: model(inp)):
        ns = NeuronSynergy(forward, model[2], output_transform="sigmoid", mask_value=baseline)
        assert torch.allclose(ns.synergy_matrix(x), synergy, atol=TOL)


def test_multi_output_target_per_row():
    model = _mlp(outputs=3)
    x = torch.randn(12, 5, dtype=torch.float64)
    target = torch.arange(12) % 3
    ns = NeuronSynergy(model, model[2], output_transform="softmax")
    slow = NeuronSynergy(lambda z: model(z), model[2], output_transform="softmax")
    assert torch.allclose(ns.synergy_matrix(x, target=target),
                          slow.synergy_matrix(x, target=target), atol=TOL)  # fmt: skip
    with pytest.raises(ValueError, match="target"):
        ns.importance(x)


def test_z_and_ranking_follow_synxai():
    model = _mlp()
    x = torch.randn(30, 5, dtype=torch.float64)
    ns = NeuronSynergy(model, model[2], output_transform="sigmoid")
    delta, s = ns.importance(x), ns.synergy_matrix(x)
    z = ns.synergistic_importance(x, alpha=20.0)
    assert torch.allclose(z, delta + 20.0 * s.clamp(min=0).sum(1) / 6, atol=1e-12)
    assert torch.allclose(z, synergistic_importance(delta, s, 20.0))
    assert torch.allclose(ns.synergy_ranking(x), synergy_ranking(s))
    pair = ns.pair_importance(x)
    assert torch.allclose(pair.diagonal(), delta)
    assert torch.allclose(pair[0, 1], s[0, 1] + delta[0] + delta[1])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("fast", [True, False])
def test_model_unchanged_after_calls_and_errors(fast):
    model = _mlp()
    x = torch.randn(9, 5, dtype=torch.float64)
    before, mode = _state(model)
    forward = model if fast else (lambda inp: model(inp))
    ns = NeuronSynergy(forward, model[2], output_transform="sigmoid")
    ns.synergy_matrix(x)
    ns.attribute(x, 1)

    def broken(_out):
        raise RuntimeError("transform fails")

    with pytest.raises(RuntimeError, match="transform fails"):
        NeuronSynergy(forward, model[2], output_transform=broken).synergy_matrix(x)
    after, mode_after = _state(model)
    assert mode_after == mode and _hooks(model) == 0
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_clear_errors():
    model = _mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="not a module"):
        NeuronSynergy(model, nn.ReLU())
    with pytest.raises(ValueError, match="mode"):
        NeuronSynergy(model, model[2], mode="mean")
    with pytest.raises(ValueError, match="output_transform"):
        NeuronSynergy(model, model[2], output_transform="tanh")
    ns = NeuronSynergy(model, model[2])
    with pytest.raises(ValueError, match="neuron_selector"):
        ns.attribute(x, neuron_selector=6)
    with pytest.raises(ValueError, match="neuron_selector"):
        ns.attribute(x, neuron_selector=(1, 2))
    with pytest.raises(TypeError, match="neuron_selector"):
        ns.attribute(x, neuron_selector=1.5)
    with pytest.raises(ValueError, match="empty"):
        ns.importance(x[:0])
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        ns.importance(x, perturbations_per_eval=0)
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        ns.importance(x)
    assert model.training
