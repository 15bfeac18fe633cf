"""The paths suite: the claims table on hand-made measures, and a tiny run of the whole suite
(report structure, both unit selections, figures, and the laws its numbers must obey)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import paths
from benchmarks.paths_claims import claims, pearson, spread
from benchmarks.report import Report

GOOD = {
    "kept_c1": 0.8,
    "score_ratio_c1": 0.9,
    "nmse_c1": 0.01,
    "chosen_c": 0.5,
    "met": True,
    "corr_full": 0.7,
    "corr_act": 0.3,
    "spread_act": 0.4,
    "spread_rel": 0.1,
}


def test_claims_hold_on_good_measures_and_each_fails_alone():
    rows = claims({"lrp": GOOD, "nrm": GOOD})
    assert len(rows) == 7 and all(r["holds (lrp)"] and r["holds (nrm)"] for r in rows)
    assert rows[0]["paper's number"] == "c = 1"
    for name, bad in [
        ("kept_c1", 1.0),
        ("score_ratio_c1", 0.4),
        ("nmse_c1", 0.06),
        ("met", False),
        ("corr_full", -0.1),
        ("corr_act", 0.0),
        ("spread_act", 0.05),
    ]:
        rows = claims({"lrp": {**GOOD, name: bad}, "nrm": GOOD})
        assert [r["holds (lrp)"] for r in rows].count(False) == 1, name
        assert all(r["holds (nrm)"] for r in rows), name
    with pytest.raises(ValueError, match="measures must have the kinds"):
        claims({"nrm": GOOD})


def test_pearson_and_spread_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, torch.ones(2, 2)) == 0.0
    # |mass| 10: the largest entry (4) is below half, 4 + 3 reaches it: 2 of 4 entries
    assert spread(a) == 0.5
    assert spread(torch.tensor([5.0, 0.0, 0.0, 0.0])) == 0.25
    assert spread(torch.zeros(3)) == 1.0


import torchvision  # noqa: E402

_VGG16 = torchvision.models.vgg16


def _small_vgg16(weights=None):
    """torchvision's VGG16 features (same layer names, zero biases) with a 512 → 10 head, so
    that a test run does not spend its time on the 25088 × 4096 dense layer."""
    model = _VGG16(weights=None, num_classes=10)
    model.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    model.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(512, 10))
    torch.nn.init.zeros_(model.classifier[1].bias)
    return model


def test_tiny_run_fills_claims_tables_and_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.models, "vgg16", _small_vgg16)
    settings = paths.Settings(
        vgg_size=32,
        timed_pairs=(),
        repeats=1,
        photos=1,
        photo_size=32,
        blocks=(15,),
        grid=(1.0, 0.0),
        vgg_layers=paths.VGG_LAYERS[-3:],
    )
    report = Report("paths", tmp_path / "out")
    paths.run(report, quick=True, progress=False, settings=settings)
    report.write()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = results["claims"]
    assert len(rows) == 7
    assert all(isinstance(r[f"holds ({k})"], bool) for r in rows for k in ("lrp", "nrm"))
    measures = results["claim_measures"]
    for kind in ("lrp", "nrm"):
        m = measures[kind]
        assert 0 < m["kept_c1"] <= 1 and m["chosen_c"] in settings.grid
        assert -1 <= m["corr_full"] <= 1 and 0 < m["spread_act"] <= 1
    # VGG16's random init has zero biases: plain LRP keeps exactly NRM's units (conservation)
    kept = {
        (r["selected by"], r["layer"]): r["kept fraction at c = 1"]
        for r in results["kept_c1"]
        if r["model"] == "VGG16 (random)"
    }
    for layer in settings.vgg_layers:
        assert kept[("lrp", layer)] == kept[("nrm", layer)]
    thresholds = results["thresholds"]
    assert {(r["model"], r["selected by"]) for r in thresholds} == {
        (m, k) for m in ("VGG16 (random)", "EfficientNet-Lite0") for k in ("lrp", "nrm")
    }
    for row in thresholds:  # c = 1 keeps a superset of c = 0's units
        if row["c"] == 0.0:
            wider = next(
                r
                for r in thresholds
                if r["c"] == 1.0
                and (r["model"], r["selected by"]) == (row["model"], row["selected by"])
            )
            assert wider["kept_fraction"] >= row["kept_fraction"]
    for kind in ("lrp", "nrm"):  # path scores descend; units are channels of the layers
        scores = [r["score (sum of edges)"] for r in results[f"vgg16_paths_{kind}"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == paths.K
    for name in (
        "fig3_vgg16_graph",
        "fig4_efficientnet_restricted",
        "fig5_efficientnet_overview",
        "fig6_efficientnet_kpath",
        "fig7_efficientnet_activation",
        "alg2_vgg16_blocks",
        "threshold_curves",
        "kept_fraction_c1",
    ):
        assert (tmp_path / "out" / f"{name}.png").exists(), name
    assert "vgg16_speed" in results and "Claims" in (tmp_path / "out" / "report.md").read_text()
