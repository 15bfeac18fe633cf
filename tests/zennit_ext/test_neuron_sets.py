"""Neuron sets as masks and k-means clusters against brute-force references (no NRM)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zennit_ext.nrm.sets import (
    cluster_masks,
    reduce_units,
    set_mask,
    unit_count,
    unit_masks,
)

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---- set_mask ----


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("level", ["neuron", "channel"])
def test_index_sets_match_a_loop(level, dtype, device):
    shape = torch.Size([2, 3, 2, 2])
    units = [0, 2, 5] if level == "neuron" else [1]
    mask = set_mask(units, shape, level, dtype=dtype, device=device)
    assert mask.shape == shape and mask.dtype == dtype and mask.device.type == device
    for b, c, h, w in itertools.product(*map(range, shape)):
        unit = c if level == "channel" else (c * 2 + h) * 2 + w
        assert mask[b, c, h, w].item() == float(unit in units)


def test_index_sets_default_to_neurons_and_default_dtype():
    shape = torch.Size([1, 2, 3])
    mask = set_mask(torch.tensor([4]), shape)
    assert mask.dtype == torch.get_default_dtype()
    assert mask.flatten().tolist() == [0, 0, 0, 0, 1, 0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_boolean_sets_broadcast_and_take_the_dtype(dtype):
    spatial = torch.tensor([[True, False], [False, True]])[None, None]  # (1, 1, 2, 2)
    mask = set_mask(spatial, torch.Size([3, 4, 2, 2]), dtype=dtype)
    assert mask.dtype == dtype and mask.shape == (3, 4, 2, 2)
    assert torch.equal(mask, spatial.expand(3, 4, 2, 2).to(dtype))
    assert set_mask(spatial, torch.Size([1, 1, 2, 2])).dtype == torch.get_default_dtype()


def test_boolean_sets_go_to_the_requested_device():
    spatial = torch.ones(1, 1, 2, dtype=torch.bool)
    assert set_mask(spatial, torch.Size([2, 3, 2]), device="meta").device.type == "meta"


@pytest.mark.parametrize(
    ("spec", "level", "error", "match"),
    [
        ([6], "neuron", ValueError, r"neuron indices \[6\] outside \[0, 6\)"),
        ([-1], "neuron", ValueError, r"outside \[0, 6\)"),
        ([3], "channel", ValueError, r"channel indices \[3\] outside \[0, 3\)"),
        ([[0, 1]], "neuron", TypeError, r"boolean mask, got torch.int64 of shape \(1, 2\)"),
        ([0.0], "neuron", TypeError, "int indices or a boolean mask"),
        ([0], "unit", ValueError, r"level must be one of \('neuron', 'channel', .*\), got 'unit'"),
        (torch.ones(4, dtype=torch.bool), "neuron", ValueError, r"shape \(4,\), which does not"),
    ],
)
def test_bad_sets_fail_with_a_clear_message(spec, level, error, match):
    with pytest.raises(error, match=match):
        set_mask(spec, torch.Size([2, 3, 2]), level, name="conv")


def test_last_unit_is_a_valid_index():
    assert set_mask([5], torch.Size([1, 3, 2])).flatten()[5] == 1
    assert set_mask([2], torch.Size([1, 3, 2]), "channel")[0, 2].tolist() == [1, 1]


# ---- unit_count, unit_masks, reduce_units ----


def test_unit_count_of_each_level():
    shape = torch.Size([2, 3, 4, 5])
    assert unit_count("neuron", shape) == 60
    assert unit_count("channel", shape) == 3
    assert unit_count(torch.zeros(7, 2, 1, 4, 5, dtype=torch.bool), shape) == 7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("level", ["neuron", "channel"])
def test_unit_masks_equal_single_unit_sets(level, dtype):
    shape = torch.Size([2, 3, 2])
    units = torch.tensor([2, 0])
    masks = unit_masks(level, shape, units, dtype=dtype)
    assert masks.dtype == dtype and masks.shape == (2, *shape)
    for row, unit in zip(masks, units.tolist(), strict=True):
        assert torch.equal(row, set_mask([unit], shape, level, dtype=dtype))
    assert unit_masks(level, shape, units).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("dtype", DTYPES)
def test_unit_masks_pick_rows_of_stacked_masks(dtype):
    shape = torch.Size([2, 3, 2, 2])
    stacked = torch.rand(4, 2, 1, 2, 2, generator=torch.Generator().manual_seed(0)) > 0.5
    masks = unit_masks(stacked, shape, torch.tensor([3, 1]), dtype=dtype)
    assert masks.dtype == dtype and masks.shape == (2, *shape)
    expected = torch.stack([stacked[3], stacked[1]]).expand(2, *shape).to(dtype)
    assert torch.equal(masks, expected)
    assert unit_masks(stacked, shape, torch.tensor([0])).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (4, 3, 2, 2)])
def test_reduce_units_sums_each_channel(shape):
    values = torch.randn(2, *shape, dtype=torch.float64)  # (extra, batch, *layer)
    ndim = len(shape) - 1
    by_channel = reduce_units(values, "channel", ndim)
    expected = values.reshape(2, 4, 3, -1).sum(-1) if ndim > 1 else values
    torch.testing.assert_close(by_channel, expected, rtol=1e-12, atol=0)
    assert torch.equal(reduce_units(values, "neuron", ndim), values.reshape(2, 4, -1))


def test_reduce_units_with_stacked_masks_sums_over_each_mask():
    values = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    stacked = torch.rand(5, 4, 1, 2, 2, generator=torch.Generator().manual_seed(1)) > 0.4
    reduced = reduce_units(values, stacked, 3)
    expected = torch.stack([(values * m).sum((1, 2, 3)) for m in stacked], dim=-1)
    torch.testing.assert_close(reduced, expected, rtol=1e-12, atol=1e-14)


# ---- k-means clusters ----


def _blobs(k: int, scale: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 2, 4, 4) activations of k well-separated blobs, and each position's blob label."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randperm(16, generator=gen) % k
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])[:k]
    points = centres[labels] + 0.3 * torch.randn(16, 2, generator=gen)
    return scale * points.T.reshape(1, 2, 4, 4), labels


def _labels(masks: torch.Tensor) -> torch.Tensor:
    return masks.flatten(1).to(torch.int64).argmax(0)


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a[:, None] == a[None], b[:, None] == b[None])


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_kmeans_recovers_separated_blobs(k, seed):
    activations, truth = _blobs(k, seed=seed)
    masks = cluster_masks(activations, k, seed=seed)
    assert masks.flatten(1).any(1).all()  # no empty cluster
    assert _same_partition(_labels(masks), truth)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_kmeans_does_not_depend_on_the_scale(scale):
    activations, _ = _blobs(3, seed=4)
    activations = activations + torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(cluster_masks(scale * activations, 3), cluster_masks(activations, 3))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 50), ties=st.booleans())
def test_kmeans_labels_are_a_lloyd_fixed_point(k, seed, ties):
    """Each position is nearest to the mean of its own cluster (exact float64 reference)."""
    gen = torch.Generator().manual_seed(seed)
    activations = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64)
    if ties:  # duplicated positions and an all-zero one
        activations = activations.round()
        activations[..., 0, :2] = activations[..., 1, :2]
        activations[..., 2, 3] = 0
    masks = cluster_masks(activations, k, seed=seed)
    for sample, sample_masks in zip(activations, masks.transpose(0, 1), strict=True):
        points = sample.flatten(1).T  # (12, 3)
        labels = _labels(sample_masks)
        used = labels.unique()
        means = torch.stack([points[labels == c].mean(0) for c in used.tolist()])
        distance = ((points[:, None] - means[None]) ** 2).sum(-1)
        own = distance[torch.arange(12), torch.searchsorted(used, labels)]
        assert (own <= distance.min(1).values * (1 + 1e-9) + 1e-12).all()


def test_kmeans_on_identical_positions_and_every_position_a_cluster():
    constant = torch.ones(2, 3, 2, 2)
    masks = cluster_masks(constant, 3)
    assert masks.shape == (3, 2, 1, 2, 2) and (masks.sum(0) == 1).all()
    activations, _ = _blobs(4)
    masks = cluster_masks(activations, 16)
    assert (masks.flatten(1).sum(1) == 1).all()  # k = H·W: one position per cluster


def test_kmeans_default_seed_is_zero():
    activations = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(cluster_masks(activations, 5), cluster_masks(activations, 5, seed=0))


@pytest.mark.parametrize(
    ("shape", "k", "match"),
    [
        ((2, 3), 1, r"activations must be \(batch, C, H, W\), got shape \(2, 3\)"),
        ((1, 2, 3, 4), 13, r"k must be in \[1, 12\] \(H·W\), got 13"),
        ((1, 2, 3, 4), 0, r"k must be in \[1, 12\] \(H·W\), got 0"),
    ],
)
def test_bad_cluster_arguments_fail_clearly(shape, k, match):
    with pytest.raises(ValueError, match=match):
        cluster_masks(torch.zeros(shape), k)
