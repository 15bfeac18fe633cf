"""Relevant-neuron paths: :class:`NeuronPaths` (:mod:`.api`) over the graph algorithms of
:mod:`.graph` (unit selection, k-best paths).

Paper: Bhati et al., "Neural Network Interpretability with Layer-Wise Relevance Propagation:
Novel Techniques for Neuron Selection and Visualization", arXiv:2412.05686.
"""

from zennit_ext.paths.api import NeuronPaths, Threshold
from zennit_ext.paths.graph import NeuronGraph, Paths, select_units

__all__ = ["NeuronPaths", "Threshold", "select_units", "Paths", "NeuronGraph"]
