"""One timer for every speed figure: ours and the anchor's, measured in the same process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["time_call", "compare"]


def time_call(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls.

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    warmup : int
        Untimed calls first (allocations, lazy init, autotuning).
    repeats : int
        Timed calls; the median is returned.

    Returns
    -------
    float
        Median seconds per call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(
    ours: Callable[[], Any],
    anchor: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 5,
    anchor_scale: float = 1.0,
) -> dict[str, float]:
    """Time our method and its anchor alternately in one process and report the ratio.

    Parameters
    ----------
    ours, anchor : callable
        Called with no arguments.
    warmup, repeats : int
        As in :func:`time_call`, for each side.
    anchor_scale : float
        Multiplies the anchor's time, for anchors measured on a sample and extrapolated
        (e.g. per-pair loops timed on 20 of 10,000 pairs).

    Returns
    -------
    dict
        ``ours_s``, ``anchor_s`` (scaled), ``ratio`` = ours_s / anchor_s (below 1: we are
        faster), ``speedup`` = anchor_s / ours_s, ``threads`` (torch intra-op threads).
    """
    ours_s = time_call(ours, warmup=warmup, repeats=repeats)
    anchor_s = time_call(anchor, warmup=warmup, repeats=repeats) * anchor_scale
    return {
        "ours_s": ours_s,
        "anchor_s": anchor_s,
        "ratio": ours_s / anchor_s,
        "speedup": anchor_s / ours_s,
        "threads": torch.get_num_threads(),
    }
