"""A ViT trained here, explained five ways: AttnLRP's faithfulness claim checked.

AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024, arXiv:2402.05602) reports higher perturbation faithfulness on
ViT-B/16 than CP-LRP (Ali et al., "XAI for Transformers: Better Explanations through
Conservative Propagation", ICML 2022, arXiv:2202.07304) and input × gradient. Here: a 4-block
torchvision ViT trained on the part-annotated figures (:func:`benchmarks.data.load_parts`,
3 classes, 64², 8×8 patches; quick: the same ViT at 32²), correctly classified test images
explained with AttnLRP, CP-LRP, input × gradient (Captum), and PLRP-λ / PLRP-M over AttnLRP
("Sparse Explanations of Neural Networks Using Pruned Layer-Wise Relevance Propagation").

Metrics (Quantus 0.6): region perturbation over the ViT's own patches
(``RegionPerturbation``; Quantus' "black" baseline, the image's minimum; the drop of the class
logit), most relevant first (MoRF) and least relevant first (LeRF), with ties among equal patch
relevance in a seeded random order; ``faith_delta`` = mean MoRF drop − mean LeRF drop (the
area between the curves, the paper's ΔA_F); Gini (``Sparseness``) and relevance mass accuracy
against the object mask (``RelevanceMassAccuracy``, positive relevance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks.plrp import region_ranks

__all__ = [
    "METHODS",
    "DIRECTION",
    "relevance",
    "tie_ranked",
    "perturbation_curves",
    "evaluate",
    "claims",
]

METHODS = ("AttnLRP", "CP-LRP", "input×gradient", "PLRP-λ", "PLRP-M")
DIRECTION = {
    "faith_delta": "higher",
    "faith_morf": "higher",
    "faith_lerf": "lower",
    "gini": "higher",
    "rma": "higher",
}
PLRP_P = 0.2  # PLRP-λ's pruning share, as in the zoo
_QUANTUS = {"disable_warnings": True, "display_progressbar": False, "return_aggregate": False}


def _composite(method: str) -> Any:
    from zennit_ext import CPLRP, PLRPM, AttnLRP, PLRPLambda

    return {
        "AttnLRP": AttnLRP,
        "CP-LRP": CPLRP,
        "PLRP-λ": lambda: PLRPLambda(p=PLRP_P, composite=AttnLRP()),
        "PLRP-M": lambda: PLRPM(composite=AttnLRP()),
    }[method]()


def relevance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str) -> np.ndarray:
    """Input relevance of ``method`` for the classes ``y``, summed over colour channels.

    Parameters
    ----------
    model : nn.Module
        Image classifier, (N, 3, H, W) → (N, C).
    x : torch.Tensor
        (N, 3, H, W) images.
    y : torch.Tensor
        (N,) classes explained.
    method : str
        One of :data:`METHODS`.

    Returns
    -------
    numpy.ndarray
        (N, 1, H, W) float32.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "input×gradient":
        from captum.attr import InputXGradient

        a = InputXGradient(model).attribute(x.clone().requires_grad_(), target=y)
        return a.detach().sum(1, keepdim=True).numpy().astype(np.float32)
    from zennit_ext.quantus import explain

    return explain(
        model, x, y, composite=_composite(method), batch_size=16, reduce_channels=True
    ).astype(np.float32)


def tie_ranked(a: np.ndarray, patch: int, seed: int, ascending: bool = False) -> np.ndarray:
    """Relevance replaced by its patch order, so that Quantus' ``np.argsort`` perturbs the
    patches in :func:`~benchmarks.plrp.region_ranks`' order with ties in random order.

    Parameters
    ----------
    a : numpy.ndarray
        (N, 1, H, W) relevance, H and W multiples of ``patch``.
    patch : int
        Side of a region.
    seed : int
        Seed of the tie order (``numpy.random.default_rng``), one permutation per sample.
    ascending : bool
        False: the most relevant patch gets the largest value (for MoRF); True: the least
        relevant patch gets the largest (for LeRF: Quantus' ``lerf`` order reversed).

    Returns
    -------
    numpy.ndarray
        (N, 1, H, W) float32: every pixel of a patch holds ``−rank`` (or ``+rank``), distinct
        per patch.
    """
    n, _, h, w = a.shape
    gh, gw = h // patch, w // patch
    scores = a.reshape(n, gh, patch, gw, patch).sum((2, 4)).reshape(n, -1).astype(np.float64)
    keys = np.random.default_rng(seed).permuted(np.tile(np.arange(gh * gw), (n, 1)), axis=1)
    rank = region_ranks(-scores if ascending else scores, keys).astype(np.float32)
    grid = -rank.reshape(n, 1, gh, 1, gw, 1)
    return np.broadcast_to(grid, (n, 1, gh, patch, gw, patch)).reshape(n, 1, h, w).copy()


def perturbation_curves(
    model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray, patch: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Quantus' ``RegionPerturbation`` MoRF and LeRF logit-drop curves over every patch.

    Parameters
    ----------
    model : nn.Module
        Classifier.
    x : numpy.ndarray
        (N, 3, H, W) images.
    y : numpy.ndarray
        (N,) classes.
    a : numpy.ndarray
        (N, 1, H, W) relevance.
    patch : int
        Region side (the ViT's patch).
    seed : int
        Seed of the random tie order (:func:`tie_ranked`).

    Returns
    -------
    morf, lerf : numpy.ndarray
        (N, regions) drop ``f(x) − f(x̃)`` of the class logit after each perturbed region.
    """
    import quantus

    regions = (x.shape[2] // patch) * (x.shape[3] // patch)
    curves = []
    for ascending in (False, True):
        metric = quantus.RegionPerturbation(
            patch_size=patch,
            order="morf",
            regions_evaluation=regions,
            abs=False,
            normalise=False,
            perturb_baseline="black",
            **_QUANTUS,
        )
        ranked = tie_ranked(a, patch, seed, ascending=ascending)
        scores = metric(
            model=model, x_batch=x, y_batch=y, a_batch=ranked, channel_first=True, softmax=False
        )
        curves.append(np.asarray(scores, dtype=np.float64))
    return curves[0], curves[1]


def _scores(
    model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray, obj: np.ndarray, patch: int
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    import quantus

    morf, lerf = perturbation_curves(model, x, y, a, patch)
    np.random.seed(0)
    common = {"model": model, "x_batch": x, "y_batch": y, "channel_first": True}
    gini = quantus.Sparseness(abs=True, normalise=False, **_QUANTUS)(**common, a_batch=a)
    rma = quantus.RelevanceMassAccuracy(abs=False, normalise=False, **_QUANTUS)(
        **common, a_batch=np.clip(a, 0, None), s_batch=obj
    )
    row = {
        "faith_delta": float((morf - lerf).mean()),
        "faith_morf": float(morf.mean()),
        "faith_lerf": float(lerf.mean()),
        "gini": float(np.nanmean(gini)),
        "rma": float(np.nanmean(np.asarray(rma, dtype=np.float64))),
    }
    return row, morf.mean(0), lerf.mean(0)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    obj: torch.Tensor,
    patch: int,
    progress: bool = False,
    explainer: Callable[..., np.ndarray] = relevance,
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Every method's metrics, mean curves and first heatmaps.

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode.
    x : torch.Tensor
        (N, 3, H, W) images.
    y : torch.Tensor
        (N,) classes explained.
    obj : torch.Tensor
        (N, 1, H, W) bool object mask.
    patch : int
        Region side.
    progress : bool
        tqdm bar over the methods.
    explainer : callable
        ``explainer(model, x, y, method)`` → (N, 1, H, W) relevance (tests substitute one).

    Returns
    -------
    rows : list of dict
        One per method: ``method``, ``faith_delta``, ``faith_morf``, ``faith_lerf``, ``gini``,
        ``rma``, ``seconds``.
    curves : dict
        method → (mean MoRF curve, mean LeRF curve), each (regions,).
    heatmaps : dict
        method → (2, 1, H, W) relevance of the first two images.
    """
    import time

    rows, curves, heatmaps = [], {}, {}
    xn, yn, sn = x.numpy(), y.numpy(), obj.float().numpy()
    for method in tqdm(METHODS, desc="vit faithfulness", disable=None if progress else True):
        start = time.perf_counter()
        a = explainer(model, x, y, method)
        seconds = time.perf_counter() - start
        row, morf, lerf = _scores(model, xn, yn, a, sn, patch)
        rows.append({"method": method, **row, "seconds": seconds})
        curves[method], heatmaps[method] = (morf, lerf), a[:2]
    return rows, curves, heatmaps


def claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AttnLRP's faithfulness claims beside ours: holds when AttnLRP's ΔA_F is the larger.

    Returns
    -------
    list of dict
        ``claim``, ``paper``, ``ours`` (the two ΔA_F values), ``holds``.
    """
    by = {r["method"]: r for r in rows}
    out = []
    for other in ("input×gradient", "CP-LRP"):
        ours, theirs = by["AttnLRP"]["faith_delta"], by[other]["faith_delta"]
        out.append(
            {
                "claim": f"AttnLRP more faithful than {other}",
                "paper": "ViT-B/16 on ImageNet: AttnLRP has the largest area between the "
                f"LeRF and MoRF curves, above {other}",
                "ours": f"ΔA_F {ours:.3g} vs {theirs:.3g}",
                "holds": "holds" if ours > theirs else "fails",
            }
        )
    return out
