"""The synergy attributions take Captum's arguments: same names, order and defaults.

``LayerSynergy.attribute`` / ``compute`` begin like ``LayerFeatureAblation.attribute`` and
``NeuronSynergy.attribute`` / ``compute`` like ``NeuronFeatureAblation.attribute`` of the
installed Captum; the synergy-only arguments are keyword-only. ``attribute_to_layer_input`` and
``attribute_to_neuron_input`` are checked against a one-forward-per-mask brute force and
against Captum's ablations.
"""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch
from captum.attr import LayerFeatureAblation, NeuronFeatureAblation
from torch import nn

from captum_ext import LayerSynergy, NeuronSynergy

PAIRS = [
    (LayerSynergy.attribute, LayerFeatureAblation.attribute),
    (LayerSynergy.compute, LayerFeatureAblation.attribute),
    (NeuronSynergy.attribute, NeuronFeatureAblation.attribute),
    (NeuronSynergy.compute, NeuronFeatureAblation.attribute),
]
EXTRAS = {
    LayerSynergy.attribute: ["alpha", "show_progress", "rows_per_chunk"],
    LayerSynergy.compute: ["show_progress", "rows_per_chunk"],
    NeuronSynergy.attribute: ["alpha", "show_progress", "rows_per_chunk"],
    NeuronSynergy.compute: ["show_progress", "rows_per_chunk"],
}
ALPHA = 7.0


def _parameters(function):
    return list(inspect.signature(function).parameters.values())


def _row(p):
    default = "" if p.default is inspect.Parameter.empty else f"={p.default!r}"
    return f"{p.name}{default} [{p.kind.name}]"


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[o.__qualname__ for o, _ in PAIRS])
def test_signature_begins_like_captum(ours, theirs):
    mine, captum = _parameters(ours), _parameters(theirs)
    print(f"\n{ours.__qualname__:<56} {theirs.__qualname__}")
    for a, b in itertools.zip_longest(mine, captum):
        print(f"{_row(a) if a else '':<56} {_row(b) if b else ''}")
    assert len(mine) > len(captum)
    for a, b in zip(mine, captum, strict=False):
        assert (a.name, a.kind, a.default) == (b.name, b.kind, b.default)
    extras = mine[len(captum) :]
    assert [p.name for p in extras] == EXTRAS[ours]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)


def _mlp():
    torch.manual_seed(11)
    model = nn.Sequential(
        nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)
    ).double()
    with torch.no_grad():
        model[2].bias.fill_(0.2)  # most rows keep some ReLU units on
    return model.eval()


def _brute_force(run, n, rows):
    """Δ_i (n,), S_ij (n, n) and per-row z_i(x) (rows, n) from ``run(masked units)`` → (rows,)."""
    p = run(())
    d = torch.stack([(p - run((i,))).abs() for i in range(n)], dim=1)
    s = torch.zeros(rows, n, n, dtype=p.dtype)
    for i, j in itertools.combinations(range(n), 2):
        d_ij = (p - run((i, j))).abs()
        s[:, i, j] = s[:, j, i] = d_ij - d[:, i] - d[:, j]
    z = d + ALPHA * s.clamp(min=0).mean(2)
    return d.mean(0), s.mean(0), z


def _masked_layer_input(model, layer, x, baseline, score):
    """``run(units)``: the score with the elements ``units`` of the layer's input masked."""

    def run(units):
        def pre_hook(_module, args):
            (a,) = args
            a = a.clone()
            a[:, list(units)] = baseline.expand_as(a)[:, list(units)]
            return (a,)

        handle = layer.register_forward_pre_hook(pre_hook)
        try:
            with torch.no_grad():
                return score(model(x))
        finally:
            handle.remove()

    return run


def test_attribute_to_layer_input_matches_brute_force_and_captum():
    model = _mlp()
    layer = model[2]
    x = torch.randn(23, 4, dtype=torch.float64)
    baseline = 0.1 * torch.randn(1, 5, dtype=torch.float64)
    run = _masked_layer_input(model, layer, x, baseline, lambda out: out[:, 1])
    delta, synergy, z = _brute_force(run, 5, len(x))
    ls = LayerSynergy(model, layer)
    res = ls.compute(x, baseline, 1, attribute_to_layer_input=True, perturbations_per_eval=3)
    assert res.n == 5
    assert torch.allclose(res.importance, delta, atol=1e-10)
    assert torch.allclose(res.synergy, synergy, atol=1e-10)
    per_row = ls.attribute(x, baseline, 1, attribute_to_layer_input=True, alpha=ALPHA)
    assert per_row.shape == (len(x), 5)  # like the layer input, not its output
    assert torch.allclose(per_row, z, atol=1e-10)
    # Δ_i is the mean absolute LayerFeatureAblation score of the layer input
    ablation = LayerFeatureAblation(model, layer).attribute(
        x, baseline, 1, attribute_to_layer_input=True
    )
    assert ablation.shape == per_row.shape
    assert torch.allclose(res.importance, ablation.abs().mean(0), atol=1e-10)
    # the output variant differs (3 units, the fast path) and leaves no hook
    assert ls.compute(x, baseline[:, :3], 1).n == 3
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_attribute_to_layer_input_with_groups_and_two_inputs():
    class Add(nn.Module):
        def forward(self, a, b):
            return a + b

    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.f, self.g, self.add = nn.Linear(3, 4), nn.Linear(3, 4), Add()
            self.head = nn.Sequential(nn.Tanh(), nn.Linear(4, 2))

        def forward(self, x):
            return self.head(self.add(self.f(x), self.g(x)))

    torch.manual_seed(2)
    model = TwoBranches().double().eval()
    x = torch.randn(9, 3, dtype=torch.float64)
    mask = (torch.tensor([[0, 0, 1, 2]]), torch.tensor([[3, 1, 1, 2]]))
    kwargs = {"layer_mask": mask, "target": 0, "attribute_to_layer_input": True}
    res = LayerSynergy(model, model.add).compute(x, **kwargs)
    ours = LayerSynergy(model, model.add).attribute(x, **kwargs)
    theirs = LayerFeatureAblation(model, model.add).attribute(x, **kwargs)
    assert isinstance(ours, tuple) and isinstance(theirs, tuple)
    assert [t.shape for t in ours] == [t.shape for t in theirs] == [(9, 4), (9, 4)]
    # groups span both inputs, as in Captum: Δ of group g is the mean |ablation| of g
    assert res.group_ids.tolist() == [0, 1, 2, 3]
    for g in range(4):
        values = torch.cat([t[:, m[0] == g] for t, m in zip(theirs, mask, strict=True)], 1)
        assert torch.allclose(res.importance[g], values[:, 0].abs().mean(), atol=1e-10)
        assert torch.allclose(values, values[:, :1].expand_as(values))


def test_attribute_to_neuron_input_matches_brute_force_and_captum():
    model = _mlp()
    layer = model[2]
    x = torch.randn(19, 4, dtype=torch.float64)
    baselines = 0.2 * torch.randn(19, 4, dtype=torch.float64)

    def run(units):
        masked = x.clone()
        masked[:, list(units)] = baselines[:, list(units)]
        with torch.no_grad():
            return model[1](model[0](masked))[:, 3]  # neuron 3 of the input of model[2]

    delta, synergy, z = _brute_force(run, 4, len(x))
    ns = NeuronSynergy(model, layer)
    res = ns.compute(x, 3, baselines, None, None, True, 2)
    assert torch.allclose(res.importance, delta, atol=1e-10)
    assert torch.allclose(res.synergy, synergy, atol=1e-10)
    per_row = ns.attribute(x, 3, baselines, attribute_to_neuron_input=True, alpha=ALPHA)
    assert per_row.shape == x.shape and torch.allclose(per_row, z, atol=1e-10)
    ablation = NeuronFeatureAblation(model, layer).attribute(
        x, 3, baselines, attribute_to_neuron_input=True
    )
    assert torch.allclose(res.importance, ablation.abs().mean(0), atol=1e-10)
    # neuron 3 exists only in the layer's input (5 wide), not in its output (3 wide)
    with pytest.raises(ValueError, match="neuron_selector"):
        ns.compute(x, 3, baselines)


def test_layer_positional_calls_mean_what_they_mean_in_captum():
    model = _mlp()
    layer = model[3]
    x = torch.randn(17, 4, dtype=torch.float64)
    baseline = 0.05 * torch.randn(1, 3, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1]])
    ls = LayerSynergy(model, layer)
    keywords = {"layer_baselines": baseline, "target": 1, "layer_mask": mask}
    by_keyword = ls.attribute(x, **keywords, perturbations_per_eval=2, alpha=ALPHA)
    positional = ls.attribute(x, baseline, 1, None, mask, False, 2, alpha=ALPHA)
    assert torch.equal(by_keyword, positional)
    assert torch.equal(
        ls.attribute(x, baseline, 1), ls.attribute(x, **keywords | {"layer_mask": None})
    )
    res_keyword = ls.compute(x, **keywords)
    res_positional = ls.compute(x, baseline, 1, None, mask)
    assert torch.equal(res_keyword.importance, res_positional.importance)
    assert torch.equal(res_keyword.synergy, res_positional.synergy)
    # the same positional call to Captum: Δ is its mean absolute ablation
    ablation = LayerFeatureAblation(model, layer).attribute(x, baseline, 1, None, mask)
    assert torch.allclose(res_positional.importance, ablation.abs().mean(0)[[0, 1]], atol=1e-10)
    with pytest.raises(TypeError):
        ls.attribute(x, baseline, 1, None, mask, False, 2, ALPHA)  # alpha is keyword-only


def test_neuron_positional_calls_mean_what_they_mean_in_captum():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _mlp()

        def forward(self, x, scale):
            return self.body(x * scale)

    model = Scaled().eval()
    layer = model.body[1]
    x = torch.randn(11, 4, dtype=torch.float64)
    baselines = 0.1
    scale = torch.tensor(1.5, dtype=torch.float64)
    ns = NeuronSynergy(model, layer)
    by_keyword = ns.attribute(
        x, neuron_selector=2, baselines=baselines, additional_forward_args=(scale,)
    )
    positional = ns.attribute(x, 2, baselines, (scale,))
    assert torch.equal(by_keyword, positional)
    res = ns.compute(x, 2, baselines, (scale,))
    ablation = NeuronFeatureAblation(model, layer).attribute(x, 2, baselines, (scale,))
    assert torch.allclose(res.importance, ablation.abs().mean(0), atol=1e-10)
    with pytest.raises(TypeError):
        ns.compute(x, 2, baselines, (scale,), None, False, 1, True)  # show_progress
