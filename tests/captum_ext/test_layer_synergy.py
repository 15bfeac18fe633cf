"""LayerSynergy against a one-forward-per-mask brute force, Captum, and SynXAI's definitions."""

from __future__ import annotations

import itertools

import pytest
import torch
from captum.attr import LayerFeatureAblation
from synergy_reference import brute_force, evaluator_of, randomize_norms
from torch import nn

from captum_ext import LayerSynergy, SynergyResult, synergistic_importance, synergy_ranking
from captum_ext.synergy._evaluators import ContributionEvaluator, LayerHookEvaluator

TOL = 1e-5
DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _mlp(activation: type[nn.Module] = nn.ReLU, outputs: int = 1, dtype=torch.float64):
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Linear(5, 6),
        nn.BatchNorm1d(6),
        activation(),
        nn.Dropout(0.3),
        nn.Linear(6, 4),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Linear(4, outputs),
    ).to(dtype)
    randomize_norms(model)
    return model.eval()


def _sigmoid0(out):
    return torch.sigmoid(out)[:, 0]


def _units(n):
    return [[k] for k in range(n)]


@pytest.mark.parametrize("mode", ["abs_mean", "signed"])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.GELU])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("per_eval", [1, 4])
def test_dense_and_hook_paths_match_brute_force(mode, activation, fast, per_eval):
    model = _mlp(activation)
    x = torch.randn(37, 5, dtype=torch.float64)
    layer = model[2]
    forward = model if fast else (lambda inp: model(inp))
    ls = LayerSynergy(forward, layer, output_transform="sigmoid", mode=mode)
    delta, synergy, _, _ = brute_force(model, layer, x, _units(6), _sigmoid0, mode)
    res = ls.compute(x, perturbations_per_eval=per_eval)
    assert isinstance(res, SynergyResult)
    assert torch.allclose(res.importance, delta, atol=TOL)
    assert torch.allclose(res.synergy, synergy, atol=TOL)
    assert torch.equal(res.synergy, res.synergy.t()) and not res.synergy.diagonal().any()


def test_fast_path_is_taken_only_where_it_applies():
    model = _mlp()
    x = torch.randn(8, 5, dtype=torch.float64)
    fast = evaluator_of(LayerSynergy(model, model[2]), x)
    grouped = evaluator_of(
        LayerSynergy(model, model[2]), x, layer_mask=torch.tensor([[0, 0, 1, 1, 2, 2]])
    )
    slow = evaluator_of(LayerSynergy(lambda z: model(z), model[2]), x)
    last = evaluator_of(LayerSynergy(model, model[7]), x)
    per_row = evaluator_of(
        LayerSynergy(model, model[2]),
        x,
        layer_mask=torch.arange(6).repeat(8, 1) % (torch.arange(8)[:, None] + 1),
    )
    assert isinstance(fast, ContributionEvaluator) and isinstance(grouped, ContributionEvaluator)
    for evaluator in (slow, last, per_row):
        assert isinstance(evaluator, LayerHookEvaluator)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, None])
def test_groups_baselines_and_chunks_match_brute_force(fast, chunk):
    model = _mlp()
    x = torch.randn(23, 5, dtype=torch.float64)
    layer = model[2]
    forward = model if fast else (lambda inp: model(inp))
    mask = torch.tensor([[4, 1, 4, 9, 1, 2]])
    groups = [[1, 4], [5], [0, 2], [3]]  # ids 1, 2, 4, 9 in sorted order
    baseline = torch.linspace(-0.2, 0.3, 6, dtype=torch.float64)
    ls = LayerSynergy(forward, layer, output_transform="sigmoid")
    res = ls.compute(x, layer_mask=mask, layer_baselines=baseline, rows_per_chunk=chunk)
    delta, synergy, d, s_rows = brute_force(
        model, layer, x, groups, _sigmoid0, "abs_mean", baseline
    )
    assert torch.equal(res.group_ids, torch.tensor([1, 2, 4, 9]))
    assert torch.allclose(res.importance, delta, atol=TOL)
    assert torch.allclose(res.synergy, synergy, atol=TOL)
    z_rows = d + 20.0 * s_rows.clamp(min=0).mean(2)
    attr = ls.attribute(x, layer_mask=mask, layer_baselines=baseline, rows_per_chunk=chunk)
    assert attr.shape == (23, 6)
    position = torch.searchsorted(res.group_ids, mask[0])
    assert torch.allclose(attr, z_rows[:, position], atol=TOL)


@pytest.mark.parametrize("fast", [True, False])
def test_importance_equals_captum_layer_feature_ablation(fast):
    model = _mlp(outputs=3)
    x = torch.randn(25, 5, dtype=torch.float64)
    layer = model[6]
    forward = model if fast else (lambda inp: model(inp))
    ablation = LayerFeatureAblation(model, layer)
    mask = torch.tensor([[0, 1, 1, 0]])
    baselines = 0.3 * torch.randn(25, 4, dtype=torch.float64)
    targets = (
        1,
        torch.tensor([2]),
        [0, 2, 1, 1, 0] * 5,
        torch.arange(25) % 3,
        (2,),
        [(t,) for t in range(3)] * 8 + [(0,)],
    )
    for target in targets:
        for kwargs in ({}, {"layer_mask": mask}, {"layer_baselines": baselines}):
            res = LayerSynergy(forward, layer).compute(x, target=target, **kwargs)
            per_row = ablation.attribute(x, target=target, **kwargs)
            position = torch.searchsorted(
                res.group_ids, kwargs.get("layer_mask", torch.arange(4)[None])[0]
            )
            assert torch.allclose(res.importance[position], per_row.abs().mean(0), atol=1e-10)


def test_signed_synergy_vanishes_when_the_rest_is_linear():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.Linear(4, 1))
    model = model.double().eval()
    x = torch.randn(30, 5, dtype=torch.float64)
    for forward in (model, lambda inp: model(inp)):
        s = LayerSynergy(forward, model[1], mode="signed").compute(x).synergy
        assert s.abs().max() < 1e-12
    # the paper's absolute mean is not additive, so it does not vanish in general
    assert LayerSynergy(model, model[1]).compute(x).synergy.abs().max() > 1e-6


def test_signed_synergy_is_minus_the_joint_contribution():
    model = _mlp()
    x = torch.randn(20, 5, dtype=torch.float64)
    res = LayerSynergy(model, model[2], mode="signed").compute(x)

    def f(units):
        def hook(_m, _i, out):
            out = out.clone()
            out[:, list(units)] = 0.0
            return out

        handle = model[2].register_forward_hook(hook)
        try:
            with torch.no_grad():
                return model(x)[:, 0]
        finally:
            handle.remove()

    i, j = 1, 4
    contribution = (f(()) - f((i,)) - f((j,)) + f((i, j))).mean()
    assert torch.allclose(res.synergy[i, j], -contribution, atol=1e-10)


@pytest.mark.parametrize("fast", [True, False])
def test_attribute_is_per_row_z_and_batch_independent(fast):
    model = _mlp()
    x = torch.randn(19, 5, dtype=torch.float64)
    forward = model if fast else (lambda inp: model(inp))
    ls = LayerSynergy(forward, model[2], output_transform="sigmoid")
    _, _, d, s_rows = brute_force(model, model[2], x, _units(6), _sigmoid0, "abs_mean")
    rows = ls.attribute(x, alpha=5.0, perturbations_per_eval=3)
    assert rows.shape == (19, 6)
    assert torch.allclose(rows, d + 5.0 * s_rows.clamp(min=0).mean(2), atol=TOL)
    halves = torch.cat([ls.attribute(x[:13], alpha=5.0), ls.attribute(x[13:], alpha=5.0)])
    assert torch.allclose(rows, halves, atol=1e-12)
    (as_tuple,) = (ls.attribute((x,), alpha=5.0),)
    assert torch.allclose(as_tuple, rows, atol=1e-12)


def test_result_methods_follow_synxai():
    model = _mlp()
    x = torch.randn(30, 5, dtype=torch.float64)
    res = LayerSynergy(model, model[2], output_transform="sigmoid").compute(x)
    delta, s = res.importance, res.synergy
    z = res.synergistic_importance(alpha=20.0)
    assert torch.allclose(z, delta + 20.0 * s.clamp(min=0).sum(1) / 6, atol=1e-12)
    assert torch.allclose(z, synergistic_importance(delta, s, 20.0))
    assert torch.allclose(res.ranking(), synergy_ranking(s))
    pair = res.pair_importance
    assert torch.allclose(pair.diagonal(), delta)
    assert torch.allclose(pair[0, 1], s[0, 1] + delta[0] + delta[1])
    pairs, values = res.top_pairs(3)
    upper = [(float(s[i, j]), i, j) for i, j in itertools.combinations(range(6), 2)]
    best = sorted(upper, reverse=True)[:3]
    assert torch.allclose(values, torch.tensor([b[0] for b in best], dtype=values.dtype))
    assert all(int(pairs[k, 0]) < int(pairs[k, 1]) for k in range(3))
    assert res.unit_shapes == ((6,),) and res.rows == 30 and res.n == 6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_device_and_dtype_follow_the_inputs(dtype, device):
    model = _mlp(dtype=dtype).to(device)
    x = torch.randn(11, 5, dtype=dtype, device=device)
    for forward in (model, lambda inp: model(inp)):
        ls = LayerSynergy(forward, model[2], output_transform="sigmoid")
        res = ls.compute(x)
        attr = ls.attribute(x)
        for t in (res.importance, res.synergy, attr):
            assert t.dtype == dtype and t.device.type == device


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
    ls = LayerSynergy(forward, model[2], output_transform="sigmoid")
    ls.compute(x)
    ls.attribute(x)

    def broken(_out):
        raise RuntimeError("transform fails")

    with pytest.raises(RuntimeError, match="transform fails"):
        LayerSynergy(forward, model[2], output_transform=broken).compute(x)
    after, mode_after = _state(model)
    assert mode_after == mode and _hooks(model) == 0
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_clear_errors():
    model = _mlp(outputs=3)
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="not a module"):
        LayerSynergy(model, nn.ReLU())
    with pytest.raises(ValueError, match="mode"):
        LayerSynergy(model, model[2], mode="mean")
    with pytest.raises(ValueError, match="output_transform"):
        LayerSynergy(model, model[2], output_transform="tanh")
    ls = LayerSynergy(model, model[2])
    with pytest.raises(ValueError, match="target"):
        ls.compute(x)
    with pytest.raises(ValueError, match="target"):
        ls.compute(x, target=3)
    with pytest.raises(ValueError, match="target"):
        ls.attribute(x, target=[0, 1])
    with pytest.raises(ValueError, match="empty"):
        ls.compute(x[:0], target=0)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        ls.compute(x, target=0, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="layer_mask"):
        ls.compute(x, target=0, layer_mask=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="layer_baselines"):
        ls.compute(x, target=0, layer_baselines=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="alpha"):
        ls.attribute(x, target=0, alpha="big")
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        ls.compute(x, target=0)
    assert model.training
    batch_stats = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="running statistics"):
        LayerSynergy(batch_stats.eval(), batch_stats[0]).compute(x.float(), target=0)
