"""Prune units of one layer by a score and follow the model's quality (SynXAI §5.4)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from captum_ext._masking import Scorer

__all__ = ["pruning_curve", "masked_units", "recalibrate_batchnorm", "DEFAULT_FRACTIONS"]

DEFAULT_FRACTIONS = tuple(np.round(np.arange(0.0, 0.951, 0.05), 2))


@contextlib.contextmanager
def masked_units(layer: nn.Module, units: Tensor) -> Iterator[None]:
    """Within the block, the layer's output units ``units`` (flat indices) are 0.

    Parameters
    ----------
    layer : nn.Module
        Its output (N, ...) is masked, flattened beyond the batch dimension.
    units : torch.Tensor
        (k,) long, flat unit indices.
    """

    def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        flat = output.reshape(len(output), -1).clone()
        flat[:, units] = 0.0
        return flat.reshape(output.shape)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: Tensor, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running statistics with one pass over ``x`` (in place).

    Statistics are reset and accumulated as an exact average over the batches
    (``momentum=None``); the model is left in eval mode and momenta are restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        model.train()
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()


def _quality(model: nn.Module, x: Tensor, y: Tensor, scorer: Scorer, batch_size: int) -> dict:
    from sklearn.metrics import roc_auc_score

    rows = torch.arange(len(x))
    with torch.no_grad():
        p = torch.cat([scorer(model(x[chunk]), chunk) for chunk in rows.split(batch_size)])
    return {
        "roc_auc": float(roc_auc_score(y.numpy(), p.numpy())),
        "accuracy": float(((p > 0.5).to(y.dtype) == y).float().mean()),
    }


def pruning_curve(
    model: nn.Module,
    layer: nn.Module,
    scores: Tensor | str,
    x_test: Tensor,
    y_test: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    x_recalibrate: Tensor | None = None,
    output_transform: Any = "sigmoid",
    seed: int = 0,
    batch_size: int = 4096,
    progress: bool = True,
) -> dict[str, list[float]]:
    """ROC-AUC and accuracy as the lowest-scored units of ``layer`` are zeroed.

    At each fraction f, the k = int(n · f) units with the lowest score are masked at
    inference (no retraining); the ranking is fixed in advance (SynXAI). With
    ``x_recalibrate``, BatchNorm statistics are re-estimated on it (pruned, train mode,
    no_grad) before each evaluation. The model's parameters, buffers and mode are restored.

    Parameters
    ----------
    model : nn.Module
        Binary classifier; ``output_transform`` turns its output into p(y = 1).
    layer : nn.Module
        Layer whose output units are pruned.
    scores : torch.Tensor or 'random'
        (n,) importance of each unit (Δ, Z, …) or 'random': a fresh seeded ranking per level.
    x_test, y_test : torch.Tensor
        (N, ...) inputs and (N,) 0/1 labels.
    fractions : sequence of float
        Fractions in [0, 1) (default 0, 0.05, …, 0.95).
    x_recalibrate : torch.Tensor, optional
        Training inputs for BatchNorm re-estimation; None skips it.
    output_transform : None, 'sigmoid', 'softmax' or callable
        As in :class:`captum_ext.NeuronSynergy`; for 'softmax' the score is class 1.
    seed : int
        Seed of the random rankings.
    batch_size : int
        Rows per forward pass.
    progress : bool
        Progress bar over fractions (shown only on a terminal).

    Returns
    -------
    dict
        ``fraction``, ``pruned`` (k), ``roc_auc``, ``accuracy``: lists, one entry per fraction.
    """
    with torch.no_grad():
        n = model_output_units(model, layer, x_test[:2])
    if isinstance(scores, str):
        if scores != "random":
            raise ValueError(f"scores must be a tensor of {n} values or 'random', got {scores!r}")
    elif scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) for this layer, got {tuple(scores.shape)}")
    bad = [f for f in fractions if not 0.0 <= f < 1.0]
    if bad:
        raise ValueError(f"fractions must lie in [0, 1), got {bad}")
    target = None if output_transform != "softmax" else 1
    scorer = Scorer(output_transform, target, len(x_test))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    generator = torch.Generator().manual_seed(seed)
    curve: dict[str, list[float]] = {"fraction": [], "pruned": [], "roc_auc": [], "accuracy": []}
    try:
        model.eval()
        for fraction in tqdm(fractions, desc="pruning", disable=None if progress else True):
            k = int(n * fraction)
            ranking = torch.randperm(n, generator=generator) if isinstance(scores, str) else (
                torch.argsort(scores, stable=True))  # fmt: skip
            with masked_units(layer, ranking[:k]):
                if x_recalibrate is not None:
                    recalibrate_batchnorm(model, x_recalibrate)
                quality = _quality(model, x_test, y_test, scorer, batch_size)
            model.load_state_dict(state)
            curve["fraction"].append(float(fraction))
            curve["pruned"].append(k)
            curve["roc_auc"].append(quality["roc_auc"])
            curve["accuracy"].append(quality["accuracy"])
    finally:
        model.load_state_dict(state)
        model.train(training)
    return curve


def model_output_units(model: nn.Module, layer: nn.Module, x: Tensor) -> int:
    """Number of units in one output of ``layer`` (one forward pass on ``x``)."""
    found: list[int] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: found.append(out[0].numel()))
    training = model.training
    try:
        model.eval()
        model(x)
    finally:
        handle.remove()
        model.train(training)
    if not found:
        raise ValueError(f"layer {layer!r} was not called by the model's forward pass")
    return found[0]


__all__ += ["taylor_scores"]


def taylor_scores(
    model: nn.Module, layer: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256
) -> Tensor:
    """First-order Taylor importance of each output channel of ``layer`` (Molchanov et al.).

    From "Pruning Convolutional Neural Networks for Resource Efficient Inference"
    (Molchanov et al., arXiv:1611.06440): the change of the loss when channel c is zeroed,
    to first order, Θ_c = mean over images t of |1/M Σ_m a_{t,c,m} ∂C_t/∂a_{t,c,m}|, with
    C_t the cross-entropy of image t and m over the channel's M positions. The model runs in
    eval mode; its parameters, buffers, gradients and mode are left as they were, and the
    hook is removed, also on error.

    Parameters
    ----------
    model : nn.Module
        Classifier returning (N, classes) logits.
    layer : nn.Module
        Module whose output (N, C, ...) is scored channel by channel.
    x : torch.Tensor
        (N, ...) inputs.
    y : torch.Tensor
        (N,) int64 class labels.
    batch_size : int
        Images per forward and backward pass.

    Returns
    -------
    torch.Tensor
        (C,) non-negative scores in the layer's dtype on its device; prune the lowest first.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same, non-zero number of images, got {len(x)} "
                         f"and {len(y)}")  # fmt: skip
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor) or output.ndim < 2:
            raise TypeError(f"layer must output one (N, C, ...) tensor, got {type(output)}")
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()  # later in-place modules must not write into the leaf

    training = model.training
    handle = layer.register_forward_hook(hook)
    total: Tensor | None = None
    try:
        model.eval()
        with torch.enable_grad():
            for start in range(0, len(x), batch_size):
                captured.clear()
                logits = model(x[start : start + batch_size])
                if not captured:
                    raise ValueError(f"layer {layer!r} was not called by the model's forward")
                loss = nn.functional.cross_entropy(
                    logits, y[start : start + batch_size].to(logits.device), reduction="sum")
                (a,) = captured
                (grad,) = torch.autograd.grad(loss, a)
                part = (a * grad).reshape(*a.shape[:2], -1).mean(-1).abs().sum(0)
                total = part if total is None else total + part
    finally:
        handle.remove()
        model.train(training)
    return total / len(x)
