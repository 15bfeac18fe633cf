"""SynXAI on our tables: synergy matrices, synergy pruning, model explanations, speed.

``python -m benchmarks synergy [--quick]``. Data: the synthetic fish-presence table (stand-in
for the unpublished catch records) and the real NOAA storms track (benchmarks/data).
"""

from __future__ import annotations

import resource

import numpy as np
import torch
from tqdm import tqdm

from benchmarks import synergy_plots as plots
from benchmarks.data import load_fish, load_storms
from benchmarks.models import evaluate, get_trained
from benchmarks.report import Report
from benchmarks.timing import compare
from captum_ext import NeuronSynergy, synergistic_importance
from captum_ext.pruning import masked_units, pruning_curve

DATASETS = {"fish": (load_fish, "fish_mlp"), "storms": (load_storms, "storms_mlp")}
LAYERS = ("relu1", "relu2")  # 128 and 64 units, after BN and ReLU as in the authors' code


def _baselines(splits, model, quick: bool) -> list[dict]:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    x, y = splits.train.x.numpy(), splits.train.y.numpy()
    xt, yt = splits.test.x.numpy(), splits.test.y.numpy()
    trees = 50 if quick else 300
    rows = [
        {
            "model": "MLP (ours, SynXAI architecture)",
            **evaluate(model, splits.test.x, splits.test.y),
        }
    ]
    for name, clf in (
        ("logistic regression", LogisticRegression(max_iter=1000)),
        ("random forest", RandomForestClassifier(trees, random_state=0, n_jobs=2)),
        ("gradient boosting", GradientBoostingClassifier(n_estimators=trees, random_state=0)),
    ):
        p = clf.fit(x, y).predict_proba(xt)[:, 1]
        rows.append({"model": name, "accuracy": accuracy_score(yt, p > 0.5),
                     "roc_auc": roc_auc_score(yt, p)})  # fmt: skip
    return [{k: r[k] for k in ("model", "accuracy", "roc_auc")} for r in rows]


def _explanations(report: Report, name: str, model, splits, quick: bool, progress: bool) -> None:
    from captum.attr import Lime, ShapleyValueSampling

    def forward(x):
        return torch.sigmoid(model(x))[:, 0]

    names = splits.feature_names
    rows = splits.test.x[: 40 if quick else 400]
    shap = ShapleyValueSampling(forward).attribute(
        rows, baselines=0.0, n_samples=8 if quick else 40, perturbations_per_eval=16
    )
    report.add_figure(plots.beeswarm(shap.numpy(), rows.numpy(), names), f"{name}_shap_summary",
                      f"{name}: Shapley value summary (ShapleyValueSampling, baseline = training "
                      f"mean, {len(rows)} test rows)")  # fmt: skip
    with torch.no_grad():
        base = float(forward(torch.zeros(1, len(names))))
    report.add_figure(plots.waterfall(shap[0].numpy(), names, base), f"{name}_waterfall",
                      f"{name}: waterfall of the first test row")  # fmt: skip
    lime = Lime(forward)
    lime_rows = splits.test.x[: 20 if quick else 500]
    coefficients = torch.stack([
        lime.attribute(row[None], baselines=0.0, n_samples=50 if quick else 200)[0]
        for row in tqdm(lime_rows, desc="LIME", disable=None if progress else True)
    ]).numpy()  # fmt: skip
    stats = [{"feature": f, "mean": float(coefficients[:, i].mean()),
              "std": float(coefficients[:, i].std()),
              "positive_share": float((coefficients[:, i] > 0).mean())}
             for i, f in enumerate(names)]  # fmt: skip
    stats.sort(key=lambda r: -abs(r["mean"]))
    report.add_table(f"{name}: LIME coefficients over {len(lime_rows)} test rows (Table 2 style)",
                     stats, key=f"{name}_lime")  # fmt: skip
    lat, lon = names.index("lat"), names.index("long" if "long" in names else "lon")
    grid = torch.linspace(-2.5, 2.5, 80)
    glat, glon = torch.meshgrid(grid, grid, indexing="ij")
    x = torch.zeros(glat.numel(), len(names))
    x[:, lat], x[:, lon] = glat.flatten(), glon.flatten()
    with torch.no_grad():
        p = forward(x).reshape(glat.shape)
    points = splits.test.x[:, [lat, lon]].numpy()
    report.add_figure(
        plots.decision_boundary(glat, glon, p, points, splits.test.y.numpy(),
                                [names[lat] + " (std.)", names[lon] + " (std.)"]),
        f"{name}_decision_boundary",
        f"{name}: p over standardised lat/lon, other features at their training means",
    )  # fmt: skip


def _analyse(report: Report, name: str, quick: bool, progress: bool) -> dict:
    loader, model_name = DATASETS[name]
    splits = loader()
    model, info = get_trained(model_name, quick=quick, progress=progress)
    report.add_table(f"{name}: test quality against scikit-learn baselines",
                     _baselines(splits, model, quick), direction={"accuracy": "higher",
                     "roc_auc": "higher"}, key=f"{name}_baselines")  # fmt: skip
    x = splits.test.x if not quick else splits.test.x[:1000]
    fractions = (0.0, 0.2, 0.4, 0.6, 0.8, 0.85, 0.9) if quick else (
        *np.round(np.arange(0.0, 0.951, 0.05), 2), 0.85)  # fmt: skip
    fractions = tuple(sorted(set(fractions)))
    found = {}
    for layer_name in LAYERS:
        layer = getattr(model, layer_name)
        ns = NeuronSynergy(model, layer, output_transform="sigmoid")
        delta = ns.importance(x)
        synergy = ns.synergy_matrix(x, show_progress=progress)
        rankings = {f"synergy α={a:g}": synergistic_importance(delta, synergy, a) for a in (5, 20)}
        rankings |= {"importance (Δ)": delta, "random": "random"}
        curves = {
            label: pruning_curve(model, layer, score, splits.test.x, splits.test.y,
                                 fractions=fractions, x_recalibrate=splits.train.x,
                                 progress=False)
            for label, score in rankings.items()
        }  # fmt: skip
        key = f"{name} {layer_name} ({len(delta)} units)"
        found[layer_name] = {"delta": delta, "synergy": synergy, "curves": curves, "key": key}
        caption = f"{key}: pruning curves (BN recalibrated before each evaluation)"
        report.add_figure(
            plots.pruning_curves(curves, key), f"{name}_{layer_name}_pruning", caption
        )
        report.results[f"{name}_{layer_name}_curves"] = curves
    report.add_figure(plots.importance_histograms({v["key"]: v["delta"] for v in found.values()}),
                      f"{name}_delta_hist", f"{name}: Δ_i per layer")  # fmt: skip
    report.add_figure(
        plots.synergy_matrices({v["key"]: (v["synergy"], v["synergy"].clamp(min=0).sum(1))
                                for v in found.values()}),
        f"{name}_synergy", f"{name}: synergy matrices (SynXAI Fig. 3)")  # fmt: skip
    _explanations(report, name, model, splits, quick, progress)
    return found


def _drop_at(curve: dict, fraction: float) -> float:
    """Relative accuracy loss at ``fraction`` pruned against the unpruned model."""
    accuracy = curve["accuracy"]
    return 1.0 - accuracy[curve["fraction"].index(fraction)] / accuracy[0]


def _claims(found: dict) -> list[dict]:
    rows = []
    for name, layers in found.items():
        curves = layers["relu2"]["curves"]
        drop = {label: _drop_at(curve, 0.85) for label, curve in curves.items()}
        rows.append({"data": name, "claim": "synergy α=20 keeps accuracy within 10 % at 85 % "
                     "pruned (64-unit layer)", "ours": f"drop {drop['synergy α=20']:.1%}",
                     "holds": drop["synergy α=20"] <= 0.10})  # fmt: skip
        rows.append({"data": name, "claim": "importance pruning loses > 45 % accuracy at 85 %",
                     "ours": f"drop {drop['importance (Δ)']:.1%}",
                     "holds": drop["importance (Δ)"] > 0.45})  # fmt: skip
        strength = [float(layers[layer]["synergy"].clamp(min=0).mean()) for layer in LAYERS]
        rows.append({"data": name, "claim": "synergy much stronger in the deeper layer",
                     "ours": f"mean S⁺ {strength[0]:.2e} (128) vs {strength[1]:.2e} (64)",
                     "holds": strength[1] > 2 * strength[0]})  # fmt: skip
    return rows


def _speed(report: Report, quick: bool) -> None:
    from captum.attr import LayerFeatureAblation

    model, _ = get_trained("fish_mlp", quick=quick, progress=False)
    x = load_fish().train.x[: 2000 if quick else 10000]
    layer = model.relu1
    n = 128
    pairs = n * (n - 1) // 2
    sample = torch.triu_indices(n, n, offset=1).t()[torch.randperm(pairs)[: 6 if quick else 40]]
    ns = NeuronSynergy(model, layer, output_transform="sigmoid")

    def ours():
        ns.synergy_matrix(x)

    def loop():
        for i, j in sample.tolist():
            with masked_units(layer, torch.tensor([i, j])), torch.no_grad():
                torch.sigmoid(model(x))

    ablation = LayerFeatureAblation(lambda inp: torch.sigmoid(model(inp)), layer)

    def captum_pairs():
        for i, j in sample.tolist():
            group = torch.ones(1, n, dtype=torch.long)
            group[0, [i, j]] = 0
            ablation.attribute(x, layer_mask=group, layer_baselines=0.0)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ours()  # alone first, so the peak below is ours and not an anchor's
    peak_mb = max((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024, 0.0)
    scale = pairs / len(sample)
    repeats = 1 if quick else 3
    loop_timing = compare(ours, loop, warmup=0, repeats=repeats, anchor_scale=scale)
    title = f"synergy matrix, 128-unit layer, {len(x)} rows"
    anchor = f"one forward per pair (hook loop on {len(sample)} pairs, × {scale:.0f})"
    report.add_speed(title, loop_timing, ours="NeuronSynergy (low-rank)", anchor=anchor)
    captum_timing = compare(ours, captum_pairs, warmup=0, repeats=1, anchor_scale=scale)
    anchor = "Captum LayerFeatureAblation per pair (layer mask grouping the two units)"
    report.add_speed(title, captum_timing, ours="NeuronSynergy", anchor=anchor)
    report.results["peak_rss_growth_mb"] = peak_mb
    report.add_text(
        f"Peak resident memory grew by {peak_mb:.0f} MB during our first call, run before the "
        "anchors (ru_maxrss; 0 means no new peak beyond earlier work in the process)."
    )


def run(report: Report, quick: bool, progress: bool) -> None:
    """Fill the synergy report (see the module docstring)."""
    report.add_text(
        "SynXAI (synergy masking) on the synthetic fish-presence table and the real NOAA "
        "storms track. Δ, S and Z are computed on the test split with the sigmoid output, "
        "masks after BN+ReLU, BN re-estimated before each pruned evaluation."
        + (
            " Quick settings: quick models, 1000 test rows for S, 7 pruning levels."
            if quick
            else ""
        )
    )
    found = {name: _analyse(report, name, quick, progress) for name in DATASETS}
    report.add_table("Paper claims on our data", _claims(found), key="claims")
    _speed(report, quick)
