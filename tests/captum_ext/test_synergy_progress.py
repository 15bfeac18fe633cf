"""The synergy engine's progress bar counts every pair of every chunk once (synergy._engine)."""

from __future__ import annotations

import pytest
import torch
from synergy_reference import randomize_norms
from torch import nn

from captum_ext import LayerSynergy
from captum_ext.synergy import _engine as _engine


class _Bar:
    """A tqdm stand-in that records its total and every update."""

    made: list[_Bar] = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates = kwargs, []
        _Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.updates.append(n)


@pytest.mark.parametrize("fast", [True, False])
def test_bar_total_is_pairs_times_chunks_and_updates_reach_it(monkeypatch, fast):
    monkeypatch.setattr(_engine, "tqdm", _Bar)
    _Bar.made = []
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1))
    randomize_norms(model)
    model = model.double().eval()
    x = torch.randn(7, 3, dtype=torch.float64)
    forward = model if fast else (lambda inp: model(inp))
    ls = LayerSynergy(forward, model[2])
    ls.compute(x, rows_per_chunk=3, perturbations_per_eval=4)
    ls.attribute(x, rows_per_chunk=3, show_progress=True)
    pairs_per_chunk = 6 * 5 // 2
    first, second = _Bar.made
    for bar, disable in ((first, True), (second, None)):
        assert bar.kwargs == {
            "total": 3 * pairs_per_chunk,
            "desc": "synergy pairs",
            "unit": "pair",
            "disable": disable,
        }
        assert type(bar.kwargs["total"]) is int  # a count of pairs, not 45.0
        assert all(isinstance(n, int) and n > 0 for n in bar.updates)
        assert sum(bar.updates) == 3 * pairs_per_chunk
