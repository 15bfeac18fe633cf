"""Captum plugins: neuron synergy (SynXAI) and synergy-based pruning."""

from captum_ext.scores import synergistic_importance, synergy_ranking
from captum_ext.synergy import NeuronSynergy

__all__ = ["NeuronSynergy", "synergistic_importance", "synergy_ranking"]
