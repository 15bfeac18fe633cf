"""Pruning curves and Taylor scores at their edges: tied scores over many units, thresholds hit
exactly, the seed and progress defaults, one image, and the messages of bad arguments.

References are hand-written forward passes (a 0/1 keep vector) and Python sorts; they share no
code with ``captum_ext.synergy.pruning``.
"""

from __future__ import annotations

import re

import pytest
import torch
from test_pruning_curve import _mlp_by_hand
from torch import nn

from captum_ext.synergy import pruning as pruning
from captum_ext.synergy.pruning import (
    classification_metrics,
    pruning_curve,
    recalibrate_batchnorm,
    taylor_scores,
)


def _mlp(hidden=8, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3)
    ).double()
    g = torch.Generator().manual_seed(seed + 1)
    norm = model[1]
    norm.weight.data = torch.rand(hidden, generator=g, dtype=torch.float64) + 0.5
    norm.bias.data = torch.randn(hidden, generator=g, dtype=torch.float64) * 0.3
    norm.running_mean = torch.randn(hidden, generator=g, dtype=torch.float64) * 0.2
    norm.running_var = torch.rand(hidden, generator=g, dtype=torch.float64) + 0.5
    return model.eval()


def _fingerprint(weights):
    def metric(output, labels):
        return {"logits": float((output * weights).sum())}

    return metric


def test_tied_scores_over_many_units_prune_the_lowest_index_first():
    hidden = 120  # enough units for an unstable sort to reorder ties
    model = _mlp(hidden)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 3
    weights = torch.randn(30, 3, generator=g, dtype=torch.float64)
    scores = (torch.arange(hidden) * 7 % 3).double()  # three values, 40 ties each
    curve = pruning_curve(
        model,
        model[2],
        scores,
        x,
        y,
        fractions=(0.25, 0.5),
        metric=_fingerprint(weights),
        show_progress=False,
    )
    assert curve["fraction"] == [0.25, 0.5] and curve["pruned"] == [30, 60]
    order = sorted(range(hidden), key=lambda u: (float(scores[u]), u))
    for where, k in enumerate((30, 60)):
        keep = torch.ones(hidden, dtype=torch.float64)
        keep[order[:k]] = 0.0
        with torch.no_grad():
            want = float((_mlp_by_hand(model, x, keep) * weights).sum())
        assert curve["logits"][where] == pytest.approx(want, rel=1e-12)


def test_the_seed_reaches_random_rankings_and_the_recalibration_order():
    model = _mlp()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 3
    weights = torch.randn(40, 3, generator=g, dtype=torch.float64)
    metric = _fingerprint(weights)
    default = pruning_curve(
        model, model[2], "random", x, y, fractions=(0.5, 0.75), metric=metric, show_progress=False
    )
    assert default == pruning_curve(
        model,
        model[2],
        "random",
        x,
        y,
        fractions=(0.5, 0.75),
        metric=metric,
        seed=0,
        show_progress=False,
    )
    # rows sorted by their first feature: batches of 256 in stored order each see a slice
    x_train = torch.sort(torch.randn(600, 4, generator=g, dtype=torch.float64), dim=0)[0]
    keep = torch.ones(8, dtype=torch.float64)
    keep[[0, 1]] = 0.0
    for seed in (0, 5):
        curve = pruning_curve(
            model,
            model[2],
            torch.arange(8.0),
            x,
            y,
            fractions=(0.25,),
            x_recalibrate=x_train,
            metric=metric,
            seed=seed,
            show_progress=False,
        )
        norm = nn.BatchNorm1d(8, dtype=torch.float64)  # statistics of the pruned layer input
        with torch.no_grad():
            recalibrate_batchnorm(norm, x_train @ model[0].weight.T + model[0].bias, seed=seed)
            want = float(
                (
                    _mlp_by_hand(model, x, keep, (norm.running_mean, norm.running_var)) * weights
                ).sum()
            )
        assert curve["logits"][0] == pytest.approx(want, rel=1e-10)
        with torch.no_grad():
            recalibrate_batchnorm(norm, x_train @ model[0].weight.T + model[0].bias, seed=None)
            in_order = float(
                (
                    _mlp_by_hand(model, x, keep, (norm.running_mean, norm.running_var)) * weights
                ).sum()
            )
        assert curve["logits"][0] != pytest.approx(in_order, rel=1e-3)


def test_progress_bar_is_named_and_silent_off_a_terminal(monkeypatch):
    calls = []

    def recording_tqdm(iterable, **kwargs):
        calls.append(kwargs)
        return iterable

    monkeypatch.setattr(pruning, "tqdm", recording_tqdm)
    model = _mlp()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.arange(10) % 3
    pruning_curve(model, model[2], "random", x, y, fractions=(0.0,))  # default: no bar
    pruning_curve(model, model[2], "random", x, y, fractions=(0.0,), show_progress=True)
    assert calls == [{"desc": "pruning", "disable": True}, {"desc": "pruning", "disable": None}]


def test_a_metric_that_returns_no_mapping_is_named_by_its_type():
    model = _mlp()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.arange(6) % 3
    with pytest.raises(
        TypeError, match=re.escape("metric must return a mapping of names to numbers, got float")
    ):
        pruning_curve(
            model,
            model[2],
            "random",
            x,
            y,
            fractions=(0.0,),
            metric=lambda out, lab: 0.5,
            show_progress=False,
        )


def test_classification_metrics_at_the_threshold_and_with_two_classes():
    at_threshold = torch.tensor([[0.5], [0.5], [0.9], [0.1]])  # 0.5 is not above 0.5
    negatives = torch.tensor([0, 0, 1, 0])
    assert classification_metrics(at_threshold, negatives, threshold=0.5)["accuracy"] == 1.0
    labels = torch.tensor([1, 0, 1, 0])
    two = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4], [0.6, 0.5]])
    assert classification_metrics(two, labels) == {"accuracy": 1.0}
    with pytest.raises(
        ValueError, match=re.escape("labels must have one entry per output row (4), got 3")
    ):
        classification_metrics(two, labels[:3])


def test_messages_name_units_and_list_at_most_ten_group_ids():
    model = _mlp(hidden=12)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.arange(6) % 3
    with pytest.raises(
        ValueError,
        match=re.escape("scores must have shape (12,), one per units of this layer, got (3,)"),
    ):
        pruning_curve(model, model[2], torch.ones(3), x, y, show_progress=False)
    eleven = torch.tensor([list(range(10)) + [11, 11]])  # 11 ids, 10 missing: the list is cut
    with pytest.raises(
        ValueError,
        match=re.escape("every group id 0 … G-1, got ids [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] …"),
    ):
        pruning_curve(model, model[2], torch.ones(12), x, y, layer_mask=eleven, show_progress=False)
    ten = torch.tensor([list(range(9)) + [10, 10, 10]])  # 10 ids, 9 missing: all are shown
    with pytest.raises(
        ValueError,
        match=re.escape("every group id 0 … G-1, got ids [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]") + "$",
    ):
        pruning_curve(model, model[2], torch.ones(11), x, y, layer_mask=ten, show_progress=False)


def _conv(dtype=torch.float64):
    torch.manual_seed(4)
    return (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
        )
        .to(dtype)
        .eval()
    )


def test_taylor_scores_are_the_mean_of_single_image_scores():
    model = _conv()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    singles = torch.stack(
        [taylor_scores(model, model[1], x[i : i + 1], y[i : i + 1]) for i in range(5)]
    )
    assert (singles > 0).any(1).all()
    torch.testing.assert_close(
        taylor_scores(model, model[1], x, y), singles.mean(0), rtol=1e-12, atol=0
    )


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


class _First(nn.Module):
    def forward(self, pair):
        return pair[0]


def test_taylor_scores_name_a_layer_that_does_not_output_one_tensor():
    model = nn.Sequential(nn.Linear(4, 3), _Pair(), _First()).double()
    x, y = torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(
        TypeError, match=re.escape("layer must output one (N, C, ...) tensor, got <class 'tuple'>")
    ):
        taylor_scores(model, model[1], x, y)
    assert not model[1]._forward_hooks
