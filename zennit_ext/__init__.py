"""Zennit plugins: pruned LRP (PLRP), normalized relevance of neuron sets (NRM), neuron paths.

The public names load on first access (PEP 562): ``import zennit_ext`` loads no engine and
registers nothing, so ``captum_ext`` can use ``zennit_ext._checks`` at no cost. Importing
:mod:`zennit_ext.plrp` (``from zennit_ext import PLRPLambda`` does) registers ``'plrp_lambda'``
and ``'plrp_m'`` in ``zennit.composites.COMPOSITES``; importing :mod:`zennit_ext.attention`
(``from zennit_ext import AttnLRP`` does) registers ``'attnlrp'`` and ``'cp_lrp'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zennit_ext._lazy import lazy_exports

if TYPE_CHECKING:
    from zennit_ext.attention.composites import CPLRP, AttnLRP
    from zennit_ext.canonizers import (
        AttributeMergeBatchNorm,
        EfficientNetLiteCanonizer,
        MBConvSkipCanonizer,
    )
    from zennit_ext.gamma import FastGamma
    from zennit_ext.nrm.api import NRM, NRMExplanation
    from zennit_ext.paths.api import NeuronPaths
    from zennit_ext.plrp.composites import PLRPM, PLRPLambda

__all__ = [
    "NRM",
    "NRMExplanation",
    "NeuronPaths",
    "PLRPLambda",
    "PLRPM",
    "AttnLRP",
    "CPLRP",
    "FastGamma",
    "AttributeMergeBatchNorm",
    "MBConvSkipCanonizer",
    "EfficientNetLiteCanonizer",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "NRM": "zennit_ext.nrm.api",
        "NRMExplanation": "zennit_ext.nrm.api",
        "NeuronPaths": "zennit_ext.paths.api",
        "PLRPLambda": "zennit_ext.plrp.composites",
        "PLRPM": "zennit_ext.plrp.composites",
        "AttnLRP": "zennit_ext.attention.composites",
        "CPLRP": "zennit_ext.attention.composites",
        "FastGamma": "zennit_ext.gamma",
        "AttributeMergeBatchNorm": "zennit_ext.canonizers",
        "MBConvSkipCanonizer": "zennit_ext.canonizers",
        "EfficientNetLiteCanonizer": "zennit_ext.canonizers",
    },
    versioned=True,
)
