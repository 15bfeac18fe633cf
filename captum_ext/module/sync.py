"""Training regularizers on a conv layer's maps: local activation consistency and synchronization.

From "Synchronization-Inspired Interpretable Neural Networks" (Han et al., IEEE TNNLS 2024,
doi:10.1109/TNNLS.2023.3297672), eq. 3–9. A filter's map is read as a distribution over its
H·W positions, q = softmax(a) (eq. 5), whose mean x̄ = Σ_m q_m x_m is the filter's expected
activation position (one soft-argmax, :func:`expected_positions`, serves both losses).

- :class:`LocalActivationConsistencyLoss` (eq. 3–5) pulls a filter's activation towards
  one compact region around its own x̄.
- :class:`SynchronizationLoss` (eq. 6–9) pulls filters whose x̄ lie within ε of each other
  together and pushes all others apart (log-sum-exp), so that filters form modules.

``loss = ce + 0.2 * lac(maps) + 0.1 * sync(maps)`` with ``maps`` the (B, C, H, W) output of
the top conv layer, captured with :func:`capture_output`.

Both losses and :func:`expected_positions` compute in float64 whatever the maps' dtype and
return in it: the positions of nearby filters agree in most of their digits, and their
differences (the directions of the gradients) would keep none of a float32 map's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from zennit_ext._checks import check_finite

__all__ = [
    "LocalActivationConsistencyLoss",
    "SynchronizationLoss",
    "capture_output",
    "CapturedOutput",
    "expected_positions",
]

Coords = str | float


def check_maps(maps: Any, name: str = "maps") -> Tensor:
    """``maps`` if it is a non-empty floating (batch, C, H, W) tensor, else a clear error.

    Raises
    ------
    TypeError
        Not a tensor, or not floating point.
    ValueError
        Not 4-D, or empty.
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim != 4:
        raise ValueError(
            f"{name} must have 4 dimensions (batch, C, H, W), got shape {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {maps.dtype}")
    if maps.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(maps.shape)}")
    check_finite(name, maps)
    return maps


def _check_coords(coords: Any) -> Coords:
    if isinstance(coords, str):
        if coords not in ("cell", "unit"):
            raise ValueError(f"coords must be 'cell', 'unit' or a positive float, got {coords!r}")
        return coords
    if isinstance(coords, bool) or not isinstance(coords, int | float) or not 0 < coords < 1e300:
        raise ValueError(f"coords must be 'cell', 'unit' or a positive float, got {coords!r}")
    return float(coords)


def _side(height: int, width: int) -> int:
    """Map side in cells, the unit of 'unit' coordinates and of ε: max(H − 1, W − 1, 1)."""
    return max(height - 1, width - 1, 1)


def _cell_size(coords: Coords, height: int, width: int) -> float:
    """Length of one grid cell in the chosen coordinates."""
    if coords == "cell":
        return 1.0
    if coords == "unit":
        return 1.0 / _side(height, width)
    return float(coords)


def _grids(maps: Tensor, coords: Coords) -> tuple[Tensor, Tensor]:
    """(H,) row and (W,) column positions of the cells, in ``coords`` units."""
    _, _, h, w = maps.shape
    step = _cell_size(coords, h, w)
    rows, cols = (torch.arange(n, device=maps.device, dtype=maps.dtype) for n in (h, w))
    return rows.mul_(step), cols.mul_(step)


def _safe_norm(squared: Tensor) -> Tensor:
    """sqrt of squared distances with a finite (zero) gradient where they vanish."""
    return squared.clamp(min=torch.finfo(squared.dtype).tiny).sqrt()


def expected_positions(maps: Tensor, coords: Coords = "cell") -> tuple[Tensor, Tensor, Tensor]:
    """Soft-argmax of every map (eq. 5): log q, and x̄ = Σ_m q_m x_m per image and filter.

    Computed in float64, returned in the maps' dtype.

    Parameters
    ----------
    maps : torch.Tensor
        (B, C, H, W) activations.
    coords : 'cell', 'unit' or float
        Position unit: grid cells, the map side (positions / max(H − 1, W − 1, 1)), or
        this many units per cell.

    Returns
    -------
    log_q : torch.Tensor
        (B, C, H, W) log-softmax of each map over its H·W positions.
    rows, cols : torch.Tensor
        (B, C) expected row and column positions x̄ (differentiable).
    """
    check_maps(maps)
    log_q, rows, cols = _soft_argmax(maps.to(torch.float64), _check_coords(coords))
    return log_q.to(maps.dtype), rows.to(maps.dtype), cols.to(maps.dtype)


def _soft_argmax(maps: Tensor, coords: Coords) -> tuple[Tensor, Tensor, Tensor]:
    """log q, rows and cols of :func:`expected_positions`, in the dtype of (checked) ``maps``."""
    grid_r, grid_c = _grids(maps, coords)
    log_q = maps.flatten(2).log_softmax(-1).view_as(maps)
    q = log_q.exp()
    return log_q, q.sum(3) @ grid_r, q.sum(2) @ grid_c


class LocalActivationConsistencyLoss(nn.Module):
    """L_lac (eq. 3–5): cross-entropy of each map's softmax against a peak at its own x̄.

    For each image and filter, q = softmax of the H·W values (eq. 5), x̄ = Σ q·x, and the
    target p = softmax_m(−‖x_m − x̄‖) (eq. 4); the loss is −Σ_m p_m log q_m (eq. 3), averaged
    over images and filters.

    Parameters
    ----------
    coords : 'cell', 'unit' or float
        Unit of the distances in p (default 'cell'). In 'unit' coordinates (positions divided
        by max(H − 1, W − 1, 1)) all distances are ≤ √2 and p is nearly flat, so the loss
        hardly asks for compact maps; grid cells make p a real peak.
    detach_center : bool
        Treat the target p as fixed (x̄ detached; default), so gradients only shape q.

    Examples
    --------
    >>> lac = LocalActivationConsistencyLoss()
    >>> loss = lac(torch.randn(8, 64, 7, 7))   # 0-d tensor
    """

    def __init__(self, coords: Coords = "cell", detach_center: bool = True) -> None:
        super().__init__()
        self.coords = _check_coords(coords)
        self.detach_center = bool(detach_center)

    def extra_repr(self) -> str:
        return f"coords={self.coords!r}, detach_center={self.detach_center}"

    def forward(self, maps: Tensor) -> Tensor:
        """Loss of (B, C, H, W) maps: a 0-d tensor on the maps' device and dtype."""
        wide = check_maps(maps).to(torch.float64)
        log_q, rows, cols = _soft_argmax(wide, self.coords)
        grid_r, grid_c = _grids(wide, self.coords)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_center):
            if self.detach_center:
                rows, cols = rows.detach(), cols.detach()
            d_rows = (grid_r - rows[..., None]).square()  # (B, C, H)
            d_cols = (grid_c - cols[..., None]).square()  # (B, C, W)
            dist = _safe_norm(d_rows[..., :, None] + d_cols[..., None, :])
            p = (-dist).flatten(2).softmax(-1)
        return -(p * log_q.flatten(2)).sum(-1).mean().to(maps.dtype)


class SynchronizationLoss(nn.Module):
    """L_sync (eq. 6–9): pull each filter's x̄ towards its ε-neighbours, push from all others.

    Per image, with d_ij = ‖x̄_i − x̄_j‖: Nb(i) = {j ≠ i : d_ij ≤ ε} on detached positions,
    ``p(j|i) = 1/|Nb(i)|`` (eq. 7), q(j|i) = softmax over j ≠ i of −d_ij (eq. 8) and the loss of
    filter i is −Σ_{j ∈ Nb(i)} p log q = mean_{j ∈ Nb(i)} d_ij + log Σ_{j ≠ i} e^{−d_ij}
    (eq. 9, with ``1/|Nb(i)|`` on the pull term only). Filters without neighbours are skipped.

    With ``include_self=True`` the neighbourhood is eq. 1's, ``{j : d_ij ≤ ε}``, which holds i
    itself (d_ii = 0), and the softmax of eq. 8 runs over all j: every filter then has a term,
    ``mean_{j ∈ Nb(i)} d_ij + log Σ_j e^{−d_ij}``, so a filter with no other neighbour is still
    pushed away from the rest (the collapse-preventing force of eq. 9).

    Parameters
    ----------
    epsilon : float
        Neighbourhood radius as a fraction of the map side max(H − 1, W − 1, 1), whatever
        ``coords`` is (default 0.03).
    coords : 'cell', 'unit' or float
        Unit of the distances d_ij in q (default 'unit'). Distances in cells make the push
        term repel nearby filters so strongly that filters no longer share parts.
    reduction : 'mean' or 'sum'
        'mean' averages over the (image, filter) pairs that have a neighbour (0 if none);
        'sum' is eq. 6 literally: the sum over filters, averaged over images.
    include_self : bool
        Count each filter in its own neighbourhood and softmax, as eq. 1 and eq. 8 write them
        (default False: j ≠ i, and filters without neighbours get no term).

    Examples
    --------
    >>> sync = SynchronizationLoss(epsilon=0.03)
    >>> loss = sync(torch.randn(8, 64, 7, 7))   # 0-d tensor
    """

    def __init__(
        self,
        epsilon: float = 0.03,
        coords: Coords = "unit",
        reduction: str = "mean",
        include_self: bool = False,
    ) -> None:
        super().__init__()
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, int | float)
            or not (0.0 <= epsilon < float("inf"))
        ):
            raise ValueError(f"epsilon must be a finite float >= 0, got {epsilon!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if not isinstance(include_self, bool):
            raise TypeError(f"include_self must be a bool, got {include_self!r}")
        self.include_self = include_self
        self.epsilon = float(epsilon)
        self.coords = _check_coords(coords)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, coords={self.coords!r}, reduction={self.reduction!r}, "
            f"include_self={self.include_self}"
        )

    def forward(self, maps: Tensor) -> Tensor:
        """Loss of (B, C, H, W) maps: a 0-d tensor on the maps' device and dtype."""
        _, rows, cols = _soft_argmax(check_maps(maps).to(torch.float64), self.coords)
        b, c, h, w = maps.shape
        if c == 1:  # no pairs: a zero that still backpropagates
            return ((rows.sum() + cols.sum()) * 0.0).to(maps.dtype)
        radius = self.epsilon * _side(h, w) * _cell_size(self.coords, h, w)
        per_filter, count = _SyncTerms.apply(rows, cols, radius, self.include_self)
        if self.reduction == "sum":
            return (per_filter.sum() / b).to(maps.dtype)
        return (per_filter.sum() / (count > 0).sum().clamp(min=1)).to(maps.dtype)


class _SyncTerms(torch.autograd.Function):
    """Per-filter eq. 9 terms of (B, C) positions, with a hand-written backward.

    Forward: d_ij = ‖x̄_i − x̄_j‖, Nb(i) = {j ≠ i : d_ij ≤ radius}; the term of filter i is
    Σ_{j ∈ Nb(i)} d_ij / |Nb(i)| + log Σ_{j ≠ i} e^{−d_ij}, or 0 when Nb(i) is empty. With
    ``include_self`` both j-ranges hold i (d_ii = 0, u_ii = 0: the backward is unchanged).
    Backward: with G_ij = g_i (1[j ∈ Nb(i)] / |Nb(i)| − softmax_{j ≠ i}(−d_i)_j) and the unit
    vectors u_ij = (x̄_i − x̄_j) / d_ij (0 where d_ij = 0), the gradient of x̄_i is
    Σ_j (G_ij + G_ji) u_ij = Σ_j P_ij − Σ_j P_ji with P = G ∘ u, as u_ji = −u_ij. Five
    (B, C, C) buffers in all (float64 from :class:`SynchronizationLoss`), where autograd
    allocates about fifteen.
    """

    @staticmethod
    def forward(
        ctx: Any, rows: Tensor, cols: Tensor, radius: float, include_self: bool
    ) -> tuple[Tensor, Tensor]:
        dist = rows[:, :, None] - rows[:, None, :]
        scratch = cols[:, :, None] - cols[:, None, :]
        dist = dist.square_().add_(scratch.square_()).sqrt_()
        neighbours = dist <= radius
        neighbours.diagonal(dim1=1, dim2=2).fill_(include_self)
        count = neighbours.sum(-1)
        pull = torch.mul(dist, neighbours, out=scratch).sum(-1) / count.clamp(min=1)
        dist.clamp_(min=torch.finfo(dist.dtype).tiny)  # u_ij stays finite
        if not include_self:
            dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # j ≠ i in the push
        nearest = dist.amin(-1, keepdim=True)
        weights = torch.sub(nearest, dist, out=scratch).exp_()  # e^{−d_ij} / e^{−min_j d_ij}
        total = weights.sum(-1)
        push = total.log() - nearest[..., 0]
        ctx.save_for_backward(rows, cols, dist, neighbours, weights, total, count)
        ctx.mark_non_differentiable(count)
        return torch.where(count > 0, pull + push, 0.0), count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor, _grad_count: Any) -> tuple[Tensor, Tensor, None, None]:
        rows, cols, dist, neighbours, weights, total, count = ctx.saved_tensors
        grad = torch.where(count > 0, grad, 0.0)
        coupling = torch.where(neighbours, (grad / count.clamp(min=1))[..., None], 0.0)
        coupling.addcmul_(weights, (grad / total)[..., None], value=-1.0)  # G
        scratch = torch.empty_like(dist)
        out = []
        for pos in (rows, cols):
            torch.sub(pos[:, :, None], pos[:, None, :], out=scratch).div_(dist).mul_(coupling)
            out.append(scratch.sum(-1) - scratch.sum(-2))
        return out[0], out[1], None, None


class CapturedOutput:
    """Holder of a layer's latest output; filled by :func:`capture_output`."""

    def __init__(self, layer: nn.Module) -> None:
        self._layer = layer
        self._value: Any = None
        self._filled = False

    @property
    def value(self) -> Any:
        """The layer's latest output (with its autograd graph)."""
        if not self._filled:
            raise RuntimeError(
                f"no output captured yet from {type(self._layer).__name__}: run a forward pass "
                "of the model inside the `with capture_output(layer)` block first"
            )
        return self._value

    def _store(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self._value = output
        self._filled = True


@contextlib.contextmanager
def capture_output(layer: nn.Module) -> Iterator[CapturedOutput]:
    """Within the block, ``maps.value`` is ``layer``'s latest output (not detached).

    The forward hook is removed on exit, also when an exception is raised; the last value
    stays readable afterwards.

    Parameters
    ----------
    layer : nn.Module
        The module whose output to keep, e.g. the ReLU after the top conv.

    Examples
    --------
    >>> with capture_output(model.features[10]) as maps:
    ...     logits = model(x)
    ...     loss = ce(logits, y) + 0.2 * lac(maps.value) + 0.1 * sync(maps.value)
    """
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
    captured = CapturedOutput(layer)
    handle = layer.register_forward_hook(captured._store)
    try:
        yield captured
    finally:
        handle.remove()
