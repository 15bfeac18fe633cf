"""Normalized relevance of neuron sets (NRM): the public face (:mod:`.api`), the normalized
rules (:mod:`.rules`), neuron sets (:mod:`.sets`), the engine (:mod:`.engine`) and its fast
paths (:mod:`.fastpaths`).

Paper: Xiong et al., "Normalized Relevance Measure as a Unifying Framework to Explain Neural
Network Latent Structures", arXiv:2606.00557.
"""

from zennit_ext.nrm.api import NRM, NRMExplanation

__all__ = ["NRM", "NRMExplanation"]
