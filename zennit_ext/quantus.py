"""Any Zennit composite (PLRP included) as a Quantus ``explain_func``.

Quantus calls ``explain_func(model=model, inputs=x_batch, targets=y_batch, **kwargs)`` with
numpy arrays and expects a numpy array of attributions shaped like the inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from zennit.attribution import Attributor, Gradient
from zennit.composites import COMPOSITES
from zennit.core import Composite

from zennit_ext._checks import check_finite
from zennit_ext._rules import ModuleState

__all__ = ["make_composite", "explain"]


def make_composite(
    composite: str | Composite | type, composite_kwargs: Mapping[str, Any] | None = None
) -> Composite:
    """A composite from a registry name, a class and its keyword arguments, or an instance.

    Parameters
    ----------
    composite : str, zennit Composite class or instance
        A key of ``zennit.composites.COMPOSITES`` (e.g. ``'epsilon_gamma_box'``,
        ``'plrp_lambda'``), a Composite subclass, or an instance (then ``composite_kwargs``
        must be empty).
    composite_kwargs : mapping, optional
        Keyword arguments for the class.

    Returns
    -------
    zennit.core.Composite

    Raises
    ------
    ValueError
        Unknown name, or keyword arguments given with an instance.
    TypeError
        Anything else.
    """
    kwargs = dict(composite_kwargs or {})
    if isinstance(composite, Composite):
        if kwargs:
            raise ValueError(f"composite_kwargs {sorted(kwargs)} given with a composite instance")
        return composite
    if isinstance(composite, str):
        if composite not in COMPOSITES:
            raise ValueError(
                f"composite {composite!r} is not registered; expected one of {sorted(COMPOSITES)}"
            )
        return COMPOSITES[composite](**kwargs)
    if isinstance(composite, type) and issubclass(composite, Composite):
        return composite(**kwargs)
    raise TypeError(
        "composite must be a registry name, a zennit Composite class or instance, "
        f"got {type(composite).__name__}"
    )


def _one_hot(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Output relevance ``(N, C)``: the one-hot rows of ``targets`` (C taken from the output).

    Raises ValueError (when called with the output) if the output is not (N, C) or a target is
    outside [0, C).
    """

    def attr_output(output: torch.Tensor) -> torch.Tensor:
        if output.ndim != 2:
            raise ValueError(
                f"the model's output must be logits of shape (N, C), got {tuple(output.shape)}"
            )
        classes = output.shape[1]
        bad = (targets < 0) | (targets >= classes)
        if bool(bad.any()):
            raise ValueError(
                f"targets must be class indices in [0, {classes}) (the model has {classes} "
                f"outputs), got {sorted(set(targets[bad].tolist()))}"
            )
        return torch.nn.functional.one_hot(targets, classes).to(output.dtype)

    return attr_output


def explain(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor | int,
    *,
    composite: str | Composite | type = "epsilon_plus_flat",
    composite_kwargs: Mapping[str, Any] | None = None,
    attributor: type[Attributor] = Gradient,
    attributor_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    reduce_channels: bool = False,
    **_: Any,
) -> np.ndarray:
    """Relevance of ``inputs`` for ``targets`` with a Zennit composite, Quantus-style.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier mapping (N, ...) to logits (N, C); used in its current train/eval mode and
        left unchanged.
    inputs : numpy.ndarray or torch.Tensor
        (N, ...) inputs.
    targets : array-like of int or int
        (N,) class indices to explain (an int is used for every sample).
    composite : str, zennit Composite class or instance
        See :func:`make_composite`; PLRP by ``'plrp_lambda'`` / ``'plrp_m'``.
    composite_kwargs : mapping, optional
        Keyword arguments of the composite class.
    attributor : zennit Attributor class
        ``Gradient`` (default), ``SmoothGrad``, ``IntegratedGradients``, ...
    attributor_kwargs : mapping, optional
        Keyword arguments of the attributor (e.g. ``n_iter``).
    batch_size : int
        Samples per forward/backward pass.
    device : str or torch.device, optional
        Where to compute; default: the device of the model's first parameter (or CPU).
    reduce_channels : bool
        Sum over dimension 1, returning (N, 1, ...).
    **_ :
        Other keyword arguments Quantus passes are ignored.

    Returns
    -------
    numpy.ndarray
        float32 relevance, shape of ``inputs`` (or (N, 1, ...) with ``reduce_channels``).

    Raises
    ------
    ValueError
        ``batch_size`` < 1; ``inputs`` with NaN or ±inf; ``targets`` not of length N, not
        whole numbers, or outside [0, C) for a model with C outputs (raised on the first batch).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    param = next(model.parameters(), None)
    device = (
        torch.device(device)
        if device is not None
        else (param.device if param is not None else torch.device("cpu"))
    )
    dtype = param.dtype if param is not None else torch.float32
    x = torch.as_tensor(np.asarray(inputs) if not torch.is_tensor(inputs) else inputs)
    check_finite("inputs", x)
    y = torch.as_tensor(np.asarray(targets)).reshape(-1)
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError(f"targets must be whole class indices, got {y.tolist()[:10]}")
    y = y.long()
    if y.numel() == 1:
        y = y.expand(len(x))
    if y.numel() != len(x):
        raise ValueError(f"targets must have {len(x)} entries (one per input), got {y.numel()}")
    comp = make_composite(composite, composite_kwargs)
    state = ModuleState(model)
    original_device = param.device if param is not None else device
    chunks = []
    try:
        model.to(device)
        with attributor(model=model, composite=comp, **dict(attributor_kwargs or {})) as attr:
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(device=device, dtype=dtype)
                yb = y[start : start + batch_size].to(device)
                _, relevance = attr(xb, _one_hot(yb))
                if reduce_channels:
                    relevance = relevance.sum(1, keepdim=True)
                chunks.append(relevance.detach().to("cpu", torch.float32).numpy())
    finally:
        model.to(original_device)
        state.restore()
    return np.concatenate(chunks) if chunks else np.zeros((0, *x.shape[1:]), np.float32)
