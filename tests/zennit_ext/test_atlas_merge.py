"""Atlas merges: streaming top-k against one global sort (ties to the lower index) for any
chunking and order, and fixed-point sums that do not depend on the order of the terms."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zennit_ext.atlas.merge import EMPTY_INDEX, FixedSum, empty_topk, merge_topk


def _brute_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, n) → per row the k best (value desc, index asc) by Python sorting."""
    out_v, out_i = [], []
    for row in values.tolist():
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        order += [EMPTY_INDEX] * (k - len(order))
        out_i.append(order)
        out_v.append([row[i] if i != EMPTY_INDEX else -float("inf") for i in order])
    return torch.tensor(out_v, dtype=torch.float64), torch.tensor(out_i, dtype=torch.int64)


def _streamed(values: torch.Tensor, k: int, cuts: list[int], order: list[int]):
    """Top-k of chunks (split at ``cuts``) merged in ``order``, each chunk streamed alone."""
    bounds = [0, *sorted(set(cuts)), values.shape[1]]
    chunks = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    parts = []
    for a, b in chunks:
        v, i = empty_topk(len(values), k)
        index = torch.arange(a, b).expand(len(values), -1)
        parts.append(merge_topk(torch.cat([v, values[:, a:b]], 1), torch.cat([i, index], 1), k))
    v, i = empty_topk(len(values), k)
    for position in order:
        if position < len(parts):
            pv, pi = parts[position]
            v, i = merge_topk(torch.cat([v, pv], 1), torch.cat([i, pi], 1), k)
    for position in range(len(parts)):
        if position not in order:
            pv, pi = parts[position]
            v, i = merge_topk(torch.cat([v, pv], 1), torch.cat([i, pi], 1), k)
    return v, i


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    k=st.integers(1, 8),
    levels=st.integers(1, 4),  # few distinct values: many ties
    cuts=st.lists(st.integers(0, 30), max_size=5),
    order=st.permutations(range(6)),
    seed=st.integers(0, 2**16),
)
def test_streamed_topk_is_one_global_sort(n, k, levels, cuts, order, seed):
    values = torch.randint(0, levels, (3, n), generator=torch.Generator().manual_seed(seed))
    values = values.double() - 1.5
    expected = _brute_topk(values, k)
    got = _streamed(values, k, [c for c in cuts if c < n], list(order))
    assert torch.equal(got[1], expected[1])
    assert torch.equal(got[0], expected[0])


def test_topk_pads_when_fewer_candidates_than_k():
    values, indices = merge_topk(torch.tensor([[1.0, 3.0]]).double(), torch.tensor([[5, 2]]), 4)
    assert indices.tolist() == [[2, 5, EMPTY_INDEX, EMPTY_INDEX]]
    assert values[0, :2].tolist() == [3.0, 1.0] and torch.isinf(values[0, 2:]).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), parts=st.integers(1, 6))
def test_fixed_sums_do_not_depend_on_the_order_of_the_terms(seed, parts):
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-12, 6, (200, 3), generator=g).double()
    values = torch.randn(200, 3, generator=g, dtype=torch.float64) * scale
    rows = torch.randint(0, 2, (200,), generator=g)
    forward, shuffled = FixedSum((2, 3)), FixedSum((2, 3))
    forward.add_at(rows, values)
    permutation = torch.randperm(200, generator=g)
    pieces = torch.tensor_split(permutation, parts)
    partials = []
    for piece in pieces:
        partial = FixedSum((2, 3))
        partial.add_at(rows[piece], values[piece])
        partials.append(partial)
    for partial in reversed(partials):
        shuffled.add(partial.limbs)
    assert torch.equal(forward.limbs, shuffled.limbs)
    exact = torch.zeros(2, 3, dtype=torch.float64)
    for row in (0, 1):
        for column in range(3):
            import math

            exact[row, column] = math.fsum(values[rows == row, column].tolist())
    assert torch.allclose(forward.value(), exact, rtol=1e-15, atol=1e-25)


def test_fixed_sum_represents_values_exactly():
    values = torch.tensor([[1e-10], [-3.25], [123456.789], [-1e-13]], dtype=torch.float64)
    table = FixedSum((1, 1))
    for value in values:
        single = FixedSum((1, 1))
        single.add_at(torch.zeros(1, dtype=torch.long), value[None])
        assert single.value().item() == value.item()
        table.add(single.limbs)
    import math

    assert table.value().item() == math.fsum(values.flatten().tolist())
