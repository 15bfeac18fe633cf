"""Filter metrics on hand-made maps and masks with known values, and a loop reference for IoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captum_ext.metrics.filters import (
    DIRECTION,
    diversity,
    filter_metrics,
    interp,
    module_consistency,
    module_part_alignment,
    part_iou,
    purity,
    stability,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]
S = 8  # image side; parts are its four quadrants


def _quadrant(k, size=S):
    m = torch.zeros(size, size, dtype=torch.bool)
    r, c = divmod(k, 2)
    m[r * size // 2 : (r + 1) * size // 2, c * size // 2 : (c + 1) * size // 2] = True
    return m


def _masks(n, absent=()):
    """(n, 4, S, S): part k is quadrant k; (image, part) pairs in ``absent`` are empty."""
    masks = torch.stack([torch.stack([_quadrant(k) for k in range(4)])] * n).clone()
    for image, part in absent:
        masks[image, part] = False
    return masks


def _maps(parts, dtype=torch.float64, device="cpu"):
    """(N, C, S, S) maps: filter c on image n is 1 on quadrant parts[n][c], else 0."""
    out = torch.zeros(len(parts), len(parts[0]), S, S, dtype=dtype, device=device)
    for n, row in enumerate(parts):
        for c, k in enumerate(row):
            out[n, c][_quadrant(k).to(device)] = 1.0
    return out


# ---------------------------------------------------------------- part_iou
def _ref_iou(maps, masks, top_rate):
    """Loop: CSGCNN's sorted threshold, bilinear upsampling, IoU per image, filter, part."""
    n, c = maps.shape[:2]
    k_parts = masks.shape[1]
    out = np.full((n, c, k_parts), np.nan)
    for f in range(c):
        values = np.sort(maps[:, f].flatten().numpy())
        threshold = values[-max(1, int(top_rate * values.size))]
        strict = threshold == values[0]  # the minimum: the region is the support
        for i in range(n):
            up = F.interpolate(
                maps[i, f][None, None], size=masks.shape[-2:], mode="bilinear", align_corners=False
            )[0, 0].numpy()
            region = up > threshold if strict else up >= threshold
            for k in range(k_parts):
                mask = masks[i, k].numpy()
                if mask.any():
                    out[i, f, k] = (region & mask).sum() / (region | mask).sum()
    return out


@pytest.mark.parametrize("top_rate", [0.05, 0.3, 1.0])
def test_part_iou_equals_a_loop_over_images_filters_and_parts(top_rate, monkeypatch):
    import captum_ext.metrics.filters as metrics

    monkeypatch.setattr(metrics, "_CHUNK", 3 * 4 * 12 * 12)  # three images per chunk
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(7, 4, 5, 5, generator=g, dtype=torch.float64).relu()
    masks = torch.zeros(7, 3, 12, 12, dtype=torch.bool)  # random rectangles
    for i in range(7):
        for k in range(3):
            r, c = torch.randint(0, 8, (2,), generator=g).tolist()
            masks[i, k, r : r + 5, c : c + 6] = True
    masks[2, 1] = False
    iou = part_iou(maps, masks, top_rate)
    ref = _ref_iou(maps, masks, top_rate)
    assert iou.shape == (7, 4, 3) and torch.isnan(iou[2, :, 1]).all()
    np.testing.assert_allclose(iou.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert (np.nan_to_num(ref) > 0).mean() > 0.1  # overlaps, so not a comparison of zeros


def test_top_rate_on_a_ramp_selects_exactly_the_top_cells():
    ramp = torch.arange(64, dtype=torch.float64).reshape(1, 1, 8, 8)  # top 16 cells = rows 6-7
    masks = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    masks[0, 0, 6:] = True  # the top quarter
    masks[0, 1, 4:] = True  # the top half
    iou = part_iou(ramp, masks, top_rate=0.25)
    assert iou[0, 0].tolist() == [1.0, 0.5]
    assert part_iou(ramp, masks, top_rate=0.5)[0, 0].tolist() == [0.5, 1.0]
    assert part_iou(ramp, masks, top_rate=1e-9)[0, 0, 0].item() == 1 / 16  # k >= 1: max only


def test_a_threshold_at_the_minimum_gives_the_support_not_the_whole_image():
    maps = _maps([[0, 0]] * 2)
    maps[:, 1] = 0.0  # dead
    iou = part_iou(maps, _masks(2), top_rate=0.5)  # 50 % > the 25 % non-zero: threshold 0
    assert iou[:, 0].tolist() == [[1.0, 0.0, 0.0, 0.0]] * 2
    assert iou[:, 1].tolist() == [[0.0] * 4] * 2


# ---------------------------------------------------------------- eq. 11-14
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_filter_always_on_one_part(dtype, device):
    iou = part_iou(_maps([[0]] * 4, dtype, device), _masks(4).to(device), top_rate=0.25)
    assert iou.dtype == dtype and iou.device.type == device
    assert interp(iou).tolist() == [1.0]
    assert stability(iou).tolist() == [0.0] and purity(iou).tolist() == [0.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_filter_alternating_between_two_parts(dtype):
    iou = part_iou(_maps([[0], [1], [0], [1]], dtype), _masks(4), top_rate=0.25)
    assert interp(iou).item() == pytest.approx(0.5)
    assert stability(iou).item() == pytest.approx(0.5)  # H(½, ½) / log 4
    assert purity(iou).item() == 0.0  # one part per image


def test_purity_counts_parts_within_one_image():
    maps = _maps([[0]] * 2) + _maps([[3]] * 2)  # the filter covers parts 0 and 3 at once
    iou = part_iou(maps, _masks(2), top_rate=0.5)
    assert interp(iou).item() == 1.0 and purity(iou).item() == pytest.approx(0.5)
    assert stability(iou).item() == pytest.approx(0.5)


def test_diversity_counts_the_parts_covered_by_any_filter():
    iou = part_iou(_maps([[0, 1, 2, 3], [0, 0, 1, 1]]), _masks(2), top_rate=0.25)
    assert diversity(iou).tolist() == pytest.approx([1.0, 0.5])


def test_absent_parts_are_left_out_of_eq11_and_count_as_misses_elsewhere():
    maps = _maps([[2, 0], [2, 0], [2, 0], [2, 0]])
    masks = _masks(4, absent=[(0, 2), (1, 2)])  # part 2 only on images 2 and 3
    iou = part_iou(maps, masks, top_rate=0.25)
    assert torch.isnan(iou[:2, :, 2]).all() and not torch.isnan(iou[2:]).any()
    assert interp(iou).tolist() == [1.0, 1.0]  # over the images that have part 2
    assert purity(iou).tolist() == [0.0, 0.0]
    assert diversity(iou).tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5])


def test_all_zero_vectors_have_zero_entropy_and_one_part_has_none():
    iou = torch.zeros(3, 2, 4, dtype=torch.float64)  # no filter hits anything
    assert interp(iou).tolist() == [0.0, 0.0] and stability(iou).tolist() == [0.0, 0.0]
    assert purity(iou).tolist() == [0.0, 0.0] and diversity(iou).tolist() == [0.0] * 3
    one = torch.ones(3, 2, 1, dtype=torch.float64)  # K = 1: log K = 0
    assert stability(one).tolist() == [0.0, 0.0] and diversity(one).tolist() == [0.0] * 3


# ---------------------------------------------------------------- modules
def _grouped(partitions, noise=0.0):
    """(N, C, S, S): on image n, filter c is active on quadrant partitions[n][c] (+ noise)."""
    maps = _maps(partitions)
    g = torch.Generator().manual_seed(0)
    return maps + noise * torch.rand(maps.shape, generator=g, dtype=maps.dtype) * (maps > 0)


def test_identical_clusterings_give_consistency_0_and_alignment_1():
    groups = [0, 0, 1, 1, 2, 2, 3, 3]
    maps = _grouped([groups] * 5, noise=0.3)
    masks = _masks(5)
    assert module_consistency(maps, 4, show_progress=False) == 0.0
    iou = part_iou(maps, masks, top_rate=0.25)
    assert module_part_alignment(maps, iou, 4) == pytest.approx({"nmi": 1, "ari": 1, "avi": 1})


def test_consistency_of_two_crossed_partitions_is_one_third():
    maps = _grouped([[0, 0, 1, 1], [0, 1, 0, 1]])  # pairs change membership 4 times of 6
    assert module_consistency(maps, 2, show_progress=False) == pytest.approx(1 / 3)


def test_dead_filters_are_dropped_and_counted():
    maps = torch.cat(
        [_grouped([[0, 0, 1, 1]] * 3), torch.zeros(3, 2, S, S, dtype=torch.float64)], dim=1
    )
    assert module_consistency(maps, 2, show_progress=False) == 0.0
    with pytest.raises(ValueError, match="n_modules"):
        module_consistency(maps, 5, show_progress=False)  # only 4 live filters
    result = filter_metrics(maps, _masks(3), n_modules=2, top_rate=0.25, show_progress=False)
    assert result["dead_filters"] == 2 and set(result) == set(DIRECTION)
    assert result["module_consistency"] == 0.0 and result["nmi"] == pytest.approx(1.0)
    assert result["interp"] == pytest.approx(4 / 6)  # dead filters count as 0
    assert all(DIRECTION[k] in ("higher", "lower") for k in DIRECTION)


def test_alignment_is_low_when_modules_ignore_parts():
    maps = _grouped([[0, 1, 0, 1, 2, 3, 2, 3]] * 3)  # modules {0,2},{1,3},{4,6},{5,7}
    iou = torch.zeros(3, 8, 4, dtype=torch.float64)
    iou[:, :, 0] = torch.tensor([1.0, 1, 0, 0, 1, 1, 0, 0])  # parts cut across the modules
    iou[:, :, 1] = 1.0 - iou[:, :, 0]
    scores = module_part_alignment(maps, iou, 4)
    assert scores["ari"] < 0.1 and scores["nmi"] < 0.6


def test_bad_inputs_are_rejected():
    maps, masks = _maps([[0]] * 2), _masks(2)
    with pytest.raises(TypeError, match="masks"):
        part_iou(maps, masks.float())
    with pytest.raises(ValueError, match="same images"):
        part_iou(maps, masks[:1])
    with pytest.raises(ValueError, match="top_rate"):
        part_iou(maps, masks, top_rate=0.0)
    with pytest.raises(ValueError, match="4 dimensions"):
        part_iou(maps[0], masks)
    with pytest.raises(ValueError, match="iou"):
        interp(torch.zeros(2, 3))
