"""What the PLRP suite and its plots share: method names, metric directions, tie orders and
the task record. The plots import this, never the suite."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

METHOD_NAMES = ("PLRP-λ", "PLRP-M")
DIRECTION = {
    "gini": "higher",
    "entropy": "lower",
    "rma": "higher",
    "faith_auc": "lower",
    "faith_auc_rand": "lower",
    "lipschitz": "lower",
}
FIGURES = {"image": "Figure 2 (images)", "genomics": "Figure 8 (genomics)"}


@dataclass
class Task:
    """One model with its explained inputs; ``mask`` is None without ground truth.

    ``kind`` ('image' or 'genomics') decides which of the paper's claims apply (Figure 2 vs
    the genomics section, Figure 8).
    """

    name: str
    kind: str
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    mask: np.ndarray | None
    base: dict[str, Any]  # EpsilonGammaBox kwargs
    baseline: float  # perturbation value (data's neutral value)
    patch: int  # region side for region perturbation (images only)
    robustness: bool


TIE_ORDERS = {"": None, "_rand": 0}  # metric suffix -> tie_seed of region_perturbation_auc
