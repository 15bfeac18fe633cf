"""The vit suite: tie-ranked region perturbation through Quantus, metric ranges, claims, speed
rows, LXT's patch undone, and the report's structure (tiny models, stubbed training)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import transformer_speed, vit, vit_faithfulness  # noqa: E402
from benchmarks.plrp import region_ranks  # noqa: E402
from benchmarks.report import Report  # noqa: E402

SIZE, PATCH = 16, 4


def linear_model() -> tuple[nn.Module, torch.Tensor]:
    """Logit 0 = Σ w·x with w ≥ 0: every patch's contribution is its relevance."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2, bias=False))
    with torch.no_grad():
        model[1].weight.abs_()
    return model.eval(), model[1].weight[0].detach().reshape(3, SIZE, SIZE)


def images(n: int = 3) -> torch.Tensor:
    x = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    x[:, :, 0, 0] = 0.0  # Quantus' 'black' baseline is the image minimum: 0
    return x


def test_tie_ranked_follows_region_ranks_with_random_ties():
    a = np.zeros((2, 1, SIZE, SIZE), np.float32)
    a[:, :, :PATCH, :PATCH] = 5.0  # one clear winner, 15 tied patches
    ranked = vit_faithfulness.tie_ranked(a, PATCH, seed=0)
    grid = ranked[:, 0, ::PATCH, ::PATCH].reshape(2, -1)
    assert (grid[:, 0] == 0).all() and sorted(-grid[0]) == list(range(16))
    assert not np.array_equal(grid[0], grid[1])  # ties drawn per sample
    np.testing.assert_array_equal(ranked, vit_faithfulness.tie_ranked(a, PATCH, seed=0))
    scores = a.reshape(2, 4, PATCH, 4, PATCH).sum((2, 4)).reshape(2, -1)
    keys = np.random.default_rng(0).permuted(np.tile(np.arange(16), (2, 1)), axis=1)
    np.testing.assert_array_equal(-grid, region_ranks(scores, keys))
    lerf = vit_faithfulness.tie_ranked(a, PATCH, seed=0, ascending=True)
    assert lerf[:, 0, 0, 0].max() == -15  # the most relevant patch comes last


def test_curves_on_a_linear_model_are_monotone_and_morf_above_lerf():
    model, w = linear_model()
    x = images()
    a = (w * x).sum(1, keepdim=True).numpy()
    morf, lerf = vit_faithfulness.perturbation_curves(model, x.numpy(), np.zeros(3, int), a, PATCH)
    assert morf.shape == lerf.shape == (3, (SIZE // PATCH) ** 2)
    assert (np.diff(morf, axis=1) >= -1e-5).all() and (np.diff(lerf, axis=1) >= -1e-5).all()
    assert (morf >= lerf - 1e-5).all()
    np.testing.assert_allclose(morf[:, -1], lerf[:, -1], rtol=1e-5)  # all patches perturbed


def test_evaluate_rows_in_range_with_a_stub_explainer():
    model, w = linear_model()
    x = images(4)
    obj = torch.zeros(4, 1, SIZE, SIZE, dtype=torch.bool)
    obj[:, :, 4:12, 4:12] = True

    def stub(model, x, y, method):
        seed = vit_faithfulness.METHODS.index(method)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        return (w * x + noise * 0.01).sum(1, keepdim=True).numpy()

    rows, curves, heatmaps = vit_faithfulness.evaluate(
        model, x, torch.zeros(4, dtype=torch.long), obj, PATCH, explainer=stub
    )
    assert [r["method"] for r in rows] == list(vit_faithfulness.METHODS)
    for row in rows:
        assert 0.0 <= row["rma"] <= 1.0 and 0.0 <= row["gini"] <= 1.0
        assert row["faith_delta"] == pytest.approx(row["faith_morf"] - row["faith_lerf"])
        assert row["faith_delta"] > 0
    assert set(curves) == set(heatmaps) == set(vit_faithfulness.METHODS)
    assert heatmaps["AttnLRP"].shape == (2, 1, SIZE, SIZE)
    table = vit_faithfulness.claims(rows)
    assert [c["holds"] in ("holds", "fails") for c in table] == [True, True]


def test_claims_hold_only_when_attnlrp_is_larger():
    rows = [{"method": m, "faith_delta": 1.0} for m in vit_faithfulness.METHODS]
    rows[0]["faith_delta"] = 2.0  # AttnLRP
    rows[1]["faith_delta"] = 3.0  # CP-LRP
    holds = {c["claim"]: c["holds"] for c in vit_faithfulness.claims(rows)}
    assert holds == {
        "AttnLRP more faithful than input×gradient": "holds",
        "AttnLRP more faithful than CP-LRP": "fails",
    }


def test_speed_rows_ratio_and_target():
    timings = {
        "plrp_vs_attnlrp": {"ours_s": 1.2, "anchor_s": 1.0, "ratio": 1.2},
        "nrm_vs_attnlrp": {"ours_s": 3.0, "anchor_s": 1.0, "ratio": 3.0},
    }
    rows = transformer_speed.speed_rows(timings)
    assert [(r["target"], r["meets"]) for r in rows] == [(1.3, "yes"), (2.5, "no")]


def test_lxt_patch_is_undone():
    pytest.importorskip("lxt.efficient")
    from zennit_ext._lxt import lxt_patch_active

    with transformer_speed.lxt_patched():
        assert lxt_patch_active()
    assert not lxt_patch_active()


def test_against_lxt_alternates_and_patches_only_the_anchor():
    pytest.importorskip("lxt.efficient")
    from zennit_ext._lxt import lxt_patch_active

    calls = []

    def side(name):
        return lambda: calls.append((name, lxt_patch_active()))

    ours = {"attnlrp_vs_lxt": side("a"), "cp_lrp_vs_lxt": side("c")}
    timings = transformer_speed._against_lxt(ours, side("lxt"), repeats=2)
    assert calls == [("a", False), ("c", False), ("lxt", True)] * 3  # warm-up + 2 rounds
    assert set(timings) == set(ours)
    for t in timings.values():
        assert t["ratio"] == pytest.approx(t["ours_s"] / t["anchor_s"])
    assert not lxt_patch_active()


def test_suite_report_structure(tmp_path, monkeypatch):
    """The whole suite on an untrained 32² ViT (real explainers), speed stubbed."""
    import benchmarks.models

    def trained(name, quick, progress):
        torch.manual_seed(0)
        model = transformer_speed.build_vit(quick=True)
        model.heads.head = nn.Linear(64, 3)
        return model.eval(), {"accuracy": 0.5, "epochs": 0, "train_time_s": 0.0}

    speed = {"plrp_vs_attnlrp": {"ours_s": 1.0, "anchor_s": 1.0, "ratio": 1.0}}
    monkeypatch.setattr(benchmarks.models, "get_trained", trained)
    small = {**vit.settings(True), "n_explain": 3}
    monkeypatch.setattr(vit, "settings", lambda quick: small)
    monkeypatch.setattr(
        transformer_speed,
        "measure",
        lambda quick: {"timings": speed, "profile": [], "model": "m", "pairs": "p", "lxt": 0},
    )
    # every test image may be misclassified by an untrained model: explain the predictions
    monkeypatch.setattr(vit, "_explained", lambda model, cfg: _predicted(model, cfg["n_explain"]))
    report = Report("vit", tmp_path)
    vit.run(report, quick=True, progress=False)
    report.write()
    results = report.results
    assert [r["method"] for r in results["metrics"]] == list(vit_faithfulness.METHODS)
    assert all(0.0 <= r["rma"] <= 1.0 for r in results["metrics"])
    assert len(results["claims"]) == 2 and results["speed_ratios"][0]["meets"] == "yes"
    assert sorted(results["figures"]) == ["vit_heatmaps.png", "vit_perturbation.png"]
    assert (tmp_path / "vit_perturbation.png").exists() and (tmp_path / "results.json").exists()


def _predicted(model: nn.Module, n: int) -> tuple[torch.Tensor, ...]:
    from benchmarks.data import load_parts

    data = load_parts(n=n, size=32, seed=2)
    with torch.no_grad():
        y = model(data.x).argmax(1)
    return data.x, y, data.mask.any(1, keepdim=True)
