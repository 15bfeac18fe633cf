"""float32 masks equal the float64 masks at layer sizes (10⁴–10⁶ entries per sample).

The float32 input is the float64 sample rounded; its float64 twin is the same numbers widened,
so the two masks see identical values and may differ only where the sort orders equal values
differently (a tie at the boundary). The sparsity gain used to be a difference of prefix Gini
values (~1/n apart) that vanishes in float32 above ~10⁴ entries: nothing was pruned.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import EpsilonPlusFlat

from zennit_ext import PLRPM, PLRPLambda
from zennit_ext.plrp.masks import gini_index, mass_threshold_mask, sparsity_gain_mask


def _sample(kind: str, n: int, seed: int) -> torch.Tensor:
    """(batch, n) float64 relevance-like samples of one distribution; 1 sample at 10⁶."""
    gen = torch.Generator().manual_seed(seed)
    batch = 1 if n >= 10**6 else 2
    if kind == "exponential":
        return torch.empty(batch, n, dtype=torch.float64).exponential_(generator=gen)
    normal = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    if kind == "log-normal":
        return normal.exp()
    if kind == "half-normal":
        return normal.abs()
    assert kind == "relu-cubed"  # heavy tail and half exact zeros
    return normal.clamp(min=0) ** 3


def _signed(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with a random quarter of its entries negated: both parts are pruned."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.where(torch.rand(x.shape, generator=gen, dtype=x.dtype) < 0.25, -x, x)


KINDS = ["exponential", "log-normal", "half-normal", "relu-cubed"]
SIZES = [10**4, 10**5, 10**6]


def _disagreement(keep32: torch.Tensor, keep64: torch.Tensor) -> int:
    """Largest per-sample difference of the kept counts."""
    return int((keep32.sum(-1) - keep64.sum(-1)).abs().max())


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_sparsity_gain_mask_float32_equals_float64(kind, n):
    x64 = _signed(_sample(kind, n, seed=n), seed=n)
    x32 = x64.float()
    keep32 = sparsity_gain_mask(x32)
    keep64 = sparsity_gain_mask(x32.double())
    # identical values: the masks differ at most by how a tie at the stopping step is ordered
    assert _disagreement(keep32, keep64) <= 1
    assert (keep32 != keep64).sum() <= 2 * x32.shape[0]
    # and they prune: about 30 % of an exponential sample (the old float32 code pruned nothing)
    kept = keep32.double().mean().item()
    assert 0.05 < kept < 0.95
    # the unrounded float64 sample prunes the same share
    assert abs(kept - sparsity_gain_mask(x64).double().mean().item()) < 1e-3


@pytest.mark.parametrize("n", [10**5, 10**6])
@pytest.mark.parametrize(
    ("kind", "measure", "gain"),
    [("exponential", "hoyer", 0.6), ("exponential", "l0", 1.0), ("relu-cubed", "l0", 1.0)],
)
def test_other_measures_float32_equal_float64(kind, measure, gain, n):
    """Hoyer's gains stay below 1/√2 on exponentials (nothing is pruned at 1): tested at 0.6."""
    x32 = _signed(_sample(kind, n, seed=n + 7), seed=n).float()
    keep32 = sparsity_gain_mask(x32, gain, measure)
    keep64 = sparsity_gain_mask(x32.double(), gain, measure)
    assert _disagreement(keep32, keep64) <= 1
    assert (keep32 != keep64).sum() <= 2 * x32.shape[0]
    assert 0.01 < keep32.double().mean().item() < 0.95


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", [0.2, 0.9])
def test_mass_threshold_mask_float32_equals_float64(kind, n, p):
    x32 = _signed(_sample(kind, n, seed=2 * n), seed=2 * n).float()
    keep32 = mass_threshold_mask(x32, p)
    keep64 = mass_threshold_mask(x32.double(), p)
    assert _disagreement(keep32, keep64) <= 1
    assert (keep32 != keep64).sum() <= 2 * x32.shape[0]
    # and exactly, not only alike: a mass accumulated in float32 misses by more than one entry
    for sign in (1, -1):
        _assert_budget_spent_exactly((sign * x32).clamp(min=0), keep32, p)


def _assert_budget_spent_exactly(part: torch.Tensor, keep: torch.Tensor, p: float) -> None:
    """Eq. (3.2) on a non-negative part: pruned mass ≤ p·total < pruned + next entry, summed
    in float64 (exact to ~1e-13 at 10⁶ entries; one entry is ≥ ~1e-7 of the total here)."""
    wide = part.double()
    pruned_mass = (wide * ~keep).sum(-1)
    total = wide.sum(-1)
    smallest_kept = torch.where(keep & (part > 0), wide, torch.inf).amin(-1)
    assert (pruned_mass <= p * total).all()
    assert (pruned_mass + smallest_kept > p * total).all()


@pytest.mark.parametrize("n", [10**5, 10**6])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_mass_threshold_mask_float32_with_many_ties(n, p):
    """Values on a grid of 16 levels: a tie group straddles the budget in both dtypes."""
    gen = torch.Generator().manual_seed(n)
    x32 = torch.randint(1, 17, (2, n), generator=gen).float() / 16
    keep32 = mass_threshold_mask(x32, p)
    keep64 = mass_threshold_mask(x32.double(), p)
    assert torch.equal(keep32.sum(-1), keep64.sum(-1))
    _assert_budget_spent_exactly(x32, keep32, p)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("kind", KINDS)
def test_gini_index_float32_equals_float64_at_a_million_entries(kind, device):
    x32 = _sample(kind, 10**6, seed=3).float().to(device)
    expected = gini_index(x32.double())
    got = gini_index(x32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)


def _four_conv_net() -> nn.Module:
    """Four 3×3 convs (16 channels at 64×64: 65,536 entries a layer), global pool, 5 classes."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in, c_out in [(3, 16), (16, 16), (16, 16), (16, 16)]:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)]
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("variant", [PLRPLambda, PLRPM])
def test_sparsity_gain_prunes_a_float32_conv_net(variant):
    """Default gain 1 in float32: every conv input but the first is pruned, as in float64."""
    model = _four_conv_net()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def run(net: nn.Module, inputs: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        kept: dict[str, float] = {}

        def record(name: str, before: torch.Tensor, after: torch.Tensor) -> None:
            kept[name] = ((after != 0).sum() / (before != 0).sum()).item()

        with Gradient(model=net, composite=variant(recorder=record)) as attributor:
            _, relevance = attributor(inputs, torch.eye(5, dtype=inputs.dtype)[[0, 3]])
        return kept, relevance.sum(1)

    kept32, heatmap32 = run(model, x)
    kept64, heatmap64 = run(copy.deepcopy(model).double(), x.double())
    assert list(kept32) == ["10", "6", "4", "2"]  # backward order; the first conv is never pruned
    for name, share in kept32.items():
        assert abs(share - kept64[name]) < 1e-3, (name, share, kept64[name])
    for name in ("6", "4", "2"):  # inputs of 65,536 entries: the old float32 gain kept all
        assert 0.2 < kept32[name] < 0.9, (name, kept32[name])
    torch.testing.assert_close(
        gini_index(heatmap32).double(), gini_index(heatmap64), atol=1e-3, rtol=0
    )


def test_sparsity_gain_makes_a_float32_heatmap_sparser_than_lrp():
    """PLRP-λ with the default gain raises the heatmap's Gini index above LRP's."""
    model = _four_conv_net()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ginis = []
    for composite in (EpsilonPlusFlat(), PLRPLambda()):
        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(x, torch.eye(5)[[0, 3]])
        ginis.append(gini_index(relevance.sum(1)))
    assert (ginis[1] > 1.1 * ginis[0]).all(), ginis
