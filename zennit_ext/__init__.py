"""Zennit plugins: pruned LRP (PLRP), normalized relevance of neuron sets (NRM)."""

from zennit_ext.plrp import PLRPM, PLRPLambda  # noqa: F401  (registers 'plrp_lambda', 'plrp_m')
