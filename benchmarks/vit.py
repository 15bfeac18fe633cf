"""The transformers suite: a ViT trained here explained five ways, and the speed of AttnLRP,
PLRP and NRM on ViT-B/16.

``python -m benchmarks vit [--quick]``. Faithfulness, Gini and RMA:
:mod:`benchmarks.vit_faithfulness`; speed ratios: :mod:`benchmarks.transformer_speed`. The
coverage of every torchvision and Hugging Face model is the ``zoo`` suite's.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks import transformer_speed, vit_faithfulness
from benchmarks.report import Report

__all__ = ["run", "settings"]


def settings(quick: bool) -> dict[str, Any]:
    """Model, image side and number of explained images of the run."""
    if quick:
        return {"model": "parts_vit_small", "size": 32, "n_explain": 12, "patch": 8}
    return {"model": "parts_vit", "size": 64, "n_explain": 64, "patch": 8}


def _explained(model: torch.nn.Module, cfg: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The first ``n_explain`` correctly classified test images, their classes and the object
    masks (N, 1, H, W) (union of the part masks)."""
    from benchmarks.data import load_parts

    data = load_parts(n=max(4 * cfg["n_explain"], 200), size=cfg["size"], seed=2)
    with torch.no_grad():
        correct = model(data.x).argmax(1) == data.y
    index = torch.nonzero(correct).flatten()[: cfg["n_explain"]]
    return data.x[index], data.y[index], data.mask[index].any(1, keepdim=True)


def run(report: Report, quick: bool, progress: bool) -> None:
    """Fill ``report``: training, the metric table, AttnLRP's claims, figures, speed."""
    from benchmarks import vit_plots
    from benchmarks.models import get_trained

    cfg = settings(quick)
    report.results["settings"] = cfg
    with report.stage("train"):
        model, info = get_trained(cfg["model"], quick=quick, progress=progress)
    report.results["training"] = info
    with report.stage("faithfulness"):
        x, y, obj = _explained(model, cfg)
        rows, curves, heatmaps = vit_faithfulness.evaluate(model, x, y, obj, cfg["patch"], progress)
    report.add_text(
        vit_faithfulness.__doc__.split("\n\n", 1)[1]
        + f"\n\nModel `{cfg['model']}` ({cfg['size']}², test accuracy {info['accuracy']:.3f}, "
        f"{info['epochs']} epochs, {info['train_time_s']:.0f} s); {len(x)} correctly classified "
        f"test images; PLRP-λ p = {vit_faithfulness.PLRP_P}."
    )
    report.add_table(
        "Faithfulness, Gini, RMA", rows, direction=vit_faithfulness.DIRECTION, key="metrics"
    )
    report.add_table(
        "AttnLRP's claim (arXiv:2402.05602) vs ours",
        vit_faithfulness.claims(rows),
        key="claims",
    )
    report.add_figure(
        vit_plots.curves_figure(curves), "vit_perturbation", "Region perturbation per method"
    )
    report.add_figure(vit_plots.heatmap_figure(x[:2].numpy(), heatmaps), "vit_heatmaps", "Heatmaps")
    with report.stage("speed"):
        speed = transformer_speed.measure(quick)
    _speed_report(report, speed)


def _speed_report(report: Report, speed: dict[str, Any]) -> None:
    report.add_text(
        transformer_speed.__doc__.split("\n\n", 1)[1]
        + f"\n\nModel: {speed['model']}; NRM pairs {speed['pairs']}; LXT installed: "
        f"{speed['lxt']}; torch threads {torch.get_num_threads()}."
    )
    report.add_table(
        "Speed (ratio = ours ÷ anchor)",
        transformer_speed.speed_rows(speed["timings"]),
        direction={"ratio": "lower"},
        key="speed_ratios",
    )
    report.add_table("Where NRM's time goes (cProfile, own time)", speed["profile"], key="profile")
