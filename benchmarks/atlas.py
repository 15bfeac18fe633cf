"""ConceptAtlas (dataset-wide ActMax / RelMax after CRP, arXiv:2206.03208) on the
cluttered-image CNN and EfficientNet-Lite0: reference figures, a class graph, the zennit-crp
anchor, throughput with 1 and 2 processes and peak memory at two data sizes.

``python -m benchmarks atlas [--quick]``.

- Atlas of the top two conv blocks (``features.7``, ``features.10``: ReLU outputs, 64 channels
  each) over the test set (quick: 256 images), top-8 per unit, NRM's default rules
  (``on_violation='warn'``: γ on trained convolutions, as in the NRM suite).
- Reference figures for a few units, RelMax (conditional heatmaps from the output) and ActMax.
- One class graph (mean NeuronPaths graph of class 0) with its top-5 paths.
- Throughput (images/s) of ``fit`` in 1 process and in 2 processes (gloo, 1 thread each) and
  the scaling efficiency; the two results are checked to be identical.
- Anchor: zennit-crp 0.6.0's ``FeatureVisualization`` (zennit 0.4.6, side environment
  ``.venv-crp``, ``make crp-env``; skipped with a message without it) on the same model, data
  and rules (``nrm_composite(gamma=None)``: z⁺ on convolutions and dense layers, flat first
  layer, pass on ReLU; :mod:`benchmarks.atlas_crp`), in the same run and threads: ActMax
  top-k indices (must be equal), RelMax agreement (on the trained model crp's z⁺ lets positive
  biases absorb relevance and NRM does not; on a copy whose hidden biases are clamped to ≤ 0
  the rules agree and RelMax must be equal too), images/s of both.
- EfficientNet-Lite0 (ImageNet weights) on the bundled photos plus generated variants of them
  (flips, circular shifts), explained for the predicted class: atlas of the top blocks
  with the NRM suite's rules (z⁺, box stem, ``EfficientNetLiteCanonizer``) and a reference
  figure.
- Peak RSS of a fresh process fitting 64 and 256 (quick) / 10k and 100k (full) generated
  images (each item made from its index, so the data itself is not held): it stays flat, the
  state is O(units × k).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import warnings
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from benchmarks import atlas_crp
from benchmarks import atlas_plots as plots
from benchmarks.data import load_cluttered
from benchmarks.models import get_trained
from benchmarks.models.pretrained import load_efficientnet_lite0, load_photos
from benchmarks.report import Report
from zennit_ext.atlas import ConceptAtlas
from zennit_ext.canonizers import EfficientNetLiteCanonizer
from zennit_ext.nrm.rules import nrm_composite

LAYERS = ["features.7", "features.10"]
K = 8
MODES = ("actmax", "actmean", "relmax")
#: Data sizes of the memory stage (quick, full). At ~80 images/s (1 thread, batches of 64)
#: 10k images take ~2 min, 100k ~20 min.
MEMORY_SIZES = {True: (64, 256), False: (10_000, 100_000)}


class _Generated(Dataset):
    """``n`` images made from their index: a pool image with seeded noise (nothing is held)."""

    def __init__(self, pool: TensorDataset, n: int, noise: float = 0.05) -> None:
        self.pool, self.n, self.noise = pool, n, noise

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        x, y = self.pool[index % len(self.pool)]
        g = torch.Generator().manual_seed(index)
        return x + self.noise * torch.randn(x.shape, generator=g, dtype=x.dtype), y


def _atlas(model, store=None) -> ConceptAtlas:
    return ConceptAtlas(model, LAYERS, top_k=K, store=store, on_violation="warn")


def _fit(model, data, store=None, batch_size=32) -> tuple[ConceptAtlas, float]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        atlas = _atlas(model, store).fit(data, batch_size=batch_size)
    return atlas, time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str, quick: bool, n: int) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, _ = get_trained("cluttered_cnn", quick=quick, progress=False)
        data = _data(n)
        dist.barrier()
        atlas, seconds = _fit(model, data)
        tops = {name: atlas.top(name, "relmax") for name in LAYERS}
        torch.save({"seconds": seconds, "tops": tops}, os.path.join(folder, f"{world}-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _data(n: int) -> TensorDataset:
    test = load_cluttered(n=max(n, 200), seed=11, split="test")
    return TensorDataset(test.x[:n], test.y[:n])


def _processes(world: int, quick: bool, n: int, folder: str) -> dict:
    mp.start_processes(
        _worker,
        args=(world, _free_port(), folder, quick, n),
        nprocs=world,
        join=True,
        start_method="fork",
    )
    parts = [torch.load(os.path.join(folder, f"{world}-{r}.pt")) for r in range(world)]
    return {"seconds": max(p["seconds"] for p in parts), "tops": parts[0]["tops"]}


def _peak_rss(n: int, quick: bool, queue) -> None:
    import resource

    torch.set_num_threads(1)
    model, _ = get_trained("cluttered_cnn", quick=quick, progress=False)
    pool = _data(64)
    atlas, seconds = _fit(model, _Generated(pool, n), batch_size=64)
    state = sum(t.numel() * t.element_size() for t in atlas.state.tensors().values())
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, state, seconds))


def _memory(n: int, quick: bool) -> tuple[float, int, float]:
    context = mp.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_peak_rss, args=(n, quick, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _sequential(model: nn.Module) -> nn.Sequential:
    """The VGGSmall ``features → classifier`` as a Sequential of torch layers (same names), so
    the side environment unpickles it without this repository."""
    return nn.Sequential(OrderedDict(features=model.features, classifier=model.classifier))


def _rules_agree(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    """A copy on which crp's z⁺ and NRM propagate the same shares: hidden biases clamped to ≤ 0
    (z⁺ then conserves, NRM's normalization changes nothing) and the output bias shifted so
    every explained logit is positive (crp starts from the logit, NRM from 1)."""
    import copy

    twin = copy.deepcopy(model)
    *hidden, last = [m for m in twin.modules() if getattr(m, "bias", None) is not None]
    with torch.no_grad():
        for module in hidden:
            module.bias.clamp_(max=0.0)
        logits = twin(x).gather(1, y[:, None])
        last.bias += max(0.0, -float(logits.min())) + 1.0
    return twin


def _anchor(report: Report, quick: bool, model: nn.Module) -> None:
    """ConceptAtlas against zennit-crp's FeatureVisualization (same run, data, rules, threads)."""
    if not atlas_crp.SIDE_PYTHON.exists():
        message = (
            f"zennit-crp anchor skipped: {atlas_crp.SIDE_PYTHON.parent.parent.name} is absent "
            "(`make crp-env` creates it: zennit 0.4.6 and zennit-crp 0.6.0 from PyPI)."
        )
        print(message)
        report.add_text(message)
        report.results["crp_anchor"] = "skipped: no .venv-crp"
        return
    n, batch = (128, 32) if quick else (1024, 32)
    data = _data(n)
    x, y = data.tensors
    models = {"trained": _sequential(model)}
    models["hidden biases ≤ 0"] = _rules_agree(models["trained"], x, y)
    ours, seconds = {}, {}
    for name, net in models.items():
        start = time.perf_counter()
        atlas = ConceptAtlas(net, LAYERS, composite=nrm_composite(gamma=None), top_k=K)
        atlas.fit(data, batch_size=batch)
        seconds[name] = time.perf_counter() - start
        ours[name] = {(layer, mode): atlas.top(layer, mode) for layer in LAYERS for mode in MODES}
    answer = atlas_crp.run_crp(models, x, y, LAYERS, batch)
    rows = []
    for name, theirs in answer["models"].items():
        for (layer, mode), table in theirs["tables"].items():
            found = atlas_crp.compare(ours[name][(layer, mode)], table, K)
            rows.append({"model": name, "layer": layer, "mode": mode, **found})
    speed = {
        "ours images/s": n / seconds["trained"],
        "crp images/s": n / answer["models"]["trained"]["seconds"],
    }
    speed["ratio"] = speed["ours images/s"] / speed["crp images/s"]
    versions = ", ".join(f"{k} {v}" for k, v in answer["versions"].items())
    report.add_table(
        f"Anchor: ConceptAtlas vs zennit-crp FeatureVisualization ({n} test images, top-{K})",
        rows,
        direction={"units equal": "higher", "equal up to ties": "higher", "mean overlap": "higher"},
        note=f"crp side: {versions}. Rules of both: z⁺ on convolutions and dense layers, flat "
        "first layer, pass on ReLU (nrm_composite(gamma=None)). ActMax: spatial maximum, no "
        "per-sample normalization (crp max_target='max', abs_norm=False). RelMax: crp's "
        "defaults (spatial sum, divided by Σ|R| over channels) vs NRM's share of the output. "
        "On the trained model the RelMax orders differ because crp's z⁺ lets the positive "
        "biases of the layers above absorb relevance (NRM normalizes them away); on the copy "
        "with hidden biases ≤ 0 the rules agree.",
        key="crp_anchor",
    )
    report.add_table(
        f"Anchor throughput (fit vs FeatureVisualization.run, {torch.get_num_threads()} threads)",
        [speed],
        direction={"ours images/s": "higher", "crp images/s": "higher", "ratio": "higher"},
        key="crp_speed",
    )


def _variants(photos: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` generated images: random flips and circular shifts (up to a quarter of the side)
    of the photos (seeded). No resampling or colour shifts: NRM's linearity check of the box
    rule at the stem currently refuses bilinearly resized crops and clamped colour shifts."""
    g = torch.Generator().manual_seed(5)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = photo.shape[-1]
        shifts = torch.randint(-side // 4, side // 4 + 1, (2,), generator=g).tolist()
        image = photo.roll(shifts, dims=(-2, -1))
        if torch.rand(1, generator=g).item() < 0.5:
            image = image.flip(-1)
        out.append(image)
    return torch.stack(out)


def _efficientnet(report: Report) -> None:
    """Atlas of EfficientNet-Lite0's top blocks on photos plus generated images (full run
    only: NRM takes ~7 s per 96² image on 2 busy cores, the column sums of every layer)."""
    size, extra = 224, 10
    layers = ["_blocks.14", "_blocks.15"]
    model = load_efficientnet_lite0()
    photos, _ = load_photos(size)
    x = torch.cat([photos, _variants(photos, extra)])
    with torch.no_grad():
        y = model(x).argmax(1)
    data = TensorDataset(x, y)
    composite = nrm_composite(
        low=-1.0, high=1.0, gamma=None, canonizers=[EfficientNetLiteCanonizer()]
    )
    start = time.perf_counter()
    atlas = ConceptAtlas(model, layers, composite=composite, top_k=4, on_violation="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        atlas.fit(data, batch_size=8)
        seconds = time.perf_counter() - start
        relevance = atlas.statistics(layers[-1])["relevance"].sum(0)
        units = relevance.argsort(descending=True)[:3].tolist()
        fig = atlas.figure(layers[-1], units, data, k=4, mode="relmax")
    report.add_figure(
        fig, "efficientnet_references", f"EfficientNet-Lite0 {layers[-1]} units {units}, relmax"
    )
    summary = atlas.summary()
    found = {
        "images": len(x),
        "size": size,
        "layers": summary["layers"],
        "seconds": seconds,
        "images/s": len(x) / seconds,
        "units shown": units,
        "distinct classes": int(y.unique().numel()),
    }
    report.add_text(
        f"EfficientNet-Lite0 (ImageNet weights): {len(photos)} photos + {extra} generated images "
        f"at {size}², explained for the predicted class ({found['distinct classes']} classes); "
        f"atlas of {summary['layers']} (top-4) in {seconds:.1f} s ({found['images/s']:.2f} "
        f"images/s); RelMax references of the {len(units)} units of {layers[-1]} with the most "
        "relevance."
    )
    report.results["efficientnet"] = found


def run(report: Report, quick: bool, progress: bool) -> None:
    n = 128 if quick else 2000
    model, info = get_trained("cluttered_cnn", quick=quick, progress=progress)
    data = _data(n)
    with report.stage("fit"), tempfile.TemporaryDirectory() as folder:
        atlas, seconds = _fit(model, data, store=os.path.join(folder, "store"))
        loaded = ConceptAtlas.load(os.path.join(folder, "store"))
        same_store = all(
            torch.equal(a, b)
            for name in LAYERS
            for a, b in zip(atlas.top(name, "relmax"), loaded.top(name, "relmax"), strict=True)
        )
    summary = atlas.summary()
    report.add_text(
        f"Cluttered-image CNN (test accuracy {info['accuracy']:.4f}), {n} test images, layers "
        f"{LAYERS} ({summary['layers']}), top-{K}: one pass in {seconds:.1f} s "
        f"({n / seconds:.1f} images/s, {torch.get_num_threads()} threads); the store read back "
        f"equals the fitted atlas: {same_store}."
    )
    with report.stage("figures"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        relevance = atlas.statistics("features.10")["relevance"].mean(0)
        units = relevance.argsort(descending=True)[:3].tolist()
        for mode in ("relmax", "actmax"):
            fig = atlas.figure("features.10", units, data, k=6, mode=mode)
            report.add_figure(
                fig, f"references_{mode}", f"{mode} references of features.10 units {units}"
            )
        overlap = [
            len(
                set(atlas.top("features.10", "relmax")[0][u].tolist())
                & set(atlas.top("features.10", "actmax")[0][u].tolist())
            )
            for u in range(64)
        ]
        graph = atlas.class_graph(data, 0)
        report.add_figure(
            plots.class_graph(graph), "class_graph_0", "mean graph of class 0, top-5 paths"
        )
    report.add_text(
        f"RelMax and ActMax top-{K} share {sum(overlap) / len(overlap):.2f} samples per unit "
        f"of features.10 on average (of {K}). Class 0 graph over {graph.count} images."
    )
    with report.stage("crp anchor"):
        _anchor(report, quick, model)
    if quick:  # 70 s for 8 photos at 96² alone: the full run only
        report.add_text("EfficientNet-Lite0 atlas: full run only (`python -m benchmarks atlas`).")
    else:
        with report.stage("efficientnet"):
            _efficientnet(report)
    with report.stage("processes"), tempfile.TemporaryDirectory() as folder:
        n_speed = 96 if quick else 512
        one = _processes(1, quick, n_speed, folder)
        two = _processes(2, quick, n_speed, folder)
        equal = all(
            torch.equal(a, b)
            for name in LAYERS
            for a, b in zip(one["tops"][name], two["tops"][name], strict=True)
        )
    speed = [
        {"processes": 1, "images/s": n_speed / one["seconds"], "efficiency": 1.0},
        {
            "processes": 2,
            "images/s": n_speed / two["seconds"],
            "efficiency": one["seconds"] / two["seconds"] / 2,
        },
    ]
    report.add_table(
        f"Throughput of fit ({n_speed} images, 1 thread per process, gloo)",
        speed,
        direction={"images/s": "higher", "efficiency": "higher"},
        note=f"2 processes equal 1 process exactly: {equal}. The machine has 2 cores shared "
        "with other jobs: the efficiency is a lower bound.",
    )
    with report.stage("memory"):
        sizes = MEMORY_SIZES[quick]
        keys = ("peak RSS (MiB)", "state bytes", "seconds")
        memory = [dict(zip(keys, _memory(s, quick), strict=True)) for s in sizes]
    report.add_table(
        "Peak memory of a fresh process fitting N generated images (made from their index)",
        [{"images": s, **m} for s, m in zip(sizes, memory, strict=True)],
        direction={"peak RSS (MiB)": "lower"},
    )
    report.results.update(
        {
            "images_per_s": n / seconds,
            "speed": speed,
            "two_equal_one": equal,
            "store_roundtrip": same_store,
            "memory": memory,
            "relmax_actmax_overlap": sum(overlap) / len(overlap),
        }
    )
