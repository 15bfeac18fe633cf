"""The synergy suite's parts at reduced size: Shapley-interaction anchor, baselines, SHAP with a
background, LIME statistics, and the claims tables, against references written out here."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from benchmarks import synergy_baselines as baselines
from benchmarks import synergy_explain, synergy_shapiq
from benchmarks.data._base import Dataset, TabularSplits
from benchmarks.models import SynergyMLP
from benchmarks.report import Report


def _mlp(features: int = 6, hidden=(10, 9), seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = SynergyMLP(in_features=features, hidden=hidden)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
        model.out.weight.mul_(4.0)
    return model.eval()


def _scores_by_hand(model, x, players, kept):
    """Mean sigmoid score with only ``kept`` of ``players`` left at relu2, by explicit layers."""
    with torch.no_grad():
        h = model.relu2(model.bn2(model.fc2(model.relu1(model.bn1(model.fc1(x))))))
        drop = [p for p in players if p not in kept]
        h[:, drop] = 0
        return float(torch.sigmoid(model.out(h)[:, 0].double()).mean())


def test_interaction_comparison_against_games_written_out():
    pytest.importorskip("shapiq")
    model, x = _mlp(), torch.randn(64, 6)
    found = synergy_shapiq.compare_interactions(model, "relu2", x, 4, budgets=(16,), seeds=(0,))
    players = found["players"].tolist()
    assert len(players) == 4 and players == sorted(players)
    v = {
        frozenset(c): _scores_by_hand(model, x, players, c)
        for size in range(5)
        for c in itertools.combinations(players, size)
    }
    n = 4
    for a, b in itertools.combinations(range(n), 2):
        i, j = players[a], players[b]
        rest = [p for p in players if p not in (i, j)]
        sii = sum(
            math.factorial(n - len(t) - 2)
            * math.factorial(len(t))
            / math.factorial(n - 1)
            * (
                v[frozenset(t) | {i, j}]
                - v[frozenset(t) | {i}]
                - v[frozenset(t) | {j}]
                + v[frozenset(t)]
            )
            for size in range(len(rest) + 1)
            for t in itertools.combinations(rest, size)
        )
        full = frozenset(players)
        synergy = -(v[full] - v[full - {i}] - v[full - {j}] + v[full - {i, j}])
        assert found["exact"][a, b] == pytest.approx(sii, abs=1e-9)
        assert found["ours"][a, b] == pytest.approx(-synergy, abs=1e-6)
        assert float(found["synergy"][a, b]) == pytest.approx(synergy, abs=1e-6)
    rows = {row["method"].split(" (")[0]: row for row in found["rows"]}
    assert rows["ours: −S"]["coalitions"] == 1 + 4 + 6 == found["ours_budget"]
    assert (
        rows["exact k-SII"]["coalitions"] == 16 and rows["exact k-SII"]["rel. error (pairs)"] == 0
    )
    assert set(synergy_shapiq.APPROXIMATORS) <= set(rows)
    error = synergy_shapiq.relative_error(found["ours"], found["exact"])
    assert rows["ours: −S"]["rel. error (pairs)"] == pytest.approx(error)
    assert set(found["curves"]) == set(synergy_shapiq.APPROXIMATORS)
    assert all(c["budget"] == [11, 16] for c in found["curves"].values())


def test_agreement_measures_by_hand():
    a = np.array([[0, 3, -1, 0.5], [3, 0, 2, 0], [-1, 2, 0, -4], [0.5, 0, -4, 0]], dtype=float)
    b = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 2], [0, 0, 2, 0]], dtype=float)
    # a's pairs: (0,1) 3, (0,2) -1, (0,3) .5, (1,2) 2, (1,3) 0, (2,3) -4: top 2 (2,3), (0,1)
    assert synergy_shapiq.top_overlap(a, b, 2) == 2
    assert synergy_shapiq.top_overlap(a, -b, 1) == 1  # by magnitude: the sign does not count
    c = b.copy()
    c[0, 1] = c[1, 0] = 5.0  # c's top pair is (0, 1), a's is (2, 3)
    assert synergy_shapiq.top_overlap(a, c, 1) == 0
    upper = np.array([3, -1, 0.5, 2, 0, -4])
    ref = np.array([1, 0, 0, 0, 0, 2])
    assert synergy_shapiq.relative_error(a, b) == pytest.approx(
        np.linalg.norm(upper - ref) / np.linalg.norm(ref)
    )
    assert synergy_shapiq.pearson(a, b) == pytest.approx(np.corrcoef(upper, ref)[0, 1])
    assert math.isnan(synergy_shapiq.pearson(a, np.zeros((4, 4))))


def _splits(n: int = 400, seed: int = 0) -> TabularSplits:
    generator = torch.Generator().manual_seed(seed)
    names = ["lat", "lon", "depth", "temperature", "day_cos", "wind"]

    def part(rows):
        x = torch.randn(rows, len(names), generator=generator)
        y = ((x[:, 0] + 0.5 * x[:, 1] * x[:, 2]) > 0.3).float()
        return Dataset(x, y)

    return TabularSplits(part(n), part(n // 4), part(n // 2), names)


def test_classifiers_table_and_claims():
    pytest.importorskip("xgboost")
    splits = _splits()
    rows = baselines.classifier_rows(splits, _mlp(), quick=True)
    names = [r["model"] for r in rows]
    assert {"KNN", "XGBoost", "random forest", "logistic regression"} <= set(names)
    assert all(set(r) == {"model", "accuracy", "roc_auc"} for r in rows)
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["roc_auc"] <= 1 for r in rows)
    auc = {r["model"]: r["roc_auc"] for r in rows}
    assert auc["XGBoost"] > 0.85  # a learnable rule; the untrained MLP is near chance
    claims = baselines.classifier_claims(rows)
    assert claims[0]["holds"] == "no" and "XGBoost" in claims[0]["ours"]
    good = [{**r, "roc_auc": 0.99} if r["model"].startswith("MLP") else r for r in rows]
    assert baselines.classifier_claims(good)[0]["holds"] == "yes"


def test_classification_table_counts_by_hand():
    splits = _splits(n=200)
    model = _mlp()
    rows, summary = baselines.classification_table(model, splits)
    with torch.no_grad():
        predicted = (model(splits.test.x)[:, 0] > 0).numpy()
    truth = splits.test.y.numpy() > 0.5
    tp, fp = int((predicted & truth).sum()), int((predicted & ~truth).sum())
    fn, tn = int((~predicted & truth).sum()), int((~predicted & ~truth).sum())
    assert (rows[0]["pred 0"], rows[0]["pred 1"], rows[1]["pred 0"], rows[1]["pred 1"]) == (
        tn,
        fp,
        fn,
        tp,
    )
    assert rows[1]["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert rows[1]["recall"] == pytest.approx(tp / (tp + fn))
    assert summary["accuracy"] == pytest.approx((tp + tn) / len(truth))


def test_feature_steps_follow_the_paper_order():
    fish = [
        "lat",
        "lon",
        "depth",
        "temperature",
        "chlorophyll",
        "salinity",
        "day_cos",
        "day_sin",
        "year",
        "wind",
        "current",
    ]
    steps = baselines.feature_steps(fish)
    assert [added for added, _ in steps] == [
        "lat",
        "lon",
        "depth",
        "temperature",
        "day_cos, day_sin",
        "salinity",
        "chlorophyll",
        "current, wind",
        "all others",
    ]
    assert steps[1][1] == [0, 1] and sorted(steps[-1][1]) == list(range(len(fish)))
    storms = ["lat", "long", "month_cos", "month_sin", "day", "hour"]
    assert [a for a, _ in baselines.feature_steps(storms)] == [
        "lat",
        "long",
        "month_cos, month_sin",
        "all others",
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_background_shap_is_exact_on_a_linear_score_and_efficient(dtype):
    w = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=dtype)
    rows, background = torch.randn(5, 4, dtype=dtype), torch.randn(7, 4, dtype=dtype)
    shap = synergy_explain.background_shap(lambda x: x @ w, rows, background, chunk=3, n_samples=1)
    assert shap.dtype == dtype
    expected = w * (rows - background.mean(0))  # linear: any permutation gives this
    torch.testing.assert_close(shap, expected, rtol=1e-5, atol=1e-5)
    model = _mlp(features=4).to(dtype)

    def forward(x):
        return torch.sigmoid(model(x))[:, 0]

    shap = synergy_explain.background_shap(forward, rows, background, chunk=2, n_samples=2)
    with torch.no_grad():
        gap = shap.sum(1) - (forward(rows) - forward(background).mean())
    assert float(gap.abs().max()) < (1e-5 if dtype == torch.float32 else 1e-8)


def test_lime_statistics_by_hand():
    c = np.array([[0.2, -1.0], [-0.4, -3.0]])
    stats = synergy_explain.lime_statistics(c, ["a", "b"])
    assert [r["feature"] for r in stats] == ["b", "a"]
    assert stats[0] == pytest.approx(
        {"feature": "b", "abs_mean": 2.0, "mean": -2.0, "std": 1.0, "positive_share": 0.0}
    )
    assert stats[1]["abs_mean"] == pytest.approx(0.3) and stats[1]["mean"] == pytest.approx(-0.1)


def test_explain_and_shapiq_part_fill_the_report(tmp_path, monkeypatch):
    pytest.importorskip("shapiq")
    splits = _splits(n=300)
    report = Report("synergy", tmp_path)
    claims = synergy_explain.explain(report, "toy", "toy", _mlp(), splits, True, False)
    assert [c["holds"] in ("yes", "no") for c in claims] == [True] * 4
    assert "latitude" in claims[3]["paper"]
    model = _mlp(features=16, hidden=(12, 10))
    monkeypatch.setattr(synergy_shapiq, "get_trained", lambda *a, **k: (model, {}))
    monkeypatch.setattr(synergy_shapiq, "load_fish", lambda: _splits_16())
    synergy_shapiq.run_part(report, quick=True, progress=False)
    report.write()
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("toy_shap_summary", "toy_waterfall", "toy_decision_boundary", "shapiq_comparison"):
        assert f"{name}.png" in results["figures"] and (tmp_path / f"{name}.png").exists()
    assert [r["feature"] for r in results["toy_lime"]][0] in splits.feature_names
    assert set(results["toy_lime"][0]) == {"feature", "abs_mean", "mean", "std", "positive_share"}
    assert len(results["shapiq"]) == 2 + len(synergy_shapiq.APPROXIMATORS)
    assert [r["holds"] in ("yes", "no", "partly") for r in results["shapiq_claims"]] == [True] * 3
    text = (tmp_path / "report.md").read_text()
    assert "| claim | paper |" in text and "||" not in text.replace("|---|", "")


def _splits_16() -> TabularSplits:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(600, 16, generator=generator)
    part = Dataset(x, (x[:, 0] > 0).float())
    return TabularSplits(part, part, part, [f"f{i}" for i in range(16)])
