"""PLRP benchmark ("Sparse Explanations of Neural Networks Using Pruned Layer-Wise Relevance
Propagation": Figure 2 protocol for images, Figure 8 for genomics) on our offline data.

(a) cluttered-image CNN (RMA against the exact item masks), (b) DNA CNNs with 4 and 32
filters (planted motifs as masks) and a 32-filter local-pooling ablation, (c) the pretrained
EfficientNet-Lite0 on real photos (no masks). Each task is judged by the claims the paper
makes for its kind (:func:`claims`). LRP (the base composite, Kohlbrenner's EpsilonGammaBox)
vs PLRP-λ vs PLRP-M for a range of p and the sparsity gain; Gini, entropy, RMA (Quantus),
faithfulness (our region perturbation, AUC with ``np.trapezoid``, ties among equal relevance
in raster and in seeded random order), robustness (Quantus LocalLipschitzEstimate).
Speed: PLRP vs the base composite on the cluttered CNN and a random VGG16.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from zennit.composites import EpsilonGammaBox

from benchmarks.plrp_common import DIRECTION, FIGURES, METHOD_NAMES, TIE_ORDERS, Task
from benchmarks.report import Report
from benchmarks.timing import compare
from zennit_ext import PLRPM, PLRPLambda
from zennit_ext.canonizers import EfficientNetLiteCanonizer
from zennit_ext.quantus import explain

METHODS = dict(zip(METHOD_NAMES, (PLRPLambda, PLRPM), strict=True))


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "ps": (0.0, 0.1, 0.3),
            "sg_measures": (),
            "n_img": 8,
            "n_dna": 12,
            "n_photos": 2,
            "photo_size": 128,
            "faith_steps": 8,
            "lip_n": 4,
            "lip_samples": 3,
            "vgg": (1, 32),
            "repeats": 1,
            "dna_models": ("dna_cnn4", "dna_cnn32_local"),
            "cluttered_quick_model": True,
            "efficientnet_lipschitz": False,
            "image_tasks": True,
        }
    return {
        "ps": (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
        "sg_measures": ("hoyer", "l0"),
        "n_img": 64,
        "n_dna": 64,
        "n_photos": 6,
        "photo_size": 224,
        "faith_steps": 16,
        "lip_n": 10,
        "lip_samples": 20,
        "vgg": (8, 224),
        "repeats": 3,
        "dna_models": ("dna_cnn4", "dna_cnn32", "dna_cnn32_local"),
        "cluttered_quick_model": False,
        "efficientnet_lipschitz": True,
        "image_tasks": True,
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
    if cfg["image_tasks"]:
        model, _ = get_trained(
            "cluttered_cnn", quick=cfg["cluttered_quick_model"], progress=progress
        )
        data = load_cluttered(n=256, size=64, seed=1, split="test")
        idx = _correct(model, data.x, data.y, cfg["n_img"])
        mask = data.mask[idx].numpy()
        base = {"low": 0.0, "high": 1.0}
        task = Task(
            "cluttered_cnn", "image", model, data.x[idx], data.y[idx], mask, base, 0.0, 8, True
        )
        tasks.append(task)
    dna = load_dna(n=400, seed=1)
    for name in cfg["dna_models"]:
        model, _ = get_trained(name, quick=quick, progress=progress)
        pos = dna.y == 1
        idx = _correct(model, dna.x[pos], dna.y[pos], cfg["n_dna"])
        tasks.append(
            Task(
                name,
                "genomics",
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
    if cfg["image_tasks"]:
        model = load_efficientnet_lite0()
        x, _ = load_photos(cfg["photo_size"])
        x = x[: cfg["n_photos"]]
        with torch.no_grad():
            y = model(x).argmax(1)
        base = {"low": -1.0, "high": 1.0, "canonizers": [EfficientNetLiteCanonizer()]}
        tasks.append(
            Task(
                "efficientnet_lite0",
                "image",
                model,
                x,
                y,
                None,
                base,
                0.0,
                16,
                cfg["efficientnet_lipschitz"],
            )
        )
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


def region_ranks(scores: np.ndarray, tie_keys: np.ndarray | None = None) -> np.ndarray:
    """Position of every region in the most-relevant-first order.

    Parameters
    ----------
    scores : numpy.ndarray
        (N, R) summed relevance per region.
    tie_keys : numpy.ndarray, optional
        (N, R) secondary keys: among regions of equal score, the smaller key comes first.
        None orders ties by region index (raster order: top-left first).

    Returns
    -------
    numpy.ndarray
        (N, R) int64 rank: 0 for the region perturbed first.
    """
    if tie_keys is None:
        tie_keys = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    if tie_keys.shape != scores.shape:
        raise ValueError(
            f"tie_keys must have the shape {scores.shape} of scores, got {tie_keys.shape}"
        )
    order = np.lexsort((tie_keys, -scores), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(scores.shape[1]), axis=1)
    return rank


def region_perturbation_auc(model, x, y, relevance, patch, baseline, steps, tie_seed=None):
    """Most-relevant-first region perturbation; AUC of the normalised class probability.

    Regions are ``patch``×``patch`` squares ranked by summed relevance; the curve is taken at
    ``steps + 1`` evenly spaced region counts, divided by the unperturbed probability and
    integrated over [0, 1] with ``np.trapezoid`` (lower is better). Regions of equal relevance
    (after pruning, most have exactly 0) are perturbed in raster order (``tie_seed=None``) or
    in a random order drawn per sample from ``numpy.random.default_rng(tie_seed)``.

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
    scores = scores.reshape(n, gh, patch, gw, patch).sum((2, 4)).reshape(n, -1).double().numpy()
    keys = None
    if tie_seed is not None:
        keys = np.random.default_rng(tie_seed).permuted(np.tile(np.arange(gh * gw), (n, 1)), axis=1)
    rank = torch.from_numpy(region_ranks(scores, keys))
    counts = np.linspace(0, gh * gw, steps + 1).round().astype(int)
    curves = []
    with torch.no_grad():
        for count in counts:
            region = (rank < count).reshape(n, 1, gh, 1, gw, 1).to(x.dtype)
            region = region.expand(n, 1, gh, patch, gw, patch).reshape(n, 1, gh * patch, gw * patch)
            mask = torch.nn.functional.pad(region, (0, w - gw * patch, 0, h - gh * patch))
            xp = x * (1 - mask) + baseline * mask
            prob = torch.cat([model(b).softmax(1) for b in xp.split(16)])
            curves.append(prob[torch.arange(n), y].numpy())
    curves = np.stack(curves, 1)
    curves = curves / np.maximum(curves[:, :1], 1e-12)
    return np.trapezoid(curves, dx=1.0 / steps, axis=1), curves


def _faithfulness(task: Task, a: np.ndarray, cfg) -> tuple[dict[str, float], dict[str, Any]]:
    """AUC (whole, first half, second half of the curve) for raster and random tie order."""
    out, curves = {}, {}
    for suffix, seed in TIE_ORDERS.items():
        auc, curve = region_perturbation_auc(
            task.model, task.x, task.y, a, task.patch, task.baseline, cfg["faith_steps"], seed
        )
        half = curve.shape[1] // 2
        early = np.trapezoid(curve[:, : half + 1], dx=1.0 / (curve.shape[1] - 1), axis=1)
        out[f"faith_auc{suffix}"] = float(auc.mean())
        out[f"faith_auc_early{suffix}"] = float(early.mean())
        out[f"faith_auc_late{suffix}"] = float((auc - early).mean())
        curves[suffix] = curve.mean(0)
    return out, curves


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
        rma = np.asarray(
            quantus.RelevanceMassAccuracy(abs=False, normalise=False, **common)(
                model=task.model,
                x_batch=x,
                y_batch=y,
                a_batch=np.clip(a, 0, None),
                s_batch=task.mask.astype(np.float32),
                channel_first=True,
            ),
            dtype=np.float64,
        )
        out["rma"], out["rma_median"] = np.nanmean(rma), np.nanmedian(rma)
        out["rma_low"] = np.mean(rma < 0.2)  # share of inputs with almost no mass on the mask
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


def _settings_list(ps, measures=()) -> list[tuple[str, str, dict]]:
    """(method, label, setting): LRP once, each variant per p > 0 and with sparsity gain 1
    (Gini as the measure s, the paper's evaluation measure; then each of ``measures``)."""
    runs = [("LRP", "LRP", {})]
    for method in METHODS:
        runs += [(method, f"{method} p={p:g}", {"p": p}) for p in ps if p > 0]
        runs.append((method, f"{method} SG", {"sparsity_gain": 1.0}))
        runs += [
            (method, f"{method} SG {m}", {"sparsity_gain": 1.0, "sparsity_measure": m})
            for m in measures
        ]
    return runs


def _evaluate(tasks, cfg, progress) -> tuple[list[dict], dict, dict]:
    """Metric rows, the first two heatmaps and the mean faithfulness curves of every run."""
    rows, heatmaps, curves = [], {}, {}
    runs = [(task, *run) for task in tasks for run in _settings_list(cfg["ps"], cfg["sg_measures"])]
    for task, method, label, setting in tqdm(runs, desc="plrp", disable=None if progress else True):
        cls, kwargs = _composite_kwargs(task, method, setting)
        a = _relevance(task, cls, kwargs)
        heatmaps[(task.name, label)] = a[:2]
        p = setting.get("p", 0.0 if method == "LRP" else float("nan"))
        row = {"task": task.name, "method": method, "setting": label, "p": p}
        row.update(_metrics(task, a, cls, kwargs, cfg))
        if task.patch:
            faith, curves[(task.name, label)] = _faithfulness(task, a, cfg)
            row.update(faith)
        rows.append(row)
    return rows, heatmaps, curves


def _lookup(rows, task, method, p=None, sg=False):
    for r in rows:
        if r["task"] == task and r["method"] == method:
            if method == "LRP" or (sg and r["p"] != r["p"]) or (not sg and r["p"] == p):
                return r
    return None


PAPER = {
    "steep": "Gini and RMA rise steeply already for p < 0.2",
    "lambda_wins": "PLRP-λ (with and without sparsity gain) gives better results than PLRP-M",
    "rma_falls": "RMA starts decreasing again for higher p",
    "faith": "faithfulness slightly worse than LRP, driven by the later (less relevant) steps",
    "robust": "PLRP-λ is always more robust than the LRP baseline",
    "sparser": "both PLRP variants produce sparser explanations than LRP",
    "rma_rises": "in general, RMA increases for an increasing p",
    "close": "PLRP-λ and PLRP-M only differ slightly (shallow networks)",
}


def _claim(task, kind, key, test, ours, holds) -> dict:
    return {
        "task": task,
        "figure": FIGURES[kind],
        "paper": PAPER[key],
        "tested as": test,
        "ours": ours,
        "holds": bool(holds),
    }


def _image_claims(name, rows, ps) -> list[dict]:
    """Figure 2's claims (ECSSD, VGG16 / ResNet50) on an image task."""
    out = []
    pmax, pos = max(ps), [p for p in ps if p > 0]
    small = max(p for p in ps if p <= 0.2)
    lrp = _lookup(rows, name, "LRP")
    lam = [_lookup(rows, name, "PLRP-λ", p) for p in pos]
    mm = [_lookup(rows, name, "PLRP-M", p) for p in pos]
    for method in METHODS:
        hi, lo = _lookup(rows, name, method, pmax), _lookup(rows, name, method, small)
        rise = hi["gini"] - lrp["gini"]
        share = (lo["gini"] - lrp["gini"]) / rise if rise > 0 else float("nan")
        out.append(
            _claim(
                name,
                "image",
                "steep",
                f"ΔGini(p={small:g}) ≥ 50% of ΔGini(p={pmax:g}) ({method})",
                f"{share:.0%}; Gini {lrp['gini']:.3f} → {lo['gini']:.3f} → {hi['gini']:.3f}",
                hi["gini"] > lrp["gini"] and share >= 0.5,
            )
        )
    for metric in ("gini", "rma"):
        if metric in lrp:
            wins = sum(a[metric] >= b[metric] for a, b in zip(lam, mm, strict=True))
            out.append(
                _claim(
                    name,
                    "image",
                    "lambda_wins",
                    f"{metric}(λ, p) ≥ {metric}(M, p) at every p",
                    f"λ ≥ M at {wins}/{len(pos)} p values",
                    wins == len(pos),
                )
            )
    if "rma" in lrp:
        curve = [lrp["rma"]] + [r["rma"] for r in lam]
        best = int(np.argmax(curve))
        out.append(
            _claim(
                name,
                "image",
                "rma_falls",
                "RMA(λ) peaks above LRP, then lower at p_max",
                f"RMA {curve[0]:.3f} → max {curve[best]:.3f} at p={([0.0] + pos)[best]:g} → "
                f"{curve[-1]:.3f} at p={pmax:g}",
                curve[best] > curve[0] and curve[-1] < curve[best],
            )
        )
    for suffix, ties in (("", "raster order"), ("_rand", "random order, seed 0")):
        key = f"faith_auc{suffix}"
        if key in lrp:
            r = lam[-1]
            d_early = r[f"faith_auc_early{suffix}"] - lrp[f"faith_auc_early{suffix}"]
            d_late = r[f"faith_auc_late{suffix}"] - lrp[f"faith_auc_late{suffix}"]
            out.append(
                _claim(
                    name,
                    "image",
                    "faith",
                    f"ties {ties}: LRP ≤ AUC(λ, p_max) ≤ 1.2·LRP and Δlate ≥ Δearly",
                    f"AUC {lrp[key]:.3f} → {r[key]:.3f} (p={pmax:g}); Δearly {d_early:+.3f}, "
                    f"Δlate {d_late:+.3f}",
                    lrp[key] <= r[key] <= 1.2 * lrp[key] and d_late >= d_early,
                )
            )
    if "lipschitz" in lrp:
        worst = max(r["lipschitz"] for r in lam)
        out.append(
            _claim(
                name,
                "image",
                "robust",
                "Lipschitz(λ, p) ≤ Lipschitz(LRP) at every p",
                f"LRP {lrp['lipschitz']:.3f}, λ max {worst:.3f}",
                worst <= lrp["lipschitz"],
            )
        )
    return out


def _genomics_claims(name, rows, ps, tolerance=0.02) -> list[dict]:
    """The genomics section's claims (Figure 8: DNA CNNs with 4 and 32 filters)."""
    from scipy.stats import spearmanr

    out = []
    pmax, pos = max(ps), [p for p in ps if p > 0]
    lrp = _lookup(rows, name, "LRP")
    curves = {m: [_lookup(rows, name, m, p) for p in pos] for m in METHODS}
    for method, runs in curves.items():
        margins = [r["gini"] - lrp["gini"] for r in runs]
        low = int(np.argmin(margins))
        out.append(
            _claim(
                name,
                "genomics",
                "sparser",
                f"Gini({method}, p) > Gini(LRP) at every p > 0",
                f"min ΔGini {margins[low]:+.3f} at p={pos[low]:g} (LRP {lrp['gini']:.3f})",
                min(margins) > 0,
            )
        )
    for method, runs in curves.items():
        rma = [lrp["rma"]] + [r["rma"] for r in runs]
        rho = float(spearmanr([0.0] + pos, rma).statistic)
        out.append(
            _claim(
                name,
                "genomics",
                "rma_rises",
                f"RMA({method}, p_max) > RMA(LRP) and Spearman(p, RMA) > 0",
                f"RMA {rma[0]:.3f} → {rma[-1]:.3f} at p={pmax:g}; ρ = {rho:+.2f}; "
                + ", ".join(f"{v:.3f}" for v in rma),
                rma[-1] > rma[0] and rho > 0,
            )
        )
    d_gini = [abs(a["gini"] - b["gini"]) for a, b in zip(*curves.values(), strict=True)]
    d_rma = [abs(a["rma"] - b["rma"]) for a, b in zip(*curves.values(), strict=True)]
    g, r = int(np.argmax(d_gini)), int(np.argmax(d_rma))
    out.append(
        _claim(
            name,
            "genomics",
            "close",
            f"max_p |Gini(λ) − Gini(M)| ≤ {tolerance:g} (|ΔRMA| reported)",
            f"max |ΔGini| {d_gini[g]:.3f} at p={pos[g]:g}; "
            f"max |ΔRMA| {d_rma[r]:.3f} at p={pos[r]:g}",
            d_gini[g] <= tolerance,
        )
    )
    return out


def claims(rows: list[dict], kinds: dict[str, str], ps) -> list[dict]:
    """The paper's claims for each task's kind, checked on our metric rows.

    Parameters
    ----------
    rows : list of dict
        Metric rows (``task``, ``method``, ``p`` (NaN for sparsity gain), ``gini``, ``rma``, …)
        as :func:`_evaluate` makes them; LRP has p = 0.
    kinds : dict
        Task name → 'image' (Figure 2 claims) or 'genomics' (Figure 8 claims).
    ps : sequence of float
        The pruning fractions run (0 = LRP).

    Returns
    -------
    list of dict
        One row per claim: ``task, figure, paper, tested as, ours, holds``.
    """
    out = []
    for name, kind in kinds.items():
        if kind == "image":
            out += _image_claims(name, rows, ps)
        elif kind == "genomics":
            out += _genomics_claims(name, rows, ps)
        else:
            raise ValueError(f"kinds[{name!r}] must be 'image' or 'genomics', got {kind!r}")
    return out


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


def run(
    report: Report, quick: bool, progress: bool, settings: dict[str, Any] | None = None
) -> None:
    """Fill ``report`` with the PLRP curves, heatmaps, claims per task and speed ratios.

    ``settings`` overrides entries of the quick or full settings (e.g. full DNA tasks with
    ``{"image_tasks": False}``); the report states every setting used.
    """
    from benchmarks import plrp_plots

    torch.set_num_threads(min(2, torch.get_num_threads()))
    quick = quick or os.environ.get("NEURON_XAI_QUICK") == "1"
    cfg = {**_settings(quick), **(settings or {})}
    tasks = _tasks(quick, progress, cfg)
    report.results["settings"] = cfg
    report.add_text(
        f"Settings ({'quick' if quick else 'full'}{' with overrides' if settings else ''}: "
        f"{settings or {}}): p ∈ {list(cfg['ps'])} and sparsity gain 1 (measure s: Gini"
        f"{''.join(', ' + m for m in cfg['sg_measures'])}); "
        f"base composite EpsilonGammaBox (γ=0.25, z^B first layer); cluttered CNN "
        f"({'quick' if cfg['cluttered_quick_model'] else 'full'}-trained) {cfg['n_img']} correctly "
        f"classified test images; EfficientNet-Lite0 Lipschitz: {cfg['efficientnet_lipschitz']}; "
        f"DNA models "
        f"{', '.join(cfg['dna_models'])} ({cfg['n_dna']} correctly classified motif-positive "
        f"sequences each; dna_cnn32_local = 32 filters, local max-pooling over 8 windows of 29 "
        f"positions, our ablation of global max-pooling); {cfg['n_photos']} photos "
        f"({cfg['photo_size']} px) for EfficientNet-Lite0. Quantus: Sparseness/Complexity "
        f"(abs=True, normalise=False), RMA on positive relevance (abs=False, normalise=False; "
        f"rma_median = median over inputs, rma_low = share of inputs with RMA < 0.2), "
        f"LocalLipschitzEstimate ({cfg['lip_samples']} samples, std 0.1, per-sample "
        f"max normalisation, abs=False, {cfg['lip_n']} inputs). Faithfulness: our region "
        f"perturbation (most relevant first, {cfg['faith_steps']} steps, baseline 0, softmax "
        f"probability / unperturbed, AUC by np.trapezoid); regions of equal relevance in raster "
        f"order (faith_auc) or in a seeded random order per input (faith_auc_rand, seed 0). "
        f"Relevance summed over channels. np.random seeded before every metric."
    )
    rows, heatmaps, curves = _evaluate(tasks, cfg, progress)
    report.add_table("PLRP metrics", rows, direction=DIRECTION, key="metrics")
    for kind, figure in FIGURES.items():
        mine = [t for t in tasks if t.kind == kind]
        if not mine:
            continue
        report.add_figure(
            plrp_plots.curves_figure(rows, mine, f"as the paper's {figure}"),
            f"plrp_curves_{kind}",
            f"Metrics vs p, {kind} tasks, as the paper's {figure} (dashed: LRP)",
        )
    table = claims(rows, {t.name: t.kind for t in tasks}, cfg["ps"])
    report.add_table("Paper claims per task vs our numbers", table, key="claims")
    if not cfg["image_tasks"]:
        return
    report.add_figure(
        plrp_plots.faithfulness_figure(curves, tasks, cfg["ps"]),
        "plrp_faithfulness",
        "Region perturbation curves: ties among equal relevance in raster order (left, as "
        "before) and in a seeded random order (right)",
    )
    report.add_figure(
        plrp_plots.heatmap_figure(heatmaps, tasks, cfg["ps"]),
        "plrp_heatmaps",
        "Heatmaps: LRP, PLRP-λ and PLRP-M for growing p (red +, blue −)",
    )
    _speed(report, tasks, cfg)
