"""Synchronization-inspired interpretable CNNs on part-annotated figures, from scratch.

``python -m benchmarks sync [--quick]``. Paper: "Synchronization-inspired Interpretable Neural
Networks" (Han et al., arXiv:2310.05419 — losses eq. 3–9, metrics eq. 11–14, Tables I–IV,
Figs. 4–10). VGGSmall and ResNetSmall on ``parts`` (easy and hard variants), the losses on the
top layer (64 filters at 8×8); baseline, +L_lac and +both, the last with L_sync averaged over
filters (our default) and summed as eq. 6 writes it (with and without eq. 1's
self-neighbourhood), same initialisation. This module orchestrates: the protocol is in
:mod:`benchmarks.sync_protocol`, one model's measurements in :mod:`benchmarks.sync_study`,
the landmark curves in :mod:`benchmarks.sync_landmarks`, Fig. 9's pruning in
:mod:`benchmarks.sync_pruning`, tables and claims in :mod:`benchmarks.sync_claims`. Trained
models are cached under ``.cache/models/sync`` (keyed by every setting), so a run that was
stopped resumes where it was.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from benchmarks.models.architectures import VGGSmall
from benchmarks.report import Report
from benchmarks.sync_claims import claims, tables
from benchmarks.sync_landmarks import mean_curves
from benchmarks.sync_protocol import (
    ARCHS,
    EPSILON,
    PHI,
    VARIANTS,
    Config,
    Settings,
    parts,
    train,
)
from benchmarks.sync_study import PHIS, activation_examples, assess, study
from benchmarks.timing import compare, time_call

LAYER = ARCHS["VGGSmall"].layer  # ReLU after VGGSmall's 4th (top) conv: 64 filters at 8×8
CSGCNN_TOP_RATE = 0.3

FULL = Settings(
    n_train=2000,
    n_test=400,
    epochs=6,
    seeds=(0, 1),
    data=("easy", "hard"),
    sweep_epochs=3,
    sweep_data="easy",
    sweep_values=(0.01, 0.1, 0.5),
    extra_seeds=1,
    resnet_data=("easy",),
    resnet_seeds=1,
)
"""The full protocol, trimmed to about an hour on 2 cores (see ``run``)."""
QUICK = Settings(
    n_train=384,
    n_test=128,
    epochs=2,
    seeds=(0,),
    data=("hard",),
    sweep_epochs=None,
    landscape_images=48,
    landscape_grid=3,
    prune_fractions=(0.0, 0.25, 0.5, 0.75, 0.9),
    resnet_data=("hard",),
    resnet_variants=("baseline", "+L_lac", "+both"),
    landmark_thresholds=(4, 8, 16, 32),
)


def _analyse(
    report: Report, arch: str, data: str, settings: Settings, progress: bool
) -> dict[str, Any]:
    """Train every variant of one network on one data variant; Tables I–IV, Figs. 4–6, 9, 10."""
    train_data = parts(data, settings.n_train, 0)
    test = parts(data, settings.n_test, 1)
    area = float(test.mask.any(dim=1).float().mean())
    top_rates = {"main": area, "csgcnn": CSGCNN_TOP_RATE}
    found: dict[str, list[dict]] = {}
    figures: dict[str, dict] = {}
    jobs = [(v, s) for v in settings.variants_of(arch) for s in settings.seeds_of(arch, v)]
    for variant, seed in tqdm(jobs, desc=f"{arch} {data}", disable=None if progress else True):
        config = Config.of(arch, variant, data, seed, settings)
        result = dict(study(config, train_data, test, top_rates, settings, progress=False))
        maps, iou = result.pop("maps"), result.pop("iou")
        landscape = result.pop("landscape")
        alphas, loss = landscape
        centre = len(alphas) // 2
        result["landscape_mean"] = float(loss.mean())
        result["landscape_rise"] = float(loss.mean() - loss[centre, centre])
        if seed == settings.seeds[0]:
            figures[variant] = {"maps": maps, "iou": iou, "landscape": landscape}
        found.setdefault(variant, []).append(result)
    label = f"{arch}, {data} parts"
    tables(report, label, arch, found, area)
    _figures(report, f"{arch}_{data}", label, arch, found, figures, test, area, settings)
    report.results[f"{arch}_{data}_runs"] = found
    return {"found": found, "area": area}


def _figures(
    report: Report,
    stem: str,
    label: str,
    arch: str,
    found: dict[str, list[dict]],
    figures: dict[str, dict],
    test,
    area: float,
    settings: Settings,
) -> None:
    """Figs. 4, 5, 6 (φ on masks; distance on landmarks), 9 and 10 of one (network, data)."""
    from benchmarks import sync_plots as plots

    seed = settings.seeds[0]
    report.add_figure(
        plots.activation_examples(
            test,
            {
                v: (f["maps"], f["iou"], activation_examples(f["iou"], f["maps"]))
                for v, f in figures.items()
            },
            area,
        ),
        f"{stem}_fig4_maps",
        f"{label}: filter maps at the 95/70/30th percentile of their best-part IoU "
        f"(Fig. 4; seed {seed}; outline = region at top_rate {area:.3f})",
    )
    report.add_figure(
        plots.mean_maps(test, {v: f["maps"] for v, f in figures.items()}),
        f"{stem}_fig5_mean_maps",
        f"{label}: mean over filters of the normalized maps (Fig. 5)",
    )
    report.add_figure(
        plots.metric_pairs(mean_curves(found, "phi_curve")),
        f"{stem}_fig6_metric_pairs",
        f"{label}: Stability, Purity and Diversity against Interp as φ slides "
        f"{PHIS[0]}…{PHIS[-1]} on masks (Fig. 6 analogue; mean over seeds)",
    )
    landmark = mean_curves(found, "landmark_curve")
    report.add_figure(
        plots.metric_pairs(landmark),
        f"{stem}_fig6_landmarks",
        f"{label}: Stability, Purity and Diversity against Interp with Sim = −distance "
        "between a filter's focus (peak of its upsampled map) and a part's landmark "
        "(mask centroid), a hit where the distance < t, t sliding "
        f"{settings.landmark_thresholds[0]}…{settings.landmark_thresholds[-1]} px (Fig. 6; "
        "mean over seeds)",
    )
    report.results[f"{stem}_fig6_landmarks"] = landmark
    report.add_figure(
        plots.pruning(
            {v: [r["pruning"] for r in runs] for v, runs in found.items()},
            {v: [r["pruning_sequential"] for r in runs] for v, runs in found.items()},
        ),
        f"{stem}_fig9_pruning",
        f"{label}: test accuracy as filters of {ARCHS[arch].layer} with the lowest Taylor "
        "score are zeroed, no fine-tuning: one-shot ranking (solid) and one by one, "
        "re-scored after each removal as the paper does (dashed) (Fig. 9; mean ± sd over "
        "seeds)",
    )
    report.add_figure(
        plots.landscapes({v: f["landscape"] for v, f in figures.items()}),
        f"{stem}_fig10_landscape",
        f"{label}: test cross-entropy ({settings.landscape_images} images) on a "
        f"{settings.landscape_grid}² grid of two filter-normalized directions of "
        f"{ARCHS[arch].top_conv}'s weights (Fig. 10)",
    )
    report.results[f"{stem}_landscape"] = {v: f["landscape"][1] for v, f in figures.items()}


def _sweeps(report: Report, settings: Settings, progress: bool) -> None:
    """Figs. 7/8 (VGGSmall): one of λ1, λ2, ε swept, the others at 0.2, 0.1, 0.03."""
    from benchmarks import sync_plots as plots

    data = settings.sweep_data
    train_data = parts(data, settings.n_train, 0)
    test = parts(data, settings.n_test, 1)
    area = float(test.mask.any(dim=1).float().mean())
    seed = settings.seeds[0]
    base = Config.of("VGGSmall", "+both", data, seed, settings, epochs=settings.sweep_epochs)
    sweeps: dict[str, dict[float, dict]] = {"λ1": {}, "λ2": {}, "ε": {}}
    fields = {"λ1": "lam1", "λ2": "lam2", "ε": "epsilon"}
    jobs = [(name, value) for name in sweeps for value in settings.sweep_values]
    for name, value in tqdm(jobs, desc="sweeps", disable=None if progress else True):
        model, _ = train(
            replace(base, **{fields[name]: value}), (train_data.x, train_data.y), progress=False
        )
        result = assess(model, LAYER, test, {"main": area})
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
    batch = parts("easy", 64, 0)
    x, y = batch.x, batch.y
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lac, sync = LocalActivationConsistencyLoss(), SynchronizationLoss(epsilon=EPSILON)
    lam1, lam2 = VARIANTS["+both"].lam1, VARIANTS["+both"].lam2

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
    "offline; our landmarks are the centroids of the parts' masks) and networks (VGG16 / "
    "ResNet-18 fine-tuned with SGD, lr 0.01 ×0.1 at epochs 50/75/90 of 100, batch 32, weight "
    "decay 5e-4; we train VGGSmall and a three-stage ResNetSmall from scratch with Adam); the "
    "five other methods (CSGCNN, CW, Decoup, icCNN, ICNN); eq. 1–2 (SynC dynamics, "
    "motivation only) and Figs. 1–3 (illustrations). Tables III–IV and Figs. 6–10 are the "
    "paper's for VGG16 only: we check those claims on VGGSmall only."
)


def run(report: Report, quick: bool, progress: bool, settings: Settings | None = None) -> None:
    """Fill the sync report (see the module docstring).

    Parameters
    ----------
    report : Report
        Filled in place.
    quick : bool
        :data:`QUICK` settings (384 / 128 images of the hard data, 2 epochs, 1 seed, no
        sweeps; ResNetSmall: baseline, +L_lac, +both).
    progress : bool
        Progress bars.
    settings : Settings, optional
        Overrides the protocol (a reduced full run states its settings in the report).
    """
    settings = settings or (QUICK if quick else FULL)
    report.results["settings"] = asdict(settings)
    report.add_text(
        "Paper: VGG16 and ResNet-18 pre-trained on ImageNet, fine-tuned 100 epochs on VOC Part "
        "(SGD), λ1 = 0.2, λ2 = 0.1 (halved for ResNet-18), ε = 0.03, φ = 0.2, L_sync = eq. 6 "
        "(a sum over filters). Ours: synchronization-inspired losses (L_lac, L_sync) on "
        "part-annotated figures; VGGSmall(3) with the losses on "
        f"{LAYER} and ResNetSmall(3) on {ARCHS['ResNetSmall'].layer} (64 filters, 8×8 each), "
        f"from scratch, Adam lr {settings.lr}, batch {settings.batch_size}, {settings.epochs} "
        f"epochs, {settings.n_train} training / {settings.n_test} test images, seeds "
        f"{list(settings.seeds)} (the eq. 6 variants: the first {settings.extra_seeds or 'all'}"
        f"; ResNet: the first {settings.resnet_seeds or 'all'}; same initialisation for every "
        f"variant), data {', '.join(settings.data)} (ResNet: "
        f"{', '.join(settings.resnet_data) or 'none'}); λ1 = 0.2, λ2 = 0.1 (ResNet 0.1, "
        f"0.05), ε = {EPSILON}, φ = {PHI}. L_sync: '+both' averages over the filters that "
        "have a neighbour (our default, so λ2 acts about that many times weaker than the "
        "paper's), '+both (eq. 6 sum)' sums over filters, '+both (eq. 6 sum, eq. 1 self)' "
        "also counts each filter in its own neighbourhood and softmax. "
        + (
            "Sweeps (Figs. 7/8): skipped."
            if settings.sweep_epochs is None
            else f"Sweeps (Figs. 7/8): {settings.sweep_epochs} epochs on {settings.sweep_data}, "
            f"values {list(settings.sweep_values)}."
        )
    )
    report.add_text(NOT_REPRODUCED)
    results = {}
    jobs = [("VGGSmall", d) for d in settings.data]
    jobs += [("ResNetSmall", d) for d in settings.resnet_data]
    for arch, data in jobs:
        analysed = _analyse(report, arch, data, settings, progress)
        results[arch, data] = analysed["found"]
        print(f"   {arch} {data}: mean object area {analysed['area']:.3f} (top_rate)", flush=True)
    rows, summary = claims(results)
    report.add_table(
        "Paper claims on our data, per L_sync setting",
        rows,
        key="claims",
        note="Means over seeds at the main top_rate; 'paper': VOC Part (baseline → w/o sync "
        "→ ours) of the paper's network (VGG16 for VGGSmall, ResNet-18 for ResNetSmall). "
        "Each '+both' column is compared with the same baseline and +L_lac runs; None: the "
        "landmark curves do not overlap in Interp.",
    )
    report.add_table(
        "Claims holding per L_sync setting",
        summary,
        key="claims_summary",
        direction={"hold": "higher"},
    )
    if settings.sweep_epochs is not None:
        _sweeps(report, settings, progress)
    _speed(report, quick)
