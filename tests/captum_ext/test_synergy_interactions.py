"""Δ and S as Shapley interactions, against games written out coalition by coalition.

The references evaluate every coalition of a tiny network's hidden units with their own
weight arithmetic (no hook, no code of captum_ext), and compute Möbius coefficients, Shapley
values and Shapley interaction indices from their textbook definitions.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from captum_ext import LayerSynergy
from captum_ext.synergy.interactions import from_interactions, shapley_values, to_interactions

N_UNITS = 5


class _Quadratic(nn.Module):
    """score = h·w + Σ_{i<j} A_ij h_i h_j: zeroing units gives a 2-additive game."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n))
        self.a = nn.Parameter(torch.randn(n, n).triu(1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.w + ((h @ self.a) * h).sum(1))[:, None]


def _network(dtype: torch.dtype, quadratic: bool) -> nn.Sequential:
    torch.manual_seed(3)
    head = _Quadratic(N_UNITS) if quadratic else nn.Sequential(nn.Linear(N_UNITS, 3), nn.Tanh())
    tail = [] if quadratic else [nn.Linear(3, 1)]
    model = nn.Sequential(nn.Linear(4, N_UNITS), nn.ReLU(), head, *tail).to(dtype).eval()
    with torch.no_grad():  # strong nonlinearity: large higher-order interactions
        for parameter in model.parameters():
            parameter.mul_(2.0)
    return model


def _scores(model: nn.Sequential, x: torch.Tensor, kept: tuple[int, ...], sigmoid: bool):
    """Per-row score with only the hidden units in ``kept`` left, by hand."""
    with torch.no_grad():
        h = torch.relu(x @ model[0].weight.t() + model[0].bias)
        keep = torch.zeros(N_UNITS, dtype=x.dtype)
        keep[list(kept)] = 1
        out = h * keep
        for module in list(model)[2:]:
            out = module(out)
        out = out[:, 0].double()
        return torch.sigmoid(out) if sigmoid else out


def _coalitions(n: int):
    return [c for size in range(n + 1) for c in itertools.combinations(range(n), size)]


def _games(model, x, sigmoid):
    """The kept game v(T) and both masked games g(U) (signed, abs_mean) on all coalitions."""
    full = _scores(model, x, tuple(range(N_UNITS)), sigmoid)
    kept, signed, absolute = {}, {}, {}
    for c in _coalitions(N_UNITS):
        p = _scores(model, x, c, sigmoid)
        masked = tuple(u for u in range(N_UNITS) if u not in c)
        kept[frozenset(c)] = float(p.mean())
        signed[frozenset(masked)] = float((full - p).mean())
        absolute[frozenset(masked)] = float((full - p).abs().mean())
    return kept, signed, absolute


def _moebius(game: dict) -> dict:
    return {
        a: sum((-1) ** (len(a) - len(b)) * game[frozenset(b)] for b in _subsets(a)) for a in game
    }


def _subsets(a):
    return [c for size in range(len(a) + 1) for c in itertools.combinations(sorted(a), size)]


def _sii_pair(game: dict, i: int, j: int) -> float:
    """Grabisch's Shapley interaction index of {i, j} from its definition."""
    n, rest = N_UNITS, [u for u in range(N_UNITS) if u not in (i, j)]
    total = 0.0
    for size in range(len(rest) + 1):
        weight = math.factorial(n - size - 2) * math.factorial(size) / math.factorial(n - 1)
        for t in itertools.combinations(rest, size):
            t = frozenset(t)
            total += weight * (game[t | {i, j}] - game[t | {i}] - game[t | {j}] + game[t])
    return total


def _shapley(game: dict, i: int) -> float:
    n, rest = N_UNITS, [u for u in range(N_UNITS) if u != i]
    total = 0.0
    for size in range(n):
        weight = math.factorial(n - size - 1) * math.factorial(size) / math.factorial(n)
        for t in itertools.combinations(rest, size):
            total += weight * (game[frozenset(t) | {i}] - game[frozenset(t)])
    return total


def _compute(model, x, mode, sigmoid=True):
    transform = "sigmoid" if sigmoid else None
    return LayerSynergy(model, model[1], output_transform=transform, mode=mode).compute(x)


def _pairs():
    return list(itertools.combinations(range(N_UNITS), 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_delta_and_s_are_moebius_coefficients_of_any_network(dtype):
    model = _network(dtype, quadratic=False)
    x = torch.randn(64, 4, dtype=dtype)
    kept, signed, absolute = _games(model, x, sigmoid=True)
    tol = {"rel": 1e-4, "abs": 1e-6} if dtype == torch.float32 else {"rel": 1e-9, "abs": 1e-12}
    m_kept = _moebius(kept)
    for mode, game in (("signed", signed), ("abs_mean", absolute)):
        result = _compute(model, x, mode)
        m = _moebius(game)
        for i in range(N_UNITS):
            assert float(result.importance[i]) == pytest.approx(m[frozenset({i})], **tol)
        for i, j in _pairs():
            assert float(result.synergy[i, j]) == pytest.approx(m[frozenset({i, j})], **tol)
    # signed: S_ij = −Σ_{B ⊇ ij} m_v(B), and it differs from SII_ij(v) by the higher terms
    result = _compute(model, x, "signed")
    gaps = []
    for i, j in _pairs():
        above = [(b, value) for b, value in m_kept.items() if {i, j} <= b]
        assert float(result.synergy[i, j]) == pytest.approx(-sum(v for _, v in above), **tol)
        sii = _sii_pair(kept, i, j)
        higher = sum(v * (1 - 1 / (len(b) - 1)) for b, v in above if len(b) > 2)
        assert -float(result.synergy[i, j]) - sii == pytest.approx(higher, **tol)
        gaps.append(abs(higher))
    assert max(gaps) > 1e-3, "the sigmoid network is not 2-additive: S must differ from SII"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conversion_is_exact_k_sii_and_shapley_on_a_two_additive_game(dtype):
    model = _network(dtype, quadratic=True)
    x = torch.randn(48, 4, dtype=dtype)
    kept, signed, _ = _games(model, x, sigmoid=False)
    m_kept = _moebius(kept)
    rounding = 1e-4 if dtype == torch.float32 else 1e-9
    assert all(abs(v) < rounding for b, v in m_kept.items() if len(b) > 2), "not 2-additive"
    result = _compute(model, x, "signed", sigmoid=False)
    assert result.synergy.dtype == dtype
    tol = {"rel": 1e-4, "abs": 1e-5} if dtype == torch.float32 else {"rel": 1e-9, "abs": 1e-12}
    first, second = to_interactions(result, "kept")
    phi = shapley_values(result)
    sii = {(i, j): _sii_pair(kept, i, j) for i, j in _pairs()}
    for i in range(N_UNITS):
        shapley = _shapley(kept, i)
        assert float(phi[i]) == pytest.approx(shapley, **tol)
        # order-1 2-SII: φ_i minus half of its pair interactions (Bernoulli B_1 = −1/2)
        k_sii = shapley - 0.5 * sum(v for pair, v in sii.items() if i in pair)
        assert float(first[i]) == pytest.approx(k_sii, **tol)
        assert float(second[i, i]) == 0.0
    for (i, j), value in sii.items():
        assert float(second[i, j]) == pytest.approx(value, **tol)
        assert float(second[j, i]) == pytest.approx(value, **tol)
    full, empty = kept[frozenset(range(N_UNITS))], kept[frozenset()]
    assert float(phi.sum()) == pytest.approx(full - empty, **tol)  # efficiency
    masked_first, masked_second = to_interactions(result, "masked")
    g = _moebius(signed)
    for i, j in _pairs():
        assert float(masked_second[i, j]) == pytest.approx(g[frozenset({i, j})], **tol)
    assert torch.equal(masked_first, result.importance)


def test_conversion_agrees_with_shapiq_exact_k_sii():
    shapiq = pytest.importorskip("shapiq")
    import numpy as np

    model = _network(torch.float64, quadratic=True)
    x = torch.randn(32, 4, dtype=torch.float64)

    def game(coalitions: np.ndarray) -> np.ndarray:
        rows = [tuple(np.flatnonzero(c)) for c in coalitions]
        return np.array([float(_scores(model, x, c, False).mean()) for c in rows])

    exact = shapiq.ExactComputer(game, n_players=N_UNITS)
    first, second = to_interactions(_compute(model, x, "signed", sigmoid=False), "kept")
    for index in ("k-SII", "STII", "FSII"):
        values = exact(index, order=2)
        np.testing.assert_allclose(values.get_n_order_values(1), first.numpy(), atol=1e-9)
        reference = values.get_n_order_values(2)
        reference = np.triu(reference, 1) + np.triu(reference, 1).T
        np.testing.assert_allclose(reference, second.numpy(), atol=1e-9)


@pytest.mark.parametrize("game", ["kept", "masked"])
def test_round_trip_and_errors(game):
    model = _network(torch.float64, quadratic=False)
    result = _compute(model, torch.randn(16, 4, dtype=torch.float64), "signed")
    importance, synergy = from_interactions(*to_interactions(result, game), game=game)
    torch.testing.assert_close(importance, result.importance)
    torch.testing.assert_close(synergy, result.synergy)
    absolute = _compute(model, torch.randn(16, 4, dtype=torch.float64), "abs_mean")
    with pytest.raises(ValueError, match="game='kept' needs mode='signed'"):
        to_interactions(absolute, "kept")
    to_interactions(absolute, "masked")
    with pytest.raises(ValueError, match="game must be one of"):
        to_interactions(result, "present")
    with pytest.raises(TypeError, match="result must be a SynergyResult"):
        to_interactions(result.synergy, game)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="first must be a torch.Tensor"):
        from_interactions([1.0], torch.zeros(1, 1), game)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="second must be"):
        from_interactions(torch.zeros(3), torch.zeros(2, 2), game)
