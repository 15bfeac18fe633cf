"""Synthetic genomics: one-hot DNA with real JASPAR motifs planted at recorded positions.

Mirrors PLRP's synthetic genomics set-up (length 250): positives carry 1–2 instances of real
transcription-factor motifs sampled from their JASPAR position frequency matrices; negatives
carry a decoy drawn from a motif's matrix with its bases permuted (same length and information
content, not the motif), so a conserved block alone does not give the label away. The mask
marks the planted motifs.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.data._base import Dataset, cached

__all__ = ["load_dna", "MOTIFS", "BASES"]

BASES = "ACGT"
MOTIFS = {"MA0139.1": "CTCF", "MA0035.4": "GATA1", "MA0079.4": "SP1"}


def _frequency_matrices() -> dict[str, np.ndarray]:
    """JASPAR motifs as (length, 4) probability matrices (columns in :data:`BASES` order)."""

    def read() -> dict:
        from pyjaspar import jaspardb

        db = jaspardb()
        out = {}
        for motif_id in MOTIFS:
            counts = db.fetch_motif_by_id(motif_id).counts
            matrix = np.array([list(counts[b]) for b in BASES], dtype=np.float64).T
            out[motif_id] = torch.from_numpy(matrix / matrix.sum(1, keepdims=True))
        return out

    return {k: v.numpy() for k, v in cached("jaspar", {"ids": sorted(MOTIFS)}, read).items()}


def _sample(pfm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One sequence (length,) of base indices drawn column by column from a PFM."""
    cumulative = pfm.cumsum(1)
    return (rng.random((len(pfm), 1)) > cumulative).sum(1).clip(max=3)


def _build(n: int, length: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    matrices = _frequency_matrices()
    ids = sorted(matrices)
    longest = max(len(m) for m in matrices.values())
    if length < 2 * longest + 2:
        raise ValueError(f"length must be >= {2 * longest + 2} to hold two motifs, got {length}")
    sequences = rng.integers(0, 4, size=(n, length))
    y = np.arange(n) % 2
    rng.shuffle(y)
    mask = np.zeros((n, 1, length), bool)
    planted = np.full((n, 2, 2), -1, np.int64)  # (motif index, start) per planted instance
    half = length // 2
    for i in range(n):
        for k in range(1 + rng.integers(0, 2)):  # 1 or 2 instances, one per half
            m = rng.integers(len(ids))
            pfm = matrices[ids[m]]
            start = k * half + rng.integers(0, half - len(pfm))
            site = _sample(pfm if y[i] else pfm[:, rng.permutation(4)], rng)
            sequences[i, start : start + len(pfm)] = site
            if y[i]:
                mask[i, 0, start : start + len(pfm)] = True
                planted[i, k] = (m, start)
    x = np.eye(4, dtype=np.float32)[sequences].transpose(0, 2, 1)
    return {
        "x": torch.from_numpy(np.ascontiguousarray(x)),
        "y": torch.from_numpy(y.astype(np.int64)),
        "mask": torch.from_numpy(mask),
        "planted": torch.from_numpy(planted),
        "ids": ids,
    }


def load_dna(n: int = 2000, length: int = 250, seed: int = 0) -> Dataset:
    """One-hot DNA; label 1 when a real TF motif (CTCF, GATA1 or SP1) is planted.

    Parameters
    ----------
    n : int
        Number of sequences (labels balanced).
    length : int
        Sequence length (≥ twice the longest motif plus 2; default 250 as in PLRP).
    seed : int
        Seed of everything drawn.

    Returns
    -------
    Dataset
        ``x`` (n, 4, length) float32 one-hot (rows A, C, G, T); ``y`` (n,) int64 in {0, 1};
        ``mask`` (n, 1, length) bool = positions of planted motifs (all False for negatives).
        ``meta['planted']`` (n, 2, 2): (motif index into ``meta['motif_ids']``, start) per
        instance, -1 where none. Negatives carry a base-permuted decoy (not masked).
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    data = cached(
        "dna", {"n": n, "length": length, "seed": seed, "v": 1}, lambda: _build(n, length, seed)
    )
    meta = {"planted": data["planted"], "motif_ids": data["ids"]}
    meta["motif_names"] = [MOTIFS[i] for i in data["ids"]]
    return Dataset(data["x"], data["y"], data["mask"], ("no motif", "motif"), meta)
