"""Pure tensor math of pruned LRP (PLRP): which relevance entries to prune, and λ rescaling.

Every function works per sample on tensors of shape (batch, ...): the entries of one sample
(all dimensions after the first) form the relevance vector of one layer. Positive relevance
and the absolute value of negative relevance are pruned separately (paper, section 3.2).
Entries with zero relevance carry no mass and are never pruned.

No hooks here; :mod:`zennit_ext.plrp.composites` wires these functions into Zennit rules.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "gini_index",
    "prefix_gini",
    "mass_threshold_mask",
    "sparsity_gain_mask",
    "SPARSITY_MEASURES",
    "rescale_kept",
    "check_fraction",
]


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a number in [0, 1), else raise.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If ``value`` is outside [0, 1).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def _per_sample(relevance: torch.Tensor) -> torch.Tensor:
    """(batch, n) view of a (batch, ...) relevance tensor; ValueError without a batch axis."""
    if relevance.ndim < 2:
        raise ValueError(
            f"relevance must have shape (batch, ...) with ndim >= 2, got {tuple(relevance.shape)}"
        )
    return relevance.reshape(relevance.shape[0], math.prod(relevance.shape[1:]))


def _sorted_parts(relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten per sample; the positive and absolute negative parts, each sorted ascending.

    One sort of the signed values serves both parts: the positive part ascending is its
    tail, the negative part ascending by magnitude is its head reversed.

    Returns
    -------
    parts : torch.Tensor
        (2, batch, n): positive part and absolute negative part, sorted ascending (zeros
        first).
    order : torch.Tensor
        (batch, n) int64: flat indices of the signed values sorted ascending (the positive
        part's order; the negative part's is its reverse, never materialized).
    """
    values, order = torch.sort(_per_sample(relevance), dim=-1)
    parts = torch.stack([values.clamp(min=0), (-values).clamp(min=0).flip(-1)])
    return parts, order


def _keep_from_counts(
    values: torch.Tensor, order: torch.Tensor, counts: torch.Tensor, shape: torch.Size
) -> torch.Tensor:
    """Keep-mask that prunes the ``counts`` smallest entries of each part, in sorted order.

    Parameters
    ----------
    values, order : torch.Tensor
        (2, batch, n) sorted parts and (batch, n) flat indices (see :func:`_sorted_parts`).
    counts : torch.Tensor
        (2, batch) int64: how many of the smallest entries of each part to prune.
    shape : torch.Size
        Shape of the relevance tensor, (batch, ...).

    Returns
    -------
    torch.Tensor
        Bool, ``shape``: False where an entry with non-zero relevance is pruned.
    """
    rank = torch.arange(values.shape[-1], device=values.device)
    pruned_sorted = (rank < counts[..., None]) & (values > 0)
    # back to the signed sort order (the negative part is reversed), then to the entries
    pruned_sorted = pruned_sorted[0] | pruned_sorted[1].flip(-1)
    pruned = torch.zeros_like(pruned_sorted).scatter(-1, order, pruned_sorted)
    return ~pruned.reshape(shape)


# float bits >> shift keep the exponent and the top 3 mantissa bits: for non-negative floats,
# buckets ordered like the values, each spanning a factor of at most 2^(1/8)
_BUCKET_BITS = {torch.float32: (torch.int32, 20), torch.float64: (torch.int64, 49)}


def _smallest_within_mass(part: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per row, the smallest non-zero entries whose cumulative mass is ≤ ``fraction`` × total.

    O(n) per row: a mass histogram over order-preserving float buckets finds the bucket in
    which the budget runs out; every bucket below it is pruned whole and only the entries of
    that one bucket are sorted.

    Parameters
    ----------
    part : torch.Tensor
        (batch, n), non-negative.
    fraction : float
        In [0, 1).

    Returns
    -------
    torch.Tensor
        Bool (batch, n): True where pruned.
    """
    if part.numel() == 0:  # no sample or no entry: nothing to prune
        return torch.zeros_like(part, dtype=torch.bool)
    if part.dtype not in _BUCKET_BITS:
        return _smallest_within_mass(part.float(), fraction)
    batch = part.shape[0]
    int_type, shift = _BUCKET_BITS[part.dtype]
    key = (part.view(int_type) >> shift).long().clamp_(min=0)  # -0.0 has the sign bit set
    # masses accumulated in float64: a float32 running sum over 10⁶ entries drifts by ~10⁻⁴
    wide = part.to(torch.float64)
    mass = wide.new_zeros(batch, int(key.max()) + 1).scatter_add_(1, key, wide)
    cumulative = mass.cumsum(1)
    budget = fraction * cumulative[:, -1:]
    boundary = (cumulative <= budget).sum(1, keepdim=True)  # buckets below go whole
    spent = cumulative.gather(1, (boundary - 1).clamp(min=0)) * (boundary > 0)
    pruned = key < boundary
    rows, cols = (key == boundary).nonzero(as_tuple=True)
    if len(rows):
        counts = torch.bincount(rows, minlength=batch)
        position = torch.arange(len(rows), device=part.device) - (counts.cumsum(0) - counts)[rows]
        values = wide.new_full((batch, int(counts.max())), float("inf"))
        values[rows, position] = wide[rows, cols]
        index = torch.zeros(values.shape, dtype=torch.long, device=part.device)
        index[rows, position] = cols
        values, order = values.sort(1)
        hit_rows, hit = ((values.cumsum(1) + spent) <= budget).nonzero(as_tuple=True)
        pruned[hit_rows, index.gather(1, order)[hit_rows, hit]] = True
    return pruned & (part > 0)


def mass_threshold_mask(
    relevance: torch.Tensor, p: float, p_neg: float | None = None
) -> torch.Tensor:
    """Keep-mask of eq. (3.2): prune the smallest entries holding at most ``p`` of the mass.

    For each sample and each sign, the entries are taken in ascending order of absolute value
    and the longest prefix whose cumulative mass is ≤ ``p`` × the total mass of that sign is
    pruned. Ties are broken by the sort order, so the kept mass is always ≥ (1 − p) × total.
    O(n) per sample (see :func:`_smallest_within_mass`), no full sort.

    Parameters
    ----------
    relevance : torch.Tensor
        (batch, ...) relevance of one layer.
    p : float
        Fraction in [0, 1) of the positive relevance mass to prune.
    p_neg : float, optional
        Fraction in [0, 1) of the absolute negative mass to prune; defaults to ``p``.

    Returns
    -------
    torch.Tensor
        Bool, same shape as ``relevance``: True where the entry is kept.

    Raises
    ------
    TypeError, ValueError
        If ``p`` or ``p_neg`` is not a number in [0, 1), or ``relevance`` has no batch axis.
    """
    p = check_fraction("p", p)
    p_neg = p if p_neg is None else check_fraction("p_neg", p_neg)
    flat = _per_sample(relevance)
    pruned = _smallest_within_mass(flat.clamp(min=0), p)
    pruned |= _smallest_within_mass((-flat).clamp(min=0), p_neg)
    return ~pruned.reshape(relevance.shape)


def _suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """(..., n): entry ``k`` is ``x[..., k:].sum(-1)``."""
    return x.flip(-1).cumsum(-1).flip(-1)


def prefix_gini(values: torch.Tensor) -> torch.Tensor:
    """Gini index of a sorted non-negative vector after zeroing each prefix, via cumulative sums.

    With ``c`` sorted ascending and ``n`` entries, the Gini index (Hurley & Rickard, as in
    ``quantus.Sparseness``) is ``sum_i (2i − n − 1) c_i / (n sum_i c_i)`` (i from 1). Zeroing
    the ``k`` smallest entries keeps the order, so all ``n`` prefixes cost O(n).

    Parameters
    ----------
    values : torch.Tensor
        (..., n) non-negative, sorted ascending along the last dimension.

    Returns
    -------
    torch.Tensor
        (..., n), dtype of ``values``: entry ``k`` is the Gini index with the ``k`` smallest
        entries set to zero; NaN where the remaining vector is all zero. Accumulated in
        float64, so float32 input gives the float64 values rounded.
    """
    n = values.shape[-1]
    wide = values.to(torch.float64)  # the weighted sum cancels: accumulate it in float64
    weights = 2 * torch.arange(1, n + 1, dtype=torch.float64, device=values.device) - n - 1
    return (_suffix_sum(wide * weights) / (n * _suffix_sum(wide))).to(values.dtype)


def gini_index(x: torch.Tensor) -> torch.Tensor:
    """Gini index of ``|x|`` per sample (1 = one non-zero entry, 0 = all equal).

    Parameters
    ----------
    x : torch.Tensor
        (batch, ...).

    Returns
    -------
    torch.Tensor
        (batch,); NaN for an all-zero sample.
    """
    flat = x.reshape(x.shape[0], -1).abs()
    return prefix_gini(torch.sort(flat, dim=-1).values)[:, 0]


SPARSITY_MEASURES = ("gini", "hoyer", "l0")


def _gini_gains(values: torch.Tensor) -> torch.Tensor:
    """Eq. (3.3) gain of every step with the Gini index as the sparsity measure.

    Step ``k`` (0-based) removes ``c_k``. With the suffix sums ``S_k = Σ_{i≥k} c_i`` the Gini
    difference of :func:`prefix_gini` telescopes to ``G_{k+1} − G_k = 2 c_k T_k / (n S_k
    S_{k+1})``, with ``T_k = Σ_{i>k} (i − k) c_i = Σ_{j>k} S_j``: a sum of non-negative terms.
    The gain on the support (``m`` non-zero entries) is then ``2 ||v0||_1 T_k / (m S_k
    S_{k+1})``: no difference of nearly equal Gini values (those are ~1/n apart and vanish in
    float32 above ~10⁴ entries).

    Parameters
    ----------
    values : torch.Tensor
        (..., n) float64, non-negative, sorted ascending.

    Returns
    -------
    torch.Tensor
        (..., n − 1) float64 gains; steps that remove a zero entry are meaningless.
    """
    suffix = _suffix_sum(values)  # S_k
    after = suffix[..., 1:]  # S_{k+1}, k = 0 … n − 2
    support = (values > 0).sum(-1, keepdim=True)  # 0 only on all-zero rows: steps skipped
    return 2 * suffix[..., :1] * _suffix_sum(after) / (support * suffix[..., :-1] * after)


def _hoyer_gains(values: torch.Tensor) -> torch.Tensor:
    """Eq. (3.3) gain of every step with Hoyer's measure ``(√m − ‖v‖₁/‖v‖₂) / (√m − 1)``.

    ``m`` is the support size of ``v0``; one entry (``m = 1``) is maximally sparse: gain 0.
    The ratio ``‖v‖₁/‖v‖₂`` is evaluated in float64 from suffix sums of ``c`` and ``c²``.
    Arguments and result as in :func:`_gini_gains`.
    """
    l1 = _suffix_sum(values)
    ratio = l1 / _suffix_sum(values * values).sqrt()
    support = (values > 0).sum(-1, keepdim=True).to(values.dtype)
    scale = (support.sqrt() - 1).clamp(min=1e-300)  # m = 1: ratio steps are 0 anyway
    step = (ratio[..., :-1] - ratio[..., 1:]) / scale
    return l1[..., :1] * step / values[..., :-1]


def _l0_gains(values: torch.Tensor) -> torch.Tensor:
    """Eq. (3.3) gain of every step with the share of zeros (l0) as the sparsity measure.

    Each step zeroes one of the ``m`` support entries: ``Δs = 1/m`` and the gain is
    ``||v0||_1 / (m c_k)``; gain ≥ 1 prunes exactly the entries at most the support's mean.
    Arguments and result as in :func:`_gini_gains`.
    """
    support = (values > 0).sum(-1, keepdim=True)
    return values.sum(-1, keepdim=True) / (support * values[..., :-1])


_GAINS = {"gini": _gini_gains, "hoyer": _hoyer_gains, "l0": _l0_gains}


def _gain_counts(values: torch.Tensor, min_gain: float, measure: str) -> torch.Tensor:
    """How many smallest entries to prune so that every pruning step has gain ≥ ``min_gain``.

    The gains are computed in float64 whatever the input dtype.

    Parameters
    ----------
    values : torch.Tensor
        (..., n) non-negative, sorted ascending.
    min_gain : float
        Minimal gain of every pruning step.
    measure : {'gini', 'hoyer', 'l0'}
        Sparsity measure ``s`` of eq. (3.3).

    Returns
    -------
    torch.Tensor
        (...) int64 counts, at most n − 1 (zero entries included; they are skipped at no cost).
    """
    gain = _GAINS[measure](values.to(torch.float64))
    ok = (values[..., :-1] == 0) | (gain >= min_gain)
    # the first failing step stops the search; entries before it are pruned
    failed = torch.cat([~ok, ok.new_ones((*ok.shape[:-1], 1))], dim=-1)
    return failed.to(torch.int64).argmax(-1)


def check_measure(measure: str) -> str:
    """Return ``measure`` if it names a sparsity measure of eq. (3.3), else raise ValueError."""
    if measure not in SPARSITY_MEASURES:
        raise ValueError(f"sparsity_measure must be one of {SPARSITY_MEASURES}, got {measure!r}")
    return measure


def sparsity_gain_mask(
    relevance: torch.Tensor, min_gain: float = 1.0, measure: str = "gini"
) -> torch.Tensor:
    """Keep-mask of eq. (3.3): prune the smallest entries while each step's sparsity gain holds.

    For each sample and each sign the entries are removed in ascending order; step ``k`` has
    gain ``||v0||_1 · (s(v_{k+1}) − s(v_k)) / (||v_k||_1 − ||v_{k+1}||_1)`` with ``s`` the
    sparsity measure over the support of ``v0`` — the entries of that sign; entries of the
    other sign or zero would otherwise count as already sparse and block all pruning. The
    paper leaves ``s`` unnamed; the default is the Gini index it evaluates with
    (:func:`prefix_gini`). Pruning stops before the first step with gain below ``min_gain``;
    the largest entry of a sign is never pruned. O(n log n) per sample; the gains are
    computed in float64 without differences of nearly equal values, so a float32 mask equals
    the float64 mask of the same values.

    Parameters
    ----------
    relevance : torch.Tensor
        (batch, ...) relevance of one layer.
    min_gain : float
        Minimal allowed sparsity gain, finite and ≥ 0 (the paper's natural choice is 1).
    measure : {'gini', 'hoyer', 'l0'}
        Sparsity measure ``s``: the Gini index, Hoyer's ``(√m − ‖v‖₁/‖v‖₂) / (√m − 1)`` or
        the share of zeros (with gain 1: prune every entry at most the mean of its sign).

    Returns
    -------
    torch.Tensor
        Bool, same shape as ``relevance``: True where the entry is kept.

    Raises
    ------
    TypeError, ValueError
        If ``min_gain`` is not a finite non-negative number or ``measure`` is unknown.
    """
    if isinstance(min_gain, bool) or not isinstance(min_gain, int | float):
        raise TypeError(f"sparsity_gain must be a float >= 0, got {min_gain!r}")
    if not 0 <= min_gain < math.inf:
        raise ValueError(f"sparsity_gain must be >= 0 and finite, got {min_gain!r}")
    values, order = _sorted_parts(relevance)
    counts = _gain_counts(values, float(min_gain), check_measure(measure))
    return _keep_from_counts(values, order, counts, relevance.shape)


def rescale_kept(relevance: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """PLRP-λ: zero the pruned entries and rescale each sign's kept mass to its total.

    Parameters
    ----------
    relevance : torch.Tensor
        (batch, ...) unpruned relevance.
    keep : torch.Tensor
        Bool, same shape: True where kept (from :func:`mass_threshold_mask` or
        :func:`sparsity_gain_mask`).

    Returns
    -------
    torch.Tensor
        Same shape: ``λ_+ · r`` on kept positive entries, ``λ_- · r`` on kept negative ones,
        0 elsewhere, with ``λ = total mass / kept mass`` of that sign (1 if nothing is kept).
    """
    if keep.shape != relevance.shape:
        raise ValueError(
            f"keep must have the shape of relevance {tuple(relevance.shape)}, "
            f"got {tuple(keep.shape)}"
        )
    dims = tuple(range(1, relevance.ndim))
    kept = relevance * keep
    positive, negative = relevance > 0, relevance < 0

    def factor(sign: torch.Tensor) -> torch.Tensor:
        total = (relevance * sign).sum(dims, keepdim=True)
        part = (kept * sign).sum(dims, keepdim=True)
        return torch.where(part != 0, total / torch.where(part != 0, part, 1), 1)

    scale = torch.where(positive, factor(positive), torch.where(negative, factor(negative), 1))
    return kept * scale
