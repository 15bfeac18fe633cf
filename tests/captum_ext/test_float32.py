"""float32 gives what float64 gives: differential tests of captum_ext at realistic sizes.

Every public entry point that subtracts nearly equal numbers or accumulates over many rows runs
twice on the same data: on a float32 model (or float32 maps) and on its float64 copy
(``copy.deepcopy(model).double()``, inputs ``x.double()``, which hold the float32 values
exactly). Sizes are those of real use at the small end: an MLP layer of 64 units over
2,000–10,000 rows, a conv layer of 64 channels, Taylor scores over 200 batches, maps of
8 × 512 × 28 × 28, IoU tables of 3 · 10⁶ entries.

Tolerance rule
--------------
A float32 model rounds its own outputs, and no implementation can undo that. The yardstick is
the float64 formula applied to the float32 model's outputs (masked forward passes of the
float32 model through a plain hook, every later step in float64): its distance to the float64
result, ``e_ref = max |ref - r64|``, is what float32 costs anyway. A float32 result ``r32``
passes when::

    max |r32 - r64| <= 4 * e_ref + 2 * ulp(scale),    ulp(s) = 2**-23 * s,

with ``scale = max |r64|`` over the compared tensor: at most four times the unavoidable error,
plus the rounding of the result to float32. Where the entry point is a pure function of its
inputs (the regularizers, the metrics), ``e_ref = 0`` and only the rounding is left.

Orders (importance, synergy, rankings, top pairs, Taylor scores) must agree except at
near-ties: two entries whose float64 values differ by more than twice the tolerance keep their
order in float32.

Threshold decisions (``IoU > phi``, a region's ``>= threshold``) must agree exactly. The
inputs are exact in float32 and ties sit exactly on phi or on the threshold: IoUs are ratios
a/b of pixel counts, b <= 3,136, and such a ratio is either equal to a phi of denominator
<= 20 or at least 1 / (20 b) away from it, far more than a float32 rounding. A float64 value
within one float32 rounding of phi but not on it may legitimately decide otherwise; the
generators never make one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_ext import LayerSynergy, NeuronSynergy, SynergyResult
from captum_ext.metrics.filters import (
    diversity,
    filter_metrics,
    interp,
    part_iou,
    purity,
    stability,
)
from captum_ext.module.sync import (
    LocalActivationConsistencyLoss,
    SynchronizationLoss,
    expected_positions,
)
from captum_ext.synergy.pruning import pruning_curve, taylor_scores

_ULP = 2.0**-23  # float32's unit in the last place, relative


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the tensors here are small, and on a busy machine every op of
    two threads waits for the second to be scheduled (50× slower in these tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------- the tolerance rule
def _tolerance(r64: Tensor, e_ref: float = 0.0) -> float:
    """4 · e_ref + 2 ulp of max |r64| (the module docstring's rule)."""
    return 4.0 * e_ref + 2.0 * _ULP * float(r64.abs().max())


def _assert_close(r32: Tensor, r64: Tensor, ref: Tensor | None = None, what: str = "") -> float:
    """``r32`` (float32) within the tolerance of ``r64`` (float64); returns the tolerance."""
    assert r32.dtype == torch.float32 and r64.dtype == torch.float64, (r32.dtype, r64.dtype)
    e_ref = 0.0 if ref is None else float((ref - r64).abs().max())
    tol = _tolerance(r64, e_ref)
    err = float((r32.double() - r64).abs().max())
    assert err <= tol, (
        f"{what}: float32 is off by {err:.3g} (scale {float(r64.abs().max()):.3g}"
        f"), allowed {tol:.3g}; the float64 formula on float32 outputs is off "
        f"by {e_ref:.3g}"
    )
    return tol


def _assert_same_order(a32: Tensor, a64: Tensor, tol: float) -> None:
    """Entries whose float64 values differ by more than 2 · tol are ordered alike in float32."""
    a32, a64 = a32.reshape(-1).double(), a64.reshape(-1)
    apart = a64[:, None] - a64[None, :] > 2 * tol
    assert bool((a32[:, None] > a32[None, :])[apart].all()), "float32 swaps entries far apart"


# ---------------------------------------------------------------- references for the synergy
def _all_masks(n: int) -> Tensor:
    """(1 + n + n(n-1)/2, n) bool: no unit, each unit, each pair i < j (triu order)."""
    eye = torch.eye(n, dtype=torch.bool)
    i, j = torch.triu_indices(n, n, 1)
    return torch.cat([torch.zeros(1, n, dtype=torch.bool), eye, eye[i] | eye[j]])


def _masked_runs(
    run: Callable[[], Tensor], module: nn.Module, elements: Tensor, masks: Tensor
) -> Tensor:
    """(N, K, ...) values of ``run()`` with ``module``'s output elements of each mask's units at
    0 (``elements``: (n, *row shape) bool, the elements of each unit)."""
    out = []
    for mask in masks:
        zero = elements[mask].any(0)
        handle = module.register_forward_hook(
            lambda _m, _i, output, zero=zero: torch.where(zero, 0.0, output)
        )
        try:
            with torch.no_grad():
                out.append(run())
        finally:
            handle.remove()
    return torch.stack(out, 1)


def _formula(p: Tensor, n: int, mode: str, alpha: float = 20.0) -> tuple[Tensor, ...]:
    """Δ, Δ_ij (diagonal Δ_i), S and per-row z of float64 scores p (N, K) in _all_masks order."""
    i, j = torch.triu_indices(n, n, 1)
    d = p[:, :1] - p[:, 1:]
    d = d.abs() if mode == "abs_mean" else d
    d_i, d_ij = d[:, :n], d[:, n:]
    importance = d_i.mean(0)
    pair, synergy = torch.zeros(2, n, n, dtype=p.dtype)
    pair[i, j] = d_ij.mean(0)
    synergy[i, j] = pair[i, j] - importance[i] - importance[j]
    s_rows = (d_ij - d_i[:, i] - d_i[:, j]).clamp(min=0)
    positive = torch.zeros_like(d_i).index_add_(1, i, s_rows).index_add_(1, j, s_rows)
    z = d_i + alpha * positive / n
    return importance, pair + pair.t() + importance.diag(), synergy + synergy.t(), z


def _check_result(r32: SynergyResult, r64: SynergyResult, ref: tuple[Tensor, ...]) -> None:
    """A float32 SynergyResult against the float64 one and the reference (Δ, Δ_ij, S)."""
    assert r32.importance.dtype == r32.synergy.dtype == r32.pair_importance.dtype == torch.float32
    _assert_close(r32.pair_importance, r64.pair_importance, ref[1], "pair importance")
    tol = _assert_close(r32.importance, r64.importance, ref[0], "importance")
    _assert_same_order(r32.importance, r64.importance, tol)
    tol = _assert_close(r32.synergy, r64.synergy, ref[2], "synergy")
    i, j = torch.triu_indices(r64.n, r64.n, 1)
    _assert_same_order(r32.synergy[i, j], r64.synergy[i, j], tol)
    _assert_same_order(r32.ranking(), r64.ranking(), r64.n * tol)
    pairs, _ = r32.top_pairs(5)
    kth = r64.top_pairs(5)[1][-1]
    assert bool((r64.synergy[pairs[:, 0], pairs[:, 1]] >= kth - 2 * tol).all())


# ----------------------------------------------------------------------------------- models
def _mlp(seed: int, inputs: int = 32) -> nn.Sequential:
    """inputs → 64 (ReLU, the layer) → 16 (Tanh) → 1 logit, float32, eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(inputs, 64), nn.ReLU(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 1)
    ).eval()


def _confident_mlp() -> nn.Sequential:
    """SynXAI's setting: a one-logit model whose sigmoid sits near 1 (logit ≈ 8)."""
    model = _mlp(11)
    with torch.no_grad():
        model[4].bias.fill_(8.0)
    return model


def _weak_mlp() -> nn.Sequential:
    """Nearly additive units: S_ij is ~10⁻⁴ of Δ_i, a difference that cancels most digits."""
    model = _mlp(12)
    with torch.no_grad():
        model[2].weight.mul_(0.03)
        model[4].weight.mul_(30.0)
    return model


def _conv_net() -> nn.Sequential:
    """64 channels (the layer) → 16 → 10 classes; class 3 at a softmax of ≈ 0.9995."""
    torch.manual_seed(13)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 16, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    with torch.no_grad():
        model[6].weight.mul_(0.25)
        model[6].bias.zero_()
        model[6].bias[3] = 10.0
    return model


# name: model, rows, units, output_transform, mode, hook path (a lambda hides the Sequential)
_LAYER_CASES = {
    "sigmoid-fast-abs": (_confident_mlp, 2000, 16, "sigmoid", "abs_mean", False),
    "sigmoid-hook-signed": (_confident_mlp, 2000, 16, "sigmoid", "signed", True),
    "weak-fast-signed": (_weak_mlp, 10_000, 8, None, "signed", False),
    "softmax-conv-channels-abs": (_conv_net, 200, 16, "softmax", "abs_mean", False),
}


@pytest.mark.parametrize("case", list(_LAYER_CASES))
def test_layer_synergy_in_float32_is_the_float64_formula(case):
    make, rows, n, transform, mode, hook = _LAYER_CASES[case]
    model = make()
    model64 = copy.deepcopy(model).double()
    torch.manual_seed(14)
    if isinstance(model[0], nn.Conv2d):  # units of 4 whole channels, the score is class 3
        x, target = torch.randn(rows, 3, 6, 6), 3
        mask = (torch.arange(64) // 4).reshape(1, 64, 1, 1)
        elements = (torch.arange(n)[:, None] == mask[0, :, 0, 0])[:, :, None, None]
        elements = elements.expand(n, 64, 6, 6)
    else:  # units of 64 / n hidden units
        x, target = torch.randn(rows, 32), None
        mask = (torch.arange(64) % n)[None]
        elements = torch.arange(n)[:, None] == mask
    forward = (lambda inp: model(inp)) if hook else model
    forward64 = (lambda inp: model64(inp)) if hook else model64
    r32 = LayerSynergy(forward, model[1], output_transform=transform, mode=mode).compute(
        x, target=target, layer_mask=mask, perturbations_per_eval=16
    )
    r64 = LayerSynergy(forward64, model64[1], output_transform=transform, mode=mode).compute(
        x.double(), target=target, layer_mask=mask, perturbations_per_eval=16
    )
    out = _masked_runs(lambda: model(x), model[1], elements, _all_masks(n)).double()
    if transform == "softmax":
        out = out.softmax(-1)[..., target : target + 1]
    elif transform == "sigmoid":
        out = out.sigmoid()
    _check_result(r32, r64, _formula(out[..., 0], n, mode))


def test_layer_synergy_attribute_in_float32_is_the_float64_formula():
    model = _confident_mlp()
    model64 = copy.deepcopy(model).double()
    torch.manual_seed(15)
    x = torch.randn(2000, 32)
    mask = (torch.arange(64) % 16)[None]
    z32 = LayerSynergy(model, model[1], output_transform="sigmoid").attribute(x, layer_mask=mask)
    z64 = LayerSynergy(model64, model64[1], output_transform="sigmoid").attribute(
        x.double(), layer_mask=mask
    )
    out = (
        _masked_runs(lambda: model(x), model[1], torch.arange(16)[:, None] == mask, _all_masks(16))
        .double()
        .sigmoid()
    )
    z_ref = _formula(out[..., 0], 16, "abs_mean")[3]
    assert z32.shape == (2000, 64) and z32.dtype == torch.float32
    # hidden unit k belongs to unit k % 16: the first 16 columns are the 16 units
    _assert_close(z32[:, :16], z64[:, :16], z_ref, "per-row z")


def test_neuron_synergy_in_float32_is_the_float64_formula():
    model = _mlp(16, inputs=64)
    with torch.no_grad():
        model[0].bias.fill_(1.0)  # most units active: inputs interact a little
    model64 = copy.deepcopy(model).double()
    torch.manual_seed(17)
    x = torch.randn(3000, 64)
    mask = (torch.arange(64) % 8)[None]
    r32 = NeuronSynergy(model, model[2], mode="signed").compute(
        x, 5, feature_mask=mask, perturbations_per_eval=16
    )
    r64 = NeuronSynergy(model64, model64[2], mode="signed").compute(
        x.double(), 5, feature_mask=mask, perturbations_per_eval=16
    )
    neuron: list[Tensor] = []
    capture = model[2].register_forward_hook(lambda _m, _i, out: neuron.append(out[:, 5]))
    try:
        with torch.no_grad():
            for units in _all_masks(8):
                model(torch.where(units[mask[0]], 0.0, x))
    finally:
        capture.remove()
    ref = _formula(torch.stack(neuron, 1).double(), 8, "signed")
    _check_result(r32, r64, ref)
    z32, z64 = (
        NeuronSynergy(m, m[2], mode="signed").attribute(
            inp, 5, feature_mask=mask, perturbations_per_eval=16
        )
        for m, inp in ((model, x), (model64, x.double()))
    )
    assert z32.dtype == torch.float32
    # feature k belongs to group k % 8: the first 8 columns are the 8 groups
    _assert_close(z32[:, :8], z64[:, :8], ref[3], "per-row z")


# ------------------------------------------------------------------------------- pruning
def test_neuron_synergy_sums_float32_neurons_in_float64():
    """A float32 neuron x_1 + x_2 + x_3 whose values are exact in float32 (integers plus
    multiples of 2⁻¹⁰ below 2¹²): every difference is exact, so Δ_i is the exact mean of x_i.
    Summed row after row in float32 (one row per chunk; up to ≈ 64000, where float32 keeps
    2⁻⁸) the fractions would be lost; the sums run in float64 and Δ comes out exact."""
    model = nn.Sequential(nn.Identity(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    rows = torch.arange(64)[:, None]
    x = 1000.0 + ((rows + torch.arange(3)) % 2) * 2.0**-10  # (64, 3), exact in float32
    result = NeuronSynergy(model, model[1]).compute(x, 0, rows_per_chunk=1)
    expected = x.double().mean(0)  # exact: 64 values of 22 bits, divided by 2⁶
    assert torch.equal(result.importance.double(), expected)
    assert torch.equal(result.synergy.double(), torch.zeros(3, 3, dtype=torch.float64))


def test_taylor_scores_in_float32_are_the_float64_formula():
    torch.manual_seed(19)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    model64 = copy.deepcopy(model).double()
    x, y = torch.randn(5000, 32), torch.randint(0, 10, (5000,))
    s32 = taylor_scores(model, model[1], x, y, batch_size=25)  # 200 batches
    s64 = taylor_scores(model64, model64[1], x.double(), y, batch_size=25)
    # the float64 formula on the float32 model's activations and gradients
    a = model[1](model[0](x)).detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(model[2](a), y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), a)  # rows do not mix: one pass for all
    ref = (a.detach().double() * grad.double()).abs().mean(0)
    assert s32.dtype == torch.float32
    # the rule relative to each score (the lowest are pruned first)
    e_ref = float(((ref - s64) / s64).abs().max())
    err = float(((s32.double() - s64) / s64).abs().max())
    assert err <= 4 * e_ref + 2 * _ULP, f"off by {err:.3g} of a score, the reference by {e_ref:.3g}"
    _assert_same_order(s32, s64, _tolerance(s64, float((ref - s64).abs().max())))
    assert not s32.requires_grad  # no autograd graph chained through the batches


def test_pruning_curve_in_float32_follows_float64():
    torch.manual_seed(20)
    model = nn.Sequential(nn.Linear(32, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 1))
    model = model.eval()
    model64 = copy.deepcopy(model).double()
    x = torch.randn(3000, 32)
    y = (x[:, :4].sum(1) > 0).long()
    x_train, scores = torch.randn(1000, 32), torch.rand(256, dtype=torch.float64)
    fractions = (0.0, 0.5, 0.9)
    curves = [
        pruning_curve(
            m,
            m[2],
            scores.to(dtype),
            x.to(dtype),
            y,
            fractions=fractions,
            x_recalibrate=x_train.to(dtype),
            show_progress=False,
        )
        for m, dtype in ((model, torch.float32), (model64, torch.float64))
    ]
    assert curves[0]["pruned"] == curves[1]["pruned"]
    for auc32, auc64 in zip(curves[0]["roc_auc"], curves[1]["roc_auc"], strict=True):
        assert abs(auc32 - auc64) <= 1e-6
    # an accuracy may differ by the rows whose logit is within float32 rounding of 0
    for acc32, acc64 in zip(curves[0]["accuracy"], curves[1]["accuracy"], strict=True):
        assert abs(acc32 - acc64) <= 2 / len(x)


# ------------------------------------------------------------------------- regularizers
def _positions(maps: Tensor) -> Tensor:
    """A fixed mix of the expected positions (their values and gradients are compared)."""
    _, rows, cols = expected_positions(maps, "unit")
    weights = torch.linspace(-1.0, 1.0, rows.numel(), dtype=torch.float64).reshape(rows.shape)
    return (rows * weights.to(rows.dtype) + cols).sum()


_LOSSES = {
    "lac": LocalActivationConsistencyLoss(),
    "lac-moving-center": LocalActivationConsistencyLoss(detach_center=False),
    "sync": SynchronizationLoss(),
    "sync-cells-sum": SynchronizationLoss(epsilon=0.1, coords="cell", reduction="sum"),
    "positions": _positions,
}


@pytest.mark.parametrize("side", [14, 28])
@pytest.mark.parametrize("loss", list(_LOSSES))
def test_sync_losses_and_gradients_in_float32(loss, side):
    torch.manual_seed(21)
    # ReLU maps of 8 images × 512 filters, image by image from sharp (×100) to flat (×10⁻³)
    scales = torch.tensor([100.0, 100.0, 10.0, 1.0, 1.0, 0.1, 1e-3, 1e-3])[:, None, None, None]
    maps = torch.randn(8, 512, side, side).relu_() * scales
    values, grads = [], []
    for dtype in (torch.float32, torch.float64):
        leaf = maps.to(dtype).requires_grad_(True)
        value = _LOSSES[loss](leaf)
        values.append(value.detach())
        grads.append(torch.autograd.grad(value, leaf)[0])
    assert values[0].dtype == grads[0].dtype == torch.float32
    _assert_close(values[0], values[1], what=f"{loss} value")
    for image, scale in enumerate(scales.flatten().tolist()):  # each image at its own scale
        _assert_close(grads[0][image], grads[1][image], what=f"{loss} gradient at ×{scale:g}")


# ------------------------------------------------------------------------------ metrics
_PHIS = (0.1, 0.2, 0.25, 0.3, 0.5, 0.75)  # denominators <= 20


def _ratios(generator: torch.Generator, shape: tuple[int, int, int], phi: float) -> Tensor:
    """(N, C, K) float64 IoUs a / b of pixel counts (b <= 3,136): a quarter exactly phi, a
    tenth of the parts absent (NaN)."""
    b = torch.randint(1, 3137, shape, generator=generator, dtype=torch.float64)
    a = (torch.rand(shape, generator=generator, dtype=torch.float64) * (b + 1)).floor()
    iou = a / b
    iou[torch.rand(shape, generator=generator) < 0.25] = phi
    absent = torch.rand(shape[0], 1, shape[2], generator=generator) < 0.1
    return iou.masked_fill(absent, float("nan"))


def _check_reductions(iou64: Tensor, phi: float) -> None:
    for reduction in (interp, stability, purity, diversity):
        r32, r64 = reduction(iou64.float(), phi), reduction(iou64, phi)
        _assert_close(r32, r64, what=reduction.__name__)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    phi=st.sampled_from(_PHIS),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 16), st.integers(1, 8)),
)
def test_iou_reductions_decide_ties_at_phi_alike(seed, phi, shape):
    _check_reductions(_ratios(torch.Generator().manual_seed(seed), shape, phi), phi)


def test_iou_reductions_in_float32_at_realistic_size():
    # 1,000 images × 512 filters × 6 parts
    _check_reductions(_ratios(torch.Generator().manual_seed(22), (1000, 512, 6), 0.2), 0.2)


def _saturated_maps(n: int, c: int, side: int) -> Tensor:
    """ReLU maps capped at 0.3 (not a binary fraction): the top-30 % threshold of half the
    filters is exactly 0.3 with whole regions on it; the other half are sparse, their threshold
    is their minimum 0."""
    torch.manual_seed(23)
    shift = torch.tensor([-0.5, 1.0]).repeat(c // 2)[None, :, None, None]
    return (torch.randn(n, c, side, side) - shift).relu().clamp(max=0.3)


def _part_masks(n: int, parts: int, size: int) -> Tensor:
    """(n, parts, size, size) bool squares of half the side; part 1 is absent on every third
    image."""
    torch.manual_seed(24)
    corner = torch.randint(0, size // 2, (2, n, parts, 1, 1))
    grid = torch.arange(size)
    rows = (grid[:, None] >= corner[0]) & (grid[:, None] < corner[0] + size // 2)
    cols = (grid[None, :] >= corner[1]) & (grid[None, :] < corner[1] + size // 2)
    masks = rows & cols
    masks[::3, 1] = False
    return masks


@pytest.mark.parametrize(("n", "side", "size"), [(100, 14, 56), (8, 14, 224), (100, 7, 28)])
def test_part_iou_decides_regions_at_the_threshold_alike(n, side, size):
    maps = _saturated_maps(n, 64, side)
    masks = _part_masks(n, 5, size)
    iou32, iou64 = part_iou(maps, masks), part_iou(maps.double(), masks)
    assert iou32.dtype == torch.float32
    assert torch.equal(iou32.isnan(), iou64.isnan())
    # one pixel more or less in a region moves an IoU by >= 1 / size² ≫ the tolerance
    _assert_close(iou32.nan_to_num(), iou64.nan_to_num(), what="part IoU")


def test_filter_metrics_in_float32_follow_float64():
    maps = _saturated_maps(20, 64, 14)
    masks = _part_masks(20, 4, 56)
    m32 = filter_metrics(maps, masks, show_progress=False)
    m64 = filter_metrics(maps.double(), masks, show_progress=False)
    assert m32.keys() == m64.keys()
    for key, value in m64.items():  # the module metrics come from the same labels
        assert abs(m32[key] - value) <= 2 * _ULP * abs(value), key
