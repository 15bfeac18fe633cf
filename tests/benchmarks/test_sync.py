"""The sync suite: cached same-init training, loss landscape, Fig. 4 picks, sequential Taylor
pruning against a hand-derived loop, the ResNet, and a tiny run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from benchmarks import sync, sync_protocol, sync_study
from benchmarks.models.architectures import ResNetSmall, VGGSmall
from benchmarks.report import Report
from benchmarks.sync_pruning import sequential_curve


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_XAI_CACHE", str(tmp_path / "cache"))


def _config(**changes) -> sync_protocol.Config:
    base = sync_protocol.Config("easy", 0.0, 0.0, sync_protocol.EPSILON, 0, 1, 16, 1e-3, 8)
    return replace(base, **changes)


def test_variants_share_the_initialisation_and_are_cached():
    data = sync_protocol.parts("easy", 16, 0)
    train_set = (data.x, data.y)
    untrained = [
        sync_protocol.train(
            _config(epochs=0, lam1=v.lam1, lam2=v.lam2, reduction=v.reduction), train_set, False
        )[0]
        for v in sync_protocol.VARIANTS.values()
    ]
    for model in untrained[1:]:
        for a, b in zip(
            model.state_dict().values(), untrained[0].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b)
    baseline, log = sync_protocol.train(_config(), train_set, False)
    both, both_log = sync_protocol.train(_config(lam1=0.2, lam2=0.1), train_set, False)
    assert not log["cached"] and "regularizer_history" not in log
    assert len(both_log["regularizer_history"]) == 1 and both_log["regularizer_history"][0] > 0
    weight = "features.9.weight"
    assert not torch.equal(baseline.state_dict()[weight], both.state_dict()[weight])
    again, again_log = sync_protocol.train(_config(lam1=0.2, lam2=0.1), train_set, False)
    assert again_log["cached"]
    assert torch.equal(again.state_dict()[weight], both.state_dict()[weight])
    assert len(again.get_submodule(sync.LAYER)._forward_hooks) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_landscape_centre_is_the_model_and_weights_are_restored(dtype):
    torch.manual_seed(0)
    model = VGGSmall(num_classes=3).to(dtype)
    x, y = torch.rand(6, 3, 64, 64, dtype=dtype), torch.tensor([0, 1, 2, 0, 1, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alphas, loss = sync_study.loss_landscape(model, x, y, steps=3)
    with torch.no_grad():
        centre = torch.nn.functional.cross_entropy(model(x), y)
    assert alphas.tolist() == [-1.0, 0.0, 1.0]
    assert loss[1, 1] == pytest.approx(float(centre), rel=1e-6)
    assert len({round(v, 6) for v in loss.flatten().tolist()}) == 9, "every point moves"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises((ValueError, RuntimeError, IndexError)):
        sync_study.loss_landscape(model, x, y[:2], steps=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} not restored after an error"


def test_filter_normalized_direction_has_the_filters_norms():
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64) * torch.arange(1, 6).reshape(5, 1, 1, 1)
    direction = sync_study._filter_normalized(weight, torch.Generator().manual_seed(1))
    norms = [float(weight[i].norm()) for i in range(5)]
    assert [float(direction[i].norm()) for i in range(5)] == pytest.approx(norms, rel=1e-12)
    assert direction.dtype == weight.dtype


def test_activation_examples_pick_the_iou_quantiles_of_live_filters():
    n, c = 10, 3
    best = torch.arange(n * c, dtype=torch.float64).reshape(n, c) / (n * c)
    iou = torch.stack([best, best / 2, torch.full_like(best, float("nan"))], dim=2)
    maps = torch.ones(n, c, 2, 2)
    maps[:, 2] = 0.0  # a dead filter is never shown
    picks = sync_study.activation_examples(iou, maps, quantiles=(0.95, 0.5, 0.0))
    live = sorted(float(best[i, f]) for i in range(n) for f in range(2))
    assert [p[2] for p in picks] == [live[19], live[10], live[0]]
    for image, unit, value in picks:
        assert unit != 2 and float(best[image, unit]) == value


def test_the_eq_6_variants_train_differently_under_their_own_cache_keys():
    data = sync_protocol.parts("easy", 16, 0)
    train_set = (data.x, data.y)
    weight = "features.9.weight"
    models = {}
    for name in sync_protocol.BOTH_VARIANTS:
        v = sync_protocol.VARIANTS[name]
        config = _config(
            lam1=v.lam1, lam2=v.lam2, reduction=v.reduction, include_self=v.include_self
        )
        model, log = sync_protocol.train(config, train_set, False)
        assert not log["cached"], f"{name} must not reuse another variant's weights"
        models[name] = model.state_dict()[weight]
    values = list(models.values())
    assert not torch.equal(values[0], values[1]) and not torch.equal(values[1], values[2])
    scaled = sync_protocol.Config.of(
        "ResNetSmall", "+both (eq. 6 sum)", "easy", 0, sync_protocol.Settings()
    )
    assert (scaled.lam1, scaled.lam2, scaled.reduction) == (0.1, 0.05, "sum")


def test_settings_pick_prefixes_of_the_seeds():
    settings = sync_protocol.Settings(seeds=(4, 5, 6), extra_seeds=1, resnet_seeds=2)
    assert settings.seeds_of("VGGSmall", "+both") == (4, 5, 6)
    assert settings.seeds_of("VGGSmall", "+both (eq. 6 sum)") == (4,)
    assert settings.seeds_of("ResNetSmall", "+L_lac") == (4, 5)
    assert settings.seeds_of("ResNetSmall", "+both (eq. 6 sum, eq. 1 self)") == (4,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resnet_small_regularized_layer_is_post_relu_at_8x8(dtype):
    torch.manual_seed(0)
    model = ResNetSmall(num_classes=3).to(dtype).eval()
    x = torch.rand(2, 3, 64, 64, dtype=dtype)
    layer = sync_protocol.ARCHS["ResNetSmall"].layer
    maps = sync_protocol.layer_maps(model, layer, x)
    assert maps.shape == (2, 64, 8, 8) and maps.dtype == dtype and bool((maps >= 0).all())
    head = sync_protocol.ARCHS["ResNetSmall"].head(model)
    with torch.no_grad():
        torch.testing.assert_close(head(maps), model(x))
    vgg = VGGSmall(num_classes=3).to(dtype).eval()
    vgg_maps = sync_protocol.layer_maps(vgg, sync.LAYER, x)
    with torch.no_grad():
        torch.testing.assert_close(sync_protocol.ARCHS["VGGSmall"].head(vgg)(vgg_maps), vgg(x))


def _greedy_reference(w, b, maps, y, steps, rescore=True):
    """Sequential Taylor pruning of a linear softmax head on (N, C) features, by hand.

    ∂CE_t/∂a_{t,c} = Σ_k (softmax(z_t)_k − 1[k = y_t]) w_{k,c};
    Θ_c = mean_t |a_{t,c} ∂CE_t/∂a_{t,c}|.
    """
    removed = []
    for _ in range(steps):
        a = maps.clone()
        if rescore:
            a[:, removed] = 0.0
        best, pick = None, None
        for c in range(a.shape[1]):
            if c in removed:
                continue
            total = 0.0
            for t in range(a.shape[0]):
                z = [
                    sum(w[k, j] * a[t, j] for j in range(a.shape[1])) + b[k] for k in range(len(b))
                ]
                top = max(z)
                e = [math_exp(v - top) for v in z]
                p = [v / sum(e) for v in e]
                g = sum((p[k] - (1.0 if k == y[t] else 0.0)) * w[k, c] for k in range(len(b)))
                total += abs(float(a[t, c]) * float(g))
            theta = total / a.shape[0]
            if best is None or theta < best:  # the first lowest
                best, pick = theta, c
        removed.append(pick)
    return removed


def math_exp(v):
    import math

    return math.exp(float(v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sequential_pruning_equals_a_greedy_loop_and_rescores(dtype):
    g = torch.Generator().manual_seed(11)
    c, k = 6, 3
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c, k)).to(dtype)
    with torch.no_grad():
        head[1].weight.copy_(torch.randn(k, c, generator=g))
        head[1].bias.copy_(torch.randn(k, generator=g))
        head[1].weight[:, 5] = head[1].weight[:, 4]  # filters 4 and 5: redundant twins
    train_maps = torch.rand(10, c, 1, 1, generator=g, dtype=dtype)
    train_maps[:, 5] = train_maps[:, 4]
    train_y = torch.randint(0, k, (10,), generator=g)
    test_maps = torch.rand(7, c, 1, 1, generator=g, dtype=dtype)
    test_y = torch.randint(0, k, (7,), generator=g)
    before = {n: v.clone() for n, v in head.state_dict().items()}
    curve = sequential_curve(head, train_maps, train_y, test_maps, test_y, (0.0, 0.34, 0.5, 0.84))
    w, b = head[1].weight.detach().double(), head[1].bias.detach().double()
    want = _greedy_reference(w, b, train_maps[:, :, 0, 0].double(), train_y.tolist(), 5)
    assert curve["order"] == want and curve["pruned"] == [0, 2, 3, 5]
    once = _greedy_reference(w, b, train_maps[:, :, 0, 0].double(), train_y.tolist(), 5, False)
    assert once != want, "the case must tell re-scoring from one ranking"
    for fraction, kept, accuracy in zip(
        curve["fraction"], curve["pruned"], curve["accuracy"], strict=True
    ):
        a = test_maps[:, :, 0, 0].double().clone()
        a[:, want[:kept]] = 0.0
        predicted = (a @ w.T + b).argmax(1)
        assert accuracy == pytest.approx(float((predicted == test_y).double().mean())), fraction
    for n, v in head.state_dict().items():
        assert torch.equal(v, before[n])
    assert head.training and all(p.grad is None for p in head.parameters())
    with pytest.raises(ValueError, match="fractions"):
        sequential_curve(head, train_maps, train_y, test_maps, test_y, (1.0,))


@pytest.mark.slow  # trains 6 tiny models, draws 7 figures and times the losses: ~1 min
def test_run_fills_tables_claims_and_figures(tmp_path):
    pytest.importorskip("sklearn")
    settings = sync_protocol.Settings(
        n_train=32,
        n_test=24,
        epochs=1,
        seeds=(0, 1),
        data=("easy",),
        sweep_epochs=1,
        sweep_data="easy",
        sweep_values=(0.3,),
        landscape_images=8,
        landscape_grid=3,
        prune_fractions=(0.0, 0.5),
        extra_seeds=1,
        resnet_data=("easy",),
        resnet_seeds=1,
        resnet_variants=("baseline", "+L_lac", "+both (eq. 6 sum)"),
        landmark_thresholds=(4, 16),
    )
    report = Report("sync", tmp_path / "out")
    sync.run(report, quick=True, progress=False, settings=settings)
    path = report.write()
    text = path.read_text()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    claims = results["claims"]
    assert {(row["model"], row["data"]) for row in claims} == {
        ("VGGSmall", "easy"),
        ("ResNetSmall", "easy"),
    }
    vgg = [row for row in claims if row["model"] == "VGGSmall"]
    assert len(vgg) >= 18
    for variant in sync_protocol.BOTH_VARIANTS:
        assert all(row[f"holds: {variant}"] in (True, False, None) for row in vgg)
    summary = {(r["model"], r["variant"]) for r in results["claims_summary"]}
    assert ("ResNetSmall", "+both (eq. 6 sum)") in summary and len(summary) == 4
    table = results["VGGSmall, easy parts table1 main"]
    assert [row["variant"] for row in table] == list(sync_protocol.VARIANTS)
    assert table[0]["interp (paper)"] == 0.4613 and table[3]["interp (paper)"] == 0.6418
    assert "±" in table[0]["interp"], "two seeds give a standard deviation"
    assert table[3]["seeds"] == 1 and "±" not in table[3]["interp"]
    resnet = results["ResNetSmall, easy parts table1 main"]
    assert [row["interp (paper)"] for row in resnet] == [0.4388, 0.7282, 0.6598]
    for arch in ("VGGSmall", "ResNetSmall"):
        for name in (
            "fig4_maps",
            "fig5_mean_maps",
            "fig6_metric_pairs",
            "fig6_landmarks",
            "fig9_pruning",
            "fig10_landscape",
        ):
            assert (tmp_path / "out" / f"{arch}_easy_{name}.png").exists(), (arch, name)
    for name in ("fig7_sensitivity", "fig8_sweep_maps"):
        assert (tmp_path / "out" / f"easy_{name}.png").exists(), name
    landmarks = results["VGGSmall_easy_fig6_landmarks"]["+both"]
    assert set(landmarks) == {"4.0", "16.0"}
    assert landmarks["4.0"]["interp"] <= landmarks["16.0"]["interp"], "a looser t hits more"
    assert set(results["sweeps"]) == {"λ1", "λ2", "ε"}
    assert results["speed"][0]["ratio"] > 0 and "Not reproduced" in text
    run = results["VGGSmall_easy_runs"]["baseline"][0]
    for key in ("pruning", "pruning_sequential"):
        curve = run[key]
        assert curve["fraction"] == [0.0, 0.5] and len(curve["accuracy"]) == 2
    assert len(run["pruning_sequential"]["order"]) == 32
