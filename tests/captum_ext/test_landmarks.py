"""Landmark similarity (Sim = −distance, Fig. 6) against loops written from the definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from captum_ext.metrics import (
    diversity,
    filter_foci,
    interp,
    landmark_similarity,
    part_landmarks,
    purity,
    stability,
)

DTYPES = [torch.float32, torch.float64]
SIZE = (6, 9)  # maps 3×3 → masks 6×9: integer scale factors, exact in float32


def _reference_similarity(maps: torch.Tensor, masks: torch.Tensor) -> list:
    """Per (image, filter, part): −distance, None where the part is absent, 'dead' if no peak."""
    n, c = maps.shape[:2]
    k, h, w = masks.shape[1:]
    out = []
    for i in range(n):
        rows = []
        for f in range(c):
            up = F.interpolate(
                maps[i, f].double()[None, None], size=(h, w), mode="bilinear", align_corners=False
            )[0, 0].tolist()
            best, at, low = -math.inf, None, math.inf
            for r in range(h):
                for q in range(w):
                    low = min(low, up[r][q])
                    if up[r][q] > best:  # strictly greater: the first peak wins a tie
                        best, at = up[r][q], (r, q)
            row = []
            for part in range(k):
                pixels = [(r, q) for r in range(h) for q in range(w) if masks[i, part, r, q]]
                if not pixels:
                    row.append(None)
                elif best == low:
                    row.append("dead")
                else:
                    centre = (
                        sum(p[0] for p in pixels) / len(pixels),
                        sum(p[1] for p in pixels) / len(pixels),
                    )
                    row.append(-math.hypot(at[0] - centre[0], at[1] - centre[1]))
            rows.append(row)
        out.append(rows)
    return out


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    """3 images, 5 filters (3×3), 3 parts on 6×9 masks: ties, dead filters, absent parts."""
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 5, 3, 3, generator=g, dtype=torch.float64)
    maps[:, 0] = 0.0
    maps[:, 0, 0, 0] = 1.0  # one corner peak: focus (0, 0)
    maps[0, 1] = 0.0
    maps[0, 1, 0, 0] = maps[0, 1, 2, 2] = 1.0  # two equal peaks: the first in row-major order
    maps[1, 2] = 0.0  # dead on image 1
    maps[2, 3] = 0.5  # constant on image 2
    masks = torch.zeros(3, 3, *SIZE, dtype=torch.bool)
    masks[:, 0, 3, 4] = True  # landmark (3, 4): distance 5 from (0, 0), a tie at t = 5
    masks[:, 1, :2, 6:] = True
    masks[:, 2, 4:, :3] = True
    masks[1, 1] = False  # absent parts
    masks[2, 2] = False
    return maps, masks


@pytest.mark.parametrize("dtype", DTYPES)
def test_similarity_equals_the_loop_reference_with_ties_dead_maps_and_absent_parts(dtype):
    maps, masks = _case()
    maps = maps.to(dtype)
    sim = landmark_similarity(maps, masks)
    assert sim.shape == (3, 5, 3) and sim.dtype == dtype and sim.device == maps.device
    reference = _reference_similarity(maps.double(), masks)
    for i in range(3):
        for f in range(5):
            for k in range(3):
                want, got = reference[i][f][k], float(sim[i, f, k])
                if want is None:
                    assert math.isnan(got), (i, f, k)
                elif want == "dead":
                    assert got == torch.finfo(dtype).min, (i, f, k)
                else:
                    assert got == pytest.approx(want, rel=1e-6 if dtype == torch.float32 else 1e-12)
    assert float(sim[0, 0, 0]) == -5.0
    focus, alive = filter_foci(maps, SIZE)
    assert focus[0, 1].tolist() == [0.0, 0.0], "a tie goes to the first peak in row-major order"
    assert not alive[1, 2] and not alive[2, 3] and alive[0, 2]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [2.0, 5.0, 5.5, 9.0])
def test_eq_11_to_14_with_a_distance_threshold_equal_loops(dtype, t):
    maps, masks = _case()
    maps = maps.to(dtype)
    sim = landmark_similarity(maps, masks)
    reference = _reference_similarity(maps.double(), masks)
    n, c, k = 3, 5, 3

    def hit(i, f, part):
        value = reference[i][f][part]
        return isinstance(value, float) and -value < t  # success: distance < t

    def entropy(v):
        total = sum(v)
        if total == 0:
            return 0.0
        return -sum(x / total * math.log(x / total) for x in v if x > 0) / math.log(k)

    rates = []
    for f in range(c):
        row = []
        for part in range(k):
            present = [i for i in range(n) if reference[i][f][part] is not None]
            row.append(sum(hit(i, f, part) for i in present) / max(len(present), 1))
        rates.append(row)
    tol = {"rel": 1e-6, "abs": 1e-6}
    assert interp(sim, -t).tolist() == pytest.approx([max(r) for r in rates], **tol)
    assert stability(sim, -t).tolist() == pytest.approx([entropy(r) for r in rates], **tol)
    want = [
        sum(entropy([float(hit(i, f, p)) for p in range(k)]) for i in range(n)) / n
        for f in range(c)
    ]
    assert purity(sim, -t).tolist() == pytest.approx(want, **tol)
    want = [
        entropy([float(any(hit(i, f, p) for f in range(c))) for p in range(k)]) for i in range(n)
    ]
    assert diversity(sim, -t).tolist() == pytest.approx(want, **tol)
    # the tie: distance exactly 5 is no hit at t = 5 (success needs distance < t)
    assert (float(interp(sim[:, :1, :1], -t)[0]) > 0) == (t > 5.0)


def test_landmarks_are_centroids_and_nan_for_absent_parts():
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, 1:3, 0:2] = True
    got = part_landmarks(masks)
    assert got[0, 0].tolist() == [1.5, 0.5]
    assert got[0, 1].isnan().all()


def test_bad_input_is_named():
    maps, masks = _case()
    with pytest.raises(TypeError, match="masks"):
        landmark_similarity(maps, masks.float())
    with pytest.raises(ValueError, match="same images"):
        landmark_similarity(maps[:2], masks)
    with pytest.raises(ValueError, match="maps"):
        landmark_similarity(maps[0], masks)
    with pytest.raises(ValueError, match="size"):
        filter_foci(maps, (6,))
    with pytest.raises(TypeError, match="masks"):
        part_landmarks(masks.float())
