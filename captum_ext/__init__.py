"""Captum plugins: layer and neuron synergy (SynXAI) and synergy pruning (:mod:`.synergy`),
the synchronization regularizers (:mod:`.module`) and filter metrics (:mod:`.metrics`).

Captum's ``captum.attr`` imports matplotlib for its visualisation helpers, so the public names
load on first access (PEP 562): ``import captum_ext`` stays cheap and pulls in neither Captum,
matplotlib, Quantus nor scikit-learn, and no ``zennit_ext`` engine; ``from captum_ext import
LayerSynergy`` costs what importing ``captum.attr`` costs. ``__version__`` is the installed
distribution's, the one version number shared with ``zennit_ext``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zennit_ext._lazy import lazy_exports

if TYPE_CHECKING:
    from captum_ext.module.sync import (
        LocalActivationConsistencyLoss,
        SynchronizationLoss,
        capture_output,
    )
    from captum_ext.synergy.formulas import synergistic_importance, synergy_ranking
    from captum_ext.synergy.layer import LayerSynergy
    from captum_ext.synergy.neuron import NeuronSynergy
    from captum_ext.synergy.result import SynergyResult

__all__ = [
    "LayerSynergy",
    "NeuronSynergy",
    "SynergyResult",
    "synergistic_importance",
    "synergy_ranking",
    "LocalActivationConsistencyLoss",
    "SynchronizationLoss",
    "capture_output",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "LayerSynergy": "captum_ext.synergy.layer",
        "NeuronSynergy": "captum_ext.synergy.neuron",
        "SynergyResult": "captum_ext.synergy.result",
        "synergistic_importance": "captum_ext.synergy.formulas",
        "synergy_ranking": "captum_ext.synergy.formulas",
        # synchronization regularizers (Han et al., TNNLS 2024)
        "LocalActivationConsistencyLoss": "captum_ext.module.sync",
        "SynchronizationLoss": "captum_ext.module.sync",
        "capture_output": "captum_ext.module.sync",
    },
    versioned=True,
)
