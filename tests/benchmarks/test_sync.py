"""The sync suite: cached same-init training, loss landscape, Fig. 4 picks, and a tiny run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from benchmarks import sync
from benchmarks.models.architectures import VGGSmall
from benchmarks.report import Report


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_XAI_CACHE", str(tmp_path / "cache"))


def _config(**changes) -> sync.Config:
    base = sync.Config("easy", 0.0, 0.0, sync.EPSILON, 0, 1, 16, 1e-3, 8)
    return replace(base, **changes)


def test_variants_share_the_initialisation_and_are_cached():
    data = sync._parts("easy", 16, 0)
    train_set = (data.x, data.y)
    untrained = [
        sync.train(_config(epochs=0, lam1=lam1, lam2=lam2), train_set, False)[0]
        for lam1, lam2 in sync.VARIANTS.values()
    ]
    for model in untrained[1:]:
        for a, b in zip(
            model.state_dict().values(), untrained[0].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b)
    baseline, log = sync.train(_config(), train_set, False)
    both, both_log = sync.train(_config(lam1=0.2, lam2=0.1), train_set, False)
    assert not log["cached"] and "regularizer_history" not in log
    assert len(both_log["regularizer_history"]) == 1 and both_log["regularizer_history"][0] > 0
    weight = "features.9.weight"
    assert not torch.equal(baseline.state_dict()[weight], both.state_dict()[weight])
    again, again_log = sync.train(_config(lam1=0.2, lam2=0.1), train_set, False)
    assert again_log["cached"]
    assert torch.equal(again.state_dict()[weight], both.state_dict()[weight])
    assert len(again.get_submodule(sync.LAYER)._forward_hooks) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_landscape_centre_is_the_model_and_weights_are_restored(dtype):
    torch.manual_seed(0)
    model = VGGSmall(num_classes=3).to(dtype)
    x, y = torch.rand(6, 3, 64, 64, dtype=dtype), torch.tensor([0, 1, 2, 0, 1, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alphas, loss = sync.loss_landscape(model, x, y, steps=3)
    with torch.no_grad():
        centre = torch.nn.functional.cross_entropy(model(x), y)
    assert alphas.tolist() == [-1.0, 0.0, 1.0]
    assert loss[1, 1] == pytest.approx(float(centre), rel=1e-6)
    assert len({round(v, 6) for v in loss.flatten().tolist()}) == 9, "every point moves"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises((ValueError, RuntimeError, IndexError)):
        sync.loss_landscape(model, x, y[:2], steps=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} not restored after an error"


def test_filter_normalized_direction_has_the_filters_norms():
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64) * torch.arange(1, 6).reshape(5, 1, 1, 1)
    direction = sync._filter_normalized(weight, torch.Generator().manual_seed(1))
    norms = [float(weight[i].norm()) for i in range(5)]
    assert [float(direction[i].norm()) for i in range(5)] == pytest.approx(norms, rel=1e-12)
    assert direction.dtype == weight.dtype


def test_activation_examples_pick_the_iou_quantiles_of_live_filters():
    n, c = 10, 3
    best = torch.arange(n * c, dtype=torch.float64).reshape(n, c) / (n * c)
    iou = torch.stack([best, best / 2, torch.full_like(best, float("nan"))], dim=2)
    maps = torch.ones(n, c, 2, 2)
    maps[:, 2] = 0.0  # a dead filter is never shown
    picks = sync.activation_examples(iou, maps, quantiles=(0.95, 0.5, 0.0))
    live = sorted(float(best[i, f]) for i in range(n) for f in range(2))
    assert [p[2] for p in picks] == [live[19], live[10], live[0]]
    for image, unit, value in picks:
        assert unit != 2 and float(best[image, unit]) == value


@pytest.mark.slow  # trains 6 tiny models, draws 7 figures and times the losses: ~1 min
def test_run_fills_tables_claims_and_figures(tmp_path):
    pytest.importorskip("sklearn")
    settings = sync.Settings(
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
    )
    report = Report("sync", tmp_path / "out")
    sync.run(report, quick=True, progress=False, settings=settings)
    path = report.write()
    text = path.read_text()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    claims = results["claims"]
    assert {row["data"] for row in claims} == {"easy"} and len(claims) >= 12
    assert all(isinstance(row["holds"], bool) for row in claims)
    table = results["easy parts table1 main"]
    assert [row["variant"] for row in table] == list(sync.VARIANTS)
    assert table[0]["interp (paper)"] == sync.PAPER["interp"][0]
    assert "±" in table[0]["interp"], "two seeds give a standard deviation"
    for name in (
        "fig4_maps",
        "fig5_mean_maps",
        "fig6_metric_pairs",
        "fig9_pruning",
        "fig10_landscape",
        "fig7_sensitivity",
        "fig8_sweep_maps",
    ):
        assert (tmp_path / "out" / f"easy_{name}.png").exists(), name
    assert set(results["sweeps"]) == {"λ1", "λ2", "ε"}
    assert results["speed"][0]["ratio"] > 0 and "Not reproduced" in text
    curve = results["easy_runs"]["baseline"][0]["pruning"]
    assert curve["fraction"][0] == 0.0 and len(curve["accuracy"]) == len(curve["fraction"])
