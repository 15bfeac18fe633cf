"""PLRP-λ / PLRP-M composites: exactness against plain LRP, per-layer laws, model hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from zennit.attribution import Gradient, IntegratedGradients, SmoothGrad
from zennit.composites import COMPOSITES, EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite
from zennit.core import Hook
from zennit.rules import Pass, ZPlus
from zennit.types import Activation
from zennit.types import Linear as LinearTypes

from zennit_ext import PLRPM, PLRPLambda
from zennit_ext._rules import ModuleState
from zennit_ext.plrp.composites import PruningSpec, pruned_hook
from zennit_ext.plrp.masks import mass_threshold_mask

VARIANTS = (PLRPLambda, PLRPM)


def _attribute(model, x, composite, attributor=Gradient, seed=0, **kwargs):
    """Relevance of x for a random mixed-sign output relevance (both signs occur)."""
    out = model(x)
    g = torch.Generator().manual_seed(11)
    grad_out = torch.randn(out.shape, generator=g, dtype=out.dtype)
    torch.manual_seed(seed)
    with attributor(model=model, composite=composite, **kwargs) as attr:
        _, relevance = attr(x, grad_out)
    return relevance


class Recorder:
    """Records (name, unpruned, pruned) relevance of every pruned layer."""

    def __init__(self):
        self.records = []

    def __call__(self, name, before, after):
        self.records.append((name, before.clone(), after.clone()))


def _zplus():
    """A conservative composite: z+ on every dense/conv layer, activations passed."""
    return LayerMapComposite(layer_map=[(Activation, Pass()), (LinearTypes, ZPlus())])


def _bias_free_mlp():
    torch.manual_seed(3)
    layers = [nn.Linear(10, 12, bias=False), nn.ReLU(), nn.Linear(12, 9, bias=False), nn.ReLU()]
    layers += [nn.Linear(9, 7, bias=False), nn.ReLU(), nn.Linear(7, 4, bias=False)]
    return nn.Sequential(*layers).double().eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_p_zero_equals_base(plrp_zoo_model, variant):
    model, x, canonizers = plrp_zoo_model
    base = _attribute(model, x, EpsilonGammaBox(low=-4.0, high=4.0, canonizers=canonizers))
    ours = _attribute(model, x, variant(p=0.0, low=-4.0, high=4.0, canonizers=canonizers))
    torch.testing.assert_close(ours, base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("attributor", "kwargs"),
    [(SmoothGrad, {"noise_level": 0.1, "n_iter": 3}), (IntegratedGradients, {"n_iter": 4})],
)
def test_other_attributors_drop_in(variant, attributor, kwargs):
    model, shape, _ = _bias_free_mlp(), (10,), None
    x = torch.randn(2, *shape, dtype=torch.float64)
    base = _attribute(model, x, EpsilonPlusFlat(), attributor, **kwargs)
    ours = _attribute(model, x, variant(p=0.0), attributor, **kwargs)
    torch.testing.assert_close(ours, base, rtol=0, atol=1e-6)
    pruned = _attribute(model, x, variant(p=0.4), attributor, **kwargs)
    assert torch.isfinite(pruned).all() and not torch.allclose(pruned, base)


def test_lambda_conserves_each_sign_on_bias_free_zplus_net():
    model = _bias_free_mlp()
    x = torch.randn(4, 10, dtype=torch.float64)
    plain = _attribute(model, x, _zplus())
    recorder = Recorder()
    pruned = _attribute(model, x, PLRPLambda(p=0.3, composite=_zplus(), recorder=recorder))
    assert [name for name, *_ in recorder.records] == ["6", "4", "2"]  # backward order, never "0"
    for name, before, after in recorder.records:
        assert (after == 0).sum() > (before == 0).sum(), f"layer {name} pruned nothing"
        for sign in (1, -1):
            torch.testing.assert_close(
                (sign * after).clamp(min=0).sum(1),
                (sign * before).clamp(min=0).sum(1),
                rtol=1e-9,
                atol=1e-12,
            )
    # z+ conserves the total layer by layer, so the input sums agree with plain LRP
    torch.testing.assert_close(pruned.sum(1), plain.sum(1), rtol=1e-6, atol=1e-9)
    assert not torch.allclose(pruned, plain)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.6])
def test_lambda_per_layer_laws(plrp_zoo_model, p):
    model, x, canonizers = plrp_zoo_model
    recorder = Recorder()
    _attribute(model, x, PLRPLambda(p=p, canonizers=canonizers, recorder=recorder))
    assert recorder.records
    for name, before, after in recorder.records:
        keep = after != 0
        assert torch.equal(keep, mass_threshold_mask(before, p) & (before != 0)), name
        assert torch.all(after * before >= 0), f"{name}: a sign flipped"
        for sign in (before.clamp(min=0), (-before).clamp(min=0)):
            flat, kept = sign.flatten(1), (sign * keep).flatten(1)
            assert torch.all(kept.sum(1) >= (1 - p) * flat.sum(1) - 1e-12)
            largest_pruned = torch.where(kept == 0, flat, 0).amax(1)
            smallest_kept = torch.where(kept > 0, flat, torch.inf).amin(1)
            assert torch.all(largest_pruned <= smallest_kept), name


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_m_pruned_neurons_get_exactly_zero(plrp_zoo_model, p):
    model, x, canonizers = plrp_zoo_model
    recorder = Recorder()
    _attribute(model, x, PLRPM(p=p, canonizers=canonizers, recorder=recorder))
    pruned_any = False
    for name, before, after in recorder.records:
        pruned = ~mass_threshold_mask(before, p)
        assert torch.all(after[pruned] == 0), name
        pruned_any |= bool(pruned.any())
    assert pruned_any


def test_sparsity_gain_prunes_and_per_layer_p():
    model = _bias_free_mlp()
    x = torch.randn(4, 10, dtype=torch.float64)
    recorder = Recorder()
    _attribute(model, x, PLRPLambda(sparsity_gain=0.5, composite=_zplus(), recorder=recorder))
    assert any((after == 0).sum() > (before == 0).sum() for _, before, after in recorder.records)
    recorder = Recorder()
    comp = PLRPLambda(p=0.5, layer_p={"2": 0.0}, composite=_zplus(), recorder=recorder)
    _attribute(model, x, comp)
    records = {name: (before, after) for name, before, after in recorder.records}
    torch.testing.assert_close(records["2"][1], records["2"][0], rtol=0, atol=0)
    assert not torch.equal(records["4"][1], records["4"][0])


def test_first_layer_is_never_pruned():
    model = _bias_free_mlp()
    comp = PLRPM(p=0.5, composite=_zplus())
    with comp.context(model):
        assert comp.pruned_names == ["2", "4", "6"]
    assert type(comp.base.module_map({}, "0", model[0])).__name__ == "ZPlus"


def test_registry_and_hook_copy():
    assert COMPOSITES["plrp_lambda"] is PLRPLambda and COMPOSITES["plrp_m"] is PLRPM
    hook = pruned_hook(ZPlus(), PruningSpec(p=0.2), "m", "layer", None)
    copy = hook.copy()
    assert isinstance(copy, ZPlus) and copy.spec == PruningSpec(p=0.2) and copy.variant == "m"


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_unchanged_after_use_and_errors(plrp_zoo_model, plrp_unchanged, variant):
    model, x, canonizers = plrp_zoo_model
    verify = plrp_unchanged(model)
    out = model(x)
    _attribute(model, x, variant(p=0.3, canonizers=canonizers))
    verify()
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)

    def explode(*args):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _attribute(model, x, variant(p=0.3, canonizers=canonizers, recorder=explode))
    verify()
    with pytest.raises(ValueError, match="layer_p names"):
        _attribute(model, x, variant(p=0.3, canonizers=canonizers, layer_p={"nope": 0.1}))
    verify()
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)


def test_m_rejects_non_basic_rule(plrp_unchanged):
    model = _bias_free_mlp()
    verify = plrp_unchanged(model)
    comp = PLRPM(p=0.2, composite=LayerMapComposite(layer_map=[(LinearTypes, Pass())]))
    with pytest.raises(TypeError, match="BasicHook"):
        _attribute(model, torch.randn(2, 10, dtype=torch.float64), comp)
    verify()
    assert isinstance(pruned_hook(Pass(), PruningSpec(p=0.1), "lambda"), Hook)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p": 1.0}, ValueError, "p must be in"),
        ({"p": -0.5}, ValueError, "p must be in"),
        ({"p": 0.1, "p_neg": 2.0}, ValueError, "p_neg must be in"),
        ({"p": 0.1, "sparsity_gain": 1.0}, ValueError, "either p/p_neg or sparsity_gain"),
        ({"sparsity_gain": -1.0}, ValueError, "sparsity_gain must be >= 0"),
        ({"p": "a lot"}, TypeError, "p must be a float"),
        ({"p": 0.1, "composite": "epsilon_plus"}, TypeError, "composite must be a zennit"),
        ({"p": 0.1, "composite": EpsilonPlusFlat, "low": None}, TypeError, "composite must be"),
        ({"p": 0.1, "low": -1.0}, ValueError, "both low and high"),
        ({"p": 0.1, "composite": EpsilonPlusFlat(), "canonizers": []}, ValueError, "canonizers"),
        ({"p": 0.1, "layer_p": {"2": 1.5}}, ValueError, r"layer_p\['2'\] must be in"),
        ({"sparsity_measure": "l1"}, ValueError, "sparsity_measure must be one of"),
        ({"p": 0.1, "sparsity_measure": "l0"}, ValueError, "sparsity_measure='l0' needs"),
    ],
)
def test_invalid_settings(variant, kwargs, error, match):
    with pytest.raises(error, match=match):
        variant(**kwargs)


def test_default_is_sparsity_gain_and_bounds_pick_base():
    assert PLRPLambda().spec == PruningSpec(sparsity_gain=1.0)
    assert isinstance(PLRPLambda(p=0.1).base, EpsilonPlusFlat)
    assert isinstance(PLRPM(p=0.1, low=0.0, high=1.0).base, EpsilonGammaBox)


def _resnet18():
    from torchvision.models import resnet18
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    return resnet18(weights=None).eval(), ResNetCanonizer


def _efficientnet_lite0():
    models = pytest.importorskip("benchmarks.models")
    if not hasattr(models, "load_efficientnet_lite0"):
        pytest.skip("benchmarks.models.load_efficientnet_lite0 is not available")
    from zennit_ext.canonizers import EfficientNetLiteCanonizer

    return models.load_efficientnet_lite0(), EfficientNetLiteCanonizer


@pytest.mark.parametrize("build", [_resnet18, _efficientnet_lite0], ids=["resnet18", "effnet"])
def test_real_architectures(build, plrp_unchanged):
    model, canonizer = build()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    verify = plrp_unchanged(model)
    out = model(x)
    bounds = {"low": -3.0, "high": 3.0}
    state = ModuleState(model)  # zennit 1.0's own BN merge leaves added biases behind (#237)
    base = _attribute(model, x, EpsilonGammaBox(canonizers=[canonizer()], **bounds))
    state.restore()
    same = _attribute(model, x, PLRPLambda(p=0.0, canonizers=[canonizer()], **bounds))
    torch.testing.assert_close(same, base, rtol=0, atol=1e-6)
    recorder = Recorder()
    pruned = _attribute(
        model, x, PLRPM(p=0.2, canonizers=[canonizer()], recorder=recorder, **bounds)
    )
    assert torch.isfinite(pruned).all() and not torch.allclose(pruned, base)
    assert len(recorder.records) == sum(isinstance(m, LinearTypes) for m in model.modules()) - 1
    for name, before, after in recorder.records:
        assert torch.all(after[~mass_threshold_mask(before, 0.2)] == 0), name
    verify()
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)


def test_efficientnet_canonizer_keeps_function(plrp_unchanged):
    model, canonizer = _efficientnet_lite0()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    verify = plrp_unchanged(model)
    out = model(x)
    handles = canonizer().apply(model)
    try:
        names = [name for name, _ in model.named_modules()]
        assert sum(name.endswith("canonizer_sum") for name in names) > 0
        assert all(m.eps == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        torch.testing.assert_close(model(x), out, rtol=1e-3, atol=1e-3)
    finally:
        for handle in handles:
            handle.remove()
    verify()


# ---- bad input: non-finite or empty batches and non-finite settings raise ValueError ----


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_finite_inputs_raise(plrp_zoo_model, plrp_unchanged, variant):
    model, x, canonizers = plrp_zoo_model
    verify = plrp_unchanged(model)
    comp = variant(p=0.3, canonizers=canonizers)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x_bad = x.clone()
        x_bad[1].view(-1)[5] = bad
        with pytest.raises(
            ValueError,
            match=rf"input 0 of the model must be finite, got 1 "
            rf"non-finite entries .* first at index \(1, .*: {bad}",
        ):
            _attribute(model, x_bad, comp)
        verify()
    # the composite stays usable, and only the bad sample is what failed
    relevance = _attribute(model, x, comp)
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    verify()


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_finite_model_output_raises(plrp_unchanged, variant):
    model = _bias_free_mlp()
    model[2].weight.data[3, 4] = float("inf")  # finite inputs, infinite hidden units
    verify = plrp_unchanged(model)
    x = torch.rand(2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(model(x)).all()
    with pytest.raises(ValueError, match=r"output 0 of the model \(for finite inputs\) must be"):
        _attribute(model, x, variant(p=0.2))
    verify()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("attributor", [Gradient, SmoothGrad])
def test_empty_batch_raises(plrp_zoo_model, plrp_unchanged, variant, attributor):
    model, x, canonizers = plrp_zoo_model
    verify = plrp_unchanged(model)
    kwargs = {"n_iter": 2, "noise_level": 0.1} if attributor is SmoothGrad else {}
    with pytest.raises(ValueError, match=r"input batch is empty \(input 0 has shape \(0, "):
        with attributor(
            model=model, composite=variant(p=0.2, canonizers=canonizers), **kwargs
        ) as attr:
            attr(x[:0], torch.zeros(0, 3, dtype=x.dtype))
    verify()


def test_composite_checks_only_while_registered():
    model = _bias_free_mlp()
    comp = PLRPLambda(p=0.2)
    x_nan = torch.full((1, 10), float("nan"), dtype=torch.float64)
    with Gradient(model=model, composite=comp):
        with pytest.raises(ValueError, match="PLRPLambda: input 0"):
            model(x_nan)
    assert torch.isnan(model(x_nan)).all()  # plain model again: no check left behind
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity_gain": float("inf")}, "sparsity_gain must be >= 0 and finite, got inf"),
        ({"sparsity_gain": float("nan")}, "sparsity_gain must be >= 0 and finite, got nan"),
        ({"p": float("nan")}, r"p must be in \[0, 1\), got nan"),
        ({"p": float("inf")}, r"p must be in \[0, 1\), got inf"),
        ({"p": 0.1, "p_neg": float("nan")}, r"p_neg must be in \[0, 1\), got nan"),
        ({"p": 0.1, "layer_p": {"2": float("nan")}}, r"layer_p\['2'\] must be in .* got nan"),
    ],
)
def test_non_finite_settings_rejected(variant, kwargs, match):
    with pytest.raises(ValueError, match=match):
        variant(**kwargs)


# ---- PLRP-λ and PLRP-M against a numpy reference (eq. 3.2, 3.4–3.6) ----


def _zplus_reference(a: np.ndarray, w: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """z+ for non-negative inputs a (batch, in), weight w (out, in): a_j w+_kj / z_k · R_k."""
    contributions = a[:, None, :] * np.clip(w, 0, None)[None]  # (batch, out, in)
    z = contributions.sum(-1, keepdims=True)
    z = z + 1e-6 * np.where(z >= 0, 1.0, -1.0)  # zennit's stabilizer
    return (contributions / z * relevance[..., None]).sum(1)


def _rescale_reference(r: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.zeros_like(r)
    for b in range(r.shape[0]):
        for sign in (r[b] > 0, r[b] < 0):
            kept = keep[b] & sign
            if kept.any():
                out[b, kept] = r[b, kept] * r[b, sign].sum() / r[b, kept].sum()
    return out


@pytest.mark.parametrize("variant", ["lambda", "m"])
@pytest.mark.parametrize(("p", "p_neg"), [(0.3, 0.6), (0.5, 0.1)])
def test_pruned_relevance_matches_a_numpy_reference(variant, p, p_neg):
    """Every pruned layer's relevance, recomputed layer by layer without zennit or our code.

    The reference prunes with the loop of eq. (3.2) per sign (p for the positive mass, p_neg
    for the negative), rescales each sign (λ) or recomputes z+ with the pruned inputs set to
    0 (M). Random mixed-sign output relevance makes both signs occur at every layer.
    """
    from test_pruning import _threshold_reference

    model = _bias_free_mlp()
    x = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    recorder = Recorder()
    composite = (PLRPLambda if variant == "lambda" else PLRPM)(
        p=p, p_neg=p_neg, composite=_zplus(), recorder=recorder
    )
    _attribute(model, x, composite)
    records = {name: after.numpy() for name, _, after in recorder.records}

    with torch.no_grad():
        acts = {"6": model[:6](x), "4": model[:4](x), "2": model[:2](x)}
    out_relevance = torch.randn(6, 4, generator=torch.Generator().manual_seed(11), dtype=x.dtype)
    relevance, pruned_signs = out_relevance.numpy(), []  # as in _attribute
    for name in ("6", "4", "2"):
        a, w = acts[name].numpy(), model[int(name)].weight.detach().numpy()
        unpruned = _zplus_reference(a, w, relevance)
        keep = np.stack([_threshold_reference(row, p, p_neg) for row in unpruned])
        pruned_signs += [(~keep & (unpruned > 0)).any(), (~keep & (unpruned < 0)).any()]
        if variant == "lambda":
            relevance = _rescale_reference(unpruned, keep)
        else:
            relevance = _zplus_reference(a * keep, w, relevance)
        scale = np.abs(relevance).max()
        np.testing.assert_allclose(records[name], relevance, rtol=1e-6, atol=1e-9 * scale)
    assert sum(pruned_signs) >= 4, "too few layers and signs pruned to test anything"


# ---- wiring, defaults and messages ----


@pytest.mark.parametrize("variant", VARIANTS)
def test_p_zero_equals_the_default_base_with_its_canonizers(plrp_zoo_model, variant):
    model, x, canonizers = plrp_zoo_model
    base = _attribute(model, x, EpsilonPlusFlat(canonizers=canonizers))
    ours = _attribute(model, x, variant(p=0.0, canonizers=canonizers))
    scale = base.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours, base, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_second_backward_of_one_forward_gives_the_same_relevance(variant):
    """PLRP-M swaps the stored input for the recomputation and must put it back."""
    model = _bias_free_mlp()
    x = torch.randn(3, 10, dtype=torch.float64).requires_grad_()
    grad_out = torch.randn(3, 4, dtype=torch.float64)
    with variant(p=0.4, composite=_zplus()).context(model) as modified:
        out = modified(x)
        (first,) = torch.autograd.grad(out, x, grad_out, retain_graph=True)
        (second,) = torch.autograd.grad(out, x, grad_out)
    assert first.abs().max() > 0
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_spec_keep_uses_the_given_gain():
    """[1, 1] → [0, 1] has gain exactly 1: pruned at gain 1, kept at gain 1.5."""
    r = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert PruningSpec(sparsity_gain=1.0).keep(r).sum().item() == 1
    assert PruningSpec(sparsity_gain=1.5).keep(r).all()


def test_spec_keep_uses_the_given_measure():
    """[1, 2, 3, 6]: the l0 gain prunes 1, 2, 3 (≤ the mean); the Gini gain stops earlier."""
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    assert PruningSpec(sparsity_gain=1.0, sparsity_measure="l0").keep(r).tolist() == [
        [False, False, False, True]
    ]
    assert PruningSpec(sparsity_gain=1.0).keep(r).sum().item() > 1


def test_pruned_hook_defaults_and_composite_state():
    hook = pruned_hook(ZPlus(), PruningSpec(p=0.2))
    assert hook.variant == "lambda" and hook.layer_name == "" and hook.recorder is None
    assert PLRPLambda(p=0.1).pruned_names == []


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: PruningSpec(),
            ValueError,
            r"^give p \(a fraction in \[0, 1\)\) or sparsity_gain, got neither$",
        ),
        (
            lambda: pruned_hook("z+", PruningSpec(p=0.1)),
            TypeError,
            "^hook must be a zennit Hook, got str$",
        ),
        (
            lambda: pruned_hook(ZPlus(), PruningSpec(p=0.1), "mm"),
            ValueError,
            r"^variant must be 'lambda' or 'm', got 'mm'$",
        ),
        (
            lambda: pruned_hook(Pass(), PruningSpec(p=0.1), "m"),
            TypeError,
            "^PLRP-M recomputes the rule and needs a zennit BasicHook, got Pass$",
        ),
        (
            lambda: PLRPLambda(p=0.1, composite=EpsilonPlusFlat(), low=-1.0),
            ValueError,
            "^low, high and canonizers configure the default base composite; with composite= "
            "give them to that composite instead$",
        ),
        (
            lambda: PLRPM(p=0.1, composite=EpsilonPlusFlat(), high=1.0),
            ValueError,
            "^low, high and canonizers configure",
        ),
    ],
)
def test_bad_arguments_fail_with_exact_messages(call, error, match):
    with pytest.raises(error, match=match):
        call()
