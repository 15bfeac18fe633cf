"""Zennit plugins: pruned LRP (PLRP), normalized relevance of neuron sets (NRM)."""

from importlib.metadata import PackageNotFoundError, version

from zennit_ext.nrm import NRM, NRMExplanation
from zennit_ext.plrp import PLRPM, PLRPLambda  # registers 'plrp_lambda', 'plrp_m'

try:  # the one version number is the distribution's (pyproject.toml)
    __version__ = version("neuron-xai")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["NRM", "NRMExplanation", "PLRPLambda", "PLRPM"]
