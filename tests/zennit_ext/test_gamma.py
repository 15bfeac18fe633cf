"""FastGamma: Zennit's generalized γ-rule in four linear maps.

References: Zennit's own ``Gamma`` (every case it runs through the fast path, and every case
it hands back to Zennit), and the rule's equation written out entry by entry on a tiny layer.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.core import Stabilizer
from zennit.rules import Gamma

from zennit_ext import PLRPM, FastGamma, PLRPLambda


def _random_parameters(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module


def _seed_of(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=dtype)


def rule_relevance(rule, module: nn.Module, x: torch.Tensor, seed=None) -> torch.Tensor:
    """The layer's input relevance for an output relevance ``seed`` (random by default)."""
    composite = LayerMapComposite([((nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d), rule)])
    return composite_relevance(composite, module, x, seed)


def composite_relevance(composite, module: nn.Module, x: torch.Tensor, seed=None):
    """The input relevance of ``module`` under ``composite`` for an output relevance ``seed``."""
    x = x.clone().requires_grad_()
    with composite.context(module):
        output = module(x)
        seed = _seed_of(output.shape, output.dtype) if seed is None else seed
        (relevance,) = torch.autograd.grad(output, x, seed)
    return relevance


LAYERS = {
    "linear": (lambda bias: nn.Linear(7, 5, bias=bias), (4, 7)),
    "linear_3d": (lambda bias: nn.Linear(6, 4, bias=bias), (2, 3, 6)),
    "conv1d": (lambda bias: nn.Conv1d(3, 4, 3, bias=bias), (2, 3, 9)),
    "conv2d_strided": (
        lambda bias: nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, bias=bias),
        (2, 4, 7, 6),
    ),
    "conv2d_reflect": (
        lambda bias: nn.Conv2d(3, 2, 2, padding=1, padding_mode="reflect", bias=bias),
        (2, 3, 5, 5),
    ),
    "conv2d_dilated": (lambda bias: nn.Conv2d(3, 4, 3, dilation=2, bias=bias), (1, 3, 8, 8)),
    "conv3d": (lambda bias: nn.Conv3d(2, 3, 2, bias=bias), (2, 2, 3, 4, 3)),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("zero_params", [None, ["bias"]])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.5])
def test_matches_zennits_gamma(layer, bias, zero_params, gamma):
    make, shape = LAYERS[layer]
    module = _random_parameters(make(bias), seed=1).double()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = rule_relevance(Gamma(gamma, stabilizer=1e-3, zero_params=zero_params), module, x)
    got = rule_relevance(FastGamma(gamma, stabilizer=1e-3, zero_params=zero_params), module, x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max())


def test_a_callable_stabilizer_is_zennits():
    module = _random_parameters(nn.Linear(6, 4), seed=3).double()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    stabilizer = Stabilizer(epsilon=0.5, clip=True)
    expected = rule_relevance(Gamma(0.5, stabilizer=stabilizer), module, x)
    got = rule_relevance(FastGamma(0.5, stabilizer=stabilizer), module, x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def brute_force(weight, bias, x, seed, gamma, epsilon):
    """The generalized γ-rule entry by entry (one sample, ``nn.Linear``; no tensor algebra)."""
    n_out, n_in = len(weight), len(weight[0])
    relevance = [0.0] * n_in
    for j in range(n_out):
        z = sum(weight[j][i] * x[i] for i in range(n_in)) + bias[j]
        if z == 0:
            continue
        sign = 1.0 if z > 0 else -1.0

        def raised(w, xi, s=sign):  # w + γ w⁺ for inputs of the output's sign, else w + γ w⁻
            return w + gamma * (max(w, 0.0) if s * xi > 0 else min(w, 0.0))

        terms = [raised(weight[j][i], x[i]) * x[i] for i in range(n_in)]
        denominator = sum(terms) + bias[j] + gamma * (max if z > 0 else min)(bias[j], 0.0)
        denominator += epsilon if denominator >= 0 else -epsilon
        for i in range(n_in):
            relevance[i] += terms[i] * seed[j] / denominator
    return relevance


small = st.integers(-2, 2).map(float)


@settings(max_examples=60, deadline=None)
@given(
    weight=st.lists(st.lists(small, min_size=3, max_size=3), min_size=2, max_size=2),
    bias=st.lists(small, min_size=2, max_size=2),
    x=st.lists(small, min_size=3, max_size=3),
    gamma=st.sampled_from([0.0, 0.25, 1.0]),
)
def test_the_equation_entry_by_entry(weight, bias, x, gamma):
    """Small integers: zero inputs, zero weights and outputs that are exactly 0 (no relevance)."""
    module = nn.Linear(3, 2).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor(weight))
        module.bias.copy_(torch.tensor(bias))
    seed = [1.5, -0.5]
    got = rule_relevance(
        FastGamma(gamma, stabilizer=0.1),
        module,
        torch.tensor([x], dtype=torch.float64),
        seed=torch.tensor([seed], dtype=torch.float64),
    )
    expected = brute_force(weight, bias, x, seed, gamma, epsilon=0.1)
    torch.testing.assert_close(got[0], torch.tensor(expected, dtype=torch.float64))


class _Doubled(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


def _overloaded() -> nn.Module:
    module = nn.Linear(5, 3)
    module.forward = lambda x: 3.0 * nn.functional.linear(x, module.weight, module.bias)
    return module


@pytest.mark.parametrize(
    "make, shape, zero_params",
    [
        (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2), (2, 3, 4, 4), None),
        (lambda: _Doubled(5, 3), (4, 5), None),
        (_overloaded, (4, 5), None),
        (lambda: nn.Linear(5, 3), (4, 5), ["weight"]),
    ],
    ids=["conv_transpose", "subclass_forward", "instance_forward", "zero_weight"],
)
def test_other_layers_and_options_are_zennits(make, shape, zero_params):
    module = _random_parameters(make(), seed=5).double()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    types = (nn.Linear, nn.ConvTranspose2d)
    expected, got = (
        composite_relevance(LayerMapComposite([(types, rule)]), module, x)
        for rule in (Gamma(0.25, zero_params=zero_params), FastGamma(0.25, zero_params=zero_params))
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_a_second_order_gradient_goes_through_zennits_graph():
    module = _random_parameters(nn.Linear(4, 3), seed=8).double()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    relevances = []
    for rule in (Gamma(0.25), FastGamma(0.25)):
        hook = rule.copy()
        hook.stored_tensors.update(input=(x,), kwargs={})  # zennit 0.5 reads input, 1.0 both
        seed = _seed_of((2, 3), x.dtype).requires_grad_()
        (relevance,) = hook.backward(module, (torch.zeros_like(x),), (seed,))
        assert relevance.requires_grad
        (second,) = torch.autograd.grad(relevance.sum(), seed)
        relevances.append((relevance.detach(), second))
    for got, expected in zip(relevances[1], relevances[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_copy_keeps_the_rules_settings():
    stabilizer = Stabilizer(epsilon=0.25)
    copy = FastGamma(0.7, stabilizer=stabilizer, zero_params=["bias"]).copy()
    assert type(copy) is FastGamma
    assert (copy.gamma, copy.stabilizer, copy.zero_params) == (0.7, stabilizer, ["bias"])


@pytest.mark.parametrize("variant", [PLRPLambda, PLRPM])
def test_plrp_over_fast_gamma_is_plrp_over_gamma(variant, tiny_cnn, tiny_images):
    model = _random_parameters(tiny_cnn, seed=10).double().eval()
    x = tiny_images.double()
    expected, got = (
        composite_relevance(
            variant(p=0.3, composite=LayerMapComposite([((nn.Conv2d, nn.Linear), rule)])), model, x
        )
        for rule in (Gamma(0.25), FastGamma(0.25))
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("signed", [False, True], ids=["after_relu", "signed"])
def test_float32_matches_float64_on_a_vgg_sized_layer(signed):
    """A VGG16 conv1_2-like layer (64 → 64 channels, 3 × 3) on 112² inputs: 8·10⁵ entries;
    ``|W||x| + W x`` must not lose more to cancellation than Zennit's five maps do."""
    module = nn.Conv2d(64, 64, 3, padding=1)
    nn.init.kaiming_normal_(module.weight)
    nn.init.normal_(module.bias, std=0.1)
    x = torch.randn(1, 64, 112, 112, generator=torch.Generator().manual_seed(11))
    x = x if signed else x.relu()
    seed = _seed_of((1, 64, 112, 112), torch.float64)
    exact = rule_relevance(FastGamma(0.25), module.double(), x.double(), seed)
    single = rule_relevance(FastGamma(0.25), module.float(), x.float(), seed.float())
    zennit = rule_relevance(Gamma(0.25), module.float(), x.float(), seed.float())
    ours_error = (single.double() - exact).abs().max()
    zennit_error = (zennit.double() - exact).abs().max()
    assert ours_error <= max(2 * zennit_error, 1e-6 * exact.abs().max())
    assert ours_error <= 1e-4 * exact.abs().max()
