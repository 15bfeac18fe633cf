"""Neuron sets of one layer as masks: indices, channels, boolean masks, k-means clusters.

A set on a layer is a float 0/1 mask of the layer's output shape (batch, ...). NRM conditions
its messages by multiplying with such masks; unit masks stack one mask per unit (neuron,
channel or cluster) along a leading axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "set_mask",
    "unit_masks",
    "unit_count",
    "reduce_units",
    "per_sample_mask",
    "cluster_masks",
    "Level",
]

LEVELS = ("neuron", "channel", "token", "feature", "head")

# the axis of one unit per index at each level but 'neuron', and the output rank it needs:
# 'channel' (batch, C, ...), 'token' and 'feature' (batch, T, D) of a transformer block,
# 'head' (batch, H, L, d) of an attention's weighting ``A @ v``
_AXIS = {"channel": 1, "token": 1, "feature": -1, "head": 1}
_RANK = {"token": 3, "feature": 3, "head": 4}

# a level of a layer's units: one of LEVELS, or a long tensor of cluster labels
Level = str | torch.Tensor

SetSpec = torch.Tensor | Sequence[int] | int


def _check_level(level: str, shape: torch.Size | None = None, name: str = "") -> None:
    """Raise ValueError for an unknown level, or one the layer's output rank cannot have."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    rank = _RANK.get(level)
    if shape is not None and rank is not None and len(shape) != rank:
        raise ValueError(
            f"level {level!r} needs a layer output of {rank} dimensions ("
            + ("batch, T, D" if rank == 3 else "batch, H, L, d: an attention's weighting")
            + f"), but layer {name!r} has shape {tuple(shape)}"
        )


def _units_axis(level: str, shape: Sequence[int]) -> int | None:
    """The axis whose indices are the units at ``level`` (None: every neuron is one)."""
    axis = _AXIS.get(level)
    return None if axis is None else axis % len(shape)


def set_mask(
    spec: SetSpec,
    shape: torch.Size,
    level: str = "neuron",
    name: str = "",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Float 0/1 mask of shape ``shape`` = (batch, ...) selecting a set of one layer's neurons.

    Parameters
    ----------
    spec : int, sequence of int, or torch.Tensor
        Indices (flat indices into one sample's output for ``level='neuron'``, channel indices
        for ``level='channel'``), the same for every sample; or a boolean mask broadcastable
        to ``shape`` (per sample or per batch; e.g. (batch, 1, H, W) for spatial sets).
    shape : torch.Size
        The layer's output shape, (batch, ...).
    level : {'neuron', 'channel', 'token', 'feature', 'head'}
        How integer indices are read: flat neuron indices, or indices along the axis of
        channels (batch, C, ...), tokens or features (batch, T, D), attention heads
        (batch, H, L, d); ignored for boolean masks.
    name : str
        Layer name for error messages.
    dtype, device : optional
        Of the mask (default: torch's default dtype, the device of ``spec`` or the CPU); NRM
        passes the layer output's.

    Returns
    -------
    torch.Tensor
        Float mask, shape ``shape``.
    """
    _check_level(level, shape, name)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if isinstance(spec, torch.Tensor) and spec.dtype == torch.bool:
        try:
            return torch.broadcast_to(spec.to(device), shape).to(dtype)
        except RuntimeError:
            raise ValueError(
                f"boolean mask for layer {name!r} has shape {tuple(spec.shape)}, which does not "
                f"broadcast to the layer's output {tuple(shape)}"
            ) from None
    index = torch.as_tensor(spec, device=device)
    if index.numel() == 0:
        raise ValueError(
            f"set for layer {name!r} is empty; expected at least one {level} index (or a "
            "boolean mask)"
        )
    if index.is_floating_point() or index.dim() > 1:
        raise TypeError(
            f"set for layer {name!r} must be int indices or a boolean mask, got "
            f"{index.dtype} of shape {tuple(index.shape)}"
        )
    index = index.reshape(-1).long()
    size = unit_count(level, shape)
    if index.min() < 0 or index.max() >= size:
        raise ValueError(
            f"set for layer {name!r} has {level} indices {index.tolist()} outside [0, {size}) "
            f"(layer output {tuple(shape)})"
        )
    vector = torch.zeros(size, dtype=dtype, device=index.device)
    vector[index] = 1.0
    return vector.view(_unit_view(level, shape)).expand(shape).clone()


def _unit_view(level: str, shape: torch.Size) -> tuple[int, ...]:
    """Shape that broadcasts a vector over a layer's units to the layer's (1, ...) shape."""
    axis = _units_axis(level, shape)
    if axis is None:
        return (1, *shape[1:])
    return tuple(shape[i] if i == axis else 1 for i in range(len(shape)))


def per_sample_mask(selected: torch.Tensor, level: str, shape: torch.Size) -> torch.Tensor:
    """Units selected per sample, as a mask broadcastable to a layer's output ``shape``.

    Parameters
    ----------
    selected : torch.Tensor
        (batch, n_units), bool or 0/1, with ``n_units = unit_count(level, shape)``.
    level : str
        One of :data:`LEVELS`.
    shape : torch.Size
        The layer's output shape, (batch, ...).

    Returns
    -------
    torch.Tensor
        ``selected`` viewed as (batch, ...) with 1 on every axis but the units'.
    """
    _check_level(level, shape)
    view = _unit_view(level, shape)
    return selected.reshape(len(selected), *view[1:])


def unit_count(level: str | torch.Tensor, shape: torch.Size) -> int:
    """Number of units of a layer with output ``shape`` at ``level`` (or stacked unit masks)."""
    if isinstance(level, torch.Tensor):
        return level.shape[0]
    _check_level(level, shape)
    axis = _units_axis(level, shape)
    return shape[1:].numel() if axis is None else shape[axis]


def unit_masks(
    level: str | torch.Tensor,
    shape: torch.Size,
    units: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Masks of the selected ``units``, shape ``(len(units), *shape)`` (batch included).

    Parameters
    ----------
    level : {'neuron', 'channel', 'token', 'feature', 'head'} or torch.Tensor
        Unit kind, or stacked boolean unit masks (n_units, batch or 1, ...) e.g. from
        :func:`cluster_masks`.
    shape : torch.Size
        The layer's output shape, (batch, ...).
    units : torch.Tensor
        Long indices of units; the masks are created on their device.
    dtype : torch.dtype, optional
        Of the masks (default: torch's default dtype).
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if isinstance(level, torch.Tensor):
        masks = level.to(units.device)[units]
        return torch.broadcast_to(masks, (len(units), *shape)).to(dtype)
    onehot = torch.nn.functional.one_hot(units, unit_count(level, shape))
    onehot = onehot.to(dtype).view(len(units), *_unit_view(level, shape))
    return onehot.expand(len(units), *shape)


def reduce_units(values: torch.Tensor, level: str | torch.Tensor, ndim: int) -> torch.Tensor:
    """Sum neuron values of a layer per unit: ``(..., batch, *layer)`` → ``(..., batch, n_units)``.

    Parameters
    ----------
    values : torch.Tensor
        Per-neuron values with the layer's per-sample shape (``ndim`` dims) last.
    level : {'neuron', 'channel', 'token', 'feature', 'head'} or torch.Tensor
        Unit kind, or stacked unit masks ``(n_units, batch or 1, *layer)``.
    ndim : int
        Number of dims of one sample's layer output.
    """
    flat = values.flatten(start_dim=values.dim() - ndim)  # (..., B, D)
    if isinstance(level, torch.Tensor):
        full = (len(level), flat.shape[-2], *values.shape[values.dim() - ndim :])
        masks = torch.broadcast_to(level.to(values.dtype), full).flatten(start_dim=2)  # (n, B, D)
        return torch.einsum("...bd,nbd->...bn", flat, masks)
    _check_level(level)
    if level == "neuron" or ndim == 1:
        return flat
    layer = values.shape[values.dim() - ndim :]
    axis = values.dim() - ndim + (_units_axis(level, (0, *layer)) or 1) - 1
    return values.movedim(axis, -1).flatten(start_dim=values.dim() - ndim, end_dim=-2).sum(-2)


def cluster_masks(
    activations: torch.Tensor, k: int, iterations: int = 30, seed: int = 0
) -> torch.Tensor:
    """k-means clusters of a layer's spatial activation vectors, per sample (paper §4.4.2).

    Each spatial position of a (batch, C, H, W) feature map is a C-dimensional vector; the
    positions of one sample are clustered into ``k`` groups (k-means++ start, Lloyd steps).
    A cluster's neurons are all channels at its positions.

    Parameters
    ----------
    activations : torch.Tensor
        Shape (batch, C, H, W).
    k : int
        Number of clusters, 1 ≤ k ≤ H·W.
    iterations : int
        Lloyd iterations.
    seed : int
        Seed of the k-means++ start.

    Returns
    -------
    torch.Tensor
        Boolean unit masks, shape (k, batch, 1, H, W); each position is in exactly one cluster.
    """
    if activations.dim() != 4:
        raise ValueError(
            f"activations must be (batch, C, H, W), got shape {tuple(activations.shape)}"
        )
    batch, _, height, width = activations.shape
    if not 1 <= k <= height * width:
        raise ValueError(f"k must be in [1, {height * width}] (H·W), got {k}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.stack(
        [
            _kmeans(sample.flatten(1).T.double(), k, iterations, generator)
            for sample in activations.detach().cpu()
        ]
    )
    masks = labels.view(batch, height, width)[None] == torch.arange(k).view(k, 1, 1, 1)
    return masks.unsqueeze(2).to(activations.device)


def _kmeans(
    points: torch.Tensor, k: int, iterations: int, generator: torch.Generator
) -> torch.Tensor:
    centers = points[torch.randint(len(points), (1,), generator=generator)]
    for _ in range(k - 1):
        distance = torch.cdist(points, centers).min(1).values.square()
        if distance.sum() > 0:
            chosen = torch.multinomial(distance / distance.sum(), 1, generator=generator)
        else:
            chosen = torch.randint(len(points), (1,), generator=generator)
        centers = torch.cat([centers, points[chosen]])
    for _ in range(iterations):
        labels = torch.cdist(points, centers).argmin(1)
        for cluster in range(k):
            members = points[labels == cluster]
            if len(members):
                centers[cluster] = members.mean(0)
    return torch.cdist(points, centers).argmin(1)
