"""Synchronization-inspired interpretable CNNs on part-annotated figures, from scratch.

``python -m benchmarks sync [--quick]``. Paper: "Synchronization-inspired Interpretable Neural
Networks" (Han et al., arXiv:2310.05419 — losses eq. 3–9, metrics eq. 11–14, Tables I–IV,
Figs. 4–10). VGGSmall on ``parts`` (easy and hard variants), the losses on ``features.10``
(ReLU of the top conv, 64 filters at 8×8); baseline, +L_lac, +both, same initialisation.
Trained models are cached under ``.cache/models/sync`` (keyed by every setting), so a run
that was stopped resumes where it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks.cache import cache_dir
from benchmarks.data import load_parts
from benchmarks.models import evaluate
from benchmarks.models.architectures import VGGSmall
from benchmarks.models.training import fit
from benchmarks.report import Report
from benchmarks.timing import compare, time_call

LAYER = "features.10"  # ReLU after VGGSmall's 4th (top) conv: 64 filters at 8×8 on 64 px
TOP_CONV = "features.9"
N_PARTS = 4
PHI = 0.2
CSGCNN_TOP_RATE = 0.3
VARIANTS = {"baseline": (0.0, 0.0), "+L_lac": (0.2, 0.0), "+both": (0.2, 0.1)}
EPSILON = 0.03
SWEEP_VALUES = (0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5)
PHIS = tuple(np.round(np.arange(0.05, 0.501, 0.05), 2))
_CACHE_VERSION = 1

# Paper (VGG16 on VOC Part; baseline / w/o sync / ours), Tables I–IV.
PAPER = {
    "interp": (0.4613, 0.6825, 0.6418),
    "stability": (0.5526, 0.4593, 0.4346),
    "purity": (0.0614, 0.0810, 0.0511),
    "diversity": (0.8845, 0.6950, 0.8203),
    "accuracy": (0.9099, 0.9110, 0.9153),
    "module_consistency": (0.4617, 0.1501, 0.3267),
    "nmi": (0.1432, 0.2502, 0.3538),
    "ari": (0.1152, 0.3126, 0.3905),
    "avi": (0.1267, 0.2285, 0.3542),
}


@dataclass(frozen=True)
class Settings:
    """One run's protocol (the issue's full protocol by default; :data:`QUICK` for --quick)."""

    n_train: int = 3000
    n_test: int = 600
    epochs: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    data: tuple[str, ...] = ("easy", "hard")
    sweep_epochs: int | None = 4  # Figs. 7/8; None skips the sweeps
    sweep_data: str = "hard"
    sweep_values: tuple[float, ...] = SWEEP_VALUES
    lr: float = 1e-3
    batch_size: int = 64
    landscape_images: int = 200
    landscape_grid: int = 11
    prune_fractions: tuple[float, ...] = tuple(np.round(np.arange(0.0, 0.951, 0.05), 2))


FULL = Settings()
QUICK = Settings(
    n_train=384,
    n_test=200,
    epochs=2,
    seeds=(0,),
    data=("hard",),
    sweep_epochs=None,
    landscape_images=64,
    landscape_grid=5,
    prune_fractions=(0.0, 0.25, 0.5, 0.75, 0.9),
)


@dataclass(frozen=True)
class Config:
    """One trained model: data variant, loss weights, neighbourhood radius, seed, schedule."""

    data: str
    lam1: float
    lam2: float
    epsilon: float
    seed: int
    epochs: int
    n_train: int
    lr: float
    batch_size: int


def _parts(name: str, n: int, seed: int):
    return load_parts(n=n, size=64, seed=seed, hard=name == "hard")


def _regularizer(maps: Any, lam1: float, lam2: float, epsilon: float):
    """λ1 L_lac + λ2 L_sync on the captured maps, or None for the baseline."""
    from captum_ext.module.sync import LocalActivationConsistencyLoss, SynchronizationLoss

    terms = []
    if lam1:
        terms.append((lam1, LocalActivationConsistencyLoss()))
    if lam2:
        terms.append((lam2, SynchronizationLoss(epsilon=epsilon)))
    if not terms:
        return None
    return lambda: sum(weight * loss(maps.value) for weight, loss in terms)


def _cache_path(key: dict[str, Any], suffix: str) -> Path:
    text = json.dumps({**key, "v": _CACHE_VERSION}, sort_keys=True)
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    return cache_dir("models", "sync") / f"{digest}{suffix}.pt"


def _save(value: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(value, tmp)
    os.replace(tmp, path)


def train(config: Config, train_set: tuple, progress: bool) -> tuple[nn.Module, dict]:
    """VGGSmall(3) initialised under ``config.seed``, trained with the config's losses (cached).

    Parameters
    ----------
    config : Config
        Every setting that determines the weights (the cache key).
    train_set : tuple of tensors
        (x (N, 3, 64, 64), y (N,)), the ``parts`` training images of ``config``.
    progress : bool
        Progress bar over epochs.

    Returns
    -------
    model : nn.Module
        In eval mode.
    log : dict
        :func:`benchmarks.models.training.fit`'s log and ``cached``.
    """
    from captum_ext.module.sync import capture_output

    path = _cache_path(asdict(config), "")
    torch.manual_seed(config.seed)
    model = VGGSmall(num_classes=3)
    if path.exists():
        saved = torch.load(path, weights_only=False)
        model.load_state_dict(saved["state"])
        return model.eval(), {**saved["log"], "cached": True}
    with capture_output(model.get_submodule(LAYER)) as maps:
        penalty = _regularizer(maps, config.lam1, config.lam2, config.epsilon)
        log = fit(
            model,
            train_set,
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
            regularizer=penalty,
        )
    _save({"state": model.state_dict(), "log": log, "config": asdict(config)}, path)
    return model, {**log, "cached": False}


@torch.no_grad()
def layer_maps(model: nn.Module, x: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """(N, 64, 8, 8) outputs of :data:`LAYER` on ``x``, eval mode."""
    from captum_ext.module.sync import capture_output

    model.eval()
    chunks = []
    with capture_output(model.get_submodule(LAYER)) as maps:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
            chunks.append(maps.value)
    return torch.cat(chunks)


def _scores(iou: torch.Tensor, phi: float) -> dict[str, float]:
    """Filter-set means of Interp, Stability, Purity (over filters) and Diversity (images)."""
    from captum_ext.metrics.filters import diversity, interp, purity, stability

    metrics = {"interp": interp, "stability": stability, "purity": purity, "diversity": diversity}
    return {name: float(metric(iou, phi).mean()) for name, metric in metrics.items()}


def assess(model: nn.Module, test, top_rates: dict[str, float]) -> dict[str, Any]:
    """Accuracy and every filter metric of one model on the test set.

    Parameters
    ----------
    model : nn.Module
        A trained VGGSmall.
    test : Dataset
        ``parts`` test images with part masks.
    top_rates : dict
        Label → top rate; the first is the main one (modules, alignment, φ sweep).

    Returns
    -------
    dict
        ``accuracy``; :func:`captum_ext.metrics.filters.filter_metrics` at the first top rate
        (``module_consistency``, ``nmi``, ``ari``, ``avi``, ``dead_filters``, …); per top-rate
        label the Table I scores; the φ sweep ``phi_curve`` (Fig. 6 analogue); ``maps`` and
        ``iou`` at the first rate.
    """
    from captum_ext.metrics.filters import filter_metrics, part_iou

    maps = layer_maps(model, test.x)
    first, *_ = top_rates.values()
    result: dict[str, Any] = {
        "accuracy": evaluate(model, test.x, test.y)["accuracy"],
        **filter_metrics(
            maps, test.mask, n_modules=N_PARTS, top_rate=first, phi=PHI, show_progress=False
        ),
    }
    ious = {label: part_iou(maps, test.mask, top_rate=rate) for label, rate in top_rates.items()}
    for label, iou in ious.items():
        result[label] = _scores(iou, PHI)
    main, *_ = ious.values()
    result["phi_curve"] = {phi: _scores(main, phi) for phi in PHIS}
    result["maps"], result["iou"] = maps, main
    return result


def _filter_normalized(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian direction rescaled filter by filter to the norms of ``weight``'s filters."""
    direction = torch.randn(weight.shape, generator=generator).to(weight)
    scale = weight.flatten(1).norm(dim=1) / direction.flatten(1).norm(dim=1).clamp_min(1e-12)
    return direction * scale.reshape(-1, *([1] * (weight.ndim - 1)))


@torch.no_grad()
def loss_landscape(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Test loss over a grid of two filter-normalized directions of the top conv's weights.

    Li et al., "Visualizing the Loss Landscape of Neural Nets" (arXiv:1712.09913): each
    direction's filters are rescaled to the norms of the weight's filters; biases fixed.
    The weights are restored afterwards, also on error.

    Returns
    -------
    alphas : np.ndarray
        (steps,) coordinates in [-1, 1] along both directions.
    loss : np.ndarray
        (steps, steps) cross-entropy, ``loss[i, j]`` at ``alphas[i]`` · d1 + ``alphas[j]`` · d2.
    """
    weight = model.get_submodule(TOP_CONV).weight
    generator = torch.Generator().manual_seed(seed)
    d1, d2 = (_filter_normalized(weight, generator) for _ in range(2))
    original = weight.detach().clone()
    alphas = np.linspace(-1.0, 1.0, steps)
    loss = np.zeros((steps, steps))
    model.eval()
    try:
        for i, a in enumerate(alphas):
            for j, b in enumerate(alphas):
                weight.copy_(original + float(a) * d1 + float(b) * d2)
                loss[i, j] = float(nn.functional.cross_entropy(model(x), y))
    finally:
        weight.copy_(original)
    return alphas, loss


def activation_examples(
    iou: torch.Tensor, maps: torch.Tensor, quantiles=(0.95, 0.7, 0.3)
) -> list[tuple[int, int, float]]:
    """Fig. 4's picks: the (image, filter) pair at each quantile of the best-part IoU.

    Dead filters (0 on every image) are left out; absent parts count as IoU 0.

    Returns
    -------
    list of (image, filter, IoU)
    """
    best = iou.nan_to_num(0.0).amax(dim=2)  # (N, C)
    live = maps.amax(dim=(2, 3)) > 0
    index = torch.nonzero(live)
    values = best[live]
    order = torch.argsort(values, stable=True)
    picks = []
    for q in quantiles:
        at = order[min(int(q * len(order)), len(order) - 1)]
        picks.append((int(index[at, 0]), int(index[at, 1]), float(values[at])))
    return picks


def _mean_sd(values: list[float], digits: int = 4) -> str:
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"


def _taylor_curve(model: nn.Module, train_set, test, fractions) -> dict[str, list[float]]:
    """Fig. 9: accuracy as the filters of :data:`LAYER` with the lowest Taylor score are zeroed."""
    from captum_ext.synergy.pruning import pruning_curve, taylor_scores

    layer = model.get_submodule(LAYER)
    scores = taylor_scores(model, layer, *train_set)
    channels = torch.arange(scores.numel()).reshape(1, -1, 1, 1)
    return pruning_curve(
        model,
        layer,
        scores,
        test.x,
        test.y,
        layer_mask=channels,
        fractions=fractions,
        show_progress=False,
    )


def study(
    config: Config,
    train_data,
    test,
    top_rates: dict[str, float],
    settings: Settings,
    progress: bool,
) -> dict[str, Any]:
    """Train (or load) one model and measure everything the tables and figures need (cached).

    Returns
    -------
    dict
        :func:`assess`'s result, ``pruning`` (Fig. 9 curve), ``landscape`` ((alphas, loss),
        Fig. 10) and ``train_time_s``; the cache key is the config and the evaluation settings.
    """
    key = {
        **asdict(config),
        "n_test": len(test),
        "top_rates": top_rates,
        "landscape": [settings.landscape_images, settings.landscape_grid],
        "prune_fractions": list(settings.prune_fractions),
    }
    path = _cache_path(key, "-study")
    if path.exists():
        return torch.load(path, weights_only=False)
    model, log = train(config, (train_data.x, train_data.y), progress)
    result = assess(model, test, top_rates)
    rows = slice(0, len(test))  # Taylor scores on as many training images as there are tests
    result["pruning"] = _taylor_curve(
        model, (train_data.x[rows], train_data.y[rows]), test, settings.prune_fractions
    )
    images = slice(0, settings.landscape_images)
    result["landscape"] = loss_landscape(
        model, test.x[images], test.y[images], settings.landscape_grid
    )
    result["train_time_s"] = log["train_time_s"]
    _save(result, path)
    return result


def _analyse(report: Report, data: str, settings: Settings, progress: bool) -> dict[str, Any]:
    """Train the three variants on one data variant and report Tables I–IV, Figs. 4–6, 9, 10."""
    from benchmarks import sync_plots as plots

    train_data = _parts(data, settings.n_train, 0)
    test = _parts(data, settings.n_test, 1)
    area = float(test.mask.any(dim=1).float().mean())
    top_rates = {"main": area, "csgcnn": CSGCNN_TOP_RATE}
    found: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    figures: dict[str, dict] = {}
    for variant, (lam1, lam2) in VARIANTS.items():
        for seed in settings.seeds:
            config = Config(
                data,
                lam1,
                lam2,
                EPSILON,
                seed,
                settings.epochs,
                settings.n_train,
                settings.lr,
                settings.batch_size,
            )
            result = dict(study(config, train_data, test, top_rates, settings, progress))
            maps, iou = result.pop("maps"), result.pop("iou")
            landscape = result.pop("landscape")
            alphas, loss = landscape
            centre = len(alphas) // 2
            result["landscape_mean"] = float(loss.mean())
            result["landscape_rise"] = float(loss.mean() - loss[centre, centre])
            if seed == settings.seeds[0]:
                figures[variant] = {"maps": maps, "iou": iou, "landscape": landscape}
            found[variant].append(result)

    label = f"{data} parts"
    _tables(report, label, found, area)
    report.add_figure(
        plots.activation_examples(
            test,
            {
                v: (f["maps"], f["iou"], activation_examples(f["iou"], f["maps"]))
                for v, f in figures.items()
            },
            area,
        ),
        f"{data}_fig4_maps",
        f"{label}: filter maps at the 95/70/30th percentile of their best-part IoU "
        f"(Fig. 4; seed {settings.seeds[0]}; outline = region at top_rate "
        f"{area:.3f})",
    )
    report.add_figure(
        plots.mean_maps(test, {v: f["maps"] for v, f in figures.items()}),
        f"{data}_fig5_mean_maps",
        f"{label}: mean over filters of the normalized maps (Fig. 5)",
    )
    curves = {
        v: {
            phi: {
                k: float(np.mean([r["phi_curve"][phi][k] for r in runs]))
                for k in ("interp", "stability", "purity", "diversity")
            }
            for phi in PHIS
        }
        for v, runs in found.items()
    }
    report.add_figure(
        plots.metric_pairs(curves),
        f"{data}_fig6_metric_pairs",
        f"{label}: Stability, Purity and Diversity against Interp as φ slides "
        f"{PHIS[0]}…{PHIS[-1]} (Fig. 6 analogue; mean over seeds)",
    )
    report.add_figure(
        plots.pruning({v: [r["pruning"] for r in runs] for v, runs in found.items()}),
        f"{data}_fig9_pruning",
        f"{label}: test accuracy as filters of {LAYER} with the lowest Taylor "
        "score are zeroed, one shot, no fine-tuning (Fig. 9; mean ± sd over "
        "seeds)",
    )
    report.add_figure(
        plots.landscapes({v: f["landscape"] for v, f in figures.items()}),
        f"{data}_fig10_landscape",
        f"{label}: test cross-entropy ({settings.landscape_images} images) on a "
        f"{settings.landscape_grid}² grid of two filter-normalized directions of "
        f"{TOP_CONV}'s weights (Fig. 10)",
    )
    report.results[f"{data}_runs"] = found
    report.results[f"{data}_landscape"] = {v: f["landscape"][1] for v, f in figures.items()}
    return {"found": found, "area": area}


def _tables(report: Report, label: str, found: dict[str, list[dict]], area: float) -> None:
    """Tables I–IV beside the paper's, and dead-filter counts."""
    from captum_ext.metrics.filters import DIRECTION

    directions = {"accuracy": "higher", **DIRECTION}
    table1 = ("interp", "stability", "purity", "diversity")
    for rate_key, rate, note in (
        ("main", area, f"top_rate = the test set's mean object area, {area:.3f}."),
        ("csgcnn", CSGCNN_TOP_RATE, "top_rate = 0.3 (CSGCNN's): regions ≈ 3× the object."),
    ):
        rows = []
        for i, (variant, runs) in enumerate(found.items()):
            row: dict[str, Any] = {"variant": variant}
            for metric in table1:
                row[metric] = _mean_sd([r[rate_key][metric] for r in runs])
                row[f"{metric} (paper)"] = PAPER[metric][i]
            rows.append(row)
        report.add_table(
            f"{label}: Table I, top_rate {rate:.3f} (φ = {PHI})",
            rows,
            direction={m: directions[m] for m in table1},
            note=note + " Mean ± sd over seeds; paper: VGG16 on VOC Part.",
            key=f"{label} table1 {rate_key}",
        )
    rows = []
    table2 = ("accuracy", "module_consistency", "nmi", "ari", "avi")
    for i, (variant, runs) in enumerate(found.items()):
        row = {"variant": variant}
        for metric in table2:
            row[metric] = _mean_sd([r[metric] for r in runs])
            row[f"{metric} (paper)"] = PAPER[metric][i]
        row["dead_filters"] = _mean_sd([r["dead_filters"] for r in runs], digits=1)
        row["train s"] = _mean_sd([r["train_time_s"] for r in runs], digits=0)
        rows.append(row)
    report.add_table(
        f"{label}: Tables II–IV (accuracy, module consistency, module–part "
        f"alignment) and dead filters",
        rows,
        direction={m: directions[m] for m in (*table2, "dead_filters")},
        note=f"Modules: spectral clustering into {N_PARTS} (the number of parts); "
        f"consistency over live filters; alignment at top_rate {area:.3f}, "
        f"φ = {PHI}. Dead filters: 0 on every test image (of 64).",
        key=f"{label} tables2-4",
    )


def _mean(runs: list[dict], *path: str) -> float:
    values = []
    for run in runs:
        for step in path:
            run = run[step]
        values.append(run)
    return float(np.mean(values))


def _accuracy_at(runs: list[dict], fraction: float) -> float:
    return float(
        np.mean([r["pruning"]["accuracy"][r["pruning"]["fraction"].index(fraction)] for r in runs])
    )


def _claims(results: dict[str, dict]) -> list[dict]:
    """The paper's claims, checked on each data variant's means over seeds."""
    rows = []
    for data, result in results.items():
        base, lac, both = (result["found"][v] for v in VARIANTS)

        def check(claim: str, ours: str, holds: bool, data: str = data) -> None:
            rows.append({"data": data, "claim": claim, "ours": ours, "holds": bool(holds)})

        m = {
            name: [_mean(runs, "main", key) for runs in (base, lac, both)]
            for name, key in (
                ("I", "interp"),
                ("S", "stability"),
                ("P", "purity"),
                ("D", "diversity"),
            )
        }
        check(
            "L_lac raises Interp (0.46 → 0.68)",
            f"{m['I'][0]:.3f} → {m['I'][1]:.3f}",
            m["I"][1] > m["I"][0],
        )
        check(
            "both losses raise Interp (0.46 → 0.64)",
            f"{m['I'][0]:.3f} → {m['I'][2]:.3f}",
            m["I"][2] > m["I"][0],
        )
        check(
            "both losses lower (improve) Stability (0.55 → 0.43)",
            f"{m['S'][0]:.3f} → {m['S'][2]:.3f}",
            m["S"][2] < m["S"][0],
        )
        check(
            "both losses lower (improve) Purity (0.061 → 0.051)",
            f"{m['P'][0]:.4f} → {m['P'][2]:.4f}",
            m["P"][2] < m["P"][0],
        )
        check(
            "L_lac costs Diversity (0.88 → 0.70)",
            f"{m['D'][0]:.3f} → {m['D'][1]:.3f}",
            m["D"][1] < m["D"][0],
        )
        check(
            "L_sync restores Diversity over L_lac alone (0.70 → 0.82)",
            f"{m['D'][1]:.3f} → {m['D'][2]:.3f}",
            m["D"][2] > m["D"][1],
        )
        acc = [_mean(runs, "accuracy") for runs in (base, lac, both)]
        check(
            "accuracy kept (within 1 point of the baseline)",
            f"{acc[0]:.2%} / {acc[1]:.2%} / {acc[2]:.2%}",
            acc[2] >= acc[0] - 0.01,
        )
        con = [_mean(runs, "module_consistency") for runs in (base, lac, both)]
        check(
            "module consistency improves with both losses (0.46 → 0.33)",
            f"{con[0]:.3f} → {con[2]:.3f}",
            con[2] < con[0],
        )
        check(
            "L_lac alone: the best (lowest) consistency (0.15)",
            f"{con[1]:.3f} vs {con[2]:.3f} (both)",
            con[1] < min(con[0], con[2]),
        )
        for key, paper in (
            ("nmi", "0.14 → 0.25 → 0.35"),
            ("ari", "0.12 → 0.31 → 0.39"),
            ("avi", "0.13 → 0.23 → 0.35"),
        ):
            v = [_mean(runs, key) for runs in (base, lac, both)]
            check(
                f"{key.upper()} module–part alignment: baseline < L_lac < both ({paper})",
                " → ".join(f"{x:.3f}" for x in v),
                v[0] < v[1] < v[2],
            )
        half = [_accuracy_at(runs, 0.5) for runs in (base, lac, both)]
        check(
            "regularized models are more redundant: accuracy at 50 % filters pruned "
            "L_lac ≥ both > baseline (Fig. 9)",
            " / ".join(f"{x:.2%}" for x in half),
            half[1] >= half[2] > half[0],
        )
        rise = {v: _mean(result["found"][v], "landscape_rise") for v in VARIANTS}
        level = {v: _mean(result["found"][v], "landscape_mean") for v in VARIANTS}
        check(
            "both losses: lower and flatter loss landscape than baseline and L_lac (Fig. 10)",
            "mean "
            + " / ".join(f"{level[v]:.3f}" for v in VARIANTS)
            + "; rise "
            + " / ".join(f"{rise[v]:.3f}" for v in VARIANTS),
            level["+both"] < min(level["baseline"], level["+L_lac"])
            and rise["+both"] < min(rise["baseline"], rise["+L_lac"]),
        )
    return rows


def _sweeps(report: Report, settings: Settings, progress: bool) -> None:
    """Figs. 7/8: one of λ1, λ2, ε over :data:`SWEEP_VALUES`, the others at 0.2, 0.1, 0.03."""
    from benchmarks import sync_plots as plots

    data = settings.sweep_data
    train_data = _parts(data, settings.n_train, 0)
    test = _parts(data, settings.n_test, 1)
    area = float(test.mask.any(dim=1).float().mean())
    seed = settings.seeds[0]
    base = Config(
        data,
        *VARIANTS["+both"],
        EPSILON,
        seed,
        settings.sweep_epochs,
        settings.n_train,
        settings.lr,
        settings.batch_size,
    )
    sweeps: dict[str, dict[float, dict]] = {"λ1": {}, "λ2": {}, "ε": {}}
    fields = {"λ1": "lam1", "λ2": "lam2", "ε": "epsilon"}
    jobs = [(name, value) for name in sweeps for value in settings.sweep_values]
    for name, value in tqdm(jobs, desc="sweeps", disable=None if progress else True):
        model, _ = train(
            replace(base, **{fields[name]: value}), (train_data.x, train_data.y), progress=False
        )
        result = assess(model, test, {"main": area})
        result["mean_map"] = result.pop("maps")[0].mean(dim=0)
        del result["iou"]
        sweeps[name][value] = result
    report.add_figure(
        plots.sensitivity(sweeps),
        f"{data}_fig7_sensitivity",
        f"{data} parts: metrics as one of λ1, λ2, ε varies, the others at "
        f"0.2 / 0.1 / 0.03 ({settings.sweep_epochs} epochs, seed {seed}, "
        f"top_rate {area:.3f}; Fig. 7)",
    )
    report.add_figure(
        plots.sweep_maps(test.x[0], sweeps),
        f"{data}_fig8_sweep_maps",
        f"{data} parts: mean over filters of {LAYER} on one test image per setting (Fig. 8)",
    )
    report.results["sweeps"] = {
        name: {
            str(v): {
                k: r[k] for k in ("accuracy", "dead_filters", "main", "module_consistency", "nmi")
            }
            for v, r in values.items()
        }
        for name, values in sweeps.items()
    }


def _backward(loss: nn.Module, leaf: torch.Tensor) -> None:
    loss(leaf).backward()


def _speed(report: Report, quick: bool) -> None:
    """A training step with both losses against the plain step; the losses alone in ms."""
    from captum_ext.module.sync import (
        LocalActivationConsistencyLoss,
        SynchronizationLoss,
        capture_output,
    )

    torch.manual_seed(0)
    model = VGGSmall(num_classes=3)
    batch = _parts("easy", 64, 0)
    x, y = batch.x, batch.y
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lac, sync = LocalActivationConsistencyLoss(), SynchronizationLoss(epsilon=EPSILON)
    lam1, lam2 = VARIANTS["+both"]

    def step(maps=None) -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        if maps is not None:
            loss = loss + lam1 * lac(maps.value) + lam2 * sync(maps.value)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    repeats = 3 if quick else 15
    with capture_output(model.get_submodule(LAYER)) as maps:
        timing = compare(lambda: step(maps), step, warmup=2, repeats=repeats)
    report.add_speed(
        f"training step, batch {len(x)}, VGGSmall on 64 px",
        timing,
        ours="CE + 0.2 L_lac + 0.1 L_sync",
        anchor="CE alone",
    )
    rows = []
    for shape in ((64, 64, 8, 8), (32, 512, 14, 14)):
        maps = torch.randn(shape, generator=torch.Generator().manual_seed(0)).relu()
        for name, loss in (("L_lac", lac), ("L_sync", sync)):
            leaf = maps.clone().requires_grad_(True)
            forward = time_call(partial(loss, leaf), warmup=1, repeats=repeats)
            both = time_call(partial(_backward, loss, leaf), warmup=1, repeats=repeats)
            rows.append(
                {
                    "maps": str(shape),
                    "loss": name,
                    "forward ms": 1e3 * forward,
                    "forward + backward ms": 1e3 * both,
                }
            )
    report.add_table(
        "Losses alone (random ReLU maps; (32, 512, 14, 14) = VGG16's top conv)",
        rows,
        note=f"{torch.get_num_threads()} threads; median of {repeats}.",
        key="loss_speed",
    )
    report.results["step_ratio"] = timing["ratio"]


NOT_REPRODUCED = (
    "Not reproduced: the paper's data (VOC Part, CUB200, ILSVRC Part, ImageNet-100: not "
    "offline) and networks (VGG16 / ResNet18 fine-tuned with SGD, lr 0.01 ×0.1 at epochs "
    "50/75/90 of 100, batch 32, weight decay 5e-4; we train VGGSmall from scratch with Adam); "
    "the five other methods (CSGCNN, CW, Decoup, icCNN, ICNN); the landmark-based metric "
    "curves (our Fig. 6 analogue slides φ on masks instead); eq. 1–2 (SynC dynamics, "
    "motivation only) and Figs. 1–3 (illustrations)."
)


def run(report: Report, quick: bool, progress: bool, settings: Settings | None = None) -> None:
    """Fill the sync report (see the module docstring).

    Parameters
    ----------
    report : Report
        Filled in place.
    quick : bool
        :data:`QUICK` settings (384 / 200 images of the hard data, 2 epochs, 1 seed, no
        sweeps).
    progress : bool
        Progress bars.
    settings : Settings, optional
        Overrides the protocol (a reduced full run states its settings in the report).
    """
    settings = settings or (QUICK if quick else FULL)
    report.results["settings"] = asdict(settings)
    report.add_text(
        "Synchronization-inspired interpretable networks (L_lac, L_sync) on part-annotated "
        f"figures: VGGSmall(3) from scratch, losses on {LAYER} (64 filters, 8×8), Adam "
        f"lr {settings.lr}, batch {settings.batch_size}, {settings.epochs} epochs, "
        f"{settings.n_train} training / {settings.n_test} test images, seeds "
        f"{list(settings.seeds)} (same initialisation for the three variants), data "
        f"{', '.join(settings.data)}; λ1 = 0.2, λ2 = 0.1, ε = {EPSILON}, φ = {PHI}. "
        + (
            "Sweeps (Figs. 7/8): skipped."
            if settings.sweep_epochs is None
            else f"Sweeps (Figs. 7/8): {settings.sweep_epochs} epochs on {settings.sweep_data}."
        )
    )
    report.add_text(NOT_REPRODUCED)
    results = {}
    for data in settings.data:
        results[data] = _analyse(report, data, settings, progress)
        print(
            f"   {data}: mean object area {results[data]['area']:.3f} (the main table's top_rate)",
            flush=True,
        )
    report.add_table(
        "Paper claims on our data",
        _claims(results),
        key="claims",
        note="Means over seeds at the main top_rate; the paper's numbers in "
        "brackets (baseline → w/o sync → ours).",
    )
    if settings.sweep_epochs is not None:
        _sweeps(report, settings, progress)
    _speed(report, quick)
