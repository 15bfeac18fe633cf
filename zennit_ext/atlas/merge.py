"""Mergeable statistics: streaming top-k with a total order, and exact order-free sums.

Pure tensor math (no model, no hooks). Both kinds of state merge associatively and
commutatively, so any split of a data set into batches, shards or resumed runs gives the same
state as one pass:

- :func:`merge_topk` keeps, per row, the ``k`` best ``(value, index)`` pairs under the total
  order "larger value first, then lower index": the top-k of a union is the top-k of the union
  of the parts' top-k, exactly, ties included.
- :class:`FixedSum` accumulates float64 values as fixed-point integers (three 48-bit limbs, a
  resolution of 2⁻⁹⁶): integer addition is associative, so the sum does not depend on the order
  of the terms. Every float64 value of magnitude ≥ 2⁻⁴³ is represented exactly; smaller ones
  are truncated towards 0 at 2⁻⁹⁶.
"""

from __future__ import annotations

import torch

__all__ = ["EMPTY_INDEX", "empty_topk", "merge_topk", "FixedSum"]

#: Index of an empty slot of a top-k table (its value is −inf; every sample ranks above it).
EMPTY_INDEX = torch.iinfo(torch.int64).max

_BITS = 48
_LIMBS = 3
_RADIX = 1 << _BITS
_CHUNK = 1 << 14  # terms per integer addition: no int64 overflow


def empty_topk(rows: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty top-k table: values (rows, k) float64 −inf, indices :data:`EMPTY_INDEX`."""
    values = torch.full((rows, k), -torch.inf, dtype=torch.float64)
    return values, torch.full((rows, k), EMPTY_INDEX, dtype=torch.int64)


def merge_topk(
    values: torch.Tensor, indices: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best candidates per row: larger value first, ties to the lower index.

    Parameters
    ----------
    values : torch.Tensor
        (rows, n) float64 candidate values (finite, or −inf for empty slots).
    indices : torch.Tensor
        (rows, n) int64 sample indices of the candidates (or :data:`EMPTY_INDEX`); a sample
        appears at most once per row.
    k : int
        Kept candidates per row; fewer than ``k`` candidates are padded with empty slots.

    Returns
    -------
    values, indices : torch.Tensor
        (rows, k) each, best first.
    """
    if values.shape[1] < k:
        pad_values, pad_indices = empty_topk(len(values), k - values.shape[1])
        values = torch.cat([values, pad_values.to(values.device)], 1)
        indices = torch.cat([indices, pad_indices.to(indices.device)], 1)
    # lexicographic: order by index, then (stable) by value, descending
    by_index = indices.sort(dim=1, stable=True).indices
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = values.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, by_value), indices.gather(1, by_value)


class FixedSum:
    """Exact, order-independent sums of float64 values per cell of a fixed shape.

    Parameters
    ----------
    shape : tuple of int
        Shape of the summed table, e.g. (n_classes, n_units).

    Attributes
    ----------
    limbs : torch.Tensor
        ``(*shape, 3)`` int64, the sum
        ``limbs[..., 0] + limbs[..., 1]·2⁻⁴⁸ + limbs[..., 2]·2⁻⁹⁶``
        with limbs 1 and 2 normalized to [0, 2⁴⁸).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.limbs = torch.zeros(*shape, _LIMBS, dtype=torch.int64)

    @staticmethod
    def split(values: torch.Tensor) -> torch.Tensor:
        """float64 values (...) as (..., 3) int64 limbs (truncated towards 0 at 2⁻⁹⁶).

        Raises
        ------
        ValueError
            If a value is not finite or its magnitude is 2⁶² or more.
        """
        values = values.detach().to(torch.float64)
        if not bool(torch.isfinite(values).all()) or bool((values.abs() >= 2.0**62).any()):
            raise ValueError("summed values must be finite and smaller than 2**62 in magnitude")
        parts, rest = [], values
        for _ in range(_LIMBS):
            whole = torch.trunc(rest)
            parts.append(whole.to(torch.int64))
            rest = (rest - whole) * float(_RADIX)  # both steps are exact in float64
        return torch.stack(parts, -1)

    def add(self, limbs: torch.Tensor) -> None:
        """Add limbs ``(*shape, 3)`` (from :meth:`split`, summed over fewer than 2¹⁵ values, or
        another table's :attr:`limbs`)."""
        self.limbs = _normalized(self.limbs + limbs.to(self.limbs.device))

    def add_at(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Add each row of ``values`` ``(n, *shape[1:])`` to the table row ``rows[i]`` (n,)."""
        for start in range(0, len(rows), _CHUNK):
            limbs = torch.zeros_like(self.limbs).index_add_(
                0,
                rows[start : start + _CHUNK].to(self.limbs.device),
                self.split(values[start : start + _CHUNK]).to(self.limbs.device),
            )
            self.add(limbs)

    def value(self) -> torch.Tensor:
        """The sums as float64, ``(*shape)``, to about one rounding (relative)."""
        # balanced digits in [-2⁴⁷, 2⁴⁷): a small negative sum is not 1 minus nearly 1
        limbs = self.limbs.clone()
        for position in range(_LIMBS - 1, 0, -1):
            high = limbs[..., position] >= _RADIX // 2
            limbs[..., position] -= high * _RADIX
            limbs[..., position - 1] += high
        limbs = limbs.to(torch.float64)
        return limbs[..., 0] + (limbs[..., 1] + limbs[..., 2] / _RADIX) / _RADIX


def _normalized(limbs: torch.Tensor) -> torch.Tensor:
    """Carry so that limbs 1.. lie in [0, 2⁴⁸) (the represented number is unchanged)."""
    limbs = limbs.clone()
    for position in range(_LIMBS - 1, 0, -1):
        carry = torch.div(limbs[..., position], _RADIX, rounding_mode="floor")
        limbs[..., position] -= carry * _RADIX
        limbs[..., position - 1] += carry
    return limbs
