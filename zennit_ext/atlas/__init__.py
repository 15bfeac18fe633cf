"""Dataset-wide explanations: :class:`ConceptAtlas` (ActMax and RelMax reference samples of
every unit, class statistics, conditional reference heatmaps, class graphs, an on-disk store,
torch.distributed scale-out).

Modules: :mod:`.api` (the atlas), :mod:`.fitting` (configuration, resume, the sharded pass,
errors across ranks), :mod:`.collect` (per-batch statistics and the state), :mod:`.merge`
(exact top-k merges and order-free sums), :mod:`.data` (samples and global batches),
:mod:`.distributed` (shards and merges across processes), :mod:`.store` (safetensors + JSON on
disk), :mod:`.references` (conditional heatmaps), :mod:`.classgraph` (mean neuron graph of a
class), :mod:`.figures` (matplotlib, imported when called).

Paper: Achtibat et al., "From attribution maps to human-understandable explanations through
Concept Relevance Propagation", Nature Machine Intelligence 2023, arXiv:2206.03208.
"""

from zennit_ext.atlas.api import ConceptAtlas
from zennit_ext.atlas.classgraph import ClassGraph, class_graph
from zennit_ext.atlas.references import References

__all__ = ["ConceptAtlas", "References", "ClassGraph", "class_graph"]
