"""Brute-force NRM reference: enumerate every walk of a small ReLU MLP.

Equations 5–18 of the NRM paper (Xiong et al., arXiv:2606.00557).

The normalized conditionals are written in matrix form from the weights and activations,
independently of Zennit: ``R(n_{l-1} = j | n_l = k) = a_j w̃_kj / Σ_j' a_j' w̃_kj'`` with
``w̃ = w⁺`` (z⁺) or, for γ, the sign-aware form Zennit uses: ``w + γ w⁺`` where the unit's
pre-activation is positive, ``w + γ w⁻`` where it is negative, nothing where it is 0; a zero
column sum gives 0. A walk's relevance is the
product of its conditionals and ``R(n_L = c) = 1`` (eq. 12).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


class Walks:
    """All walks of one sample through ``model`` (Linear/ReLU ``nn.Sequential``), enumerated.

    Parameters
    ----------
    model : torch.nn.Sequential
        Alternating ``nn.Linear`` and ``nn.ReLU`` ending in ``nn.Linear``.
    x : torch.Tensor
        One sample, (n_inputs,), non-negative.
    target : int
        Explained output.
    gamma : float or None
        None for z⁺, else the γ of the γ rule.
    """

    @torch.no_grad()
    def __init__(self, model: nn.Sequential, x: torch.Tensor, target: int, gamma: float | None):
        linears = [module for module in model if isinstance(module, nn.Linear)]
        activation, self.conditionals = x.double(), []
        for linear in linears:
            weight = linear.weight.double()
            if gamma is None:
                modified = weight.clamp(min=0)
            else:
                sign = (linear(activation.to(weight.dtype)).double().sign())[:, None]  # (k, 1)
                part = torch.where(sign > 0, weight.clamp(min=0), weight.clamp(max=0))
                modified = (weight + gamma * part) * sign.abs()
            contribution = activation[None, :] * modified  # (k, j)
            sums = contribution.sum(1, keepdim=True)
            self.conditionals.append(
                torch.where(sums != 0, contribution / torch.where(sums != 0, sums, 1.0), 0.0)
            )
            activation = torch.relu(linear(activation.to(weight.dtype)).double())
        self.sizes = [len(x)] + [linear.out_features for linear in linears]
        self.target = target

    def relevance(self, walk: tuple[int, ...]) -> float:
        """R(walk) for a walk (n_0, …, n_L)."""
        if walk[-1] != self.target:
            return 0.0
        value = 1.0
        for layer, conditional in enumerate(self.conditionals):
            value *= float(conditional[walk[layer + 1], walk[layer]])
        return value

    def all(self) -> list[tuple[tuple[int, ...], float]]:
        """Every walk with its relevance."""
        return [(w, self.relevance(w)) for w in itertools.product(*map(range, self.sizes))]

    def joint(self, sets: dict[int, set[int]]) -> float:
        """R(S_Λ) for ``{walk layer: neuron set}`` (walk layer 0 = input)."""
        return sum(r for w, r in self.all() if all(w[layer] in s for layer, s in sets.items()))

    def heatmap(self, sets: dict[int, set[int]]) -> torch.Tensor:
        """Input relevance of the walks through the sets, (n_inputs,)."""
        heat = torch.zeros(self.sizes[0], dtype=torch.float64)
        for w, r in self.all():
            if all(w[layer] in s for layer, s in sets.items()):
                heat[w[0]] += r
        return heat
