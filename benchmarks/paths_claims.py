"""Claims of the paths paper (Bhati et al., arXiv:2412.05686) and the numbers that test them.

The paper states its findings in words (Figs. 3–7) and gives one number, the threshold
``mean − 1·σ``; :func:`claims` tests each statement on our measurements, once with units
selected by plain LRP relevance (the paper's Algorithm 1) and once by NRM relevance (our
default). Pure functions on plain numbers, so the tests can make each claim fail alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

KINDS = ("lrp", "nrm")
MAX_NMSE = 0.05


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two heatmaps over their entries (0 if one is constant)."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    norm = float(a.norm() * b.norm())
    return float((a * b).sum()) / norm if norm > 0 else 0.0


def spread(heatmap: torch.Tensor) -> float:
    """Fraction of the entries that hold half of ``|heatmap|``'s mass (larger = broader)."""
    values = heatmap.flatten().abs().double().sort(descending=True).values
    total = float(values.sum())
    if total == 0:
        return 1.0
    count = int((values.cumsum(0) < 0.5 * total).sum()) + 1
    return count / len(values)


def claims(measures: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """One row per claim: the paper's words and number, ours under 'lrp' and 'nrm', holds.

    Parameters
    ----------
    measures : mapping
        ``{kind: {...}}`` for kind in ('lrp', 'nrm'), each with the means over images of
        ``kept_c1`` (kept fraction at c = 1), ``nmse_c1`` and ``score_ratio_c1`` (restricted
        heatmap error and class-score ratio at c = 1), ``chosen_c`` and ``met`` (threshold
        tuning), ``corr_full`` (5-path relevance heatmap vs the full heatmap), ``corr_act``
        (activation vs relevance 5-path heatmap), ``spread_act`` and ``spread_rel`` (share
        of pixels holding half the mass).

    Returns
    -------
    list of dict
        Columns: claim, paper's number, tested as, ours (lrp), ours (nrm), holds (lrp),
        holds (nrm).
    """
    missing = [kind for kind in KINDS if kind not in measures]
    if missing:
        raise ValueError(f"measures must have the kinds {KINDS}, missing {missing}")
    specs = [
        (
            "Fig. 3: keeping units above mean − 1·σ simplifies the decision path",
            "c = 1",
            "kept fraction at c = 1 < 1",
            lambda m: m["kept_c1"],
            lambda m: m["kept_c1"] < 1.0,
        ),
        (
            "§IV C: the kept units are the ones that drive the prediction",
            "— (words only)",
            "class-score ratio with unkept units zeroed, at c = 1, ≥ 0.5",
            lambda m: m["score_ratio_c1"],
            lambda m: m["score_ratio_c1"] >= 0.5,
        ),
        (
            "Fig. 4: the heatmap through the kept units matches the full one",
            "— (MSE, SMAPE named, no values)",
            f"nMSE(restricted, full) at c = 1 ≤ {MAX_NMSE}",
            lambda m: m["nmse_c1"],
            lambda m: m["nmse_c1"] <= MAX_NMSE,
        ),
        (
            "§IV D: averaging MSE finds a threshold that keeps the contributing units",
            "— (no value)",
            f"tuned c meets nMSE ≤ {MAX_NMSE} (value: chosen c)",
            lambda m: m["chosen_c"],
            lambda m: bool(m["met"]),
        ),
        (
            "Fig. 6: the k-path heatmap highlights regions that impact the prediction",
            "k = 5",
            "Pearson(5-path heatmap, full heatmap) > 0",
            lambda m: m["corr_full"],
            lambda m: m["corr_full"] > 0,
        ),
        (
            "§V B: relevance and activation heatmaps overlap",
            "k = 5",
            "Pearson(activation 5-path heatmap, relevance 5-path heatmap) > 0",
            lambda m: m["corr_act"],
            lambda m: m["corr_act"] > 0,
        ),
        (
            "Fig. 7: the activation heatmap shows broader regions",
            "k = 5",
            "share of pixels with half the mass: activation > relevance (value: ratio)",
            lambda m: m["spread_act"] / max(m["spread_rel"], 1e-12),
            lambda m: m["spread_act"] > m["spread_rel"],
        ),
    ]
    rows = []
    for claim, number, tested, value, holds in specs:
        rows.append(
            {
                "claim": claim,
                "paper's number": number,
                "tested as": tested,
                "ours (lrp)": float(value(measures["lrp"])),
                "ours (nrm)": float(value(measures["nrm"])),
                "holds (lrp)": bool(holds(measures["lrp"])),
                "holds (nrm)": bool(holds(measures["nrm"])),
            }
        )
    return rows
