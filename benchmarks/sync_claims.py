"""Tables I–IV and the paper's claims for the sync suite, per network, data and L_sync setting.

Paper: "Synchronization-inspired Interpretable Neural Networks" (Han et al., arXiv:2310.05419),
Tables I–IV (VOC Part; VGG16, and ResNet-18 in Tables I–II), Figs. 6, 9, 10. Each claim is
checked once per "+both" variant (:data:`benchmarks.sync_protocol.BOTH_VARIANTS`), so the
table shows which reduction of L_sync reproduces the paper.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmarks.report import Report
from benchmarks.sync_protocol import BOTH_VARIANTS, N_PARTS, PAPER_COLUMN, PHI

NAN = float("nan")
# Paper, VOC Part (baseline / ours w/o sync / ours): Table I, II (accuracy), III, IV.
PAPER = {
    "VGGSmall": {
        "interp": (0.4613, 0.6825, 0.6418),
        "stability": (0.5526, 0.4593, 0.4346),
        "purity": (0.0614, 0.0810, 0.0511),
        "diversity": (0.8845, 0.6950, 0.8203),
        "accuracy": (0.9099, 0.9110, 0.9153),
        "module_consistency": (0.4617, 0.1501, 0.3267),
        "nmi": (0.1432, 0.2502, 0.3538),
        "ari": (0.1152, 0.3126, 0.3905),
        "avi": (0.1267, 0.2285, 0.3542),
    },
    "ResNetSmall": {
        "interp": (0.4388, 0.7282, 0.6598),
        "stability": (0.5371, 0.4431, 0.4290),
        "purity": (0.0667, 0.0965, 0.0652),
        "diversity": (0.8905, 0.5128, 0.7452),
        "accuracy": (0.8826, 0.8826, 0.8853),
        **dict.fromkeys(("module_consistency", "nmi", "ari", "avi"), (NAN, NAN, NAN)),
    },
}
PAPER_NET = {"VGGSmall": "VGG16", "ResNetSmall": "ResNet-18"}
TABLE1 = ("interp", "stability", "purity", "diversity")
TABLE2 = ("accuracy", "module_consistency", "nmi", "ari", "avi")


def mean_sd(values: list[float], digits: int = 4) -> str:
    """ "mean ± sd" (sd with ddof 1; the mean alone for one value)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"


def _mean(runs: list[dict], *path: Any) -> float:
    values = []
    for run in runs:
        for step in path:
            run = run[step]
        values.append(run)
    return float(np.mean(values))


def _accuracy_at(runs: list[dict], fraction: float, key: str) -> float:
    return float(np.mean([r[key]["accuracy"][r[key]["fraction"].index(fraction)] for r in runs]))


def tables(report: Report, label: str, arch: str, found: dict[str, list[dict]], area: float):
    """Tables I–IV beside the paper's (its network's numbers), and dead-filter counts."""
    from captum_ext.metrics.filters import DIRECTION

    paper = PAPER[arch]
    directions = {"accuracy": "higher", **DIRECTION}
    for rate_key, rate, note in (
        ("main", area, f"top_rate = the test set's mean object area, {area:.3f}."),
        ("csgcnn", 0.3, "top_rate = 0.3 (CSGCNN's): regions ≈ 3× the object."),
    ):
        rows = []
        for variant, runs in found.items():
            row: dict[str, Any] = {"variant": variant, "seeds": len(runs)}
            for metric in TABLE1:
                row[metric] = mean_sd([r[rate_key][metric] for r in runs])
                row[f"{metric} (paper)"] = paper[metric][PAPER_COLUMN[variant]]
            rows.append(row)
        report.add_table(
            f"{label}: Table I, top_rate {rate:.3f} (φ = {PHI})",
            rows,
            direction={m: directions[m] for m in TABLE1},
            note=f"{note} Mean ± sd over seeds; paper: {PAPER_NET[arch]} on VOC Part (every "
            "'+both' row is compared with the paper's 'Ours').",
            key=f"{label} table1 {rate_key}",
        )
    rows = []
    for variant, runs in found.items():
        row = {"variant": variant}
        for metric in TABLE2:
            row[metric] = mean_sd([r[metric] for r in runs])
            row[f"{metric} (paper)"] = paper[metric][PAPER_COLUMN[variant]]
        row["dead_filters"] = mean_sd([r["dead_filters"] for r in runs], digits=1)
        row["train s"] = mean_sd([r["train_time_s"] for r in runs], digits=0)
        rows.append(row)
    report.add_table(
        f"{label}: Tables II–IV (accuracy, module consistency, module–part "
        f"alignment) and dead filters",
        rows,
        direction={m: directions[m] for m in (*TABLE2, "dead_filters")},
        note=f"Modules: spectral clustering into {N_PARTS} (the number of parts); "
        f"consistency over live filters; alignment at top_rate {area:.3f}, "
        f"φ = {PHI}. Dead filters: 0 on every test image (of 64). The paper gives "
        "Tables III–IV for VGG16 only.",
        key=f"{label} tables2-4",
    )


def _same_interp(a: dict, b: dict, metric: str) -> float:
    """Mean of metric(b) − metric(a) over the Interp range both landmark curves cover."""
    xa, xb = ([c[t]["interp"] for t in sorted(c)] for c in (a, b))
    low, high = max(min(xa), min(xb)), min(max(xa), max(xb))
    if not high > low:
        return NAN
    grid = np.linspace(low, high, 21)
    ya, yb = (np.interp(grid, x, [c[t][metric] for t in sorted(c)]) for x, c in ((xa, a), (xb, b)))
    return float(np.mean(yb - ya))


def _checks(base: list, lac: list, both: list, paper: dict) -> list[tuple[str, str, str, Any]]:
    """(claim, paper's numbers, ours, holds) of each claim on one (network, data, variant)."""
    out: list[tuple[str, str, str, Any]] = []

    def p(metric: str, *cols: int, digits: int = 2) -> str:
        return " → ".join(f"{paper[metric][c]:.{digits}f}" for c in cols)

    m = {k: [_mean(r, "main", k) for r in (base, lac, both)] for k in TABLE1}
    i, s, pu, d = m["interp"], m["stability"], m["purity"], m["diversity"]
    out += [
        ("L_lac raises Interp", p("interp", 0, 1), f"{i[0]:.3f} → {i[1]:.3f}", i[1] > i[0]),
        ("both losses raise Interp", p("interp", 0, 2), f"{i[0]:.3f} → {i[2]:.3f}", i[2] > i[0]),
        ("both lower (improve) Stability", p("stability", 0, 2, digits=3),
         f"{s[0]:.3f} → {s[2]:.3f}", s[2] < s[0]),
        ("both lower (improve) Purity", p("purity", 0, 2, digits=4),
         f"{pu[0]:.4f} → {pu[2]:.4f}", pu[2] < pu[0]),
        ("L_lac costs Diversity", p("diversity", 0, 1), f"{d[0]:.3f} → {d[1]:.3f}", d[1] < d[0]),
        ("L_sync restores Diversity over L_lac alone", p("diversity", 1, 2),
         f"{d[1]:.3f} → {d[2]:.3f}", d[2] > d[1]),
    ]  # fmt: skip
    acc = [_mean(r, "accuracy") for r in (base, lac, both)]
    out.append(
        ("accuracy kept (within 1 point of the baseline)", p("accuracy", 0, 2, digits=4),
         f"{acc[0]:.2%} / {acc[2]:.2%}", acc[2] >= acc[0] - 0.01)
    )  # fmt: skip
    if math.isnan(paper["nmi"][0]):  # the paper's module and Fig. 6/9/10 claims are VGG16's
        return out
    con = [_mean(r, "module_consistency") for r in (base, lac, both)]
    out += [
        ("module consistency improves with both losses", p("module_consistency", 0, 2),
         f"{con[0]:.3f} → {con[2]:.3f}", con[2] < con[0]),
        ("L_lac alone: the best (lowest) consistency", p("module_consistency", 1, 2),
         f"{con[1]:.3f} vs {con[2]:.3f} (both)", con[1] < min(con[0], con[2])),
    ]  # fmt: skip
    for key in ("nmi", "ari", "avi"):
        v = [_mean(r, key) for r in (base, lac, both)]
        out.append(
            (f"{key.upper()} module–part alignment: baseline < L_lac < both", p(key, 0, 1, 2),
             " → ".join(f"{x:.3f}" for x in v), v[0] < v[1] < v[2])
        )  # fmt: skip
    curves = [_curve(r) for r in (base, both)]
    for metric, better in (("stability", -1), ("purity", -1)):
        gap = _same_interp(*curves, metric)
        out.append(
            (f"Fig. 6 (landmarks): both has lower {metric.capitalize()} at equal Interp",
             "curves", f"mean Δ {gap:+.4f}", better * gap > 0 if not math.isnan(gap) else None)
        )  # fmt: skip
    span = [max(c[t]["interp"] for t in c) for c in curves]
    out.append(
        ("Fig. 6 (landmarks): both reaches a broader Interp scale", "curves",
         f"max Interp {span[0]:.3f} → {span[1]:.3f}", span[1] > span[0])
    )  # fmt: skip
    for key, how in (("pruning", "one shot"), ("pruning_sequential", "sequential")):
        half = [_accuracy_at(r, 0.5, key) for r in (base, lac, both)]
        out.append(
            (f"more redundant: accuracy at 50 % pruned L_lac ≥ both > baseline (Fig. 9, {how})",
             "curves", " / ".join(f"{x:.2%}" for x in half), half[1] >= half[2] > half[0])
        )  # fmt: skip
    level = [_mean(r, "landscape_mean") for r in (base, lac, both)]
    rise = [_mean(r, "landscape_rise") for r in (base, lac, both)]
    out.append(
        ("both: lower and flatter loss landscape than baseline and L_lac (Fig. 10)", "surfaces",
         f"mean {level[0]:.3f} / {level[1]:.3f} / {level[2]:.3f}; rise "
         f"{rise[0]:.3f} / {rise[1]:.3f} / {rise[2]:.3f}",
         level[2] < min(level[:2]) and rise[2] < min(rise[:2]))
    )  # fmt: skip
    return out


def _curve(runs: list[dict]) -> dict:
    """The seed-mean landmark curve of one variant."""
    points = runs[0]["landmark_curve"]
    return {t: {k: _mean(runs, "landmark_curve", t, k) for k in TABLE1} for t in points}


def claims(results: dict[tuple[str, str], dict[str, list]]) -> tuple[list[dict], list[dict]]:
    """The paper's claims on every (network, data), one ours/holds pair per '+both' variant.

    Parameters
    ----------
    results : dict
        (network, data) → variant → runs (the measurements of each seed).

    Returns
    -------
    rows : list of dict
        ``model``, ``data``, ``claim``, ``paper`` and per '+both' variant ``<variant>`` (ours)
        and ``holds: <variant>`` (bool, or None where a curve comparison is undefined).
    summary : list of dict
        Per (network, data, variant): claims checked and holding.
    """
    rows: list[dict] = []
    summary: list[dict] = []
    for (arch, data), found in results.items():
        per_variant = {
            v: _checks(found["baseline"], found["+L_lac"], found[v], PAPER[arch])
            for v in BOTH_VARIANTS
            if v in found
        }
        first = next(iter(per_variant.values()))
        for index, (claim, paper, _, _) in enumerate(first):
            row: dict[str, Any] = {"model": arch, "data": data, "claim": claim, "paper": paper}
            for variant, checks in per_variant.items():
                row[variant] = checks[index][2]
                row[f"holds: {variant}"] = checks[index][3]
            rows.append(row)
        for variant, checks in per_variant.items():
            decided = [c[3] for c in checks if c[3] is not None]
            summary.append(
                {"model": arch, "data": data, "variant": variant, "claims": len(decided),
                 "hold": int(sum(decided))}
            )  # fmt: skip
    return rows, summary
