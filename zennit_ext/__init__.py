"""Zennit plugins: pruned LRP (PLRP), normalized relevance of neuron sets (NRM)."""

from zennit_ext.nrm import NRM, NRMExplanation
from zennit_ext.plrp import PLRPM, PLRPLambda  # registers 'plrp_lambda', 'plrp_m'

__all__ = ["NRM", "NRMExplanation", "PLRPLambda", "PLRPM"]
