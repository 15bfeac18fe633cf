"""The Quantus explain function agrees with a direct Zennit Gradient call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from zennit.attribution import Gradient, SmoothGrad
from zennit.composites import EpsilonPlusFlat

from zennit_ext import PLRPLambda
from zennit_ext.quantus import explain, make_composite


def _direct(model, x, y, composite):
    onehot = torch.eye(3, dtype=x.dtype)[y]
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, onehot)
    return relevance.detach().float().numpy()


@pytest.mark.parametrize(
    ("composite", "kwargs", "reference"),
    [
        ("epsilon_plus_flat", None, EpsilonPlusFlat),
        ("plrp_lambda", {"p": 0.3}, lambda: PLRPLambda(p=0.3)),
        (PLRPLambda, {"p": 0.3, "p_neg": 0.1}, lambda: PLRPLambda(p=0.3, p_neg=0.1)),
        (PLRPLambda(sparsity_gain=0.5), None, lambda: PLRPLambda(sparsity_gain=0.5)),
    ],
)
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_matches_direct_gradient(tiny_cnn, tiny_images, composite, kwargs, reference, batch_size):
    y = np.array([0, 2, 1, 2])
    got = explain(
        tiny_cnn,
        tiny_images.numpy(),
        y,
        composite=composite,
        composite_kwargs=kwargs,
        batch_size=batch_size,
        device="cpu",
    )
    assert got.dtype == np.float32 and got.shape == tuple(tiny_images.shape)
    expected = _direct(tiny_cnn, tiny_images, torch.as_tensor(y), reference())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    summed = explain(
        tiny_cnn, tiny_images, y, composite=composite, composite_kwargs=kwargs, reduce_channels=True
    )
    np.testing.assert_allclose(summed, expected.sum(1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_quantus_calls_it(tiny_cnn, tiny_images):
    quantus = pytest.importorskip("quantus")
    model = tiny_cnn.float()
    x = tiny_images.float().numpy()
    y = model(torch.from_numpy(x)).argmax(1).numpy()
    metric = quantus.Sparseness(disable_warnings=True, abs=True, normalise=False)
    kwargs = {"composite": "plrp_lambda", "composite_kwargs": {"p": 0.2}}
    scores = metric(
        model=model,
        x_batch=x,
        y_batch=y,
        a_batch=None,
        explain_func=explain,
        explain_func_kwargs=kwargs,
        device="cpu",
    )
    a = explain(model, x, y, **kwargs)
    expected = [
        quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)(
            model=model, x_batch=x[i : i + 1], y_batch=y[i : i + 1], a_batch=a[i : i + 1]
        )[0]
        for i in range(len(x))
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_other_attributor_and_unchanged_model(tiny_cnn, tiny_images, plrp_unchanged):
    verify = plrp_unchanged(tiny_cnn)
    kwargs = {"noise_level": 0.1, "n_iter": 2}
    torch.manual_seed(0)
    got = explain(
        tiny_cnn,
        tiny_images,
        1,
        composite="plrp_m",
        composite_kwargs={"p": 0.2},
        attributor=SmoothGrad,
        attributor_kwargs=kwargs,
    )
    torch.manual_seed(0)
    with SmoothGrad(model=tiny_cnn, composite=make_composite("plrp_m", {"p": 0.2}), **kwargs) as a:
        _, expected = a(tiny_images, torch.eye(3, dtype=torch.float64)[[1] * 4])
    np.testing.assert_allclose(got, expected.float().numpy(), rtol=1e-5, atol=1e-6)
    verify()
    with pytest.raises(ValueError, match=r"a list with one entry per input row \(4\)"):
        explain(tiny_cnn, tiny_images, [0, 1])
    verify()


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("nope", None), ValueError, "not registered"),
        ((EpsilonPlusFlat(), {"canonizers": []}), ValueError, "composite instance"),
        ((42, None), TypeError, "registry name"),
    ],
)
def test_make_composite_errors(args, error, match):
    with pytest.raises(error, match=match):
        make_composite(*args)


def test_batch_size_error(tiny_cnn, tiny_images):
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        explain(tiny_cnn, tiny_images, 0, batch_size=0)


# ---- bad input: targets outside the classes, non-finite inputs and outputs ----


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (3, r"target 3 out of range for a forward output of shape \(4, 3\)"),
        ([0, 1, 7, 2], r"target \[0, 1, 7, 2\] out of range for a forward output"),
        ([0, -4, 2, -1], r"target \[0, -4, 2, -1\] out of range for a forward output"),
        (np.array([0.0, 1.5, 2.0, 1.0]), r"targets must be whole class indices, got \[0.0, 1.5"),
    ],
)
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "plrp_lambda"])
def test_targets_outside_the_classes_raise(
    tiny_cnn, tiny_images, plrp_unchanged, targets, match, composite
):
    verify = plrp_unchanged(tiny_cnn)
    with pytest.raises(ValueError, match=match):
        explain(tiny_cnn, tiny_images, targets, composite=composite, batch_size=2)
    verify()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_non_finite_inputs_raise(tiny_cnn, tiny_images, bad, as_numpy):
    x = tiny_images.clone()
    x[2, 1, 3, 4] = bad
    inputs = x.numpy() if as_numpy else x
    with pytest.raises(ValueError, match=rf"inputs must be finite, .* \(2, 1, 3, 4\): {bad}"):
        explain(tiny_cnn, inputs, 0, composite="epsilon_plus_flat")


def test_non_finite_output_through_plrp_raises(tiny_cnn, tiny_images, plrp_unchanged):
    tiny_cnn[-1].bias.data[1] = float("inf")  # (NaN would fail the equality checks)
    verify = plrp_unchanged(tiny_cnn)
    with pytest.raises(ValueError, match=r"PLRPM: output 0 of the model \(for finite inputs\)"):
        explain(tiny_cnn, tiny_images, 0, composite="plrp_m", composite_kwargs={"p": 0.2})
    verify()


def test_empty_inputs_give_empty_relevance(tiny_cnn, tiny_images):
    got = explain(tiny_cnn, tiny_images[:0], [], composite="plrp_lambda")
    assert got.shape == (0, *tiny_images.shape[1:]) and got.dtype == np.float32
