"""SynXAI's formulas on precomputed scores (captum_ext.synergy.formulas) against element-wise loops.

Values are drawn with ties, zeros and entries in (0, 1), so that a clamp at another bound, a
sum over the other axis or a dropped sign changes the result.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from captum_ext.synergy import formulas as scores

# ties, zeros, small positives, negatives
VALUES = st.sampled_from([0.0, 0.0, 0.25, 0.5, 0.5, 1.5, -0.25, -2.0])


def _matrix(n, values):
    return torch.tensor(values[: n * n], dtype=torch.float64).reshape(n, n)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 5),
    values=st.lists(VALUES, min_size=25, max_size=25),
    alpha=st.sampled_from([0.0, 5.0, 20.0]),
)
def test_ranking_and_synergistic_importance_match_loops(n, values, alpha):
    s = _matrix(n, values)
    importance = torch.tensor(values[-n:], dtype=torch.float64)
    ranking = [sum(max(float(s[i, j]), 0.0) for j in range(n)) for i in range(n)]
    z = [float(importance[i]) + alpha * ranking[i] / n for i in range(n)]
    assert scores.synergy_ranking(s).tolist() == pytest.approx(ranking, abs=1e-12)
    assert scores.synergistic_importance(importance, s, alpha).tolist() == pytest.approx(
        z, abs=1e-12
    )


def test_ranking_sums_each_row_of_positive_synergy():
    s = torch.tensor([[0.0, 0.5, -1.0], [0.25, 0.0, 0.75], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(
        scores.synergy_ranking(s), torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    )


@settings(max_examples=30, deadline=None)
@given(p=st.lists(VALUES, min_size=3, max_size=3), masked=st.lists(VALUES, min_size=6, max_size=6))
def test_differences_and_pair_synergy_match_loops(p, masked):
    p_t = torch.tensor(p, dtype=torch.float64)[:, None]
    masked_t = torch.tensor(masked, dtype=torch.float64).reshape(3, 2)
    signed = scores.score_difference(p_t, masked_t, "signed")
    absolute = scores.score_difference(p_t, masked_t, "abs_mean")
    for r in range(3):
        for k in range(2):
            assert float(signed[r, k]) == p[r] - masked[2 * r + k]
            assert float(absolute[r, k]) == abs(p[r] - masked[2 * r + k])
    pair, single_i, single_j = absolute[:, 0], signed[:, 1], p_t[:, 0]
    synergy = scores.pair_synergy(pair, single_i, single_j)
    for r in range(3):
        assert float(synergy[r]) == pytest.approx(
            float(pair[r]) - float(single_i[r]) - float(single_j[r]), abs=1e-15
        )
