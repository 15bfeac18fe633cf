"""Any Zennit composite (PLRP included) as a Quantus ``explain_func``: the Quantus adapter.

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

from zennit_ext._checks import TargetType, check_finite, parse_target
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


def _as_target(targets: Any) -> TargetType:
    """Quantus' ``targets`` as Captum's target: a numpy array or a tensor of whole numbers as
    an int64 tensor, anything else unchanged.

    Raises ValueError naming ``targets`` if an array holds a number that is not whole.
    """
    if isinstance(targets, np.ndarray | np.generic):
        targets = torch.as_tensor(np.asarray(targets))
    if isinstance(targets, torch.Tensor) and targets.is_floating_point():
        if not bool((targets == targets.round()).all()):
            raise ValueError(
                f"targets must be whole class indices, got {targets.reshape(-1).tolist()[:10]}"
            )
        targets = targets.long()
    return targets


def _one_hot(target: TargetType, rows: int, chunk: slice) -> Callable[[torch.Tensor], torch.Tensor]:
    """Output relevance of the rows ``chunk`` of ``rows``: 1 at each row's target, else 0.

    Raises ValueError (when called with the output) if the target does not select one value of
    each row's output (:func:`~zennit_ext._checks.parse_target`).
    """

    def attr_output(output: torch.Tensor) -> torch.Tensor:
        index = parse_target(target, rows, (rows, *output.shape[1:]))[chunk].to(output.device)
        relevance = torch.zeros_like(output)
        relevance[(torch.arange(len(output), device=output.device), *index.t())] = 1
        return relevance

    return attr_output


def explain(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    targets: TargetType | np.ndarray,
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
    """The Quantus adapter: relevance of ``inputs`` for ``targets`` with a Zennit composite.

    Pass it to Quantus as ``explain_func`` (not to be confused with :meth:`NRM.explain
    <zennit_ext.nrm.NRM.explain>`).

    Parameters
    ----------
    model : torch.nn.Module
        Classifier mapping (N, ...) to logits (N, C); used in its current train/eval mode and
        left unchanged.
    inputs : numpy.ndarray or torch.Tensor
        (N, ...) inputs.
    targets : int, tuple, list, numpy.ndarray or torch.Tensor
        Captum's ``target`` under Quantus' name (:func:`~zennit_ext._checks.parse_target`):
        (N,) class indices to explain, or an int for every sample (a tuple indexes a
        multi-dimensional output); a numpy array or float tensor of whole numbers is taken as
        integer indices.
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
        ``batch_size`` < 1; ``inputs`` with NaN or ±inf; ``targets`` not of length N or not
        whole numbers, or out of range of the model's output (raised on the first batch).
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
    target = _as_target(targets)
    parse_target(target, len(x))  # the structure, before the model runs
    comp = make_composite(composite, composite_kwargs)
    state = ModuleState(model)
    original_device = param.device if param is not None else device
    chunks = []
    try:
        model.to(device)
        with attributor(model=model, composite=comp, **dict(attributor_kwargs or {})) as attr:
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(device=device, dtype=dtype)
                chunk = slice(start, start + batch_size)
                _, relevance = attr(xb, _one_hot(target, len(x), chunk))
                if reduce_channels:
                    relevance = relevance.sum(1, keepdim=True)
                chunks.append(relevance.detach().to("cpu", torch.float32).numpy())
    finally:
        model.to(original_device)
        state.restore()
    return np.concatenate(chunks) if chunks else np.zeros((0, *x.shape[1:]), np.float32)
