"""NormalizedHook: its linearized rule equals Zennit's own backward; columns sum to 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zennit.core import BasicHook
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, WSquare, ZBox, ZPlus

from zennit_ext._rules import mixin_hook
from zennit_ext.nrm.rules import NormalizedHook

RULES = {
    "epsilon": Epsilon,
    "zplus": ZPlus,
    "gamma": lambda: Gamma(gamma=0.25),
    "alphabeta": lambda: AlphaBeta(alpha=2.0, beta=1.0),
    "zbox": lambda: ZBox(low=-1.0, high=1.0),
    "flat": Flat,
    "wsquare": WSquare,
}
MODULES = {
    "linear": (lambda: nn.Linear(6, 5), (3, 6)),
    "conv": (lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5)),
}


def _relevance_by_zennit(rule, module, x, message):
    hook = rule.copy()
    handles = hook.register(module)
    try:
        inputs = x.clone().requires_grad_()
        output = module(inputs)
        (relevance,) = torch.autograd.grad(output, inputs, message)
    finally:
        handles.remove()
    return relevance


def _module_and_input(module_name: str, rule_name: str, seed: int):
    """A float64 module of :data:`MODULES` (seeded) and a signed input for it, clamped into the
    box rule's bounds for ``'zbox'``."""
    torch.manual_seed(seed)
    build, shape = MODULES[module_name]
    module = build().double()
    x = torch.randn(shape, dtype=torch.float64)
    return module, x.clamp(-1, 1) if rule_name == "zbox" else x


def _ours(rule, module, x):
    hook = mixin_hook(rule, NormalizedHook, layer_name="m")
    handles = hook.register(module)
    inputs = x.clone().requires_grad_()
    output = module(inputs)
    return hook, handles, inputs, output


@pytest.mark.parametrize("module_name", list(MODULES))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_linearized_rule_equals_zennit_backward(rule_name, module_name):
    module, x = _module_and_input(module_name, rule_name, seed=0)
    rule = RULES[rule_name]()
    output_shape = module(x).shape
    messages = torch.randn(4, *output_shape, dtype=torch.float64)
    references = [_relevance_by_zennit(RULES[rule_name](), module, x, m) for m in messages]
    hook, handles, inputs, _ = _ours(rule, module, x)
    try:
        for message, reference in zip(messages, references, strict=True):
            ours = hook.rule_backward(module, (inputs,), message, normalize=False)[0]
            torch.testing.assert_close(ours, reference, atol=1e-10, rtol=1e-8)
    finally:
        handles.remove()


@pytest.mark.parametrize("rule_name", ["zplus", "gamma", "flat", "epsilon"])
def test_normalized_columns_sum_to_one(rule_name):
    """Brute force over unit messages: Σ_j M[j, k] = 1 for every k with a nonzero column."""
    torch.manual_seed(1)
    module = nn.Linear(6, 5).double()
    x = torch.rand(2, 6, dtype=torch.float64)
    hook, handles, inputs, output = _ours(RULES[rule_name](), module, x)
    try:
        sums = hook.column_sums(module, output.shape)
        for k in range(5):
            unit = torch.zeros_like(output)
            unit[:, k] = 1.0
            column = hook.rule_backward(module, (inputs,), unit, normalize=True)[0].sum(1)
            expected = (sums[:, k] != 0).double()
            torch.testing.assert_close(column, expected)
    finally:
        handles.remove()


def test_norm_rule_on_average_pooling_is_exact():
    torch.manual_seed(2)
    module = nn.AvgPool2d(2)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    message = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    reference = _relevance_by_zennit(Norm(), module, x, message)
    hook, handles, inputs, _ = _ours(Norm(), module, x)
    try:
        ours = hook.rule_backward(module, (inputs,), message, normalize=False)[0]
    finally:
        handles.remove()
    torch.testing.assert_close(ours, reference)


def test_rule_not_linear_in_relevance_is_rejected():
    clamped = BasicHook(gradient_mapper=lambda grad, outputs: [grad.clamp(min=0)])
    module = nn.Linear(3, 2)
    hook, handles, _, output = _ours(clamped, module, torch.rand(2, 3))
    try:
        message = (
            r"^the rule of layer 'm' \(BasicHook\) is not linear in the relevance; NRM needs "
            r"LRP rules \(z\+, gamma, epsilon, box, \.\.\.\)$"
        )
        with pytest.raises(TypeError, match=message):
            hook.column_sums(module, output.shape)
    finally:
        handles.remove()


def _cnn_with_avgpool() -> nn.Sequential:
    torch.manual_seed(5)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * 2 * 2, 3),
        )
        .double()
        .eval()
    )


def _lrp(model, x, composite):
    from zennit.attribution import Gradient

    grad_out = torch.randn(len(x), 3, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    with Gradient(model=model, composite=composite) as attributor:
        return attributor(x, grad_out)[1]


@pytest.mark.parametrize("bounds", [None, (-1.5, 2.0)])
@pytest.mark.parametrize("gamma", ["default", None, 0.5])
def test_nrm_composite_is_the_papers_rule_map(bounds, gamma):
    """§4.4: box (with bounds) or flat on the first layer, γ (0.25 by default; z+ for None) on
    convolutions, z+ on dense layers, Norm on average pooling; as plain zennit composites."""
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.types import Activation, AvgPool, Convolution
    from zennit.types import Linear as AnyLinear

    from zennit_ext.nrm.rules import nrm_composite

    low, high = bounds or (None, None)
    kwargs = {} if gamma == "default" else {"gamma": gamma}
    conv = ZPlus() if gamma is None else Gamma(gamma=0.25 if gamma == "default" else gamma)
    first = Flat() if bounds is None else ZBox(low=low, high=high)
    reference = SpecialFirstLayerMapComposite(
        layer_map=[
            (Activation, Pass()),
            (AvgPool, Norm()),
            (Convolution, conv),
            (nn.Linear, ZPlus()),
        ],
        first_map=[(AnyLinear, first)],
    )
    model = _cnn_with_avgpool()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 3.5 - 1.5
    expected = _lrp(model, x, reference)
    ours = _lrp(model, x, nrm_composite(low, high, **kwargs))
    assert expected.abs().max() > 0
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("low", "high"), [(0.0, None), (None, 1.0)])
def test_nrm_composite_needs_both_bounds(low, high):
    from zennit_ext.nrm.rules import nrm_composite

    with pytest.raises(
        ValueError, match=f"^give both low and high or neither, got low={low}, high={high}$"
    ):
        nrm_composite(low, high)


def test_a_column_that_sums_to_zero_passes_nothing():
    """ε rule, neuron 0: contributions +1 and −1 cancel, its column is (2, −2)/(1 + ε) ≠ 0
    but sums to 0, so the normalized rule passes 0 from it (eq. 17); neuron 1 passes all."""
    module = nn.Linear(2, 2).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        module.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    hook, handles, inputs, output = _ours(Epsilon(), module, x)
    try:
        sums = hook.column_sums(module, output.shape)
        assert sums[0, 0] == 0 and sums[0, 1] != 0
        unit = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        unnormalized = hook.rule_backward(module, (inputs,), unit, normalize=False)[0]
        assert unnormalized.abs().min() > 1
        message = torch.tensor([[3.0, 2.0]], dtype=torch.float64)
        relevance = hook.rule_backward(module, (inputs,), message, normalize=True)[0]
        # neuron 1's column (2, 1)/(3 − 0.5) normalized to (2, 1)/3, times its message 2
        torch.testing.assert_close(relevance, torch.tensor([[4 / 3, 2 / 3]], dtype=torch.float64))
    finally:
        handles.remove()


@pytest.mark.parametrize("rule_name", ["epsilon", "zplus"])
def test_a_layer_with_no_live_term_passes_exact_zeros(rule_name):
    """All inputs 0: no term carries relevance; a message summing to 0 must not make NaN."""
    module = nn.Linear(3, 2).double()
    x = torch.zeros(2, 3, dtype=torch.float64)
    hook, handles, inputs, output = _ours(RULES[rule_name](), module, x)
    try:
        message = torch.tensor([[1.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
        assert torch.equal(hook.column_sums(module, output.shape), torch.zeros_like(output))
        for normalize in (False, True):
            relevance = hook.rule_backward(module, (inputs,), message, normalize=normalize)[0]
            assert relevance.shape == x.shape
            assert torch.equal(relevance, torch.zeros_like(x))
    finally:
        handles.remove()


def test_input_without_grad_keeps_the_parameter_graph():
    """The bridge joins the output to the input only where the input requires grad."""
    module = nn.Linear(3, 2).double()
    hook = mixin_hook(ZPlus(), NormalizedHook, layer_name="m")
    handles = hook.register(module)
    try:
        x = torch.rand(2, 3, dtype=torch.float64)
        output = module(x)
        assert output.requires_grad and output.grad_fn is not None
        (weight_grad,) = torch.autograd.grad(output.sum(), module.weight)
        torch.testing.assert_close(weight_grad, x.sum(0).expand(2, 3), rtol=0, atol=1e-12)
    finally:
        handles.remove()


def test_normalized_composite_defaults():
    from zennit.composites import EpsilonPlusFlat

    from zennit_ext.nrm.rules import NormalizedComposite

    composite = NormalizedComposite(EpsilonPlusFlat())
    assert composite.on_violation == "raise" and composite.hooked == {}


@pytest.mark.parametrize("module_name", list(MODULES))
@pytest.mark.parametrize("rule_name", list(RULES))
def test_column_sums_equal_the_columns_of_zennits_matrix(rule_name, module_name):
    """The forward-mode column sums against Zennit's own backward, one unit message per
    output neuron (brute force): Σ_j M̃[j, k] for every k, with signed inputs, so that every
    term of γ, αβ and the box rule carries relevance."""
    module, x = _module_and_input(module_name, rule_name, seed=3)
    with torch.no_grad():
        output = module(x)
    expected = torch.zeros_like(output).flatten(1)
    for k in range(expected.shape[1]):
        unit = torch.zeros_like(expected)
        unit[:, k] = 1.0
        relevance = _relevance_by_zennit(RULES[rule_name](), module, x, unit.view_as(output))
        expected[:, k] = relevance.flatten(1).sum(1)
    hook, handles, _, output = _ours(RULES[rule_name](), module, x)
    try:
        sums = hook.column_sums(module, output.shape)
    finally:
        handles.remove()
    torch.testing.assert_close(sums.flatten(1), expected, atol=1e-10, rtol=1e-8)


def test_normalized_scales_divide_by_the_sums_and_pass_zero_columns():
    from zennit_ext.nrm.rules import _Linearized

    linear = _Linearized([], [], [], [torch.ones(2)], [], [], [], torch.tensor([2.0, 0.0]))
    assert torch.equal(linear.normalized_scales()[0], torch.tensor([0.5, 0.0]))


def test_rule_layer_outputs_skip_the_layers_own_gradient():
    """A normalized rule replaces the gradient at its layer's input, so the layer's output is
    joined to the input by the bridge (whose backward costs nothing), not by the layer."""
    from zennit_ext import NRM

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 3),
        nn.ReLU(),
        nn.Unflatten(1, (1, 3)),
        nn.Conv1d(1, 2, 2),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).double()
    bridged = {}
    with NRM(model, ["1"]).explain(torch.rand(2, 4, dtype=torch.float64), 0) as e:
        for name in e.session.hooks:
            node = e.session.outputs[name].grad_fn
            while type(node).__name__ in ("CloneBackward0", "IdentityBackward"):  # zennit >= 1.0
                node = node.next_functions[0][0]
            bridged[name] = type(node).__name__
    assert bridged == dict.fromkeys(["0", "3", "5"], "_BridgeBackward")


class _NoJvp(torch.autograd.Function):
    """The identity, with a backward and no forward-mode derivative."""

    @staticmethod
    def forward(ctx, input):
        return input.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


class _LinearWithoutJvp(nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(_NoJvp.apply(input))


@pytest.mark.parametrize("rule_name", ["zplus", "epsilon", "zbox"])
def test_column_sums_without_forward_mode_ad_fall_back_to_the_double_backward(rule_name):
    """A layer whose forward has no jvp still gets exact column sums (brute force)."""
    torch.manual_seed(4)
    module = _LinearWithoutJvp(6, 5).double()
    x = torch.randn(3, 6, dtype=torch.float64).clamp(-1, 1)
    expected = torch.stack(
        [
            _relevance_by_zennit(RULES[rule_name](), module, x, unit.expand(3, 5)).sum(1)
            for unit in torch.eye(5, dtype=torch.float64)
        ],
        1,
    )
    hook, handles, _, output = _ours(RULES[rule_name](), module, x)
    try:
        sums = hook.column_sums(module, output.shape)
    finally:
        handles.remove()
    torch.testing.assert_close(sums, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("rule_name", ["zplus", "epsilon"])
def test_a_column_whose_normalized_scale_overflows_passes_nothing(rule_name):
    """Input 0 is 1e-310 (an underflowed activation): its column sum s·z ≈ 1e6 · 1e-310 is
    tiny but not 0, and the normalized scale s / sum ≈ 1e310 does not fit float64 (the message
    times it is inf, inf · 1e-310 NaN). That column passes nothing (its sum reads 0, so NRM
    reports the relevance as stopped); the other column is untouched."""
    module = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(torch.eye(2, dtype=torch.float64))
    x = torch.tensor([[1e-310, 1.0]], dtype=torch.float64)
    hook, handles, inputs, output = _ours(RULES[rule_name](), module, x)
    try:
        sums = hook.column_sums(module, output.shape)
        message = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
        relevance = hook.rule_backward(module, (inputs,), message, normalize=True)[0]
    finally:
        handles.remove()
    assert sums[0, 0] == 0 and sums[0, 1] > 0.99
    torch.testing.assert_close(relevance, torch.tensor([[0.0, 0.25]], dtype=torch.float64))
