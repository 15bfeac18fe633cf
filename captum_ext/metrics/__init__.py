"""Filter metrics of a conv layer against part masks (:mod:`.filters`): IoU-based
interpretability, stability, purity, diversity and module–part alignment.

Paper: Han et al., "Synchronization-Inspired Interpretable Neural Networks", IEEE TNNLS 2024,
eq. 11–14. scikit-learn is imported only inside the clustering functions.
"""

from captum_ext.metrics.filters import (
    DIRECTION,
    diversity,
    filter_metrics,
    interp,
    module_consistency,
    module_part_alignment,
    part_iou,
    purity,
    stability,
)

__all__ = [
    "part_iou",
    "interp",
    "stability",
    "purity",
    "diversity",
    "module_consistency",
    "module_part_alignment",
    "filter_metrics",
    "DIRECTION",
]
