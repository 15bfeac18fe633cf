"""Pruned LRP (PLRP-λ, PLRP-M): Zennit composites (:mod:`.composites`) over pure masks
(:mod:`.masks`).

Importing this package registers ``'plrp_lambda'`` and ``'plrp_m'`` in Zennit's
``COMPOSITES``. Paper: Yanez Sarmiento et al., "Sparse Explanations of Neural Networks Using
Pruned Layer-Wise Relevance Propagation", arXiv:2404.14271.
"""

from zennit_ext.plrp.composites import PLRPM, PLRPLambda, PruningHook, PruningSpec, pruned_hook

__all__ = ["PLRPLambda", "PLRPM", "PruningSpec", "PruningHook", "pruned_hook"]
