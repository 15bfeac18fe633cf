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
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks import paths_plots as plots
from benchmarks.models.pretrained import imagenet_classes, load_efficientnet_lite0, load_photos
from benchmarks.paths_claims import KINDS, claims, pearson, spread
from benchmarks.report import Report
from benchmarks.timing import compare, time_call
from zennit_ext import NRM
from zennit_ext.canonizers import EfficientNetLiteCanonizer
from zennit_ext.nrm.rules import nrm_composite
from zennit_ext.paths.api import NeuronGraph, NeuronPaths, Paths, Threshold

VGG_LAYERS = tuple(f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
GRID = (1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0)
QUICK_GRID = (1.0, 0.0, -1.0)
K = 5
BLOCKS = ("features.2", "features.28")  # conv → ReLU → MaxPool blocks for Algorithm 2


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``quick``/full defaults from :meth:`of`; tests pass smaller ones)."""

    vgg_size: int
    timed_pairs: tuple[tuple[str, str], ...]
    repeats: int
    photos: int
    photo_size: int
    blocks: tuple[int, ...]
    grid: tuple[float, ...]
    vgg_layers: tuple[str, ...] = VGG_LAYERS

    @classmethod
    def of(cls, quick: bool) -> Settings:
        if quick:
            return cls(32, (("features.26", "features.28"),), 1, 1, 96, (13, 14, 15), QUICK_GRID)
        pairs = (("features.26", "features.28"), ("features.0", "features.2"))
        return cls(224, pairs, 3, 6, 224, tuple(range(16)), GRID)


def _both(paths: NeuronPaths, x: torch.Tensor, target, graph: NeuronGraph) -> dict:
    """The NRM-selected graph and the same graph selected on plain LRP relevance."""
    lrp = graph.with_relevance(paths.unit_relevance(x, target, "lrp"), "lrp")
    return {"lrp": lrp, "nrm": graph}


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


def _vgg16(report: Report, settings: Settings) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    size = settings.vgg_size  # quick: the same 13 layers and 4,224 channels, 49× fewer pixels
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    layers = settings.vgg_layers
    composite = nrm_composite(low=0.0, high=1.0)
    paths = NeuronPaths(model, layers, composite=composite, on_violation="warn")
    built = {}

    def ours() -> Paths:
        built["graph"] = paths.graph(x, 0)
        return built["graph"].top_paths(K)

    def heatmap() -> torch.Tensor:
        return paths.nrm.heatmap(x, 0)

    repeats = settings.repeats
    timing = compare(ours, heatmap, warmup=0 if repeats == 1 else 1, repeats=repeats)
    graphs = _both(paths, x, 0, built["graph"])  # the last timed run's graph
    graph = graphs["nrm"]
    tops = {kind: g.top_paths(K) for kind, g in graphs.items()}
    relevance = {kind: paths.path_relevance(x, 0, top) for kind, top in tops.items()}
    channels = sum(graph.relevance[name].shape[1] for name in layers)
    edges = sum(e[0].numel() for e in graph.edges.values())
    report.add_speed(
        "VGG16 graph + top-5 paths (13 layers)",
        timing,
        ours="NeuronPaths.graph + top_paths",
        anchor="one NRM.heatmap",
    )
    dp = time_call(lambda: graph.top_paths(K), warmup=1, repeats=3)
    rows = [
        {"measurement": "graph + top-5 paths (ours)", "seconds": timing["ours_s"]},
        {"measurement": "one NRM.heatmap (anchor)", "seconds": timing["anchor_s"]},
        {"measurement": "ratio ours / heatmap (target ≤ 2)", "seconds": timing["ratio"]},
        {"measurement": "k-best DP alone", "seconds": dp},
    ]
    note = f"{channels} channels, {edges:,} channel edges, one {size}² image, "
    note += f"{torch.get_num_threads()} threads."
    agreement = []
    if settings.timed_pairs:
        # anchor 2: pairwise (batched partial backward, no fast path) per adjacent pair
        reference = NRM(
            model,
            layers,
            composite=nrm_composite(low=0.0, high=1.0),
            on_violation="warn",
            messages_per_pass=512,
            fast=False,
        )
        work = _conv_work(model, x, layers)
        seconds = {}
        for pair in settings.timed_pairs:
            start = time.perf_counter()
            table = reference.pairwise(x, 0, *pair)
            seconds[pair] = time.perf_counter() - start
            scale = table.abs().max()
            agreement.append(float((graph.edges[pair] - table).abs().max() / scale))
        rate = sum(seconds.values()) / sum(work[pair] for pair in seconds)
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
            anchor=f"NRM.pairwise per adjacent pair ({len(seconds)} timed, "
            "rest extrapolated by n_upper × MACs)",
        )
        rows += [
            {"measurement": f"pairwise {a} × {b} (fast=False, timed)", "seconds": s}
            for (a, b), s in seconds.items()
        ]
        rows.append(
            {"measurement": f"pairwise, all {len(work)} pairs (extrapolated)", "seconds": anchor_s}
        )
        note += (
            f" Edges equal the reference pairwise to {max(agreement):.1e} (max abs difference /"
            " max |edge|) on the timed pairs."
        )
    report.add_table("VGG16: speed", rows, key="vgg16_speed", note=note)
    return {
        "graphs": graphs,
        "tops": tops,
        "relevance": relevance,
        "paths": paths,
        "x": x,
        "layers": layers,
        "timing": timing,
        "agreement": max(agreement, default=float("nan")),
    }


def _vgg16_report(report: Report, found: dict) -> None:
    graphs, tops, paths, x = found["graphs"], found["tops"], found["paths"], found["x"]
    row = [(x[0].permute(1, 2, 0), "input (random)")]
    row += [
        (paths.heatmap(x, 0, tops[kind])[0].sum(0), f"5-path heatmap ({kind})") for kind in KINDS
    ]
    fig = plots.heatmap_rows([row], "VGG16 (random weights)")
    report.add_figure(fig, "vgg16_heatmap", "VGG16 (random weights): relevance 5-path heatmaps")
    fig = plots.graphs(
        {kind: graphs[kind].to_networkx(0, in_edges=4, k=K) for kind in KINDS},
        found["layers"],
        "VGG16 (random weights): neuron graph, top-5 paths in red (Fig. 3), units kept by",
    )
    report.add_figure(fig, "fig3_vgg16_graph", "Fig. 3: VGG16 neuron graphs with the top-5 paths")
    for kind in KINDS:
        report.add_table(
            f"VGG16: top-5 paths (units selected by {kind})",
            _path_rows(tops[kind], found["relevance"][kind]),
            key=f"vgg16_paths_{kind}",
        )
    report.add_table(
        "VGG16: distinct units per layer in the top-5 paths (nrm)",
        _distinct_units(tops["nrm"]),
        key="vgg16_distinct",
    )
    rows, blocks = [], [block for block in BLOCKS if block in found["layers"]]
    for kind in KINDS:
        first = Paths(tops[kind].units[:, :1], tops[kind].score[:, :1], tops[kind].layers)
        for block in blocks:
            rebuilt = paths.reconstruct_block(x, first, layer=block)[0].sum(0)
            unit = int(first.units[0, 0, found["layers"].index(block)])
            rows.append((rebuilt, f"{kind}: {block} unit {unit} → block input"))
    report.add_figure(
        plots.heatmap_rows([rows[: len(blocks)], rows[len(blocks) :]], "Algorithm 2"),
        "alg2_vgg16_blocks",
        "Algorithm 2: the input of one block (conv → ReLU → max-pool) rebuilt from the top "
        "path's unit (switches, unpool, transposed convolution; summed over the input maps)",
    )


def _kept_rows(fractions: dict[tuple[str, str], tuple[list[str], np.ndarray]]) -> list[dict]:
    rows = []
    for (model, kind), (layers, values) in fractions.items():
        rows += [
            {"model": model, "selected by": kind, "layer": n, "kept fraction at c = 1": float(v)}
            for n, v in zip(layers, values, strict=True)
        ]
    return rows


def _efficientnet(report: Report, settings: Settings, progress: bool) -> dict:
    model = load_efficientnet_lite0()
    photos, names = load_photos(settings.photo_size)
    photos, names = photos[: settings.photos], names[: settings.photos]
    layers = tuple(f"_blocks.{i}" for i in settings.blocks)
    labels = imagenet_classes()
    with torch.no_grad():
        probabilities = model(photos).softmax(1)
    classes = probabilities.argmax(1)
    composite = nrm_composite(
        low=-1.0, high=1.0, gamma=None, canonizers=[EfficientNetLiteCanonizer()]
    )
    paths = NeuronPaths(model, layers, composite=composite)
    rectifiers = (nn.ReLU, nn.ReLU6)
    overview, fig6, fig7, seconds, rows = [], [], [], [], []
    graphs: dict[str, list[NeuronGraph]] = {kind: [] for kind in KINDS}
    measures: dict[str, dict[str, list[float]]] = {kind: {} for kind in KINDS}
    for index in tqdm(
        range(len(photos)), desc="paths EfficientNet", disable=None if progress else True
    ):
        x, target = photos[index : index + 1], int(classes[index])
        start = time.perf_counter()
        graph = paths.graph(x, target)
        seconds.append(time.perf_counter() - start)
        both = _both(paths, x, target, graph)
        image = ((x[0] + 1) / 2).permute(1, 2, 0)
        title = f"{names[index]}: {labels[target]}"
        best = probabilities[index].topk(5)
        full = paths.nrm.heatmap(x, target)[0].sum(0)
        fig6.append([(image, title), (full, "NRM heatmap (all walks)")])
        fig7.append([(image, title)])
        for kind, chosen in both.items():
            top = chosen.top_paths(K)
            relevance = paths.path_relevance(x, target, top)
            heat = paths.heatmap(x, target, top)[0].sum(0)
            active = paths.activation_heatmap(x, top)[0]
            first = Paths(top.units[:, :1], top.score[:, :1], top.layers)
            overview.append(
                {
                    "image": image,
                    "title": f"(A) {title} [{kind}]",
                    "graph": chosen.to_networkx(0, in_edges=3, k=K),
                    "projection": paths.deconvolution(x, first, rectifiers=rectifiers)[0].sum(0),
                    "classes": [
                        (labels[int(c)][:18], float(p))
                        for p, c in zip(best.values, best.indices, strict=True)
                    ],
                }
            )
            fig6[-1].append((heat, f"5-path heatmap ({kind})"))
            fig7[-1].append((active, f"activation 5-path heatmap ({kind})"))
            for name, value in (
                ("corr_full", pearson(heat, full)),
                ("corr_act", pearson(active, heat)),
                ("spread_act", spread(active)),
                ("spread_rel", spread(heat)),
            ):
                measures[kind].setdefault(name, []).append(value)
            graphs[kind].append(chosen)
            rows += [
                {"photo": names[index], "selected by": kind, **row}
                for row in _path_rows(top, relevance)
            ]
            distinct = report.results.setdefault(f"efficientnet_distinct_{kind}", {})
            distinct[names[index]] = _distinct_units(top)
        top = both["nrm"].top_paths(K)
        fig7[-1].append(
            (
                paths.deconvolution(x, top, layer=layers[-1], rectifiers=rectifiers)[0].sum(0),
                f"deconvolution, 5 paths' units of {layers[-1]} (nrm)",
            )
        )
    report.add_figure(
        plots.overview(overview, layers),
        "fig5_efficientnet_overview",
        "Fig. 5: photo, prediction, neuron graph (units selected by lrp, then nrm), "
        "deconvolution of the top path",
    )
    report.add_figure(
        plots.heatmap_rows(fig6, "Relevance-based 5-path heatmaps (Fig. 6), units kept by"),
        "fig6_efficientnet_kpath",
        "Fig. 6: relevance 5-path heatmaps, paths through units selected by lrp and by nrm",
    )
    report.add_figure(
        plots.heatmap_rows(fig7, "Activation-based 5-path heatmaps and deconvolution (Fig. 7)"),
        "fig7_efficientnet_activation",
        "Fig. 7: activation-based 5-path heatmaps (lrp, nrm) and the deconvolution view",
    )
    report.add_table("EfficientNet-Lite0: top-5 paths", rows, key="efficientnet_paths")
    distinct = report.results["efficientnet_distinct_nrm"]
    report.add_table(
        "EfficientNet-Lite0: distinct units per layer in the top-5 paths (nrm)",
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
        "measures": {k: {n: float(np.mean(v)) for n, v in m.items()} for k, m in measures.items()},
    }


def _thresholds(report: Report, vgg: dict, eff: dict, grid: tuple[float, ...]) -> dict:
    tuned: dict[tuple[str, str], Threshold] = {}
    for kind in KINDS:
        tuned[("VGG16 (random)", kind)] = vgg["paths"].tune_threshold(
            vgg["x"], 0, grid=grid, relevance=kind
        )
        tuned[("EfficientNet-Lite0", kind)] = eff["paths"].tune_threshold(
            eff["photos"], eff["classes"], grid=grid, relevance=kind
        )
    curves, chosen, rows = {}, {}, []
    for (name, kind), found in tuned.items():
        label = f"{name}, {kind}"
        curves[label] = {
            "nmse": found.nmse.mean(1).numpy(),
            "smape": found.smape.mean(1).numpy(),
            "kept_fraction": found.kept_fraction.mean((1, 2)).numpy(),
            "score_ratio": found.score_ratio.mean(1).numpy(),
        }
        chosen[label] = found.chosen
        for index, c in enumerate(grid):
            rows.append(
                {
                    "model": name,
                    "selected by": kind,
                    "c": c,
                    **{k: float(v[index]) for k, v in curves[label].items()},
                    "kept relevance R(S_Λ)": float(found.kept_relevance[index].mean()),
                    "chosen": "←" if c == found.chosen else "",
                }
            )
    report.add_figure(
        plots.threshold_curves(grid, curves, chosen),
        "threshold_curves",
        "nMSE, SMAPE, kept fraction and class-score ratio vs c (units selected by lrp or nrm)",
    )
    report.add_table(
        "Threshold curves (means over images)",
        rows,
        direction={"nmse": "lower", "smape": "lower"},
        key="thresholds",
        note=(
            "Our definition: restricted = NRM heatmap of the walks through the kept units of every "
            "layer (kept by plain LRP or by NRM relevance); nMSE = mean((H_c − H)²)/mean(H²), "
            "SMAPE = mean 2|H_c − H|/(|H_c| + |H|) over colour-summed pixels; class-score ratio "
            "= f_c(x, unkept units zeroed)/f_c(x). The chosen c keeps the fewest units with mean "
            "nMSE ≤ 0.05 (or, if none does, has the lowest nMSE: met = "
            f"{[t.met for t in tuned.values()]})."
        ),
    )
    report.results["chosen_c"] = {f"{m}, {k}": t.chosen for (m, k), t in tuned.items()}
    paths, photos, classes = eff["paths"], eff["photos"], eff["classes"]
    full = torch.stack(
        [paths.nrm.heatmap(photos[i : i + 1], int(classes[i]))[0] for i in range(len(photos))]
    )
    restricted = {
        kind: paths.restricted_heatmap(
            photos, classes, tuned[("EfficientNet-Lite0", kind)].chosen, relevance=kind
        )
        for kind in KINDS
    }
    fig4 = [
        [
            (((photos[i] + 1) / 2).permute(1, 2, 0), eff["names"][i]),
            (full[i].sum(0), "NRM heatmap (all units)"),
            *[
                (
                    restricted[kind][i].sum(0),
                    f"kept by {kind}, c = {tuned[('EfficientNet-Lite0', kind)].chosen:g}",
                )
                for kind in KINDS
            ],
        ]
        for i in range(len(photos))
    ]
    report.add_figure(
        plots.heatmap_rows(fig4, "Heatmap through the kept units (Fig. 4)"),
        "fig4_efficientnet_restricted",
        "Fig. 4 at the chosen c, units kept by lrp and by nrm",
    )
    return {kind: tuned[("EfficientNet-Lite0", kind)] for kind in KINDS}


def _claims(report: Report, eff: dict, tuned: dict[str, Threshold], grid: tuple) -> None:
    at_one = grid.index(1.0)
    measures = {}
    for kind in KINDS:
        found = tuned[kind]
        measures[kind] = {
            **eff["measures"][kind],
            "kept_c1": float(found.kept_fraction[at_one].mean()),
            "nmse_c1": float(found.nmse[at_one].mean()),
            "score_ratio_c1": float(found.score_ratio[at_one].mean()),
            "chosen_c": found.chosen,
            "met": found.met,
        }
    report.results["claim_measures"] = measures
    rows = claims(measures)
    report.add_table(
        "Claims (EfficientNet-Lite0 on photos; units selected by plain LRP or NRM)",
        rows,
        key="claims",
        note=(
            "The paper gives no values besides c = 1 and k = 5; each claim is tested as stated "
            "in 'tested as' on the means over the photos. Edges and path scores are NRM joint "
            "relevance under both selections."
        ),
    )


def run(report: Report, quick: bool, progress: bool, settings: Settings | None = None) -> None:
    """Fill the paths report (see the module docstring); ``settings`` overrides the sizes."""
    settings = Settings.of(quick) if settings is None else settings
    report.add_text(
        "The paper (Bhati et al., arXiv:2412.05686) reports no numbers: it has Figs. 3–7 only "
        "(VGG16 on ImageNet photos), and its algorithm section (§IV A–C) is missing. The "
        "graph, path, heatmap and threshold definitions here are ours (see "
        "``zennit_ext.paths.api``). VGG16 has random weights (no VGG weights offline). Units "
        "are selected twice: by plain LRP relevance (the paper's Algorithm 1, 'lrp') and by NRM "
        "relevance (our default, 'nrm')."
    )
    if quick:
        report.add_text(
            f"Quick settings: VGG16 on one {settings.vgg_size}² image "
            f"({len(settings.timed_pairs)} pairwise pair timed, {settings.repeats} repeat); "
            f"EfficientNet-Lite0 on {settings.photos} photo at {settings.photo_size}², blocks "
            f"{settings.blocks}; threshold grid c ∈ {settings.grid}."
        )
    with warnings.catch_warnings(), report.stage("VGG16"):
        warnings.simplefilter("ignore", RuntimeWarning)  # random VGG16 weights break eq. 15
        vgg = _vgg16(report, settings)
        _vgg16_report(report, vgg)
    report.write()  # partial results survive an interrupted run
    with report.stage("EfficientNet-Lite0"):
        eff = _efficientnet(report, settings, progress)
    report.write()
    fractions = {}
    for kind in KINDS:
        fractions[("VGG16 (random)", kind)] = (
            list(vgg["layers"]),
            vgg["graphs"][kind].kept_fraction().mean(0).numpy(),
        )
        fractions[("EfficientNet-Lite0", kind)] = (
            list(eff["layers"]),
            torch.cat([g.kept_fraction() for g in eff["graphs"][kind]]).mean(0).numpy(),
        )
    report.add_figure(
        plots.kept_per_layer({f"{m}, {k}": v for (m, k), v in fractions.items()}),
        "kept_fraction_c1",
        "Kept fraction per layer at the paper's c = 1 (units selected by lrp and by nrm)",
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
        tuned = _thresholds(report, vgg, eff, settings.grid)
    _claims(report, eff, tuned, settings.grid)
