"""Sync regularizers against per-image, per-filter loops written from eq. 3–9 (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from captum_ext.module.sync import (
    LocalActivationConsistencyLoss,
    SynchronizationLoss,
    capture_output,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------- references (plain loops)
def _step(coords, h, w):
    side = max(h - 1, w - 1, 1)
    return {"cell": 1.0, "unit": 1.0 / side}.get(coords, coords), side


def _positions(h, w, step, like):
    return torch.tensor(
        [[i * step, j * step] for i in range(h) for j in range(w)], dtype=like.dtype
    )


def _center(a, pos):
    """eq. 5 and x̄ = E_q[x] for one flattened map a (M,) and positions (M, 2)."""
    e = torch.exp(a - a.max())
    q = e / e.sum()
    return q, (q[:, None] * pos).sum(0)


def _dist(u, v):
    return torch.sqrt(((u - v) ** 2).sum(-1))


def ref_lac(maps, coords="cell", detach=True):
    b, c, h, w = maps.shape
    step, _ = _step(coords, h, w)
    pos = _positions(h, w, step, maps)
    total = 0.0
    for n in range(b):
        for f in range(c):
            q, xbar = _center(maps[n, f].flatten(), pos)
            if detach:
                xbar = xbar.detach()
            e = torch.exp(-_dist(pos, xbar))
            p = e / e.sum()  # eq. 4
            total = total - (p * torch.log(q)).sum()  # eq. 3
    return total / (b * c)


def ref_sync(maps, epsilon=0.03, coords="unit", reduction="mean", form="eq6", include_self=False):
    b, c, h, w = maps.shape
    step, side = _step(coords, h, w)
    pos = _positions(h, w, step, maps)
    total, pairs = 0.0, 0
    for n in range(b):
        xbar = [_center(maps[n, f].flatten(), pos)[1] for f in range(c)]

        def d(i, j, xbar=xbar):  # d_ii = 0 as a constant: sqrt has no derivative at 0
            return torch.zeros((), dtype=maps.dtype) if i == j else _dist(xbar[i], xbar[j])

        for i in range(c):
            others = [j for j in range(c) if include_self or j != i]  # eq. 1 holds i itself
            radius = epsilon * side * step
            nb = [j for j in others if d(i, j).detach() <= radius]
            if not nb:
                continue
            pairs += 1
            denom = sum(torch.exp(-d(i, j)) for j in others)
            if form == "eq6":  # eq. 6-8
                for j in nb:
                    q = torch.exp(-d(i, j)) / denom
                    total = total - torch.log(q) / len(nb)
            else:  # eq. 9: pull (1/|Nb| on it only) + log-sum-exp push
                pull = sum(d(i, j) for j in nb) / len(nb)
                total = total + pull + torch.log(denom)
    if reduction == "sum":
        return total / b
    return total / max(pairs, 1)


def _maps(shape, seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=dtype)).requires_grad_(True)


def _grad(loss, maps):
    if not (torch.is_tensor(loss) and loss.requires_grad):  # a reference without any term
        return torch.zeros_like(maps)
    (g,) = torch.autograd.grad(loss, maps, allow_unused=True)
    return torch.zeros_like(maps) if g is None else g


def _assert_close(ours, ref, maps):
    assert ours.shape == () and ours.dtype == maps.dtype
    assert torch.allclose(ours, torch.as_tensor(ref, dtype=maps.dtype), rtol=1e-10, atol=1e-10)
    g_ours, g_ref = _grad(ours, maps), _grad(ref, maps)
    assert torch.allclose(g_ours, g_ref, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- equality with the equations
@pytest.mark.parametrize("coords", ["cell", "unit", 0.5])
@pytest.mark.parametrize("detach", [True, False])
def test_lac_equals_loop_over_images_and_filters(coords, detach):
    maps = _maps((3, 4, 5, 6))
    lac = LocalActivationConsistencyLoss(coords=coords, detach_center=detach)
    _assert_close(lac(maps), ref_lac(maps, coords, detach), maps)


@pytest.mark.parametrize("coords", ["cell", "unit", 0.5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("epsilon", [0.03, 0.15, 0.6])
def test_sync_equals_loop_over_images_and_filters(coords, reduction, epsilon):
    maps = _maps((3, 6, 5, 6), scale=1.5)
    sync = SynchronizationLoss(epsilon=epsilon, coords=coords, reduction=reduction)
    _assert_close(sync(maps), ref_sync(maps, epsilon, coords, reduction), maps)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("epsilon", [0.0, 0.15, 0.6])
@pytest.mark.parametrize("form", ["eq6", "eq9"])
def test_sync_with_eq1_self_inclusion_equals_the_loop(reduction, epsilon, form):
    maps = _maps((3, 6, 5, 6), seed=5, scale=1.5)
    sync = SynchronizationLoss(epsilon=epsilon, reduction=reduction, include_self=True)
    ref = ref_sync(maps, epsilon, "unit", reduction, form=form, include_self=True)
    _assert_close(sync(maps), ref, maps)


def test_self_inclusion_pushes_a_filter_without_neighbours_away():
    """Two far filters: eq. 6 without i itself has no term; with it, both repel (loss > 0)."""
    maps = _peaks([(0, 0), (6, 6)], height=3.0)  # x̄ 0.3 apart in unit coordinates
    assert SynchronizationLoss(epsilon=0.1)(maps).item() == 0.0
    loss = SynchronizationLoss(epsilon=0.1, reduction="sum", include_self=True)(maps)
    # each filter: −log q(i|i) = log(1 + e^{−d}), its only neighbour being itself
    assert loss.item() == pytest.approx(2 * math.log1p(math.exp(-_peak_distance(maps))))
    # a gradient step moves the two x̄ apart
    stepped = (maps - 0.5 * _grad(loss, maps)).detach()
    assert _peak_distance(stepped) > _peak_distance(maps) + 1e-3


def _peak_distance(maps):
    """Distance of the two filters' x̄ in 'unit' coordinates, from the reference soft-argmax."""
    _, _, h, w = maps.shape
    step, _ = _step("unit", h, w)
    pos = _positions(h, w, step, maps)
    a, b = (_center(maps[0, f].detach().flatten(), pos)[1] for f in range(2))
    return float(_dist(a, b))


def test_sync_cases_cover_partial_neighbourhoods():
    """The ε = 0.15 case above has filters with and without neighbours (not all-or-nothing)."""
    maps = _maps((3, 6, 5, 6), scale=1.5)
    mean = SynchronizationLoss(epsilon=0.15, reduction="mean")(maps)
    total = SynchronizationLoss(epsilon=0.15, reduction="sum")(maps)
    pairs = (total * 3 / mean).item()
    assert 0 < round(pairs) < 18 and abs(pairs - round(pairs)) < 1e-9


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sync_equals_eq9_pull_plus_log_sum_exp(reduction):
    maps = _maps((2, 7, 4, 4), seed=3)
    ours = SynchronizationLoss(epsilon=0.2, reduction=reduction)(maps)
    _assert_close(ours, ref_sync(maps, 0.2, "unit", reduction, form="eq9"), maps)


def test_epsilon_is_a_fraction_of_the_side_whatever_the_coords():
    maps = _maps((2, 6, 5, 7), seed=4)
    sums = [SynchronizationLoss(0.15, coords, "sum")(maps) for coords in ("cell", "unit")]
    means = [SynchronizationLoss(0.15, coords, "mean")(maps) for coords in ("cell", "unit")]
    counts = [(s * 2 / m).item() for s, m in zip(sums, means, strict=True)]
    assert counts[0] == pytest.approx(counts[1]) and counts[0] > 0


# ---------------------------------------------------------------- edge cases
_EDGE = st.sampled_from(["random", "zeros", "ties", "coincident"])


def _edge_maps(kind, b, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "zeros":
        maps = torch.zeros(b, c, h, w, dtype=torch.float64)
    elif kind == "ties":
        maps = torch.randint(0, 2, (b, c, h, w), generator=g).double() * 3.0
    else:
        maps = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    if kind == "coincident":
        maps[:, : max(c - 1, 1)] = maps[:, :1].clone()
    return maps.requires_grad_(True)


def _off_the_boundary(maps, epsilon, coords="unit") -> bool:
    """No two filters' centres lie within rounding of the neighbourhood radius without being
    exactly at it: there ``d <= radius`` is decided by the last bit (e.g. two maps whose peaks
    are mirrored have the same centre in exact arithmetic, at 1e-17 in the reference's sum
    order), so ours and the reference may take either side."""
    b, c, h, w = maps.shape
    step, side = _step(coords, h, w)
    pos = _positions(h, w, step, maps)
    radius = epsilon * side * step
    for n in range(b):
        centres = [_center(maps[n, f].detach().flatten(), pos)[1] for f in range(c)]
        for i in range(c):
            for j in range(i + 1, c):
                gap = abs(float(_dist(centres[i], centres[j])) - radius)
                if 0 < gap <= 1e-9 * side * step:
                    return False
    return True


@settings(max_examples=40, deadline=None)
@given(
    kind=_EDGE,
    b=st.integers(1, 2),
    c=st.integers(1, 4),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    detach=st.booleans(),
    epsilon=st.sampled_from([0.0, 0.03, 0.5, 2.0]),
)
def test_edge_cases_give_finite_losses_and_the_reference_gradients(
    kind, b, c, h, w, seed, detach, epsilon
):
    maps = _edge_maps(kind, b, c, h, w, seed)
    assume(_off_the_boundary(maps, epsilon))
    lac = LocalActivationConsistencyLoss(detach_center=detach)
    sync = SynchronizationLoss(epsilon=epsilon)
    for ours, ref in (
        (lac(maps), ref_lac(maps, "cell", detach)),
        (sync(maps), ref_sync(maps, epsilon)),
    ):
        grad = _grad(ours, maps)
        assert torch.isfinite(ours) and torch.isfinite(grad).all()
        ref_value = float(torch.as_tensor(ref).detach())
        assert ours.item() == pytest.approx(ref_value, rel=1e-9, abs=1e-9)
        ref_grad = _grad(ref, maps)
        if torch.isfinite(ref_grad).all():  # sqrt'(0) is NaN there
            assert torch.allclose(grad, ref_grad, rtol=1e-9, atol=1e-9)


def _nonzero_grad(loss, maps):
    grad = _grad(loss, maps)
    return bool(torch.isfinite(loss)) and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


@pytest.mark.parametrize("detach", [True, False])
def test_lac_gradients_on_degenerate_maps_are_finite_and_nonzero(detach):
    lac = LocalActivationConsistencyLoss(detach_center=detach)
    zeros = torch.zeros(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)  # x̄ on a cell
    assert _nonzero_grad(lac(zeros), zeros)
    for shape in [(2, 1, 4, 4), (2, 3, 1, 5), (2, 3, 5, 1)]:  # C = 1, H = 1, W = 1
        maps = _maps(shape)
        assert _nonzero_grad(lac(maps), maps)
    single = _maps((2, 3, 1, 1))  # one position: q = p = 1, loss and gradient exactly 0
    assert lac(single).item() == 0.0 and not _grad(lac(single), single).any()


def _peaks(cells, h=8, w=8, height=12.0):
    """(1, len(cells), h, w) maps with one high cell each: x̄ sits next to that cell."""
    maps = torch.zeros(1, len(cells), h, w, dtype=torch.float64)
    for f, (r, c) in enumerate(cells):
        maps[0, f, r, c] = height
    return maps.requires_grad_(True)


def test_sync_gradients_on_degenerate_maps_are_finite_and_nonzero_where_defined():
    sync = SynchronizationLoss(epsilon=0.5)
    coincident = _peaks([(1, 1), (1, 1), (2, 3)])  # a coincident pair and a neighbour
    assert _nonzero_grad(sync(coincident), coincident)
    row = _maps((2, 4, 1, 6), scale=0.5)  # H = 1
    assert _nonzero_grad(sync(row), row)
    col = _maps((2, 4, 6, 1), scale=0.5)  # W = 1
    assert _nonzero_grad(sync(col), col)
    for maps in (
        _maps((2, 1, 4, 4)),
        _peaks([(0, 0), (7, 7)]),  # C = 1; no neighbours
        torch.zeros(2, 3, 4, 4, dtype=torch.float64, requires_grad=True),
    ):
        loss = SynchronizationLoss(epsilon=0.0 if maps.shape[1] == 2 else 0.5)(maps)
        grad = _grad(loss, maps)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert SynchronizationLoss(epsilon=0.1)(_peaks([(0, 0), (7, 7)])).item() == 0.0


# ---------------------------------------------------------------- the losses' laws
def test_lac_prefers_a_compact_blob_to_scattered_activations():
    compact = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    compact[0, 0, 2:4, 2:4] = 4.0
    scattered = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    scattered[0, 0, [0, 0, 7, 7], [0, 7, 0, 7]] = 4.0
    for coords in ("cell", "unit"):
        lac = LocalActivationConsistencyLoss(coords=coords)
        assert lac(compact) < lac(scattered)


def test_sync_prefers_two_tight_groups_far_apart_to_close_ones():
    far = _peaks([(0, 0)] * 3 + [(7, 7)] * 3)
    close = _peaks([(3, 3)] * 3 + [(4, 4)] * 3)
    for coords in ("unit", "cell"):
        sync = SynchronizationLoss(epsilon=0.05, coords=coords)
        assert sync(far) < sync(close)


# ---------------------------------------------------------------- dtypes, devices, errors
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_maps(device, dtype):
    maps64 = _maps((4, 8, 6, 6), seed=5, scale=1.0).detach()
    maps = maps64.to(device=device, dtype=dtype).requires_grad_(True)
    for loss in (LocalActivationConsistencyLoss(), SynchronizationLoss(epsilon=0.2)):
        value = loss(maps)
        assert value.dtype == dtype and value.device == maps.device
        assert value.item() == pytest.approx(loss(maps64).item(), rel=1e-5)
        assert torch.isfinite(_grad(value, maps)).all()


@pytest.mark.parametrize("loss", [LocalActivationConsistencyLoss(), SynchronizationLoss()])
def test_bad_maps_are_rejected_early(loss):
    with pytest.raises(ValueError, match="4 dimensions"):
        loss(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="floating"):
        loss(torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        loss(torch.zeros(0, 3, 4, 4))


def test_bad_arguments_are_rejected_early():
    with pytest.raises(ValueError, match="coords"):
        LocalActivationConsistencyLoss(coords="pixel")
    with pytest.raises(ValueError, match="coords"):
        SynchronizationLoss(coords=-1.0)
    with pytest.raises(ValueError, match="epsilon"):
        SynchronizationLoss(epsilon=-0.1)
    with pytest.raises(ValueError, match="reduction"):
        SynchronizationLoss(reduction="none")


# ---------------------------------------------------------------- capture_output
def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2)
    ).double()


def test_capture_output_keeps_the_latest_output_with_its_graph():
    model = _net()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    plain = model(x)
    with capture_output(model[1]) as maps:
        with pytest.raises(RuntimeError, match="no output captured"):
            _ = maps.value
        model(x[:1])
        out = model(x)
        assert torch.equal(out, plain)
        assert torch.equal(maps.value, model[:2](x)) and maps.value.requires_grad
        LocalActivationConsistencyLoss()(maps.value).backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert not model[1]._forward_hooks


def test_capture_output_removes_its_hook_on_error():
    model = _net()
    with pytest.raises(KeyError), capture_output(model[1]):
        model(torch.randn(1, 2, 5, 5, dtype=torch.float64))
        raise KeyError("boom")
    assert not model[1]._forward_hooks
    with pytest.raises(TypeError, match="nn.Module"):
        with capture_output("features.10"):
            pass


def test_lazy_exports():
    import captum_ext

    assert captum_ext.SynchronizationLoss is SynchronizationLoss
    assert captum_ext.LocalActivationConsistencyLoss is LocalActivationConsistencyLoss
    assert captum_ext.capture_output is capture_output
    assert math.isfinite(float(SynchronizationLoss()(torch.zeros(1, 2, 2, 2))))
