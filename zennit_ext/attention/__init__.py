"""Transformers and modern CNN blocks for Zennit: AttnLRP and CP-LRP.

Importing this package registers ``'attnlrp'`` and ``'cp_lrp'`` in Zennit's ``COMPOSITES``.
Rules live in :mod:`zennit_ext.rules` (LN rule, softmax rule, product rule, stop), explicit
modules in :mod:`zennit_ext.layers` and :mod:`.modules`, canonizers for torchvision's ViT and
ConvNeXt in :mod:`.canonizers`, for Swin in :mod:`.swin`, MaxViT in :mod:`.maxvit`, Hugging
Face BERT and ViT in :mod:`.huggingface`, the composites in :mod:`.composites`; the
detection of LXT's global patches is :mod:`zennit_ext._lxt` (PLRP uses it too).
Papers: Achtibat et al., "AttnLRP: Attention-Aware
Layer-Wise Relevance Propagation for Transformers", ICML 2024, arXiv:2402.05602; Ali et al.,
"XAI for Transformers: Better Explanations through Conservative Propagation", ICML 2022,
arXiv:2202.07304.
"""

from zennit_ext._lxt import check_no_lxt_patch, lxt_patch_active
from zennit_ext.attention.canonizers import (
    ConvNeXtCanonizer,
    MultiheadAttentionCanonizer,
    ViTCanonizer,
)
from zennit_ext.attention.composites import CPLRP, AttnLRP, uncovered_modules
from zennit_ext.attention.huggingface import HuggingFaceCanonizer, Logits
from zennit_ext.attention.maxvit import MaxViTCanonizer
from zennit_ext.attention.swin import SwinCanonizer

__all__ = [
    "AttnLRP",
    "CPLRP",
    "ViTCanonizer",
    "ConvNeXtCanonizer",
    "MultiheadAttentionCanonizer",
    "SwinCanonizer",
    "MaxViTCanonizer",
    "HuggingFaceCanonizer",
    "Logits",
    "uncovered_modules",
    "lxt_patch_active",
    "check_no_lxt_patch",
]
