"""Filter metrics of a conv layer against part masks (:mod:`.filters`): IoU-based
interpretability, stability, purity, diversity and module–part alignment; landmark
similarity (:mod:`.landmarks`, Sim = −distance between a filter's focus and a part's landmark)
for the same eq. 11–14 with a distance threshold.

Paper: Han et al., "Synchronization-Inspired Interpretable Neural Networks", IEEE TNNLS 2024,
eq. 11–14, Fig. 6. scikit-learn is imported only inside the clustering functions.
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
from captum_ext.metrics.landmarks import filter_foci, landmark_similarity, part_landmarks

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
    "part_landmarks",
    "filter_foci",
    "landmark_similarity",
]
