"""The attention rules against hand-computed cases (float64, zennit 0.5 and 1.0)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from zennit.core import Composite
from zennit.rules import Epsilon, Pass

from zennit_ext.layers import MatMul, Multiply, Scale
from zennit_ext.rules import LayerNormRule, ProductRule, SoftmaxRule, Stop, normalized_linear

TINY = 1e-12


def relevance(module: nn.Module, rule, inputs: tuple, out_relevance: torch.Tensor) -> tuple:
    """The input relevance ``rule`` gives ``module`` for ``out_relevance`` of its output."""
    inputs = tuple(t.detach().clone().double().requires_grad_() for t in inputs)
    composite = Composite(module_map=lambda ctx, name, m: rule if m is module else None)
    composite.register(module)
    try:
        output = module(*inputs)
        grads = torch.autograd.grad(output, inputs, out_relevance)
    finally:
        composite.remove()
    return grads


def test_layer_norm_rule_by_hand():
    # x = (1, 2, 6): centered (-2, -1, 3); R = (1, 0, 0): R_i = z_i0 / y_0, sigma cancels
    norm = nn.LayerNorm(3, elementwise_affine=False, eps=0.0).double()
    (got,) = relevance(
        norm,
        LayerNormRule(TINY),
        (torch.tensor([[1.0, 2.0, 6.0]]),),
        torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
    )
    torch.testing.assert_close(got, torch.tensor([[-1 / 3, 1 / 3, 1.0]], dtype=torch.float64))


def _layer_norm_reference(x, weight, bias, eps, out_relevance, epsilon):
    """Loops over z_ik = w_k (delta_ik - 1/D) x_i / sigma, epsilon-rule with bias in y."""
    d = x.shape[-1]
    result = torch.zeros_like(x)
    for n in range(x.shape[0]):
        mean = x[n].mean()
        sigma = math.sqrt(((x[n] - mean) ** 2).mean().item() + eps)
        y = [(weight[k] * (x[n, k] - mean) / sigma + bias[k]).item() for k in range(d)]
        for i in range(d):
            for k in range(d):
                z = weight[k].item() * ((i == k) - 1 / d) * x[n, i].item() / sigma
                denominator = y[k] + epsilon * (1.0 if y[k] >= 0 else -1.0)
                result[n, i] += z / denominator * out_relevance[n, k]
    return result


def test_layer_norm_rule_with_affine_matches_the_loops():
    torch.manual_seed(3)
    norm = nn.LayerNorm(5, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x, out_relevance = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5).double()
    (got,) = relevance(norm, LayerNormRule(1e-3), (x,), out_relevance)
    expected = _layer_norm_reference(x, norm.weight, norm.bias, 1e-5, out_relevance, 1e-3)
    torch.testing.assert_close(got, expected)


def test_layer_norm_rule_without_bias_conserves():
    norm = nn.LayerNorm(6, bias=False).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
    x, out_relevance = torch.randn(4, 6).double(), torch.randn(4, 6).double()
    (got,) = relevance(norm, LayerNormRule(TINY), (x,), out_relevance)
    torch.testing.assert_close(got.sum(-1), out_relevance.sum(-1))


def test_layer_norm_2d_is_layer_norm_over_channels():
    from torchvision.models.convnext import LayerNorm2d

    torch.manual_seed(4)
    norm2d, norm = LayerNorm2d(3).double(), nn.LayerNorm(3).double()
    with torch.no_grad():
        for module in (norm2d, norm):
            module.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
            module.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    x, out_relevance = torch.randn(2, 3, 2, 2).double(), torch.randn(2, 3, 2, 2).double()
    (got,) = relevance(norm2d, LayerNormRule(1e-6), (x,), out_relevance)
    channels_last = (x.permute(0, 2, 3, 1), out_relevance.permute(0, 2, 3, 1))
    (expected,) = relevance(norm, LayerNormRule(1e-6), channels_last[:1], channels_last[1])
    torch.testing.assert_close(got, expected.permute(0, 3, 1, 2))


def test_rms_norm_rule_by_hand():
    # diagonal map without bias: R_in = R_out
    norm = nn.RMSNorm(2).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, -1.0]))
    r = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    (got,) = relevance(norm, LayerNormRule(TINY), (torch.tensor([[3.0, 4.0]]),), r)
    torch.testing.assert_close(got, r)


def test_layer_norm_rule_refuses_a_subclass_with_another_forward():
    class Shifted(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x) + 1.0

    norm = Shifted(3).double()
    with pytest.raises(RuntimeError, match="Shifted"):
        relevance(norm, LayerNormRule(), (torch.randn(1, 3),), torch.ones(1, 3).double())


def test_normalized_linear_rejects_other_modules():
    with pytest.raises(TypeError, match="BatchNorm1d"):
        normalized_linear(nn.BatchNorm1d(3), torch.randn(2, 3))


def test_softmax_rule_by_hand():
    # x = (0, ln 2, ln 3): s = (1/6, 1/3, 1/2); R = (1, 0, 0): R_in = x (R - s sum R)
    x = torch.tensor([[0.0, math.log(2), math.log(3)]])
    (got,) = relevance(nn.Softmax(-1), SoftmaxRule(), (x,), torch.tensor([[1.0, 0, 0]]).double())
    expected = torch.tensor([[0.0, -math.log(2) / 3, -math.log(3) / 2]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_softmax_rule_masked_entries_get_nothing():
    x = torch.tensor([[1.0, float("-inf"), 2.0]])
    (got,) = relevance(nn.Softmax(-1), SoftmaxRule(), (x,), torch.ones(1, 3).double())
    assert torch.isfinite(got).all() and got[0, 1] == 0


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
def test_softmax_rule_needs_a_dim():
    with pytest.raises(TypeError, match="dim"):
        relevance(nn.Softmax(), SoftmaxRule(), (torch.randn(1, 3),), torch.ones(1, 3).double())


@pytest.mark.parametrize(
    ("shares", "expected_a", "expected_b"),
    [
        ((0.5, 0.5), [0.5 * 3 / 11, 0.5 * 8 / 11], [0.5 * 3 / 11, 0.5 * 8 / 11]),
        ((0.0, 1.0), [0.0, 0.0], [3 / 11, 8 / 11]),
    ],
)
def test_product_rule_on_a_scaled_matmul_by_hand(shares, expected_a, expected_b):
    # a = (1, 2), b = (3, 4)ᵀ: y = 11 · scale, contributions (3, 8) · scale
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [4.0]])
    rule = ProductRule(shares, epsilon=TINY)
    got_a, got_b = relevance(MatMul(scale=0.5), rule, (a, b), torch.ones(1, 1).double())
    torch.testing.assert_close(got_a, torch.tensor([expected_a], dtype=torch.float64))
    torch.testing.assert_close(got_b, torch.tensor(expected_b, dtype=torch.float64)[:, None])


def test_product_rule_on_a_gate_by_hand():
    a, b = torch.tensor([2.0, -1.0]), torch.tensor([3.0, 5.0])
    r = torch.tensor([1.0, 4.0], dtype=torch.float64)
    got_a, got_b = relevance(Multiply(), ProductRule(epsilon=TINY), (a, b), r)
    torch.testing.assert_close(got_a, r / 2)
    torch.testing.assert_close(got_b, r / 2)


def test_stop_passes_nothing():
    (got,) = relevance(nn.Softmax(-1), Stop(), (torch.randn(2, 3),), torch.ones(2, 3).double())
    assert torch.equal(got, torch.zeros_like(got))


@pytest.mark.parametrize("activation", [nn.GELU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Tanh])
def test_identity_rule_is_zennits_pass(activation):
    x, r = torch.randn(3, 4), torch.randn(3, 4).double()
    (got,) = relevance(activation(), Pass(), (x,), r)
    torch.testing.assert_close(got, r)


def test_layer_scale_is_a_diagonal_linear_map():
    scale = Scale(nn.Parameter(torch.tensor([[2.0], [-3.0]], dtype=torch.float64)))
    x, r = torch.tensor([[1.0, 2.0], [0.5, -1.0]]), torch.tensor([[0.2, 0.3], [0.1, 0.4]])
    (got,) = relevance(scale, Epsilon(TINY), (x,), r.double())
    torch.testing.assert_close(got, r.double())


def test_copies_keep_the_class_and_the_settings():
    class Marked(ProductRule):
        pass

    copy = Marked((0.2, 0.8), 0.1).copy()
    assert type(copy) is Marked and copy.shares == (0.2, 0.8) and copy.epsilon == 0.1
    norm_copy = LayerNormRule(0.01).copy()
    assert type(norm_copy) is LayerNormRule and norm_copy.epsilon == 0.01
    assert type(SoftmaxRule().copy()) is SoftmaxRule
