"""SynXAI's pair classes (synergistic / independent / redundant) against the paper's definition
written out pair by pair, on a network whose pairs are known by construction."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_ext import LayerSynergy
from captum_ext.synergy.formulas import pair_labels


def _reference(delta: list[float], pair: list[list[float]], rtol: float, atol: float) -> list:
    """The paper's three cases from Δ_i and Δ_ij, one pair at a time."""
    n = len(delta)
    out = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            s = pair[i][j] - delta[i] - delta[j]
            band = rtol * (abs(delta[i]) + abs(delta[j])) + atol
            out[i][j] = 1 if s > band else (-1 if s < -band else 0)
    return out


values = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])  # ties and zeros on purpose


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5),
    data=st.data(),
    rtol=st.sampled_from([0.0, 0.05, 0.5]),
    atol=st.sampled_from([0.0, 0.1]),
)
def test_labels_match_the_definition(n, data, rtol, atol):
    delta = [data.draw(values) for _ in range(n)]
    upper = {(i, j): data.draw(values) for i in range(n) for j in range(i + 1, n)}
    pair = [[upper.get((min(i, j), max(i, j)), 0.0) for j in range(n)] for i in range(n)]
    importance = torch.tensor(delta, dtype=torch.float64)
    matrix = torch.tensor(pair, dtype=torch.float64)
    synergy = matrix - importance[:, None] - importance[None, :]
    synergy.fill_diagonal_(0)
    labels = pair_labels(synergy, importance, rtol, atol)
    assert labels.dtype == torch.int8
    assert labels.tolist() == _reference(delta, pair, rtol, atol)


class _Gates(nn.Module):
    """Hidden units h = x; score = min(h0, h1) + max(h2, h3) + 0·h4."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        score = torch.minimum(h[:, 0], h[:, 1]) + torch.maximum(h[:, 2], h[:, 3]) + 0 * h[:, 4]
        return torch.stack([-score, score], dim=1)


def test_and_or_pairs_get_their_class():
    """Masking to 0 on inputs of ones: min(h0, h1) drops with either unit, so
    Δ01 = Δ0 = Δ1 = 1 (redundant by the paper's definition); max(h2, h3) drops only with both,
    Δ23 = 1 > Δ2 + Δ3 = 0 (synergistic); every other pair adds up (independent)."""
    model = _Gates().double()
    x = torch.ones(3, 5, dtype=torch.float64)
    result = LayerSynergy(model, model.hidden, output_transform=None).compute(
        x, layer_baselines=0.0, target=1
    )
    labels = result.pair_labels()
    assert labels[0, 1] == -1  # Δ01 = 1 < Δ0 + Δ1 = 2
    assert labels[2, 3] == 1  # Δ23 = 1 > Δ2 + Δ3 = 0
    assert labels[4].tolist() == [0, 0, 0, 0, 0]
    assert result.label_counts() == {"synergistic": 1, "independent": 8, "redundant": 1}


@pytest.mark.parametrize(
    "bad",
    [{"rtol": -0.1}, {"atol": -1.0}, {"atol": float("nan")}, {"rtol": True}],
)
def test_bad_tolerances_are_named(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        pair_labels(torch.zeros(2, 2), torch.zeros(2), **{"rtol": 0.05, "atol": 0.0, **bad})


def test_the_default_band_is_five_percent_of_the_effects_and_no_absolute_width():
    """Δ_i = Δ_j = 0.5: the default band is 0.05 · (0.5 + 0.5) = 0.05 (atol 0)."""
    importance = torch.tensor([0.5, 0.5])
    for value, label in ((0.06, 1), (-0.06, -1), (0.04, 0), (-0.04, 0)):
        synergy = torch.tensor([[0.0, value], [value, 0.0]])
        assert pair_labels(synergy, importance)[0, 1] == label, value
    tiny = torch.tensor([[0.0, 1e-3], [1e-3, 0.0]])
    assert pair_labels(tiny, torch.zeros(2))[0, 1] == 1  # no absolute width by default


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="synergy must be"):
        pair_labels(torch.zeros(3, 3), torch.zeros(2))
