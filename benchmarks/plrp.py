"""PLRP benchmark (papers/plrp-pruned-lrp.txt, Figure 2 protocol) on our offline data.

(a) cluttered-image CNN (RMA against the exact item masks), (b) DNA CNNs with 4 and 32
filters (planted motifs as masks), (c) the pretrained EfficientNet-Lite0 on real photos (no
masks). LRP (the base composite, Kohlbrenner's EpsilonGammaBox) vs PLRP-λ vs PLRP-M for a
range of p and the sparsity gain; Gini, entropy, RMA (Quantus), faithfulness (our region
perturbation, AUC with ``np.trapezoid``), robustness (Quantus LocalLipschitzEstimate).
Speed: PLRP vs the base composite on the cluttered CNN and a random VGG16.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from zennit.composites import EpsilonGammaBox

from benchmarks.report import Report
from benchmarks.timing import compare
from zennit_ext import PLRPM, PLRPLambda
from zennit_ext.canonizers import EfficientNetLiteCanonizer
from zennit_ext.explain import explain

METHODS = {"PLRP-λ": PLRPLambda, "PLRP-M": PLRPM}
DIRECTION = {
    "gini": "higher",
    "entropy": "lower",
    "rma": "higher",
    "faith_auc": "lower",
    "lipschitz": "lower",
}


@dataclass
class Task:
    """One model with its explained inputs; ``mask`` is None without ground truth."""

    name: str
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    mask: np.ndarray | None
    base: dict[str, Any]  # EpsilonGammaBox kwargs
    baseline: float  # perturbation value (data's neutral value)
    patch: int  # region side for region perturbation (images only)
    robustness: bool


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "ps": (0.0, 0.1, 0.3),
            "n_img": 8,
            "n_dna": 12,
            "n_photos": 2,
            "photo_size": 128,
            "faith_steps": 8,
            "lip_n": 4,
            "lip_samples": 3,
            "vgg": (1, 32),
            "repeats": 1,
            "dna_models": ("dna_cnn4",),
        }
    return {
        "ps": (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
        "n_img": 64,
        "n_dna": 64,
        "n_photos": 6,
        "photo_size": 224,
        "faith_steps": 16,
        "lip_n": 10,
        "lip_samples": 20,
        "vgg": (8, 224),
        "repeats": 3,
        "dna_models": ("dna_cnn4", "dna_cnn32"),
    }


def _correct(model, x, y, n):
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    index = torch.nonzero(ok).flatten()[:n]
    return index


def _tasks(quick: bool, progress: bool, cfg: dict) -> list[Task]:
    from benchmarks.data import load_cluttered, load_dna
    from benchmarks.models import get_trained, load_efficientnet_lite0, load_photos

    tasks = []
    model, _ = get_trained("cluttered_cnn", quick=quick, progress=progress)
    data = load_cluttered(n=256, size=64, seed=1, split="test")
    idx = _correct(model, data.x, data.y, cfg["n_img"])
    tasks.append(
        Task(
            "cluttered_cnn",
            model,
            data.x[idx],
            data.y[idx],
            data.mask[idx].numpy(),
            {"low": 0.0, "high": 1.0},
            0.0,
            8,
            True,
        )
    )
    dna = load_dna(n=400, seed=1)
    for name in cfg["dna_models"]:
        model, _ = get_trained(name, quick=quick, progress=progress)
        pos = dna.y == 1
        idx = _correct(model, dna.x[pos], dna.y[pos], cfg["n_dna"])
        tasks.append(
            Task(
                name,
                model,
                dna.x[pos][idx],
                dna.y[pos][idx],
                dna.mask[pos][idx].numpy(),
                {"low": 0.0, "high": 1.0},
                0.0,
                0,
                False,
            )
        )
    model = load_efficientnet_lite0()
    x, _ = load_photos(cfg["photo_size"])
    x = x[: cfg["n_photos"]]
    with torch.no_grad():
        y = model(x).argmax(1)
    base = {"low": -1.0, "high": 1.0, "canonizers": [EfficientNetLiteCanonizer()]}
    tasks.append(Task("efficientnet_lite0", model, x, y, None, base, 0.0, 16, not quick))
    return tasks


def _composite_kwargs(task: Task, method: str, setting: dict) -> tuple[Any, dict]:
    """(composite class, kwargs) for LRP or a PLRP variant with a p / sparsity-gain setting."""
    kwargs = dict(task.base)
    if "canonizers" in kwargs:
        kwargs["canonizers"] = [EfficientNetLiteCanonizer()]
    if method == "LRP":
        return EpsilonGammaBox, kwargs
    return METHODS[method], {**kwargs, **setting}


def _relevance(task: Task, cls, kwargs) -> np.ndarray:
    return explain(
        task.model,
        task.x,
        task.y,
        composite=cls,
        composite_kwargs=kwargs,
        batch_size=16,
        reduce_channels=True,
    )


def region_perturbation_auc(model, x, y, relevance, patch, baseline, steps):
    """Most-relevant-first region perturbation; AUC of the normalised class probability.

    Regions are ``patch``×``patch`` squares ranked by summed relevance; the curve is taken at
    ``steps + 1`` evenly spaced region counts, divided by the unperturbed probability and
    integrated over [0, 1] with ``np.trapezoid`` (lower is better).

    Returns
    -------
    auc : numpy.ndarray
        (N,) AUC per sample.
    curves : numpy.ndarray
        (N, steps + 1) normalised probability.
    """
    n, _, h, w = x.shape
    gh, gw = h // patch, w // patch
    scores = torch.as_tensor(relevance).sum(1)[:, : gh * patch, : gw * patch]
    scores = scores.reshape(n, gh, patch, gw, patch).sum((2, 4)).reshape(n, -1)
    rank = torch.empty_like(scores, dtype=torch.long)
    rank.scatter_(1, scores.argsort(1, descending=True), torch.arange(gh * gw).expand(n, -1))
    counts = np.linspace(0, gh * gw, steps + 1).round().astype(int)
    curves = []
    with torch.no_grad():
        for count in counts:
            region = (rank < count).reshape(n, 1, gh, 1, gw, 1).float()
            region = region.expand(n, 1, gh, patch, gw, patch).reshape(n, 1, gh * patch, gw * patch)
            mask = torch.nn.functional.pad(region, (0, w - gw * patch, 0, h - gh * patch))
            xp = x * (1 - mask) + baseline * mask
            prob = torch.cat([model(b).softmax(1) for b in xp.split(16)])
            curves.append(prob[torch.arange(n), y].numpy())
    curves = np.stack(curves, 1)
    curves = curves / np.maximum(curves[:, :1], 1e-12)
    return np.trapezoid(curves, dx=1.0 / steps, axis=1), curves


def _metrics(task: Task, a: np.ndarray, cls, kwargs, cfg) -> dict[str, float]:
    import quantus

    x, y = task.x.numpy(), task.y.numpy()
    common = {"disable_warnings": True, "display_progressbar": False, "return_aggregate": False}
    out = {}
    np.random.seed(0)
    out["gini"] = np.nanmean(
        quantus.Sparseness(abs=True, normalise=False, **common)(
            model=task.model, x_batch=x, y_batch=y, a_batch=a, channel_first=True
        )
    )
    np.random.seed(0)
    out["entropy"] = np.nanmean(
        quantus.Complexity(abs=True, normalise=False, **common)(
            model=task.model, x_batch=x, y_batch=y, a_batch=a, channel_first=True
        )
    )
    if task.mask is not None:
        np.random.seed(0)
        out["rma"] = np.nanmean(
            quantus.RelevanceMassAccuracy(abs=False, normalise=False, **common)(
                model=task.model,
                x_batch=x,
                y_batch=y,
                a_batch=np.clip(a, 0, None),
                s_batch=task.mask.astype(np.float32),
                channel_first=True,
            )
        )
    if task.patch:
        auc, curves = region_perturbation_auc(
            task.model, task.x, task.y, a, task.patch, task.baseline, cfg["faith_steps"]
        )
        out["faith_auc"] = float(auc.mean())
        half = curves.shape[1] // 2
        out["faith_auc_early"] = float(
            np.trapezoid(curves[:, : half + 1], dx=1.0 / (curves.shape[1] - 1), axis=1).mean()
        )
        out["faith_auc_late"] = out["faith_auc"] - out["faith_auc_early"]
    if task.robustness:
        k = cfg["lip_n"]
        axes = list(range(1, x.ndim))
        np.random.seed(0)
        lip = quantus.LocalLipschitzEstimate(
            nr_samples=cfg["lip_samples"],
            perturb_std=0.1,
            perturb_mean=0.0,
            abs=False,
            normalise=True,
            normalise_func=quantus.normalise_func.normalise_by_max,
            normalise_func_kwargs={"normalise_axes": axes},
            **common,
        )(
            model=task.model,
            x_batch=x[:k],
            y_batch=y[:k],
            a_batch=a[:k],
            explain_func=explain,
            explain_func_kwargs={
                "composite": cls,
                "composite_kwargs": kwargs,
                "batch_size": 16,
                "reduce_channels": True,
            },
            channel_first=True,
        )
        out["lipschitz"] = float(np.nanmean(lip))
    return {key: float(value) for key, value in out.items()}


def _settings_list(ps) -> list[tuple[str, str, dict]]:
    """(method, label, setting): LRP once, each variant per p > 0 and with sparsity gain 1."""
    runs = [("LRP", "LRP", {})]
    for method in METHODS:
        runs += [(method, f"{method} p={p:g}", {"p": p}) for p in ps if p > 0]
        runs.append((method, f"{method} SG", {"sparsity_gain": 1.0}))
    return runs


def _evaluate(tasks, cfg, progress) -> tuple[list[dict], dict]:
    rows, heatmaps = [], {}
    runs = [(task, *run) for task in tasks for run in _settings_list(cfg["ps"])]
    for task, method, label, setting in tqdm(runs, desc="plrp", disable=None if progress else True):
        cls, kwargs = _composite_kwargs(task, method, setting)
        a = _relevance(task, cls, kwargs)
        heatmaps[(task.name, label)] = a[:2]
        p = setting.get("p", 0.0 if method == "LRP" else float("nan"))
        rows.append(
            {
                "task": task.name,
                "method": method,
                "setting": label,
                "p": p,
                **_metrics(task, a, cls, kwargs, cfg),
            }
        )
    return rows, heatmaps


def _curves_figure(rows, tasks):
    import matplotlib.pyplot as plt

    metrics = [m for m in DIRECTION if any(m in r for r in rows)]
    fig, axes = plt.subplots(
        len(tasks), len(metrics), figsize=(3.2 * len(metrics), 2.6 * len(tasks)), squeeze=False
    )
    for i, task in enumerate(tasks):
        mine = [r for r in rows if r["task"] == task.name]
        lrp = next(r for r in mine if r["method"] == "LRP")
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            if metric not in lrp:
                ax.axis("off")
                continue
            ax.axhline(lrp[metric], color="k", ls="--", lw=1, label="LRP")
            for method, color in zip(METHODS, ("C0", "C3"), strict=True):
                pts = sorted(
                    (r["p"], r[metric]) for r in mine if r["method"] == method and r["p"] == r["p"]
                )
                xs, ys = zip(*([(0.0, lrp[metric])] + pts), strict=True)
                ax.plot(xs, ys, "o-", color=color, ms=3, label=method)
                sg = next(r for r in mine if r["method"] == method and r["p"] != r["p"])
                ax.plot(
                    [max(xs) * 1.1 + 0.02],
                    [sg[metric]],
                    "*",
                    color=color,
                    ms=9,
                    label=f"{method} SG",
                )
            ax.set_title(f"{task.name}: {metric} ({DIRECTION[metric]} better)", fontsize=8)
            ax.set_xlabel("p (★ = sparsity gain 1)", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def _heatmap_figure(heatmaps, tasks, ps):
    import matplotlib.pyplot as plt

    image_tasks = [t for t in tasks if t.x.ndim == 4]
    labels = ["LRP"] + [f"{m} p={p:g}" for m in METHODS for p in ps if p > 0]
    fig, axes = plt.subplots(
        2 * len(image_tasks),
        len(labels) + 1,
        figsize=(1.6 * (len(labels) + 1), 1.7 * 2 * len(image_tasks)),
        squeeze=False,
    )
    for t, task in enumerate(image_tasks):
        for k in range(min(2, len(task.x))):
            row = axes[2 * t + k]
            img = task.x[k].permute(1, 2, 0).numpy()
            row[0].imshow((img - img.min()) / (np.ptp(img) + 1e-12))
            for ax, label in zip(row[1:], labels, strict=True):
                h = heatmaps[(task.name, label)][k, 0]
                v = np.abs(h).max() + 1e-12
                ax.imshow(h, cmap="bwr", vmin=-v, vmax=v)
                if t == 0 and k == 0:
                    ax.set_title(label, fontsize=7)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    return fig


def _lookup(rows, task, method, p=None, sg=False):
    for r in rows:
        if r["task"] == task and r["method"] == method:
            if method == "LRP" or (sg and r["p"] != r["p"]) or (not sg and r["p"] == p):
                return r
    return None


def _claims(rows, tasks, ps) -> list[dict]:
    """The paper's headline claims (notes/plrp-details.md) checked on our numbers."""
    claims = []
    pmax = max(ps)
    small = max(p for p in ps if p <= 0.2)
    for task in tasks:
        lrp = _lookup(rows, task.name, "LRP")
        for method in METHODS:
            hi, lo = _lookup(rows, task.name, method, pmax), _lookup(rows, task.name, method, small)
            rise = hi["gini"] - lrp["gini"]
            share = (lo["gini"] - lrp["gini"]) / rise if rise > 0 else float("nan")
            claims.append(
                {
                    "task": task.name,
                    "claim": f"Gini rises steeply already for p ≤ 0.2 ({method})",
                    "ours": f"ΔGini(p={small:g}) = {share:.0%} of ΔGini(p={pmax:g}); "
                    f"{lrp['gini']:.3f}→{hi['gini']:.3f}",
                    "holds": bool(hi["gini"] > lrp["gini"] and share >= 0.5),
                }
            )
        pos = [p for p in ps if p > 0]
        lam = [_lookup(rows, task.name, "PLRP-λ", p) for p in pos]
        mm = [_lookup(rows, task.name, "PLRP-M", p) for p in pos]
        for metric in ("gini", "rma"):
            if metric in lrp:
                wins = sum(a[metric] >= b[metric] for a, b in zip(lam, mm, strict=True))
                claims.append(
                    {
                        "task": task.name,
                        "claim": f"PLRP-λ beats PLRP-M on {metric}",
                        "ours": f"λ ≥ M at {wins}/{len(pos)} p values",
                        "holds": wins == len(pos),
                    }
                )
        if "rma" in lrp:
            curve = [lrp["rma"]] + [r["rma"] for r in lam]
            best = int(np.argmax(curve))
            claims.append(
                {
                    "task": task.name,
                    "claim": "RMA rises with p, then falls for large p (λ)",
                    "ours": f"RMA {curve[0]:.3f} → max {curve[best]:.3f} "
                    f"at p={([0.0] + pos)[best]:g}"
                    f" → {curve[-1]:.3f} at p={pmax:g}",
                    "holds": bool(curve[best] > curve[0] and curve[-1] < curve[best]),
                }
            )
        if "faith_auc" in lrp:
            r = lam[-1]
            claims.append(
                {
                    "task": task.name,
                    "claim": "faithfulness AUC slightly worse than LRP, mostly in late steps (λ)",
                    "ours": f"AUC {lrp['faith_auc']:.3f} → {r['faith_auc']:.3f} (p={pmax:g}); "
                    f"Δearly {r['faith_auc_early'] - lrp['faith_auc_early']:+.3f}, "
                    f"Δlate {r['faith_auc_late'] - lrp['faith_auc_late']:+.3f}",
                    "holds": bool(
                        r["faith_auc"] >= lrp["faith_auc"]
                        and r["faith_auc"] <= 1.2 * lrp["faith_auc"]
                        and r["faith_auc_late"] - lrp["faith_auc_late"]
                        >= r["faith_auc_early"] - lrp["faith_auc_early"]
                    ),
                }
            )
        if "lipschitz" in lrp:
            worst = max(r["lipschitz"] for r in lam)
            claims.append(
                {
                    "task": task.name,
                    "claim": "PLRP-λ always at least as robust as LRP",
                    "ours": f"Lipschitz LRP {lrp['lipschitz']:.3f}, λ max {worst:.3f}",
                    "holds": bool(worst <= lrp["lipschitz"]),
                }
            )
    return claims


def _speed(report: Report, tasks, cfg) -> None:
    from torchvision.models import vgg16

    torch.manual_seed(0)
    batch, size = cfg["vgg"]
    vgg = vgg16(weights=None).eval()
    xv = torch.rand(batch, 3, size, size)
    cnn = tasks[0]
    setups = [
        (cnn.name, cnn.model, cnn.x[:32], cnn.y[:32], cnn.base),
        (
            f"vgg16 {size}² batch {batch}",
            vgg,
            xv,
            torch.zeros(batch, dtype=torch.long),
            {"low": 0.0, "high": 1.0},
        ),
    ]
    for name, model, x, y, base in setups:

        def run(composite, model=model, x=x, y=y):
            return lambda: explain(model, x, y, composite=composite, batch_size=len(x))

        for method, cls in METHODS.items():
            timing = compare(
                run(cls(p=0.2, **base)),
                run(EpsilonGammaBox(**base)),
                warmup=1,
                repeats=cfg["repeats"],
            )
            report.add_speed(
                f"{method} vs EpsilonGammaBox on {name}",
                timing,
                ours=f"{method} (p=0.2)",
                anchor="EpsilonGammaBox",
            )


def run(report: Report, quick: bool, progress: bool) -> None:
    """Fill ``report`` with the PLRP curves, heatmaps, claims and speed ratios."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    quick = quick or os.environ.get("NEURON_XAI_QUICK") == "1"
    cfg = _settings(quick)
    tasks = _tasks(quick, progress, cfg)
    report.add_text(
        f"Settings: p ∈ {list(cfg['ps'])} and sparsity gain 1; base composite EpsilonGammaBox "
        f"(γ=0.25, z^B first layer); cluttered CNN {len(tasks[0].x)} correctly classified test "
        f"images, DNA {cfg['n_dna']} motif-positive sequences per model, {cfg['n_photos']} photos "
        f"({cfg['photo_size']} px) for EfficientNet-Lite0. "
        f"Quantus: Sparseness/Complexity (abs=True, normalise=False), "
        f"RMA on positive relevance (abs=False, normalise=False), LocalLipschitzEstimate "
        f"({cfg['lip_samples']} samples, std 0.1, per-sample max normalisation, abs=False, "
        f"{cfg['lip_n']} inputs). Faithfulness: our region perturbation (most relevant first, "
        f"{cfg['faith_steps']} steps, baseline 0, softmax probability / unperturbed), AUC by "
        f"np.trapezoid. Relevance summed over channels. np.random seeded before every metric."
    )
    rows, heatmaps = _evaluate(tasks, cfg, progress)
    report.add_table("PLRP metrics", rows, direction=DIRECTION, key="metrics")
    report.add_figure(_curves_figure(rows, tasks), "plrp_curves", "Metrics vs p (dashed: LRP)")
    report.add_figure(
        _heatmap_figure(heatmaps, tasks, cfg["ps"]),
        "plrp_heatmaps",
        "Heatmaps: LRP, PLRP-λ and PLRP-M for growing p (red +, blue −)",
    )
    claims = _claims(rows, tasks, cfg["ps"])
    report.add_table("Paper claims vs our numbers", claims, key="claims")
    _speed(report, tasks, cfg)
