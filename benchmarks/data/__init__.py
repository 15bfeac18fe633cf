"""Offline data sets: generators we write and real data that packages ship.

Every loader is seeded, returns tensors (and exact masks where there are masks) and caches
what it derives under ``.cache/data``. See ``benchmarks/data/README.md`` for sources and
licences.
"""

from benchmarks.data._base import Dataset, TabularSplits
from benchmarks.data.cluttered import load_cluttered
from benchmarks.data.dna import load_dna
from benchmarks.data.mnist import load_mnist
from benchmarks.data.parts import load_parts
from benchmarks.data.shapes import load_shapes
from benchmarks.data.tabular import load_fish, load_storms

__all__ = [
    "Dataset",
    "TabularSplits",
    "load_cluttered",
    "load_dna",
    "load_fish",
    "load_mnist",
    "load_parts",
    "load_shapes",
    "load_storms",
]
