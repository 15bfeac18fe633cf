"""Prune units of one layer by a score and follow the model's quality (SynXAI §5.4)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from zennit_ext._checks import check_finite

__all__ = [
    "pruning_curve",
    "classification_metrics",
    "masked_units",
    "layer_unit_shape",
    "recalibrate_batchnorm",
    "DEFAULT_FRACTIONS",
    "taylor_scores",
]

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
        if len(units) and (int(units.min()) < 0 or int(units.max()) >= flat.shape[1]):
            raise ValueError(
                f"units must be flat indices in [0, {flat.shape[1]}) of the layer output "
                f"{tuple(output.shape)}, got {units.tolist()}"
            )
        flat[:, units.to(output.device)] = 0.0
        return flat.reshape(output.shape)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, x: Tensor, batch_size: int = 256, seed: int | None = 0
) -> None:
    """Re-estimate every BatchNorm's running statistics with one pass over ``x`` (in place).

    Statistics are reset and accumulated as an exact average over the batches
    (``momentum=None``); the model is left in eval mode and momenta are restored. The rows are
    visited in a seeded random order: batches of rows stored in time order would each come
    from one period, and the average of their variances would miss the variance between
    periods.

    Parameters
    ----------
    model : nn.Module
        Its BatchNorm layers are recalibrated.
    x : torch.Tensor
        (N, ...) inputs, e.g. the training split.
    batch_size : int
        Rows per forward pass in train mode (the statistics' batch size).
    seed : int or None
        Seed of the row order; None keeps the stored order.
    """
    _check_rows("x", x)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    if seed is None:
        order = torch.arange(len(x), device=x.device)
    else:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=generator).to(x.device)
    momenta = [m.momentum for m in norms]
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        model.train()
        for rows in order.split(batch_size):
            model(x[rows])
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()


def _check_rows(name: str, x: Tensor) -> None:
    """ValueError unless ``x`` is a tensor with at least one row and only finite values."""
    if not isinstance(x, Tensor) or x.dim() == 0 or len(x) == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (N, ...) tensor with at least one row, got {got}")
    check_finite(name, x)


def classification_metrics(
    output: Tensor, labels: Tensor, *, threshold: float = 0.0
) -> dict[str, float]:
    """The default quality of :func:`pruning_curve`: ROC-AUC and accuracy, or accuracy.

    Parameters
    ----------
    output : torch.Tensor
        (N, K) or (N,) model outputs. One column is a binary model's logit (ROC-AUC over it,
        accuracy of ``output > threshold``); K > 1 columns are class scores (accuracy of the
        arg-max).
    labels : torch.Tensor
        (N,) class indices (0/1 for a binary model; any dtype).
    threshold : float
        Decision threshold of a one-column output: 0 for a logit, 0.5 for a probability
        (``functools.partial(classification_metrics, threshold=0.5)``).

    Returns
    -------
    dict
        ``roc_auc`` and ``accuracy`` for one column, ``accuracy`` otherwise.
    """
    output = output.detach().reshape(len(output), -1)
    labels = labels.detach().reshape(-1).to(output.device)
    if len(labels) != len(output):
        raise ValueError(
            f"labels must have one entry per output row ({len(output)}), got {len(labels)}"
        )
    if output.shape[1] > 1:
        return {"accuracy": float((output.argmax(1) == labels.long()).double().mean())}
    from sklearn.metrics import roc_auc_score

    score = output[:, 0]
    return {
        "roc_auc": float(roc_auc_score(labels.cpu().numpy(), score.double().cpu().numpy())),
        "accuracy": float(((score > threshold).long() == labels.long()).double().mean()),
    }


def _unit_groups(layer_mask: Tensor | None, unit_shape: torch.Size) -> Tensor:
    """Group id of every flat unit: (n_units,) long, ids 0 … G-1, from Captum's layer mask."""
    n_units = int(np.prod(unit_shape))
    if layer_mask is None:
        return torch.arange(n_units)
    if layer_mask.dtype.is_floating_point or layer_mask.dtype == torch.bool:
        raise ValueError(f"layer_mask must hold integer group ids, got dtype {layer_mask.dtype}")
    shape = (1, *unit_shape)
    try:
        groups = torch.broadcast_to(layer_mask.detach().cpu(), shape).reshape(-1).long()
    except RuntimeError:
        raise ValueError(
            f"layer_mask must broadcast to the layer output {shape} (batch dimension 1), "
            f"got shape {tuple(layer_mask.shape)}"
        ) from None
    present = groups.unique()
    if int(present.min()) != 0 or len(present) != int(present.max()) + 1:
        raise ValueError(
            f"layer_mask must use every group id 0 … G-1, got ids "
            f"{present.tolist()[:10]}{' …' if len(present) > 10 else ''}"
        )
    return groups


def pruning_curve(
    model: nn.Module,
    layer: nn.Module,
    scores: Tensor | str,
    x_test: Tensor,
    y_test: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    x_recalibrate: Tensor | None = None,
    layer_mask: Tensor | None = None,
    metric: Callable[[Tensor, Tensor], Mapping[str, float]] = classification_metrics,
    seed: int = 0,
    batch_size: int = 4096,
    show_progress: bool = False,
) -> dict[str, list[float]]:
    """The model's quality as the lowest-scored units (or unit groups) of ``layer`` are zeroed.

    At each fraction f, the k = int(n · f) units with the lowest score are masked at
    inference (no retraining); the ranking is fixed in advance (SynXAI). With
    ``x_recalibrate``, BatchNorm statistics are re-estimated on it (pruned, train mode,
    no_grad, rows in a random order seeded by ``seed``) before each evaluation. The model's
    parameters, buffers, hooks and mode are restored, also when an error is raised.

    Parameters
    ----------
    model : nn.Module
        Any classifier (or model ``metric`` can judge).
    layer : nn.Module
        Layer whose output units are pruned.
    scores : torch.Tensor or 'random'
        (n,) importance of each unit or group (Δ, Z, …), or 'random': a fresh seeded ranking
        per level. n is the number of units of one layer output, or of groups with
        ``layer_mask``.
    x_test, y_test : torch.Tensor
        (N, ...) inputs and (N,) labels, passed to ``metric``.
    fractions : sequence of float
        Fractions in [0, 1) (default 0, 0.05, …, 0.95).
    x_recalibrate : torch.Tensor, optional
        Training inputs for BatchNorm re-estimation; None skips it.
    layer_mask : torch.Tensor, optional
        Integer group ids 0 … G-1 broadcastable to the layer output with batch dimension 1,
        as Captum's ``LayerFeatureAblation`` takes them; a group is pruned as a whole. The
        channels of a conv layer with C channels: ``torch.arange(C).reshape(1, C, 1, 1)``.
    metric : callable
        ``metric(outputs, y_test)`` → {name: float}, with ``outputs`` (N, K) the model's
        outputs on ``x_test``. Default :func:`classification_metrics`: ROC-AUC and accuracy
        (at logit 0) for a one-logit model, accuracy of the arg-max for several classes.
    seed : int
        Seed of the random rankings and of the recalibration's row order.
    batch_size : int
        Samples (rows of ``x_test``) per forward pass.
    show_progress : bool
        Progress bar over fractions (tqdm, silent when the output is not a terminal).

    Returns
    -------
    dict
        ``fraction``, ``pruned`` (k) and one list per metric name, one entry per fraction.
    """
    _check_rows("x_test", x_test)
    if x_recalibrate is not None:
        _check_rows("x_recalibrate", x_recalibrate)
    unit_shape = layer_unit_shape(model, layer, x_test[:2])
    groups = _unit_groups(layer_mask, unit_shape)
    n = int(groups.max()) + 1
    if isinstance(scores, str):
        if scores != "random":
            raise ValueError(f"scores must be a tensor of {n} values or 'random', got {scores!r}")
    elif scores.shape != (n,):
        what = "groups of layer_mask" if layer_mask is not None else "units of this layer"
        raise ValueError(
            f"scores must have shape ({n},), one per {what}, got {tuple(scores.shape)}"
        )
    else:
        check_finite("scores", scores)
    bad = [f for f in fractions if not 0.0 <= f < 1.0]
    if bad:
        raise ValueError(f"fractions must lie in [0, 1), got {bad}")
    if len(y_test) != len(x_test):
        raise ValueError(
            f"y_test must have one label per row of x_test ({len(x_test)}), got {len(y_test)}"
        )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    generator = torch.Generator().manual_seed(seed)
    curve: dict[str, list[float]] = {"fraction": [], "pruned": []}
    try:
        model.eval()
        for fraction in tqdm(fractions, desc="pruning", disable=None if show_progress else True):
            k = int(n * fraction)
            if isinstance(scores, str):
                ranking = torch.randperm(n, generator=generator)
            else:
                ranking = torch.argsort(scores.detach().cpu(), stable=True)
            units = torch.nonzero(torch.isin(groups, ranking[:k]))[:, 0]
            with masked_units(layer, units):
                if x_recalibrate is not None:
                    recalibrate_batchnorm(model, x_recalibrate, seed=seed)
                with torch.no_grad():
                    output = torch.cat([model(rows) for rows in x_test.split(batch_size)])
                check_finite(f"the model output at {fraction:.0%} pruned", output)
                quality = metric(output, y_test)
            model.load_state_dict(state)
            if not isinstance(quality, Mapping):
                raise TypeError(
                    f"metric must return a mapping of names to numbers, got "
                    f"{type(quality).__name__}"
                )
            curve["fraction"].append(float(fraction))
            curve["pruned"].append(k)
            for name, value in quality.items():
                curve.setdefault(name, []).append(float(value))
    finally:
        model.load_state_dict(state)
        model.train(training)
    return curve


@torch.no_grad()
def layer_unit_shape(model: nn.Module, layer: nn.Module, x: Tensor) -> torch.Size:
    """Shape of one output of ``layer`` beyond the batch dimension (one eval forward on ``x``).

    Raises
    ------
    ValueError
        If the forward pass does not call ``layer``.
    """
    found: list[torch.Size] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: found.append(out.shape[1:]))
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


def taylor_scores(
    model: nn.Module, layer: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256
) -> Tensor:
    """First-order Taylor importance of each output channel of ``layer`` (Molchanov et al.).

    From "Pruning Convolutional Neural Networks for Resource Efficient Inference"
    (Molchanov et al., arXiv:1611.06440): the change of the loss when channel c is zeroed,
    to first order, ``Θ_c = mean_t |1/M Σ_m a_{t,c,m} ∂C_t/∂a_{t,c,m}|`` over images t, with
    C_t the cross-entropy of image t and m over the channel's M positions. The model runs in
    eval mode; its parameters, buffers, gradients and mode are left as they were, and the
    hook is removed, also on error. The means and sums over positions, images and batches are
    accumulated in float64 whatever the layer's dtype.

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
        raise ValueError(
            f"x and y must hold the same, non-zero number of images, got {len(x)} and {len(y)}"
        )
    check_finite("x", x)
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
                check_finite("the model output (for a finite x)", logits)
                labels = y[start : start + batch_size]
                if labels.min() < 0 or labels.max() >= logits.shape[1]:
                    raise ValueError(
                        f"y must hold class indices in [0, {logits.shape[1]}), got "
                        f"{labels.tolist()}"
                    )
                loss = nn.functional.cross_entropy(
                    logits, labels.to(logits.device), reduction="sum"
                )
                (a,) = captured
                (grad,) = torch.autograd.grad(loss, a)
                wide = a.detach().to(torch.float64) * grad
                part = wide.reshape(*a.shape[:2], -1).mean(-1).abs().sum(0)
                total = part if total is None else total + part
    finally:
        handle.remove()
        model.train(training)
    assert total is not None  # x holds at least one image (checked above)
    return (total / len(x)).to(a.dtype)
