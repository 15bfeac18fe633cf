"""Synergy over rows in chunks: sums for SynergyResult (all-reduced when distributed), or Z per row.

A ``Plan`` names the rows N, the units n, how many rows one chunk holds, and a factory
``evaluator(start, stop)`` for a chunk (see :mod:`._evaluators`). Memory is bounded by
the chunk, never by N. Differences, sums and formulas are float64 whatever the model's dtype
(S_ij is a difference of nearly equal means of thousands of rows); results come back in the
dtype the model gives its scores in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from captum_ext.synergy import formulas as scores
from zennit_ext._checks import check_finite

__all__ = ["Plan", "sums", "per_row_z"]


@dataclass(frozen=True)
class Plan:
    """What the engine runs: N rows in chunks of ``rows_per_chunk``, n units, one factory."""

    rows: int
    n: int
    rows_per_chunk: int
    evaluator: Callable[[int, int], Any]
    mode: str
    progress: bool


def _chunks(plan: Plan) -> Iterator[tuple[Any, Tensor, Tensor, Tensor, torch.dtype]]:
    """Per chunk: its evaluator, p (R,), p_single (R, n) and d_i (R, n) in float64, and the
    model's dtype of the scores."""
    for start in range(0, plan.rows, plan.rows_per_chunk):
        evaluator = plan.evaluator(start, min(plan.rows, start + plan.rows_per_chunk))
        p, p_single, dtype = evaluator.singles()
        check_finite("the explained output (model output or neuron, finite inputs)", p)
        check_finite("the explained output with one unit masked", p_single)
        d_single = scores.score_difference(p[:, None], p_single, plan.mode)
        yield evaluator, p, p_single, d_single, dtype


def _pair_blocks(plan: Plan, evaluator: Any, bar: tqdm) -> Iterator[Tensor]:
    upper = torch.triu_indices(plan.n, plan.n, offset=1).t()
    if len(upper) == 0:  # one unit, no pair (split would still give one empty block)
        return
    for block in upper.split(evaluator.pairs_per_call):
        yield block
        bar.update(len(block))


def _pair_differences(
    plan: Plan, evaluator: Any, block: Tensor, p: Tensor, p_single: Tensor
) -> Tensor:
    """d_ij (R, k) of the k pairs ``block`` (k, 2), from finite masked model outputs."""
    masked = evaluator.pairs(block, p_single)
    check_finite("the explained output with two units masked", masked)
    return scores.score_difference(p[:, None], masked, plan.mode)


def _bar(plan: Plan) -> tqdm:
    chunks = -(-plan.rows // plan.rows_per_chunk)
    return tqdm(
        total=chunks * plan.n * (plan.n - 1) // 2,
        desc="synergy pairs",
        unit="pair",
        disable=None if plan.progress else True,
    )


@torch.no_grad()
def sums(plan: Plan) -> tuple[Tensor, Tensor, int, torch.dtype]:
    """Σ_x d_i(x) (n,) and Σ_x d_ij(x) (n, n; upper triangle) in float64, the row count and the
    model's dtype of the scores (that of the results).

    When ``torch.distributed`` is initialized, the sums and counts of all processes are
    all-reduced: every rank returns those of the whole data set.
    """
    sums: tuple[Tensor, Tensor, torch.dtype] | None = None
    with _bar(plan) as bar:
        for evaluator, p, p_single, d_single, dtype in _chunks(plan):
            if sums is None:
                sums = d_single.new_zeros(plan.n), d_single.new_zeros(plan.n, plan.n), dtype
            single, pair, _ = sums
            single += d_single.sum(0)
            for block in _pair_blocks(plan, evaluator, bar):
                d_pair = _pair_differences(plan, evaluator, block, p, p_single)
                pair[block[:, 0], block[:, 1]] += d_pair.sum(0)
    if sums is None:
        raise ValueError(f"no rows to score, got {plan.rows}")
    single, pair, dtype = sums
    rows = plan.rows
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        packed = torch.cat([single, pair.reshape(-1)])
        count = torch.tensor([rows], dtype=torch.long, device=packed.device)
        torch.distributed.all_reduce(packed)
        torch.distributed.all_reduce(count)
        single, pair, rows = packed[: plan.n], packed[plan.n :].reshape_as(pair), int(count)
    return single, pair, rows, dtype


@torch.no_grad()
def per_row_z(plan: Plan, alpha: float) -> Tensor:
    """(N, n) z_i(x) = d_i(x) + α · mean_j max(s_ij(x), 0), each row from itself alone, in the
    model's dtype of the scores."""
    out = []
    with _bar(plan) as bar:
        for evaluator, p, p_single, d_single, dtype in _chunks(plan):
            positive = torch.zeros_like(d_single)
            for block in _pair_blocks(plan, evaluator, bar):
                d_pair = _pair_differences(plan, evaluator, block, p, p_single)
                i, j = block[:, 0].to(p.device), block[:, 1].to(p.device)
                s = scores.pair_synergy(d_pair, d_single[:, i], d_single[:, j]).clamp(min=0)
                positive.index_add_(1, i, s).index_add_(1, j, s)
            out.append(
                scores.synergistic_importance_from_mean(d_single, positive / plan.n, alpha).to(
                    dtype
                )
            )
    return torch.cat(out)
