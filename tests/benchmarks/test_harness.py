"""The benchmark harness: timer, report writer and command line."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from benchmarks import __main__ as cli  # noqa: E402
from benchmarks.report import Report  # noqa: E402
from benchmarks.timing import compare, time_call  # noqa: E402


def test_time_call_counts_warmup_and_repeats():
    calls = []
    seconds = time_call(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5
    assert seconds >= 0.0


@pytest.mark.parametrize(("warmup", "repeats"), [(-1, 3), (0, 0)])
def test_time_call_rejects_bad_counts(warmup, repeats):
    with pytest.raises(ValueError, match="warmup" if warmup < 0 else "repeats"):
        time_call(lambda: None, warmup=warmup, repeats=repeats)


def test_compare_ratio_and_scale():
    slow = torch.randn(300, 300)
    timing = compare(lambda: None, lambda: slow @ slow, repeats=3, anchor_scale=10.0)
    assert timing["ratio"] == pytest.approx(timing["ours_s"] / timing["anchor_s"])
    assert timing["speedup"] == pytest.approx(1.0 / timing["ratio"])
    assert timing["threads"] == torch.get_num_threads()


def test_report_writes_markdown_json_and_png(tmp_path):
    report = Report("demo", tmp_path / "out")
    rows = [{"method": "lrp", "gini": 0.5, "auc": float("nan")}, {"method": "plrp", "gini": 0.7}]
    report.add_table("Sparsity", rows, direction={"gini": "higher"}, note="toy numbers")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png = report.add_figure(fig, "line", "a line")
    report.add_speed(
        "toy", {"ours_s": 1.0, "anchor_s": 2.0, "ratio": 0.5, "speedup": 2.0}, ours="a", anchor="b"
    )
    report.results["array"] = np.arange(3)
    path = report.write()

    text = path.read_text()
    assert "| method | gini ↑ | auc |" in text
    assert "| plrp | 0.7 |  |" in text and "–" in text  # missing cell and NaN rendered
    assert "![a line](line.png)" in text and "ratio 0.5" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["Sparsity"][0]["auc"] is None and results["array"] == [0, 1, 2]
    assert results["figures"] == ["line.png"] and results["speed"][0]["speedup"] == 2.0


def test_report_stage_times_also_a_failing_stage(tmp_path, monkeypatch):
    clock = iter([10.0, 12.5, 20.0, 20.25])
    monkeypatch.setattr("benchmarks.report.time.perf_counter", lambda: next(clock))
    report = Report("demo", tmp_path)
    with report.stage("train"):
        pass
    with pytest.raises(RuntimeError), report.stage("broken"):
        raise RuntimeError("stage failed")
    assert report.results["stages_s"] == {"train": 2.5, "broken": 0.25}
    assert "Wall time by stage: train 2.5 s, broken 0.2 s." in report.write().read_text()


def test_report_rejects_unknown_direction(tmp_path):
    with pytest.raises(ValueError, match="direction"):
        Report("demo", tmp_path).add_table("t", [{"a": 1}], direction={"a": "up"})


def test_cli_runs_a_suite_and_writes_its_report(tmp_path, monkeypatch):
    ran = {}

    def fake_run(report, quick, progress):
        ran.update(quick=quick, progress=progress)
        report.add_table("t", [{"x": math.pi}])

    class FakeSuite:
        run = staticmethod(fake_run)

    monkeypatch.setattr(cli, "_available", lambda name: name == "plrp")
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: FakeSuite)
    assert cli.main(["plrp", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    assert ran == {"quick": True, "progress": False}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True and results["t"][0]["x"] == pytest.approx(math.pi)


def test_cli_refuses_unbuilt_suite(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_available", lambda name: False)
    with pytest.raises(SystemExit):
        cli.main(["sync"])
    assert "not built" in capsys.readouterr().err
