"""Synergy formulas on precomputed scores: one implementation, used by every entry point."""

from __future__ import annotations

import torch

from zennit_ext._checks import real_number

__all__ = [
    "score_difference",
    "pair_synergy",
    "synergistic_importance",
    "synergistic_importance_from_mean",
    "synergy_ranking",
    "pair_labels",
    "MODES",
    "SYNERGISTIC",
    "REDUNDANT",
    "INDEPENDENT",
]

MODES = ("abs_mean", "signed")
SYNERGISTIC, INDEPENDENT, REDUNDANT = 1, 0, -1


def score_difference(p: torch.Tensor, p_masked: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-example effect of a mask: ``|p - p_masked|`` ('abs_mean') or ``p - p_masked``.

    Parameters
    ----------
    p : torch.Tensor
        (N, 1) or broadcastable unmasked scores.
    p_masked : torch.Tensor
        (N, K) scores with K different masks.
    mode : {'abs_mean', 'signed'}

    Returns
    -------
    torch.Tensor
        (N, K) differences; their mean over N is Δ of each mask.
    """
    diff = p - p_masked
    return diff.abs() if mode == "abs_mean" else diff


def pair_synergy(
    pair: torch.Tensor, single_i: torch.Tensor, single_j: torch.Tensor
) -> torch.Tensor:
    """SynXAI's S_ij = Δ_ij - Δ_i - Δ_j (per row, or of means: the formula is linear).

    Parameters
    ----------
    pair, single_i, single_j : torch.Tensor
        Broadcastable: the effect of masking i and j together, i alone, j alone.
    """
    return pair - single_i - single_j


def synergistic_importance_from_mean(
    importance: torch.Tensor, positive_synergy_mean: torch.Tensor, alpha: float
) -> torch.Tensor:
    """SynXAI's Z_i = Δ_i + α · mean_j max(S_ij, 0), given the mean positive synergy of each unit.

    Not a z-score: the synergistic importance of :func:`synergistic_importance`, from the
    already reduced synergy term (e.g. accumulated per row without the (n, n) matrix).

    Parameters
    ----------
    importance : torch.Tensor
        (..., n) Δ_i (per row or of means).
    positive_synergy_mean : torch.Tensor
        (..., n) mean_j max(S_ij, 0), broadcastable to ``importance``.
    alpha : float
        Weight of the synergy term.

    Returns
    -------
    torch.Tensor
        (..., n) Z_i.
    """
    return importance + alpha * positive_synergy_mean


def synergistic_importance(
    importance: torch.Tensor, synergy: torch.Tensor, alpha: float
) -> torch.Tensor:
    """SynXAI's Z_i = Δ_i + α · mean_j max(S_ij, 0), the mean over all n columns (N = n).

    Parameters
    ----------
    importance : torch.Tensor
        (n,) Δ_i.
    synergy : torch.Tensor
        (n, n) S_ij with zero diagonal.
    alpha : float
        Weight of the synergy term (5 or 20 in the paper).

    Returns
    -------
    torch.Tensor
        (n,) Z_i.
    """
    return synergistic_importance_from_mean(
        importance, synergy.clamp(min=0).mean(1), real_number("alpha", alpha)
    )


def synergy_ranking(synergy: torch.Tensor) -> torch.Tensor:
    """R_i = Σ_j max(S_ij, 0): the order of SynXAI's synergy-matrix plots.

    Parameters
    ----------
    synergy : torch.Tensor
        (n, n) S_ij.

    Returns
    -------
    torch.Tensor
        (n,) R_i.
    """
    return synergy.clamp(min=0).sum(1)


def pair_labels(
    synergy: torch.Tensor, importance: torch.Tensor, rtol: float = 0.05, atol: float = 0.0
) -> torch.Tensor:
    """SynXAI's pair classes: synergistic (Δ_ij > Δ_i + Δ_j), redundant (<), independent (≈).

    The paper leaves "≈" open; here a pair is independent when
    ``|S_ij| ≤ rtol · (|Δ_i| + |Δ_j|) + atol`` — S within a share of the units' own effects.

    Parameters
    ----------
    synergy : torch.Tensor
        (n, n) S_ij = Δ_ij − Δ_i − Δ_j.
    importance : torch.Tensor
        (n,) Δ_i.
    rtol, atol : float
        Relative and absolute width of the independent band (≥ 0).

    Returns
    -------
    torch.Tensor
        (n, n) int8: :data:`SYNERGISTIC` (1), :data:`INDEPENDENT` (0) or :data:`REDUNDANT`
        (−1); symmetric, the diagonal 0.
    """
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not real_number(name, value) >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if synergy.dim() != 2 or synergy.shape != (len(importance), len(importance)):
        raise ValueError(
            f"synergy must be (n, n) with n = len(importance) = {len(importance)}, "
            f"got {tuple(synergy.shape)}"
        )
    size = importance.abs().double()
    band = rtol * (size[:, None] + size[None, :]) + atol
    values = synergy.double()
    labels = torch.where(values > band, SYNERGISTIC, torch.where(values < -band, REDUNDANT, 0))
    return labels.fill_diagonal_(INDEPENDENT).to(torch.int8)
