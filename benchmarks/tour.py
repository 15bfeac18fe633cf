"""The demo's tour: every offline data set with its masks, the reference models' accuracy,
and the pretrained EfficientNet-Lite0 on real photos."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.data import load_cluttered, load_dna, load_parts, load_shapes  # noqa: E402
from benchmarks.models import (  # noqa: E402
    MODEL_NAMES,
    get_trained,
    imagenet_classes,
    load_efficientnet_lite0,
    load_photos,
    trained_info,
)
from benchmarks.report import Report  # noqa: E402


def _image_sets_figure() -> plt.Figure:
    sets = {
        "shapes": load_shapes(n=64),
        "cluttered": load_cluttered(n=64),
        "cluttered 96 px (Fashion-MNIST)": load_cluttered(n=64, size=96, source="fashion"),
        "parts": load_parts(n=64),
    }
    fig, axes = plt.subplots(2 * len(sets), 4, figsize=(8, 4 * len(sets)))
    for row, (name, data) in enumerate(sets.items()):
        for col in range(4):
            image, mask = data.x[col].permute(1, 2, 0), data.mask[col]
            parts = (mask.float() * torch.arange(1, len(mask) + 1)[:, None, None]).sum(0)
            axes[2 * row, col].imshow(image.clamp(0, 1))
            axes[2 * row, col].set_title(f"{name}: {data.classes[data.y[col]]}", fontsize=7)
            axes[2 * row + 1, col].imshow(parts, cmap="magma")
            axes[2 * row + 1, col].set_title("ground-truth mask", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _dna_figure() -> plt.Figure:
    data = load_dna(n=16)
    index = int(torch.nonzero(data.y)[0])
    fig, ax = plt.subplots(figsize=(10, 2))
    ax.imshow(data.x[index], aspect="auto", cmap="Greys", interpolation="nearest")
    ax.imshow(data.mask[index].expand(4, -1), aspect="auto", cmap="Reds", alpha=0.35)
    ax.set_yticks(range(4), list("ACGT"))
    names = data.meta["motif_names"]
    planted = [(names[m], s) for m, s in data.meta["planted"][index].tolist() if m >= 0]
    ax.set_title(f"one-hot DNA, planted motifs (red): {planted}", fontsize=8)
    return fig


def run(report: Report, quick: bool, progress: bool) -> None:
    """Fill the tour report: data figures, model accuracies, ImageNet predictions."""
    report.add_text(
        "A tour of the offline data sets and reference models every suite builds on. "
        "Data sources and licences: `benchmarks/data/README.md`."
    )
    report.add_figure(_image_sets_figure(), "image_sets", "image sets and their exact masks")
    report.add_figure(_dna_figure(), "dna", "synthetic genomics with real JASPAR motifs")

    rows, untrained = [], []
    for name in MODEL_NAMES:
        if quick:  # the demo shows what the suites before it trained; it trains nothing itself
            info = trained_info(name, quick=True)
            if info is None:
                untrained.append(name)
                continue
        else:
            _model, info = get_trained(name, quick=False, progress=progress)
        rows.append(
            {
                "model": name,
                "accuracy": info["accuracy"],
                "roc_auc": info.get("roc_auc", float("nan")),
                "n_train": info["n_train"],
                "epochs": info["epochs"],
                "train_s": info["train_time_s"],
            }
        )
    report.add_table(
        "Reference models (test split)",
        rows,
        direction={"accuracy": "higher", "roc_auc": "higher"},
        note=f"{'Quick' if quick else 'Full'} training settings; train_s is the time of the "
        "run that filled the cache."
        + (
            f" Not trained by the quick suites (the full run trains them): {', '.join(untrained)}."
            if untrained
            else ""
        ),
        key="models",
    )

    model = load_efficientnet_lite0()
    x, names = load_photos()
    with torch.no_grad():
        probs = model(x).softmax(1)
    classes = imagenet_classes()
    top = probs.max(1)
    report.add_table(
        "Pretrained EfficientNet-Lite0 on real photos",
        [
            {"photo": n, "top-1": classes[i], "p": p.item()}
            for n, i, p in zip(names, top.indices, top.values, strict=True)
        ],
        key="efficientnet",
    )
