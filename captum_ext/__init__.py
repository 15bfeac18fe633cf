"""Captum plugins: layer and neuron synergy (SynXAI) and synergy-based pruning.

Captum's ``captum.attr`` imports matplotlib for its visualisation helpers, so the public names
load on first access (PEP 562): ``import captum_ext`` stays cheap and pulls in neither
matplotlib, Quantus nor scikit-learn; ``from captum_ext import LayerSynergy`` costs what
importing ``captum.attr`` costs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captum_ext.regularizers import (
        LocalActivationConsistencyLoss,
        SynchronizationLoss,
        capture_output,
    )
    from captum_ext.scores import synergistic_importance, synergy_ranking
    from captum_ext.synergy import LayerSynergy, NeuronSynergy
    from captum_ext.synergy_result import SynergyResult

_HOMES = {
    "LayerSynergy": "captum_ext.synergy",
    "NeuronSynergy": "captum_ext.synergy",
    "SynergyResult": "captum_ext.synergy_result",
    "synergistic_importance": "captum_ext.scores",
    "synergy_ranking": "captum_ext.scores",
    # synchronization regularizers (Han et al., TNNLS 2024)
    "LocalActivationConsistencyLoss": "captum_ext.regularizers",
    "SynchronizationLoss": "captum_ext.regularizers",
    "capture_output": "captum_ext.regularizers",
}

__all__ = [
    "LayerSynergy", "NeuronSynergy", "SynergyResult", "synergistic_importance", "synergy_ranking",
]  # fmt: skip
__all__ += ["LocalActivationConsistencyLoss", "SynchronizationLoss", "capture_output"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'captum_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
