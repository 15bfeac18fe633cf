"""Relevant-neuron paths (Bhati et al., arXiv:2412.05686): graphs, top-k paths, k-path
heatmaps, deconvolution views, threshold curves and speed.

``python -m benchmarks paths [--quick]``.

The paper reports no numbers, only Figs. 3–7 (VGG16 on ImageNet photos); this suite draws the
same kinds of figures and gives the numbers behind them:

- VGG16 with random weights (no VGG weights offline), the 13 conv outputs ``features.0 … 28``,
  one 224² image, NRM with the box rule on the first layer (the paper's DTD rule) and γ on the
  other convolutions: Fig. 3 (graph, top-5 paths), kept fractions at c = 1, distinct units of
  the top paths, speed of graph + top-5 against one ``NRM.heatmap`` (target ≤ 2×, ≤ 10 s) and
  against ``pairwise`` per adjacent pair (2 pairs timed, the rest extrapolated by
  ``n_upper × MACs``).
- EfficientNet-Lite0 with ImageNet weights on real photos, blocks ``_blocks.0 … 15``, the NRM
  suite's rules (z⁺, box stem, ``EfficientNetLiteCanonizer``): Fig. 5 (photo, prediction,
  graph, deconvolution of the top path), Fig. 6 (relevance 5-path heatmaps), Fig. 7
  (deconvolution of the 5 paths' units), Fig. 4 (heatmap through the kept units at the
  chosen c) and the threshold curves (our definition, :meth:`NeuronPaths.tune_threshold`).
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks import paths_plots as plots
from benchmarks.models.pretrained import imagenet_classes, load_efficientnet_lite0, load_photos
from benchmarks.report import Report
from benchmarks.timing import compare, time_call
from zennit_ext import NRM
from zennit_ext.canonizers import EfficientNetLiteCanonizer
from zennit_ext.nrm.rules import nrm_composite
from zennit_ext.paths.api import NeuronPaths, Paths, Threshold

VGG_LAYERS = tuple(f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
GRID = (1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0)
QUICK_GRID = (1.0, 0.0, -1.0)
K = 5


def _conv_work(model: nn.Module, x: torch.Tensor, layers: tuple[str, ...]) -> dict:
    """``n_upper × MACs`` of the convolution producing each upper layer: the work of pushing
    one message per upper channel through it (what ``pairwise`` does)."""
    modules, work = dict(model.named_modules()), {}

    def hook(name):
        def record(module, args, output):
            kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
            work[name] = output.shape[1] * kernel * output[0].numel()

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {
        (lower, upper): work[upper] for lower, upper in zip(layers[:-1], layers[1:], strict=True)
    }


def _distinct_units(paths: Paths) -> list[dict]:
    return [
        {
            "layer": name,
            "distinct units in the top paths": len(set(paths.units[0, :, depth].tolist())),
            "units": str(paths.units[0, :, depth].tolist()),
        }
        for depth, name in enumerate(paths.layers)
    ]


def _path_rows(paths: Paths, relevance: torch.Tensor, sample: int = 0) -> list[dict]:
    return [
        {
            "rank": rank + 1,
            "score (sum of edges)": float(paths.score[sample, rank]),
            "path_relevance (NRM joint)": float(relevance[sample, rank]),
            "units (bottom → top)": str(paths.units[sample, rank].tolist()),
        }
        for rank in range(paths.units.shape[1])
    ]


def _vgg16(report: Report, quick: bool) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    size = 32 if quick else 224  # quick: the same 13 layers and 4,224 channels, 49× fewer pixels
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    composite = nrm_composite(low=0.0, high=1.0)
    paths = NeuronPaths(model, VGG_LAYERS, composite=composite, on_violation="warn")
    built = {}

    def ours() -> Paths:
        built["graph"] = paths.graph(x, 0)
        return built["graph"].top_paths(K)

    def heatmap() -> torch.Tensor:
        return paths.nrm.heatmap(x, 0)

    repeats = 1 if quick else 3
    timing = compare(ours, heatmap, warmup=0 if quick else 1, repeats=repeats)
    graph = built["graph"]  # the last timed run's graph
    top = graph.top_paths(K)
    relevance = paths.path_relevance(x, 0, top)
    channels = sum(graph.relevance[name].shape[1] for name in VGG_LAYERS)
    edges = sum(e[0].numel() for e in graph.edges.values())
    report.add_speed(
        "VGG16 graph + top-5 paths (13 layers)",
        timing,
        ours="NeuronPaths.graph + top_paths",
        anchor="one NRM.heatmap",
    )
    dp = time_call(lambda: graph.top_paths(K), warmup=1, repeats=3)

    # anchor 2: pairwise (batched partial backward, no fast path) per adjacent pair
    reference = NRM(
        model,
        VGG_LAYERS,
        composite=nrm_composite(low=0.0, high=1.0),
        on_violation="warn",
        messages_per_pass=512,
        fast=False,
    )
    work = _conv_work(model, x, VGG_LAYERS)
    timed = [("features.26", "features.28")] + ([] if quick else [("features.0", "features.2")])
    seconds, agreement = {}, []
    for pair in timed:
        start = time.perf_counter()
        table = reference.pairwise(x, 0, *pair)
        seconds[pair] = time.perf_counter() - start
        scale = table.abs().max()
        agreement.append(float((graph.edges[pair] - table).abs().max() / scale))
    rate = sum(seconds.values()) / sum(work[pair] for pair in timed)
    anchor_s = rate * sum(work.values())
    pair_timing = {
        "ours_s": timing["ours_s"],
        "anchor_s": anchor_s,
        "ratio": timing["ours_s"] / anchor_s,
        "speedup": anchor_s / timing["ours_s"],
        "threads": torch.get_num_threads(),
    }
    report.add_speed(
        "VGG16 graph + top-5 paths vs pairwise per pair",
        pair_timing,
        ours="NeuronPaths.graph + top_paths",
        anchor=f"NRM.pairwise per adjacent pair ({len(timed)} timed, "
        "rest extrapolated by n_upper × MACs)",
    )
    report.add_table(
        "VGG16: speed",
        [
            {"measurement": "graph + top-5 paths (ours)", "seconds": timing["ours_s"]},
            {"measurement": "one NRM.heatmap (anchor)", "seconds": timing["anchor_s"]},
            {"measurement": "ratio ours / heatmap (target ≤ 2)", "seconds": timing["ratio"]},
            {"measurement": "k-best DP alone", "seconds": dp},
            *[
                {"measurement": f"pairwise {a} × {b} (fast=False, timed)", "seconds": s}
                for (a, b), s in seconds.items()
            ],
            {"measurement": "pairwise, all 12 pairs (extrapolated)", "seconds": anchor_s},
        ],
        key="vgg16_speed",
        note=(
            f"{channels} channels, {edges:,} channel edges, one {size}² image, "
            f"{torch.get_num_threads()} threads. Edges equal the reference pairwise to "
            f"{max(agreement):.1e} (max abs difference / max |edge|) on the timed pairs."
        ),
    )
    return {
        "graph": graph,
        "top": top,
        "relevance": relevance,
        "paths": paths,
        "x": x,
        "timing": timing,
        "agreement": max(agreement),
    }


def _vgg16_report(report: Report, found: dict) -> None:
    graph, top = found["graph"], found["top"]
    fig = plots.heatmap_rows(
        [
            [
                (found["x"][0].permute(1, 2, 0), "input (random)"),
                (found["paths"].heatmap(found["x"], 0, top)[0].sum(0), "5-path heatmap"),
            ]
        ],
        "VGG16 (random weights)",
    )
    report.add_figure(fig, "vgg16_heatmap", "VGG16 (random weights): relevance 5-path heatmap")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5))
    plots.draw_graph(
        ax,
        graph.to_networkx(0, in_edges=4, k=K),
        graph.layers,
        "VGG16 (random weights): neuron graph, top-5 paths in red (Fig. 3)",
    )
    report.add_figure(fig, "fig3_vgg16_graph", "Fig. 3: VGG16 neuron graph with the top-5 paths")
    report.add_table("VGG16: top-5 paths", _path_rows(top, found["relevance"]), key="vgg16_paths")
    report.add_table(
        "VGG16: distinct units per layer in the top-5 paths",
        _distinct_units(top),
        key="vgg16_distinct",
    )


def _kept_rows(graph_fractions: dict[str, tuple[list[str], np.ndarray]]) -> list[dict]:
    rows = []
    for model, (layers, values) in graph_fractions.items():
        rows += [
            {"model": model, "layer": n, "kept fraction at c = 1": float(v)}
            for n, v in zip(layers, values, strict=True)
        ]
    return rows


def _efficientnet(report: Report, quick: bool, progress: bool) -> dict:
    model = load_efficientnet_lite0()
    photos, names = load_photos(96 if quick else 224)
    photos, names = photos[: 1 if quick else 6], names[: 1 if quick else 6]
    layers = tuple(f"_blocks.{i}" for i in (range(13, 16) if quick else range(16)))
    labels = imagenet_classes()
    with torch.no_grad():
        probabilities = model(photos).softmax(1)
    classes = probabilities.argmax(1)
    composite = nrm_composite(
        low=-1.0, high=1.0, gamma=None, canonizers=[EfficientNetLiteCanonizer()]
    )
    paths = NeuronPaths(model, layers, composite=composite)
    rectifiers = (nn.ReLU, nn.ReLU6)
    overview, fig6, fig7, graphs, seconds, rows = [], [], [], [], [], []
    for index in tqdm(
        range(len(photos)), desc="paths EfficientNet", disable=None if progress else True
    ):
        x, target = photos[index : index + 1], int(classes[index])
        start = time.perf_counter()
        graph = paths.graph(x, target)
        seconds.append(time.perf_counter() - start)
        top = graph.top_paths(K)
        relevance = paths.path_relevance(x, target, top)
        heat = paths.heatmap(x, target, top)[0].sum(0)
        first = Paths(top.units[:, :1], top.score[:, :1], top.layers)
        image = ((x[0] + 1) / 2).permute(1, 2, 0)
        title = f"{names[index]}: {labels[target]}"
        best = probabilities[index].topk(5)
        overview.append(
            {
                "image": image,
                "title": f"(A) {title}",
                "graph": graph.to_networkx(0, in_edges=3, k=K),
                "projection": paths.deconvolution(x, first, rectifiers=rectifiers)[0].sum(0),
                "classes": [
                    (labels[int(c)][:18], float(p))
                    for p, c in zip(best.values, best.indices, strict=True)
                ],
            }
        )
        full = paths.nrm.heatmap(x, target)[0].sum(0)
        fig6.append([(image, title), (full, "NRM heatmap (all walks)"), (heat, "5-path heatmap")])
        fig7.append(
            [(image, title)]
            + [
                (
                    paths.deconvolution(x, top, layer=name, rectifiers=rectifiers)[0].sum(0),
                    f"deconvolution, 5 paths' units of {name}",
                )
                for name in (layers[-1], layers[0])
            ]
        )
        graphs.append(graph)
        rows += [{"photo": names[index], **row} for row in _path_rows(top, relevance)]
        report.results.setdefault("efficientnet_distinct", {})[names[index]] = _distinct_units(top)
    report.add_figure(
        plots.overview(overview, layers),
        "fig5_efficientnet_overview",
        "Fig. 5: photo, prediction, neuron graph, deconvolution of the top path",
    )
    report.add_figure(
        plots.heatmap_rows(fig6, "Relevance-based 5-path heatmaps (Fig. 6)"),
        "fig6_efficientnet_kpath",
        "Fig. 6: relevance 5-path heatmaps",
    )
    report.add_figure(
        plots.heatmap_rows(fig7, "Activation-based views: deconvolution (Fig. 7)"),
        "fig7_efficientnet_deconvolution",
        "Fig. 7: deconvolution of the paths",
    )
    report.add_table("EfficientNet-Lite0: top-5 paths", rows, key="efficientnet_paths")
    distinct = report.results["efficientnet_distinct"]
    report.add_table(
        "EfficientNet-Lite0: distinct units per layer in the top-5 paths",
        [
            {
                "layer": name,
                **{
                    photo: table[d]["distinct units in the top paths"]
                    for photo, table in distinct.items()
                },
            }
            for d, name in enumerate(layers)
        ],
        key="efficientnet_distinct_table",
    )
    return {
        "paths": paths,
        "photos": photos,
        "classes": classes,
        "names": names,
        "graphs": graphs,
        "seconds": seconds,
        "layers": layers,
    }


def _thresholds(report: Report, vgg: dict, eff: dict, grid: tuple[float, ...]) -> None:
    tuned: dict[str, Threshold] = {
        "VGG16 (random)": vgg["paths"].tune_threshold(vgg["x"], 0, grid=grid),
        "EfficientNet-Lite0": eff["paths"].tune_threshold(eff["photos"], eff["classes"], grid=grid),
    }
    curves, chosen, rows = {}, {}, []
    for name, found in tuned.items():
        curves[name] = {
            "nmse": found.nmse.mean(1).numpy(),
            "smape": found.smape.mean(1).numpy(),
            "kept_fraction": found.kept_fraction.mean((1, 2)).numpy(),
            "score_ratio": found.score_ratio.mean(1).numpy(),
        }
        chosen[name] = found.chosen
        for index, c in enumerate(grid):
            rows.append(
                {
                    "model": name,
                    "c": c,
                    **{k: float(v[index]) for k, v in curves[name].items()},
                    "kept relevance R(S_Λ)": float(found.kept_relevance[index].mean()),
                    "chosen": "←" if c == found.chosen else "",
                }
            )
    report.add_figure(
        plots.threshold_curves(grid, curves, chosen),
        "threshold_curves",
        "nMSE, SMAPE, kept fraction and class-score ratio vs c",
    )
    report.add_table(
        "Threshold curves (means over images)",
        rows,
        direction={"nmse": "lower", "smape": "lower"},
        key="thresholds",
        note=(
            "Our definition: restricted = NRM heatmap of the walks through the kept units of every "
            "layer; nMSE = mean((H_c − H)²)/mean(H²), SMAPE = mean 2|H_c − H|/(|H_c| + |H|) over "
            "colour-summed pixels; class-score ratio = f_c(x, unkept units zeroed)/f_c(x). The "
            "chosen c keeps the fewest units with mean nMSE ≤ 0.05 (or, if none does, has the "
            f"lowest nMSE: met = {[t.met for t in tuned.values()]})."
        ),
    )
    report.results["chosen_c"] = chosen
    eff_found = tuned["EfficientNet-Lite0"]
    paths, photos, classes = eff["paths"], eff["photos"], eff["classes"]
    restricted = paths.restricted_heatmap(photos, classes, eff_found.chosen)
    full = torch.stack(
        [paths.nrm.heatmap(photos[i : i + 1], int(classes[i]))[0] for i in range(len(photos))]
    )
    fig4 = [
        [
            (((photos[i] + 1) / 2).permute(1, 2, 0), eff["names"][i]),
            (full[i].sum(0), "NRM heatmap (all units)"),
            (restricted[i].sum(0), f"kept units only, c = {eff_found.chosen:g}"),
        ]
        for i in range(len(photos))
    ]
    report.add_figure(
        plots.heatmap_rows(fig4, "Heatmap through the kept units (Fig. 4)"),
        "fig4_efficientnet_restricted",
        "Fig. 4 at the chosen c",
    )


def run(report: Report, quick: bool, progress: bool) -> None:
    """Fill the paths report (see the module docstring)."""
    report.add_text(
        "The paper (Bhati et al., arXiv:2412.05686) reports no numbers: it has Figs. 3–7 only "
        "(VGG16 on ImageNet photos), and its algorithm section (§IV A–C) is missing. The "
        "graph, path, heatmap and threshold definitions here are ours (see "
        "``zennit_ext.paths.api``). VGG16 has random weights (no VGG weights offline)."
    )
    if quick:
        report.add_text(
            "Quick settings: VGG16 on one 32² image (one pairwise pair timed, 1 repeat); "
            "EfficientNet-Lite0 on one photo at 96², blocks ``_blocks.13 … 15``; threshold "
            f"grid c ∈ {QUICK_GRID}."
        )
    with warnings.catch_warnings(), report.stage("VGG16"):
        warnings.simplefilter("ignore", RuntimeWarning)  # random VGG16 weights break eq. 15
        vgg = _vgg16(report, quick)
        _vgg16_report(report, vgg)
    report.write()  # partial results survive an interrupted run
    with report.stage("EfficientNet-Lite0"):
        eff = _efficientnet(report, quick, progress)
    report.write()
    fractions = {
        "VGG16 (random)": (list(VGG_LAYERS), vgg["graph"].kept_fraction().mean(0).numpy()),
        "EfficientNet-Lite0": (
            list(eff["layers"]),
            torch.cat([g.kept_fraction() for g in eff["graphs"]]).mean(0).numpy(),
        ),
    }
    report.add_figure(
        plots.kept_per_layer(fractions),
        "kept_fraction_c1",
        "Kept fraction per layer at the paper's c = 1",
    )
    report.add_table(
        "Kept fraction per layer at c = 1 (mean over images)", _kept_rows(fractions), key="kept_c1"
    )
    report.results["efficientnet_graph_s"] = eff["seconds"]
    report.add_text(
        f"EfficientNet-Lite0 graph (edges by the pairwise fallback, {len(eff['layers'])} "
        f"blocks): {np.mean(eff['seconds']):.1f} s per photo."
    )
    with warnings.catch_warnings(), report.stage("thresholds"):
        warnings.simplefilter("ignore", RuntimeWarning)
        _thresholds(report, vgg, eff, QUICK_GRID if quick else GRID)
