"""Pruning curves: the lowest-scored units (or channel groups) are zeroed, BatchNorm is
recalibrated over a seeded random row order, quality comes from any metric, and the model is
restored, also when an error is raised.

References are hand-written forward passes that zero units by multiplying with a 0/1 mask;
they share no code with ``captum_ext.synergy.pruning``.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from captum_ext.synergy.pruning import (
    classification_metrics,
    masked_units,
    pruning_curve,
    recalibrate_batchnorm,
)

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _randomise_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Random affine parameters and running statistics, so every BatchNorm term matters."""
    for norm in model.modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            c = norm.num_features
            norm.weight.data = torch.rand(c, generator=generator) + 0.5
            norm.bias.data = torch.randn(c, generator=generator) * 0.3
            norm.running_mean = torch.randn(c, generator=generator) * 0.2
            norm.running_var = torch.rand(c, generator=generator) + 0.5


def _mlp(dtype=torch.float32, device="cpu") -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    _randomise_norms(model, torch.Generator().manual_seed(3))
    return model.to(device=device, dtype=dtype).eval()


def _data(dtype=torch.float32, device="cpu", n=200):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).double()
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def _mlp_by_hand(model, x, keep, stats=None):
    """Logits with hidden units multiplied by ``keep``; BN with ``stats`` = (mean, var)."""
    lin, norm, _, out = model
    z = x @ lin.weight.T + lin.bias
    mean, var = stats if stats is not None else (norm.running_mean, norm.running_var)
    h = ((z - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias).clamp(min=0)
    return (h * keep) @ out.weight.T + out.bias


def test_masked_units_zeroes_exactly_those_units():
    model = _mlp()
    x, _ = _data()
    with masked_units(model[2], torch.tensor([1, 5])):
        out = model[:3](x)
    assert not out[:, [1, 5]].any() and torch.equal(out[:, 0], model[:3](x)[:, 0])
    assert not model[2]._forward_hooks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pruning_matches_hand_masked_forward(dtype, device):
    model = _mlp(dtype, device)
    x, y = _data(dtype, device)
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.3, 0.7, 0.0, 0.2], dtype=dtype, device=device)
    curve = pruning_curve(
        model, model[2], scores, x, y, fractions=(0.0, 0.25, 0.5), show_progress=False
    )
    assert curve["pruned"] == [0, 2, 4]
    assert set(curve) == {"fraction", "pruned", "roc_auc", "accuracy"}
    # lowest scores: unit 6 (0.0), 1 (0.1), then 7 (0.2), 3 (0.3, first of the tie)
    for where, pruned in ((0, []), (1, [6, 1]), (2, [6, 1, 7, 3])):
        keep = torch.ones(8, dtype=dtype, device=device)
        keep[pruned] = 0
        with torch.no_grad():
            logit = _mlp_by_hand(model, x, keep)[:, 0]
        assert curve["roc_auc"][where] == pytest.approx(roc_auc_score(y.cpu(), logit.cpu()))
        accuracy = ((logit > 0).to(dtype) == y).double().mean().item()
        assert curve["accuracy"][where] == pytest.approx(accuracy)
    assert curve["accuracy"][2] != curve["accuracy"][0], "pruning must change the model"


def test_recalibration_matches_hand_statistics_of_the_pruned_model():
    model = _mlp(torch.float64)
    x, y = _data(torch.float64)
    x_train = _data(torch.float64, n=256)[0] * 1.5 + 0.3
    scores = torch.arange(8.0, dtype=torch.float64)  # units 0 and 1 are pruned at 0.25
    curve = pruning_curve(
        model, model[2], scores, x, y, fractions=(0.25,), x_recalibrate=x_train, show_progress=False
    )
    # one batch of 256 rows: the new statistics are that batch's mean and unbiased variance
    z = x_train @ model[0].weight.T + model[0].bias
    keep = torch.ones(8, dtype=torch.float64)
    keep[[0, 1]] = 0
    with torch.no_grad():
        logit = _mlp_by_hand(model, x, keep, stats=(z.mean(0), z.var(0)))[:, 0]
        stale = _mlp_by_hand(model, x, keep)[:, 0]
    assert curve["roc_auc"][0] == pytest.approx(roc_auc_score(y, logit))
    assert curve["accuracy"][0] == pytest.approx(((logit > 0).double() == y).double().mean())
    assert roc_auc_score(y, logit) != pytest.approx(roc_auc_score(y, stale))


def _cnn(dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    _randomise_norms(model, torch.Generator().manual_seed(5))
    return model.to(dtype).eval()


def _cnn_by_hand(model, x, keep, stats=None):
    """Logits with channels of the first ReLU multiplied by ``keep`` (C,).

    ``stats`` = ((mean1, var1), (mean2, var2)) for the two BatchNorms; None normalises with
    each batch's own mean and biased variance, as train mode does. Returns the logits and the
    statistics the BatchNorms saw, (mean, unbiased variance) of their inputs.
    """
    conv1, norm1, _, conv2, norm2, _, _, _, linear = model
    seen = []

    def bn(norm, z, fixed):
        seen.append((z.mean((0, 2, 3)), z.var((0, 2, 3))))
        mean, var = fixed if fixed is not None else (seen[-1][0], z.var((0, 2, 3), correction=0))
        scale = norm.weight / torch.sqrt(var + norm.eps)
        return (z - mean[:, None, None]) * scale[:, None, None] + norm.bias[:, None, None]

    fixed = stats or (None, None)
    z1 = nn.functional.conv2d(x, conv1.weight, conv1.bias, padding=1)
    h1 = bn(norm1, z1, fixed[0]).clamp(min=0) * keep[:, None, None]
    z2 = nn.functional.conv2d(h1, conv2.weight, conv2.bias, padding=1)
    h2 = bn(norm2, z2, fixed[1]).clamp(min=0)
    return h2.mean((2, 3)) @ linear.weight.T + linear.bias, tuple(seen)


def test_channel_pruning_with_recalibration_matches_hand_forward():
    model = _cnn()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(60, 2, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    x_train = torch.randn(100, 2, 5, 5, generator=g, dtype=torch.float64) * 1.3 + 0.2
    channels = torch.arange(6).reshape(1, 6, 1, 1)
    scores = torch.tensor([0.4, 0.0, 0.8, 0.1, 0.6, 0.2], dtype=torch.float64)
    weights = torch.randn(60, 3, generator=g, dtype=torch.float64)

    def metric(output, labels):  # the default's accuracy and a fingerprint of every logit
        return {**classification_metrics(output, labels), "logits": float((output * weights).sum())}

    curve = pruning_curve(
        model,
        model[2],
        scores,
        x,
        y,
        fractions=(0.0, 0.5),
        metric=metric,
        layer_mask=channels,
        x_recalibrate=x_train,
        show_progress=False,
    )
    assert set(curve) == {"fraction", "pruned", "accuracy", "logits"}
    assert curve["pruned"] == [0, 3]
    for where, pruned in ((0, []), (1, [1, 3, 5])):
        keep = torch.ones(6, dtype=torch.float64)
        keep[pruned] = 0
        with torch.no_grad():
            _, stats = _cnn_by_hand(model, x_train, keep)  # one batch of 100 rows
            logits, _ = _cnn_by_hand(model, x, keep, stats)
        accuracy = (logits.argmax(1) == y).double().mean().item()
        assert curve["accuracy"][where] == pytest.approx(accuracy)
        assert curve["logits"][where] == pytest.approx(float((logits * weights).sum()), rel=1e-9)
    assert curve["logits"][0] != pytest.approx(curve["logits"][1], rel=1e-3)


def test_row_order_of_recalibration_is_seeded_and_random():
    # rows sorted by feature 0 (as time-sorted splits are): batches in stored order each see a
    # narrow slice, so the average of their variances misses the variance between batches
    x = torch.sort(torch.randn(1000, 4, generator=torch.Generator().manual_seed(6)), dim=0)[0]
    norm = nn.BatchNorm1d(4, dtype=torch.float64)
    x = x.double()
    recalibrate_batchnorm(norm, x, batch_size=100, seed=None)
    in_order = norm.running_var.clone()
    recalibrate_batchnorm(norm, x, batch_size=100, seed=3)
    shuffled = norm.running_var.clone()
    torch.testing.assert_close(norm.running_mean, x.mean(0))
    assert (in_order < 0.2 * x.var(0)).all()
    torch.testing.assert_close(shuffled, x.var(0), rtol=0.05, atol=0)
    recalibrate_batchnorm(norm, x, batch_size=100, seed=3)
    assert torch.equal(norm.running_var, shuffled), "same seed, same order"
    recalibrate_batchnorm(norm, x, batch_size=100, seed=4)
    assert not torch.equal(norm.running_var, shuffled)
    assert norm.momentum == 0.1 and not norm.training


def test_random_pruning_is_seeded_and_metric_is_any_callable():
    model = _mlp()
    x, y = _data()

    def margin(output, labels):
        return {"mean_logit": output.mean().item(), "rows": len(labels)}

    first, again = (
        pruning_curve(
            model, model[2], "random", x, y, fractions=(0, 0.5, 0.75), metric=margin, seed=7
        )
        for _ in range(2)
    )
    assert first == again and set(first) == {"fraction", "pruned", "mean_logit", "rows"}
    assert first["pruned"] == [0, 4, 6] and first["rows"] == [200.0] * 3
    with torch.no_grad():
        assert first["mean_logit"][0] == pytest.approx(model(x).mean().item())


def test_classification_metrics_threshold_and_classes():
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    probabilities = torch.tensor([[0.2], [0.7], [0.4], [0.6]])
    assert classification_metrics(probabilities, labels, threshold=0.5) == pytest.approx(
        {"roc_auc": 0.75, "accuracy": 0.5}
    )
    assert classification_metrics(probabilities, labels)["accuracy"] == 0.5  # all above 0
    scores = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.5]])
    assert classification_metrics(scores, torch.tensor([1, 0, 0, 1])) == {"accuracy": 0.75}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_restored(model, before, training):
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training == training
    assert not any(m._forward_hooks for m in model.modules())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm1d))


@pytest.mark.parametrize("training", [False, True])
def test_model_is_restored_after_a_curve_and_after_errors(training):
    model = _mlp().train(training)
    x, y = _data()
    before = _state(model)
    pruning_curve(
        model, model[2], "random", x, y, fractions=(0.0, 0.5), x_recalibrate=x, show_progress=False
    )
    _assert_restored(model, before, training)

    calls = []

    def failing(output, labels):
        calls.append(1)
        if len(calls) == 2:  # after the pruned model was recalibrated
            raise RuntimeError("metric failed")
        return {"n": 1.0}

    with pytest.raises(RuntimeError, match="metric failed"):
        pruning_curve(
            model,
            model[2],
            torch.arange(8.0),
            x,
            y,
            fractions=(0.0, 0.5),
            x_recalibrate=x,
            metric=failing,
            show_progress=False,
        )
    _assert_restored(model, before, training)
    with pytest.raises(RuntimeError):  # the recalibration's forward fails: 3 features, not 4
        pruning_curve(
            model,
            model[2],
            torch.arange(8.0),
            x,
            y,
            fractions=(0.5,),
            x_recalibrate=x[:, :3],
            show_progress=False,
        )
    _assert_restored(model, before, training)
    with pytest.raises(TypeError, match="metric must return a mapping"):
        pruning_curve(
            model,
            model[2],
            torch.arange(8.0),
            x,
            y,
            fractions=(0.5,),
            metric=lambda out, lab: 0.5,
            show_progress=False,
        )
    _assert_restored(model, before, training)


def test_pruning_rejects_bad_arguments():
    model = _mlp()
    x, y = _data()
    with pytest.raises(ValueError, match=r"scores must have shape \(8,\).*got \(3,\)"):
        pruning_curve(model, model[2], torch.ones(3), x, y, show_progress=False)
    with pytest.raises(ValueError, match="scores.*'best'"):
        pruning_curve(model, model[2], "best", x, y, show_progress=False)
    with pytest.raises(ValueError, match=r"fractions.*\[1.0\]"):
        pruning_curve(model, model[2], torch.ones(8), x, y, fractions=(1.0,), show_progress=False)
    with pytest.raises(ValueError, match="not called"):
        pruning_curve(model, nn.ReLU(), torch.ones(8), x, y, show_progress=False)
    with pytest.raises(ValueError, match="y_test.*200.*got 10"):
        pruning_curve(model, model[2], torch.ones(8), x, y[:10], show_progress=False)
    groups = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    with pytest.raises(ValueError, match=r"one per groups of layer_mask, got \(8,\)"):
        pruning_curve(model, model[2], torch.ones(8), x, y, layer_mask=groups, show_progress=False)
    with pytest.raises(ValueError, match="layer_mask must hold integer"):
        pruning_curve(
            model, model[2], torch.ones(4), x, y, layer_mask=groups.float(), show_progress=False
        )
    with pytest.raises(ValueError, match=r"layer_mask must broadcast to the layer output"):
        pruning_curve(
            model, model[2], torch.ones(4), x, y, layer_mask=groups[:, :5], show_progress=False
        )
    with pytest.raises(ValueError, match=r"every group id 0 … G-1, got ids \[0, 1, 3\]"):
        gap = torch.tensor([[0, 0, 1, 1, 3, 3, 3, 3]])
        pruning_curve(model, model[2], torch.ones(4), x, y, layer_mask=gap, show_progress=False)
