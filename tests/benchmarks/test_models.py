"""Reference models: shapes, one training step, caching, and the pretrained ImageNet net."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks.models import (
    DNACNN,
    MNISTMLP,
    SynergyMLP,
    VGGSmall,
    evaluate,
    fit,
    get_trained,
    imagenet_classes,
    load_efficientnet_lite0,
    load_photos,
)

ARCHITECTURES = [
    (lambda: SynergyMLP(), (8, 16), 1),
    (lambda: SynergyMLP(logits=2), (8, 16), 2),
    (lambda: VGGSmall(num_classes=10), (4, 3, 64, 64), 10),
    (lambda: VGGSmall(num_classes=4, batch_norm=True), (4, 3, 64, 64), 4),
    (lambda: DNACNN(4), (4, 4, 250), 2),
    (lambda: DNACNN(32), (4, 4, 250), 2),
    (lambda: DNACNN(32, pool=8), (4, 4, 250), 2),
    (lambda: MNISTMLP(), (4, 1, 28, 28), 10),
]


@pytest.mark.parametrize(("build", "shape", "outputs"), ARCHITECTURES)
def test_forward_shape_and_one_training_step(build, shape, outputs):
    model = build()
    x = torch.rand(shape)
    y = torch.randint(0, 2, (shape[0],)) if outputs <= 2 else torch.randint(0, outputs, (shape[0],))
    assert model(x).shape == (shape[0], outputs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_before = evaluate(model, x, y)["loss"]
    fit(
        model,
        (x, y.float() if outputs == 1 else y),
        epochs=10,
        lr=1e-3,
        batch_size=4,
        progress=False,
    )
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no parameter changed"
    assert not model.training
    assert evaluate(model, x, y)["loss"] < loss_before


def test_dna_cnn_local_pooling_keeps_positions_for_the_dense_layer():
    local, pooled = DNACNN(3, length=40, kernel_size=5, pool=4), DNACNN(3, length=40, kernel_size=5)
    assert local.fc1.in_features == 3 * (36 // 4) and pooled.fc1.in_features == 3
    x = torch.rand(2, 4, 40)
    conv = torch.relu(local.conv(x))  # (2, 3, 36): windows of 4 positions, filter-major order
    expected = conv.reshape(2, 3, 9, 4).amax(-1).flatten(1)
    torch.testing.assert_close(local[:4](x), expected)


def test_synergy_mlp_names_its_relus():
    model = SynergyMLP()
    names = [name for name, _ in model.named_children()]
    assert names == ["fc1", "bn1", "relu1", "fc2", "bn2", "relu2", "out"]
    assert model.fc2.in_features == 128 and model.out.in_features == 64


@pytest.mark.parametrize(
    ("build", "word"),
    [
        (lambda: SynergyMLP(logits=3), "logits"),
        (lambda: DNACNN(0), "filters"),
        (lambda: DNACNN(4, pool=233), "pool"),
        (lambda: DNACNN(4, pool=0), "pool"),
    ],
)
def test_architectures_reject_bad_arguments(build, word):
    with pytest.raises(ValueError, match=word):
        build()


def test_fit_early_stopping_needs_validation():
    with pytest.raises(ValueError, match="val"):
        fit(SynergyMLP(), (torch.rand(4, 16), torch.rand(4)), patience=2, progress=False)


def test_get_trained_caches_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_XAI_CACHE", str(tmp_path))
    model, info = get_trained("fish_mlp", quick=True, progress=False)
    assert not info["cached"] and info["roc_auc"] > 0.85 and info["quick"]
    again, info_again = get_trained("fish_mlp", quick=True, progress=False)
    assert info_again["cached"] and info_again["roc_auc"] == info["roc_auc"]
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert not again.training
    with pytest.raises(ValueError, match="name"):
        get_trained("resnet")
    # a model trained under other settings is never loaded: the cache key holds them
    from benchmarks.models import training

    recipe = training._RECIPES["fish_mlp"]
    other = dataclasses.replace(recipe, quick={**recipe.quick, "epochs": 1})
    monkeypatch.setitem(training._RECIPES, "fish_mlp", other)
    assert training.trained_info("fish_mlp", quick=True) is None


def test_efficientnet_lite0_recognises_real_photos():
    model = load_efficientnet_lite0()
    x, names = load_photos()
    assert x.shape == (6, 3, 224, 224) and -1.0 <= x.min() and x.max() <= 1.0
    with torch.no_grad():
        top5 = model(x).topk(5).indices
    classes = imagenet_classes()
    expected = {"chelsea": "cat", "coffee": "espresso", "rocket": "missile", "flower": "daisy"}
    for name, word in expected.items():
        labels = [classes[i] for i in top5[names.index(name)]]
        assert any(word in label.lower() for label in labels), (name, labels)
    assert not model.training


def _reference_fit(model, x, y, epochs, batch_size, seed, penalty):
    """Adam on cross-entropy + penalty(output), batches in fit's documented seeded order."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []
    for _ in range(epochs):
        per_epoch = []
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            out = model(x[index])
            extra = penalty(out)
            loss = torch.nn.functional.cross_entropy(out, y[index]) + extra
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            per_epoch.append(float(extra.detach()))
        seen.append(sum(per_epoch) / len(per_epoch))
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_adds_the_regularizer_to_every_step(dtype):
    torch.manual_seed(0)
    x = torch.randn(21, 5, dtype=dtype)
    y = torch.randint(0, 3, (21,))
    ours = torch.nn.Sequential(torch.nn.Linear(5, 3)).to(dtype)
    reference = torch.nn.Sequential(torch.nn.Linear(5, 3)).to(dtype)
    reference.load_state_dict(ours.state_dict())

    def penalty(out):
        return 0.3 * (out - 2.0).pow(2).mean()

    captured, calls = {}, []
    ours[0].register_forward_hook(lambda _m, _i, out: captured.update(out=out))

    def regularizer():
        calls.append(1)
        return penalty(captured["out"])

    log = fit(
        ours,
        (x, y),
        epochs=3,
        lr=1e-2,
        batch_size=8,
        seed=4,
        progress=False,
        regularizer=regularizer,
    )
    expected = _reference_fit(reference, x, y, 3, 8, 4, penalty)
    assert len(calls) == 3 * 3, "one call per training step"
    for (name, value), ref in zip(
        ours.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, ref, msg=name)
    assert log["regularizer_history"] == pytest.approx(expected, rel=1e-6)
    plain = torch.nn.Sequential(torch.nn.Linear(5, 3)).to(dtype)
    plain.load_state_dict(reference.state_dict())
    assert "regularizer_history" not in fit(plain, (x, y), epochs=1, progress=False)


@pytest.mark.parametrize(
    ("regularizer", "error", "word"),
    [
        (0.5, TypeError, "callable"),
        (lambda: torch.ones(2), ValueError, "0-d"),
        (lambda: 1.0, ValueError, "0-d"),
    ],
)
def test_fit_rejects_bad_regularizers(regularizer, error, word):
    model = torch.nn.Linear(4, 2)
    with pytest.raises(error, match=word):
        fit(
            model,
            (torch.randn(6, 4), torch.randint(0, 2, (6,))),
            epochs=1,
            progress=False,
            regularizer=regularizer,
        )
