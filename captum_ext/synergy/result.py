"""SynergyResult: SynXAI's Δ, Δ_ij and S of n units, computed once, and what follows from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from captum_ext.synergy import formulas as scores

__all__ = ["SynergyResult"]


@dataclass(frozen=True, eq=False)
class SynergyResult:
    r"""Importance and synergy of n units (layer units, input features, or their groups).

    Attributes
    ----------
    importance : torch.Tensor
        (n,) Δ_i = mean_x d(p(x), p_{i}(x)).
    synergy : torch.Tensor
        (n, n) S_ij = Δ_ij - Δ_i - Δ_j, symmetric, zero diagonal.
    pair_importance : torch.Tensor
        (n, n) Δ_ij = mean_x d(p(x), p_{i,j}(x)); the diagonal holds Δ_i.
    group_ids : torch.Tensor
        (n,) the mask id of each unit (``layer_mask`` / ``feature_mask`` values, sorted);
        without a mask, unit i is element i of the flattened output(s) and ids are 0..n-1.
    unit_shapes : tuple of tuple of int
        Shape of one row of each masked tensor (e.g. ``((64,),)`` for a (N, 64) layer).
    mode : str
        'abs_mean' (``d = |p - p_U|``, SynXAI's) or 'signed' (``d = p - p_U``).
    rows : int
        Number of rows the means run over (over all processes when distributed).
    """

    importance: Tensor
    synergy: Tensor
    pair_importance: Tensor
    group_ids: Tensor
    unit_shapes: tuple[tuple[int, ...], ...]
    mode: str
    rows: int

    @classmethod
    def from_sums(
        cls,
        single: Tensor,
        pair: Tensor,
        rows: int,
        group_ids: Tensor,
        unit_shapes: tuple[tuple[int, ...], ...],
        mode: str,
        dtype: torch.dtype,
    ) -> SynergyResult:
        """From Σ_x d_i(x) (n,) and Σ_x d_ij(x) (n, n, upper triangle used) over ``rows``.

        The means and S_ij = Δ_ij - Δ_i - Δ_j are taken in the sums' dtype (float64 from the
        engine: S_ij cancels most digits of the means), then rounded to ``dtype``.
        """
        importance = single / rows
        upper = torch.triu(pair / rows, diagonal=1)
        pair_importance = upper + upper.t() + torch.diag(importance)
        synergy = torch.triu(
            scores.pair_synergy(upper, importance[:, None], importance[None, :]), diagonal=1
        )
        synergy = synergy + synergy.t()
        return cls(
            importance.to(dtype),
            synergy.to(dtype),
            pair_importance.to(dtype),
            group_ids,
            unit_shapes,
            mode,
            rows,
        )

    @property
    def n(self) -> int:
        """Number of units."""
        return len(self.importance)

    def synergistic_importance(self, alpha: float = 20.0) -> Tensor:
        """(n,) Z_i = Δ_i + α · mean_j max(S_ij, 0) (mean over all n columns)."""
        return scores.synergistic_importance(self.importance, self.synergy, alpha)

    def ranking(self) -> Tensor:
        """(n,) R_i = Σ_j max(S_ij, 0), the order of SynXAI's synergy-matrix plots."""
        return scores.synergy_ranking(self.synergy)

    def top_pairs(self, k: int = 10) -> tuple[Tensor, Tensor]:
        """The k pairs i < j of highest S_ij.

        Returns
        -------
        pairs : torch.Tensor
            (k, 2) long unit indices (positions in ``group_ids``), highest synergy first.
        values : torch.Tensor
            (k,) their S_ij.
        """
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        i, j = torch.triu_indices(self.n, self.n, offset=1, device=self.synergy.device)
        values = self.synergy[i, j]
        order = values.argsort(descending=True, stable=True)[:k]
        return torch.stack([i[order], j[order]], dim=1), values[order]

    def pair_labels(self, rtol: float = 0.05, atol: float = 0.0) -> Tensor:
        """(n, n) int8 SynXAI pair classes: 1 synergistic, 0 independent, −1 redundant.

        See :func:`captum_ext.synergy.formulas.pair_labels` for the independent band
        ``|S_ij| ≤ rtol · (|Δ_i| + |Δ_j|) + atol``.
        """
        return scores.pair_labels(self.synergy, self.importance, rtol, atol)

    def label_counts(self, rtol: float = 0.05, atol: float = 0.0) -> dict[str, int]:
        """Number of pairs i < j per class: ``{'synergistic', 'independent', 'redundant'}``."""
        labels = self.pair_labels(rtol, atol)
        i, j = torch.triu_indices(self.n, self.n, offset=1, device=labels.device)
        upper = labels[i, j]
        return {
            name: int((upper == value).sum())
            for name, value in (
                ("synergistic", scores.SYNERGISTIC),
                ("independent", scores.INDEPENDENT),
                ("redundant", scores.REDUNDANT),
            )
        }
