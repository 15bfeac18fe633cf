r"""SynXAI's Δ and S as Shapley interactions: what they are exactly, and a 2-additive conversion.

Units are players. For a row x and a set U of units, p_U(x) is the score with the units of U
masked. Two games live on the units:

- the *masked game* (any mode) ``g(U) = mean_x d(p(x), p_U(x))``, g(∅) = 0, with d the
  difference of ``mode`` (``|p − p_U|`` for 'abs_mean', ``p − p_U`` for 'signed');
- the *kept game* (mode 'signed' only) ``v(T) = mean_x p_{N∖T}(x)``: the mean score when only
  the units of T are left unmasked. Then ``g(U) = v(N) − v(N∖U)``: g is the dual of v.

With the Möbius transform ``m_w(A) = Σ_{B⊆A} (−1)^{|A|−|B|} w(B)`` of a game w, exactly
(no assumption on the model):

.. math::

    Δ_i = g(\{i\}) = m_g(\{i\}), \qquad
    S_{ij} = g(\{i,j\}) - g(\{i\}) - g(\{j\}) + g(∅) = m_g(\{i,j\}),

    S_{ij} = -[v(N) - v(N∖i) - v(N∖j) + v(N∖ij)] = -\sum_{B ⊇ \{i,j\}} m_v(B)
    \quad\text{('signed')}.

The Shapley interaction index of a pair is ``SII_ij(w) = Σ_{B⊇ij} m_w(B) / (|B| − 1)`` (for
pairs, order-2 k-SII with k = 2 is SII), the Shapley–Taylor index of order 2 is
``STII_ij(w) = Σ_{B⊇ij} m_w(B) / C(|B|, 2)``. So S_ij is the first term of the masked game's
indices, and minus the kept game's pair interaction with every coalition B ⊋ {i, j} weighted by
1 instead of ``1/(|B| − 1)``: S counts the higher-order interactions of a pair in full, the indices
share them out. All of them coincide exactly when the game is 2-additive (no Möbius mass on
three or more units); then, for both games, every order-≤2 index (k-SII, STII, FSII) equals
the Möbius transform and

.. math::

    \text{masked: } I_i = Δ_i,\ I_{ij} = S_{ij}; \qquad
    \text{kept: } I_i = Δ_i + \sum_{j≠i} S_{ij},\ I_{ij} = -S_{ij}; \qquad
    φ_i = Δ_i + \tfrac12 \sum_{j≠i} S_{ij}\ \text{(Shapley value, both games)}.

:func:`to_interactions` returns these values: the exact order-≤2 interactions of the unique
2-additive game that agrees with the masked game on every coalition of at most two units,
i.e. on the 1 + n + n(n − 1)/2 evaluations SynXAI makes. :func:`from_interactions` inverts it.

References: B. Farag, "SynXAI: Synergistic Explainability for Neural Networks"; M. Grabisch,
J.-L. Marichal, M. Roubens, "Equivalent representations of set functions", Math. Oper. Res. 25
(2000); K. Dhamdhere, A. Agarwal, M. Sundararajan, "The Shapley Taylor Interaction Index",
arXiv:1902.05622; F. Fumagalli et al., "SHAP-IQ: Unified Approximation of any-order Shapley
Interactions", arXiv:2303.01179.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from captum_ext.synergy.result import SynergyResult

__all__ = ["GAMES", "Interactions", "to_interactions", "from_interactions", "shapley_values"]

GAMES = ("masked", "kept")


class Interactions(NamedTuple):
    """Order-1 and order-2 interaction values of n units.

    Attributes
    ----------
    first : torch.Tensor
        (n,) I_i.
    second : torch.Tensor
        (n, n) I_ij, symmetric, zero diagonal.
    """

    first: Tensor
    second: Tensor


def _check_game(game: str, mode: str) -> None:
    if game not in GAMES:
        raise ValueError(f"game must be one of {GAMES}, got {game!r}")
    if game == "kept" and mode != "signed":
        raise ValueError(
            f"game='kept' needs mode='signed' (the abs_mean masked game is not the dual of a "
            f"kept game), got mode={mode!r}"
        )


def _off_diagonal(second: Tensor) -> Tensor:
    return second - torch.diag_embed(torch.diagonal(second))


def to_interactions(result: SynergyResult, game: str = "kept") -> Interactions:
    """Order-≤2 interactions (k-SII = STII = FSII = Möbius) of the 2-additive fit of a result.

    See the module docstring for the derivation. Exact for the masked or kept game itself when
    that game is 2-additive (e.g. a score linear in the layer plus products of unit pairs);
    otherwise the values of the 2-additive game that matches SynXAI's evaluations.

    Parameters
    ----------
    result : SynergyResult
        Δ (n,) and S (n, n).
    game : {'kept', 'masked'}
        'kept' (players present = units left unmasked, the usual convention of SHAP and
        shapiq; needs ``result.mode == 'signed'``): I_i = Δ_i + Σ_j S_ij, I_ij = −S_ij.
        'masked' (players present = units masked, any mode): I_i = Δ_i, I_ij = S_ij.

    Returns
    -------
    Interactions
        ``first`` (n,), ``second`` (n, n) in the result's dtype and device.
    """
    if not isinstance(result, SynergyResult):
        raise TypeError(f"result must be a SynergyResult, got {type(result).__name__}")
    _check_game(game, result.mode)
    synergy = _off_diagonal(result.synergy)
    if game == "masked":
        return Interactions(result.importance.clone(), synergy)
    return Interactions(result.importance + synergy.sum(1), -synergy)


def from_interactions(first: Tensor, second: Tensor, game: str = "kept") -> tuple[Tensor, Tensor]:
    """Δ and S of the 2-additive game with order-1 and order-2 interactions ``first``, ``second``.

    The inverse of :func:`to_interactions`: ``from_interactions(*to_interactions(r, g), g)``
    gives ``(r.importance, r.synergy)``. For a 2-additive game, e.g. the exact k-SII of
    shapiq's ``ExactComputer(...)('k-SII', order=2)`` read as (n,) and (n, n) arrays, it gives
    the Δ and S that SynXAI's masking would measure ('signed' mode for ``game='kept'``).

    Parameters
    ----------
    first : torch.Tensor
        (n,) I_i.
    second : torch.Tensor
        (n, n) I_ij; symmetrized (its upper triangle is used) and the diagonal ignored.
    game : {'kept', 'masked'}
        Whose interactions they are (see :func:`to_interactions`).

    Returns
    -------
    importance : torch.Tensor
        (n,) Δ_i.
    synergy : torch.Tensor
        (n, n) S_ij, symmetric, zero diagonal.
    """
    _check_game(game, "signed")
    for name, value, dim in (("first", first, 1), ("second", second, 2)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != dim:
            raise ValueError(f"{name} must have {dim} dimension(s), got {tuple(value.shape)}")
    n = len(first)
    if second.shape != (n, n):
        raise ValueError(f"second must be (n, n) with n = len(first) = {n}, got {second.shape}")
    upper = torch.triu(second, diagonal=1)
    pairs = (upper + upper.t()).to(first.dtype)
    if game == "masked":
        return first.clone(), pairs
    return first + pairs.sum(1), -pairs


def shapley_values(result: SynergyResult) -> Tensor:
    """(n,) φ_i = Δ_i + ½ Σ_j S_ij: the units' Shapley values of the 2-additive fit.

    The same for the masked and the kept game (a game and its dual share Shapley values).
    Exact when the game is 2-additive; then, in 'signed' mode, Σ_i φ_i = mean_x (p(x) − p_N(x))
    (efficiency: the score minus the score with every unit masked).
    """
    if not isinstance(result, SynergyResult):
        raise TypeError(f"result must be a SynergyResult, got {type(result).__name__}")
    return result.importance + 0.5 * _off_diagonal(result.synergy).sum(1)
