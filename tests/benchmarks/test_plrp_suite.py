"""PLRP suite: region ranking with tie orders, region perturbation by hand, and the per-task
claims on synthetic metric curves where each claim holds or fails."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.plrp import claims, region_perturbation_auc, region_ranks

PS = (0.0, 0.1, 0.2, 0.3)


def test_region_ranks_by_score_then_tie_key_by_hand():
    scores = np.array([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    keys = np.array([[3, 1, 0, 2], [2, 0, 3, 1]])
    # row 0: region 3 (2.0), region 0 (1.0), then the tied regions by key: 2 (key 0), 1 (key 1)
    # row 1: all tied, order by key: 1, 3, 0, 2
    assert region_ranks(scores, keys).tolist() == [[1, 3, 2, 0], [2, 0, 3, 1]]
    # no keys: ties in raster (index) order
    assert region_ranks(scores).tolist() == [[1, 2, 3, 0], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="tie_keys"):
        region_ranks(scores, keys[:1])


class _Weighted(nn.Module):
    """Logits (sum(w * x), 0): the class-0 probability is sigmoid(sum(w * x))."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        s = (x * self.w).sum((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_region_perturbation_by_hand_with_raster_ties(dtype):
    # 2x2 image, 1-pixel regions; region 3 has the only non-zero relevance, 0..2 are tied
    w = torch.tensor([[0.5, 1.0], [1.5, 2.0]], dtype=dtype)
    x = torch.ones(1, 1, 2, 2, dtype=dtype)
    relevance = np.array([[[[0.0, 0.0], [0.0, 3.0]]]])
    auc, curve = region_perturbation_auc(
        _Weighted(w), x, torch.tensor([0]), relevance, 1, 0.0, steps=4
    )
    # removal order 3, 0, 1, 2: logit 5 → 3 → 2.5 → 1.5 → 0
    expected = [_sigmoid(v) / _sigmoid(5.0) for v in (5.0, 3.0, 2.5, 1.5, 0.0)]
    np.testing.assert_allclose(curve[0], expected, rtol=1e-6)
    trapezoid = 0.25 * (sum(expected) - (expected[0] + expected[-1]) / 2)
    np.testing.assert_allclose(auc, [trapezoid], rtol=1e-6)


def test_region_perturbation_random_ties_are_seeded_and_uniform():
    w = torch.tensor([[0.5, 1.0], [1.5, 2.0]])
    n = 600
    x = torch.ones(n, 1, 2, 2)
    relevance = np.zeros((n, 1, 2, 2))
    relevance[:, 0, 1, 1] = 3.0  # region 3 first, regions 0, 1, 2 tied at 0
    y = torch.zeros(n, dtype=torch.long)
    _, curves = region_perturbation_auc(_Weighted(w), x, y, relevance, 1, 0.0, 4, tie_seed=0)
    _, again = region_perturbation_auc(_Weighted(w), x, y, relevance, 1, 0.0, 4, tie_seed=0)
    np.testing.assert_array_equal(curves, again)
    # the logit after step k tells which regions are gone: recover each sample's tie order
    logits = np.log(curves * _sigmoid(5.0) / (1 - curves * _sigmoid(5.0)))
    np.testing.assert_allclose(logits[:, 1], 3.0, rtol=1e-4)  # the untied region always first
    weight = {0.5: 0, 1.0: 1, 1.5: 2}
    orders = Counter(
        tuple(weight[round(float(step), 1)] for step in -np.diff(row[1:]))
        for row in np.round(logits, 3)
    )
    assert set(orders) == {(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)}
    assert all(60 <= count <= 140 for count in orders.values()), orders  # 100 expected each
    _, other = region_perturbation_auc(_Weighted(w), x, y, relevance, 1, 0.0, 4, tie_seed=1)
    assert not np.array_equal(curves, other)


def _rows(task, lrp, lam, mm, extra_lrp=None, extra_lam=None):
    """Metric rows: ``lrp`` a dict of metrics, ``lam``/``mm`` dicts metric → values per p > 0."""
    rows = [{"task": task, "method": "LRP", "p": 0.0, **lrp, **(extra_lrp or {})}]
    for method, curves in (("PLRP-λ", lam), ("PLRP-M", mm)):
        for i, p in enumerate(PS[1:]):
            row = {"task": task, "method": method, "p": p}
            row.update({k: v[i] for k, v in curves.items()})
            if method == "PLRP-λ" and extra_lam:
                row.update({k: v[i] for k, v in extra_lam.items()})
            rows.append(row)
        rows.append({**rows[-1], "p": float("nan"), "gini": 0.0})  # sparsity gain: not claimed
    return rows


GENOMICS = {
    "lrp": {"gini": 0.70, "rma": 0.70},
    "lam": {"gini": [0.715, 0.78, 0.80], "rma": [0.72, 0.75, 0.80]},
    "mm": {"gini": [0.705, 0.77, 0.79], "rma": [0.71, 0.74, 0.79]},
}


def _genomics(change=None):
    spec = {k: dict(d) for k, d in GENOMICS.items()}
    if change:
        part, metric, values = change
        spec[part] = {**spec[part], metric: values}
    table = claims(_rows("dna", spec["lrp"], spec["lam"], spec["mm"]), {"dna": "genomics"}, PS)
    return [row["tested as"] for row in table if not row["holds"]], table


def test_genomics_claims_hold_on_curves_that_satisfy_them():
    broken, table = _genomics()
    assert len(table) == 5 and not broken, table
    assert {row["figure"] for row in table} == {"Figure 8 (genomics)"}
    close = next(row for row in table if "differ slightly" in row["paper"])
    assert "max |ΔGini| 0.010" in close["ours"] and "max |ΔRMA| 0.010" in close["ours"]


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        # equal to LRP at p = 0.1 (λ − M stays within 0.02)
        (("mm", "gini", [0.70, 0.77, 0.79]), "Gini(PLRP-M, p) > Gini(LRP)"),
        (("lam", "gini", [0.70, 0.78, 0.80]), "Gini(PLRP-λ, p) > Gini(LRP)"),
        (("lam", "rma", [0.72, 0.75, 0.69]), "RMA(PLRP-λ, p_max) > RMA(LRP)"),  # ends below
        # ends above LRP (0.71 > 0.70) but ranks 2, 4, 1, 3 against p: ρ = 0
        (("mm", "rma", [0.95, 0.60, 0.71]), "RMA(PLRP-M, p_max) > RMA(LRP)"),
        (("mm", "gini", [0.705, 0.75, 0.79]), "|Gini(λ) − Gini(M)|"),  # 0.03 > 0.02
    ],
)
def test_each_genomics_claim_fails_alone(change, failing):
    broken, table = _genomics(change)
    assert len(broken) == 1 and failing in broken[0], table


def test_genomics_rma_claim_holds_for_a_rise_and_partial_fall():
    # ranks 1, 4, 3, 2 against p: ρ = +0.2, and RMA(p_max) 0.72 > 0.70: holds ("in general")
    broken, table = _genomics(("lam", "rma", [0.99, 0.80, 0.72]))
    assert not broken, table
    row = next(r for r in table if r["tested as"].startswith("RMA(PLRP-λ"))
    assert "ρ = +0.20" in row["ours"]


def _faith(auc, early):
    return {
        "faith_auc": auc,
        "faith_auc_early": early,
        "faith_auc_late": auc - early,
        "faith_auc_rand": auc,
        "faith_auc_early_rand": early,
        "faith_auc_late_rand": auc - early,
    }


def _image(
    lam_gini=(0.90, 0.95, 0.96),
    lam_rma=(0.85, 0.90, 0.88),
    faith=(0.22, 0.105),
    lip=(0.10, 0.09, 0.10),
    m_gini=(0.80, 0.85, 0.90),
):
    lrp = {"gini": 0.60, "rma": 0.80, "lipschitz": 0.10}
    lam = {"gini": list(lam_gini), "rma": list(lam_rma), "lipschitz": list(lip)}
    mm = {"gini": list(m_gini), "rma": [0.82, 0.84, 0.85], "lipschitz": [0.2] * 3}
    good = _faith(0.21, 0.105)
    extra_lam = {k: [good[k], good[k], v] for k, v in _faith(*faith).items()}
    rows = _rows("img", lrp, lam, mm, extra_lrp=_faith(0.20, 0.10), extra_lam=extra_lam)
    table = claims(rows, {"img": "image"}, PS)
    return [row["tested as"] for row in table if not row["holds"]], table


def test_image_claims_hold_on_curves_that_satisfy_them():
    broken, table = _image()
    assert not broken, table
    assert len(table) == 8 and {row["figure"] for row in table} == {"Figure 2 (images)"}


@pytest.mark.parametrize(
    ("kwargs", "failing"),
    [
        ({"m_gini": (0.61, 0.62, 0.90)}, ["ΔGini(p=0.2) ≥ 50% of ΔGini(p=0.3) (PLRP-M)"]),
        ({"lam_gini": (0.79, 0.95, 0.96)}, ["gini(λ, p) ≥ gini(M, p) at every p"]),
        ({"lam_rma": (0.85, 0.88, 0.90)}, ["RMA(λ) peaks above LRP, then lower at p_max"]),
        ({"faith": (0.30, 0.105)}, ["≤ 1.2·LRP"] * 2),  # 1.5x worse in both tie orders
        ({"faith": (0.22, 0.12)}, ["≤ 1.2·LRP"] * 2),  # worse early (0.02) than late (0.0)
        ({"lip": (0.10, 0.11, 0.09)}, ["Lipschitz(λ, p) ≤ Lipschitz(LRP)"]),
    ],
)
def test_each_image_claim_fails_alone(kwargs, failing):
    broken, table = _image(**kwargs)
    assert len(broken) == len(failing), table
    assert all(f in b for f, b in zip(failing, broken, strict=True)), broken


def test_claims_reject_an_unknown_kind():
    with pytest.raises(ValueError, match="kinds"):
        claims(_rows("x", *GENOMICS.values()), {"x": "audio"}, PS)


def test_figures_draw_every_task_metric_and_tie_order():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.plrp import Task
    from benchmarks.plrp_plots import curves_figure, faithfulness_figure, heatmap_figure

    image = Task(
        "img", "image", None, torch.rand(2, 3, 8, 8), torch.zeros(2), None, {}, 0.0, 4, True
    )
    dna = Task(
        "dna", "genomics", None, torch.rand(2, 4, 30), torch.zeros(2), None, {}, 0.0, 0, False
    )
    rows = _rows(
        "img",
        {"gini": 0.6, "rma": 0.8, "lipschitz": 0.1, **_faith(0.2, 0.1)},
        *(
            {
                "gini": [0.7] * 3,
                "rma": [0.8] * 3,
                "lipschitz": [0.1] * 3,
                **{k: [v] * 3 for k, v in _faith(0.2, 0.1).items()},
            },
        )
        * 2,
    )
    rows += _rows("dna", *GENOMICS.values())
    labels = ["LRP"] + [f"{m} p={p:g}" for m in ("PLRP-λ", "PLRP-M") for p in PS[1:]]
    curves = {
        ("img", label): {"": np.linspace(1, 0, 5), "_rand": np.linspace(1, 0.2, 5)}
        for label in labels
    }
    heatmaps = {
        ("img", label): np.random.default_rng(0).normal(size=(2, 1, 8, 8)) for label in labels
    }
    fig = curves_figure(rows, [image], "as the paper's Figure 2 (images)")
    titles = [ax.get_title() for ax in fig.axes]
    assert {"img: faith_auc (lower better)", "img: faith_auc_rand (lower better)"} <= set(titles)
    assert fig._suptitle.get_text() == "as the paper's Figure 2 (images)"
    fig = curves_figure(rows, [dna], "as the paper's Figure 8 (genomics)")
    assert [ax.get_title() for ax in fig.axes] == [
        f"dna: {m} ({d} better)" for m, d in (("gini", "higher"), ("rma", "higher"))
    ]
    fig = faithfulness_figure(curves, [image, dna], PS)
    assert [ax.get_title() for ax in fig.axes] == [
        "img: ties in raster order",
        "img: ties in random order (seed 0)",
    ]
    assert len(fig.axes[0].lines) == 5  # LRP and both variants at the smallest and largest p
    fig = heatmap_figure(heatmaps, [image, dna], PS)
    assert len(fig.axes) == 2 * (len(labels) + 1)
    plt.close("all")
