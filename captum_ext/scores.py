"""Synergy formulas on precomputed scores: one implementation, used by every entry point."""

from __future__ import annotations

import torch

__all__ = ["score_difference", "synergistic_importance", "synergy_ranking", "MODES"]

MODES = ("abs_mean", "signed")


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
    return importance + alpha * synergy.clamp(min=0).mean(1)


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
