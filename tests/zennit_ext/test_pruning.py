"""Pure math of PLRP against brute-force references (float64, hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zennit_ext.plrp.masks import _GAINS as GAINS
from zennit_ext.plrp.masks import (
    gini_index,
    mass_threshold_mask,
    prefix_gini,
    rescale_kept,
    sparsity_gain_mask,
)

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)
# small vectors with ties and exact zeros: rounding to 1 decimal makes both likely
vectors = arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 12)), elements=finite).map(
    lambda a: np.round(a, 1)
)
fractions = st.floats(0.0, 0.99)
# distinct magnitudes: the exact masks do not depend on how ties are ordered
distinct = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(0, 2**31)).map(
    lambda s: _distinct(*s)
)


def _distinct(batch: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 10.0, size=(batch, n))  # distinct and off mass boundaries a.s.
    x *= rng.choice([-1.0, 1.0], size=x.shape)
    x[rng.random(x.shape) < 0.2] = 0.0
    return x


def _gini_reference(c: np.ndarray) -> float:
    """Gini index of a non-negative vector, as in quantus.Sparseness."""
    c = np.sort(c)
    n = c.size
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * c) / (n * np.sum(c)))


def _hoyer_reference(c: np.ndarray) -> float:
    """Hoyer's sparsity (√n − ‖c‖₁/‖c‖₂) / (√n − 1); 1 for a single entry."""
    n = c.size
    if n == 1:
        return 1.0
    return float((np.sqrt(n) - np.abs(c).sum() / np.sqrt((c * c).sum())) / (np.sqrt(n) - 1))


def _l0_reference(c: np.ndarray) -> float:
    """Share of exact zeros."""
    return float(np.mean(c == 0))


MEASURES = {"gini": _gini_reference, "hoyer": _hoyer_reference, "l0": _l0_reference}


def _parts(row: np.ndarray) -> list[np.ndarray]:
    return [np.clip(row, 0, None), np.clip(-row, 0, None)]


def _mask_from_prefix(part: np.ndarray, count: int) -> np.ndarray:
    """True where an entry with non-zero mass lies in the first ``count`` of the stable order."""
    order = np.argsort(part, kind="stable")
    pruned = np.zeros(part.size, bool)
    pruned[order[:count]] = True
    return pruned & (part > 0)


def _threshold_reference(row: np.ndarray, p: float, p_neg: float) -> np.ndarray:
    """Eq. (3.2) with a Python loop: longest ascending prefix with mass <= p * total."""
    pruned = np.zeros(row.size, bool)
    for part, frac in zip(_parts(row), (p, p_neg), strict=True):
        ordered = np.sort(part, kind="stable")
        count, mass = 0, 0.0
        for value in ordered:
            if mass + value > frac * part.sum():
                break
            mass += value
            count += 1
        pruned |= _mask_from_prefix(part, count)
    return ~pruned


def _gain_reference(
    row: np.ndarray, min_gain: float, measure: str = "gini"
) -> tuple[np.ndarray, list[float]]:
    """Eq. (3.3) by brute force: zero entries one by one, recompute the measure each time."""
    sparsity = MEASURES[measure]
    pruned = np.zeros(row.size, bool)
    margins = []
    for part in _parts(row):
        if part.sum() == 0:
            continue
        order = np.argsort(part, kind="stable")
        support = part > 0  # the Gini index is taken over the entries of this sign
        current, count = part.copy(), 0
        for index in order[:-1]:
            if part[index] > 0:
                nxt = current.copy()
                nxt[index] = 0.0
                step = sparsity(nxt[support]) - sparsity(current[support])
                gain = part.sum() * step / part[index]
                margins.append(gain - min_gain)
                if gain < min_gain:
                    break
                current = nxt
            count += 1
        pruned |= _mask_from_prefix(part, count)
    return ~pruned, margins


@settings(max_examples=150, deadline=None)
@given(distinct, fractions, fractions)
def test_mass_threshold_matches_loop(x, p, p_neg):
    keep = mass_threshold_mask(torch.from_numpy(x), p, p_neg).numpy()
    expected = np.stack([_threshold_reference(row, p, p_neg) for row in x])
    np.testing.assert_array_equal(keep, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(4))
def test_mass_threshold_matches_loop_across_many_magnitudes(seed, dtype):
    # magnitudes over 12 decades: whole float buckets are pruned below the one where the
    # budget runs out, which is cut inside; zeros are never pruned
    rng = np.random.default_rng(seed)
    x = (rng.choice([-1.0, 1.0], (3, 2000)) * 10.0 ** rng.uniform(-6, 6, (3, 2000))).astype(dtype)
    x[:, ::7] = 0.0
    p, p_neg = rng.uniform(0.05, 0.95, 2)
    keep = mass_threshold_mask(torch.from_numpy(x), float(p), float(p_neg)).numpy()
    expected = np.stack([_threshold_reference(row, float(p), float(p_neg)) for row in x])
    np.testing.assert_array_equal(keep, expected)


@settings(max_examples=150, deadline=None)
@given(vectors, fractions)
def test_mass_threshold_keeps_mass_and_prunes_smallest(x, p):
    r = torch.from_numpy(x)
    keep = mass_threshold_mask(r, p)
    for sign in (r.clamp(min=0), (-r).clamp(min=0)):
        kept = (sign * keep).sum(1)
        assert torch.all(kept >= (1 - p) * sign.sum(1) - 1e-9)
        # every pruned entry is no larger than every kept entry of the same sign
        largest_pruned = torch.where(~keep & (sign > 0), sign, 0).amax(1)
        smallest_kept = torch.where(keep & (sign > 0), sign, torch.inf).amin(1)
        assert torch.all(largest_pruned <= smallest_kept)


@settings(max_examples=150, deadline=None)
@given(distinct, st.floats(0.0, 3.0), st.sampled_from(sorted(MEASURES)))
def test_sparsity_gain_matches_prefix_search(x, min_gain, measure):
    expected, margins = zip(*(_gain_reference(row, min_gain, measure) for row in x), strict=True)
    # a gain equal to the threshold up to rounding could go either way in both codes
    assume(all(abs(m) > 1e-9 for ms in margins for m in ms))
    keep = sparsity_gain_mask(torch.from_numpy(x), min_gain, measure).numpy()
    np.testing.assert_array_equal(keep, np.stack(expected))


@pytest.mark.parametrize("measure", sorted(MEASURES))
@pytest.mark.parametrize("n", [2, 3, 17])
def test_every_step_gain_matches_the_brute_force_to_float64_precision(measure, n):
    """The closed-form gains, not only the masks they decide: a gain computed with a float32
    intermediate (e.g. the support size) is off by ~1e-8 and fails here."""
    row = np.random.default_rng(n).uniform(0.1, 10.0, size=n)
    _, margins = _gain_reference(row, 0.0, measure)  # min_gain 0: no step stops the search
    values = torch.sort(torch.from_numpy(row)).values
    got = GAINS[measure](values[None])[0]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), margins, rtol=1e-11, atol=0)


@settings(max_examples=100, deadline=None)
@given(vectors)
def test_prefix_gini_matches_direct(x):
    values = torch.sort(torch.from_numpy(np.abs(x)), dim=-1).values
    fast = prefix_gini(values).numpy()
    for row, got in zip(values.numpy(), fast, strict=True):
        for k in range(row.size):
            rest = row.copy()
            rest[:k] = 0
            if rest.sum() > 0:
                assert got[k] == pytest.approx(_gini_reference(rest), abs=1e-9)
            else:
                assert np.isnan(got[k])


def test_prefix_gini_of_a_stack_of_batches_is_that_of_each_row():
    """(..., n): the last axis is the vector, whatever the leading axes (here 2 × 3 rows)."""
    rows = torch.sort(torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(0)), -1).values
    stacked = prefix_gini(rows.double())
    flat = prefix_gini(rows.double().reshape(6, 5)).reshape(2, 3, 5)
    torch.testing.assert_close(stacked, flat, rtol=0, atol=0)
    assert stacked[..., 0].sub(torch.tensor(0.5)).abs().lt(0.5).all()  # a Gini index


def test_gini_extremes():
    x = torch.tensor([[0.0, 0, 0, 5], [1, 1, 1, 1], [-2, 2, -2, 2]], dtype=torch.float64)
    torch.testing.assert_close(gini_index(x), torch.tensor([0.75, 0.0, 0.0], dtype=torch.float64))


@settings(max_examples=100, deadline=None)
@given(vectors, fractions)
def test_rescale_conserves_each_sign_and_keeps_signs(x, p):
    r = torch.from_numpy(x)
    out = rescale_kept(r, mass_threshold_mask(r, p))
    for sign in (1, -1):
        before, after = (r * sign).clamp(min=0).sum(1), (out * sign).clamp(min=0).sum(1)
        torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-12)
    assert torch.all(out * r >= 0)


def test_p_zero_keeps_everything():
    r = torch.randn(3, 4, 5, dtype=torch.float64)
    assert mass_threshold_mask(r, 0.0).all()
    torch.testing.assert_close(rescale_kept(r, mass_threshold_mask(r, 0.0)), r)


def test_masks_are_per_sample_and_keep_shape():
    r = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    both = mass_threshold_mask(r, 0.3)
    assert both.shape == r.shape
    assert torch.equal(both[1:], mass_threshold_mask(r[1:], 0.3))
    assert torch.equal(sparsity_gain_mask(r)[1:], sparsity_gain_mask(r[1:]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p": 1.0}, ValueError, "p must be in"),
        ({"p": -0.1}, ValueError, "p must be in"),
        ({"p": "0.1"}, TypeError, "p must be a float"),
        ({"p": 0.1, "p_neg": 1.5}, ValueError, "p_neg must be in"),
    ],
)
def test_threshold_rejects_bad_fractions(kwargs, error, match):
    with pytest.raises(error, match=match):
        mass_threshold_mask(torch.ones(1, 3), **kwargs)


def test_gain_and_shape_errors():
    with pytest.raises(ValueError, match="sparsity_gain must be >= 0"):
        sparsity_gain_mask(torch.ones(1, 3), -1.0)
    with pytest.raises(ValueError, match="ndim >= 2"):
        mass_threshold_mask(torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="keep must have the shape"):
        rescale_kept(torch.ones(1, 3), torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(0, 5), (0, 2, 3), (3, 0)])
def test_empty_relevance_gives_empty_masks(shape):
    r = torch.randn(shape, dtype=torch.float64)
    for keep in (mass_threshold_mask(r, 0.3), sparsity_gain_mask(r, 1.0)):
        assert keep.shape == r.shape and keep.dtype == torch.bool
        assert torch.equal(rescale_kept(r, keep), r)


@pytest.mark.parametrize("gain", [float("inf"), float("nan")])
def test_non_finite_gain_rejected(gain):
    with pytest.raises(ValueError, match=f"sparsity_gain must be >= 0 and finite, got {gain}"):
        sparsity_gain_mask(torch.ones(1, 3), gain)


@pytest.mark.parametrize(("gain", "match"), [(True, "got True"), ("1", "got '1'")])
def test_non_numeric_gain_rejected(gain, match):
    with pytest.raises(TypeError, match=f"sparsity_gain must be a float >= 0, {match}"):
        sparsity_gain_mask(torch.ones(1, 3), gain)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_step_with_gain_exactly_the_minimum_is_taken(sign):
    """[1, 1] → [0, 1]: Gini 0 → 1/2, gain = 2 · (1/2 − 0) / 1 = 1 exactly (eq. 3.3)."""
    r = sign * torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    for keep in (sparsity_gain_mask(r), sparsity_gain_mask(r, 1.0)):  # 1 is the default
        assert keep.sum().item() == 1  # a tie: either entry may go
    assert sparsity_gain_mask(r, 1.0 + 1e-9).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [0.25, 0.6])
def test_half_precision_masks_equal_the_float64_masks(dtype, p):
    """Halves have no bucket table: they go through float32, the masks must not change."""
    # multiples of 1/8 up to 4: exact in every dtype, ties and zeros included
    r = torch.randint(-32, 33, (3, 20), generator=torch.Generator().manual_seed(0)) / 8
    expected = mass_threshold_mask(r.double(), p)
    assert torch.equal(mass_threshold_mask(r.to(dtype), p), expected)
    assert not expected.all() and expected.any()


def test_rescale_with_a_kept_mass_of_exactly_one():
    r = torch.tensor([[1.0, 0.5, -2.0, -0.5]], dtype=torch.float64)
    keep = torch.tensor([[True, False, True, False]])
    assert rescale_kept(r, keep).tolist() == [[1.5, 0.0, -2.5, 0.0]]


@pytest.mark.parametrize("seed", range(3))
def test_mass_threshold_matches_loop_on_subnormal_relevance(seed):
    """Subnormal float64 entries fill the lowest float buckets (where the budget can run out
    in the first bucket or the second); integer multiples of 2^-1074 add up exactly."""
    rng = np.random.default_rng(seed)
    small, large = rng.integers(1, 1000, (40, 6)), rng.integers(2**49, 2**50, (40, 6))
    m = np.where(rng.random((40, 6)) < 0.5, small, large)
    m[:20] = small[:20]  # rows with every entry in the first bucket
    x = np.ldexp(m.astype(np.float64), -1074) * rng.choice([-1.0, 1.0], m.shape)
    for p, p_neg in [(0.3, 0.7), (0.55, 0.2)]:
        keep = mass_threshold_mask(torch.from_numpy(x), p, p_neg).numpy()
        expected = np.stack([_threshold_reference(row, p, p_neg) for row in x])
        np.testing.assert_array_equal(keep, expected)
        assert not expected.all()
    # the budget ends inside the second bucket, less than the first bucket's mass after the
    # second bucket's smallest entry: that entry is kept, only the first bucket is pruned
    m = np.array([2**20, 2**49, 2**50 - 1], dtype=np.float64)
    p = float((m[1] + m[0] / 2) / m.sum())
    keep = mass_threshold_mask(torch.from_numpy(np.ldexp(m, -1074)[None]), p).numpy()
    assert keep.tolist() == [[False, True, True]] == _threshold_reference(m, p, p)[None].tolist()


def test_fraction_type_error_names_the_type_and_value():
    with pytest.raises(TypeError, match=r"p must be a float in \[0, 1\), got str '0.1'"):
        mass_threshold_mask(torch.ones(1, 3), "0.1")


def test_an_entry_that_spends_the_budget_exactly_is_pruned():
    """Eq. (3.2) prunes while the cumulative mass is ≤ p · total: 1 ≤ 0.25 · 4 goes."""
    r = torch.tensor([[1.0, 1.0, 1.0, 1.0, -2.0, -2.0]], dtype=torch.float64)
    keep = mass_threshold_mask(r, 0.25, p_neg=0.5)
    assert keep[:, :4].sum().item() == 3 and keep[:, 4:].sum().item() == 1


def test_l0_gain_one_prunes_exactly_the_entries_at_most_the_mean():
    """[1, 2, 3, 6]: mean 3, so 1, 2 and 3 go (3's gain is 12 / (4 · 3) = 1 exactly)."""
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0, -1.0, -3.0]], dtype=torch.float64)
    keep = sparsity_gain_mask(r, 1.0, "l0")
    assert keep.tolist() == [[False, False, False, True, False, True]]


def test_unknown_measure_rejected():
    with pytest.raises(
        ValueError, match=r"sparsity_measure must be one of \('gini', 'hoyer', 'l0'\), got 'l1'"
    ):
        sparsity_gain_mask(torch.ones(1, 3), 1.0, "l1")
