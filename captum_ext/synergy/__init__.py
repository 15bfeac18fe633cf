"""SynXAI's synergy as Captum attributions: LayerSynergy (layer units) and NeuronSynergy (inputs).

Both mask units alone and in pairs and measure the change of a score p:

- ``d_U(x) = |p(x) - p_U(x)|`` (``mode='abs_mean'``, the paper's) or ``p(x) - p_U(x)`` ('signed'),
- Δ_i = mean_x d_i(x), Δ_ij = mean_x d_ij(x), S_ij = Δ_ij - Δ_i - Δ_j (i ≠ j), S_ii = 0,
- Z_i = Δ_i + α · mean_j max(S_ij, 0) (mean over all n units).

Reference: B. Farag, "SynXAI: Synergistic Explainability for Neural Networks" (code:
github.com/benedikt20/synXAI). With ``mode='signed'``, S_ij is minus the second-order joint
contribution of the pair.

The names load on first access (PEP 562): :mod:`.formulas` and :mod:`.pruning` do not need
``captum.attr``, which :mod:`.layer` and :mod:`.neuron` import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zennit_ext._lazy import lazy_exports

if TYPE_CHECKING:
    from captum_ext.synergy.layer import LayerSynergy
    from captum_ext.synergy.neuron import MAX_INPUT_UNITS, NeuronSynergy
    from captum_ext.synergy.result import SynergyResult

__all__ = ["LayerSynergy", "NeuronSynergy", "SynergyResult", "MAX_INPUT_UNITS"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "LayerSynergy": "captum_ext.synergy.layer",
        "NeuronSynergy": "captum_ext.synergy.neuron",
        "MAX_INPUT_UNITS": "captum_ext.synergy.neuron",
        "SynergyResult": "captum_ext.synergy.result",
    },
)
