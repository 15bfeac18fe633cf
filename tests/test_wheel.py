"""The built wheel, installed into a fresh environment, works without the repository.

Built and installed offline: the wheel from a copy of the sources (``pip wheel
--no-build-isolation``), a new virtual environment without pip, the wheel installed into it with
``pip --python ... --no-index --no-deps``; torch, zennit and captum come from the running
environment through a ``.pth`` line (plain path: its editable finder is not loaded).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "MANIFEST.in",
    "zennit_ext",
    "captum_ext",
    "benchmarks",
)

# PLRP through zennit's Gradient, NRM's one-shot joint relevance, synergy's public face;
# prints where everything came from as JSON on the last line
SCRIPT = r"""
import importlib.util, json, sys
import torch
from zennit.attribution import Gradient
from zennit.composites import EpsilonPlusFlat
import captum_ext, zennit_ext
from captum_ext import LayerSynergy
from captum_ext import NeuronSynergy
from captum_ext import SynchronizationLoss
from zennit_ext import NRM
from zennit_ext import PLRPLambda
from zennit_ext.paths.api import select_units

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.ReLU(),
    torch.nn.Linear(4, 3),
).double().eval()
for linear in model[::2]:
    linear.bias.data.uniform_(0.0, 0.3)
x = torch.rand(2, 6, dtype=torch.float64)
with Gradient(model=model, composite=EpsilonPlusFlat()) as attributor:
    _, base = attributor(x, torch.eye(3, dtype=x.dtype)[[0, 2]])
with Gradient(model=model, composite=PLRPLambda(p=0.0)) as attributor:
    _, plrp_zero = attributor(x, torch.eye(3, dtype=x.dtype)[[0, 2]])
with Gradient(model=model, composite=PLRPLambda(p=0.5)) as attributor:
    _, plrp = attributor(x, torch.eye(3, dtype=x.dtype)[[0, 2]])
nrm = NRM(model, layers=["1", "3"])
with nrm.explain(x, 0) as explanation:
    reached = (explanation.reached + sum(explanation.stopped.values())).tolist()
synergy = LayerSynergy(model, model[3]).compute(x, target=0)
sync = SynchronizationLoss()(torch.rand(2, 4, 5, 5, dtype=torch.float64))
print(json.dumps({
    "zennit_ext": zennit_ext.__file__,
    "captum_ext": captum_ext.__file__,
    "versions": [zennit_ext.__version__, captum_ext.__version__],
    "synergy": [NeuronSynergy.__module__, LayerSynergy.__module__],
    "synergy_shape": list(synergy.synergy.shape),
    "synergy_symmetric": bool(torch.equal(synergy.synergy, synergy.synergy.T)),
    "sync_finite": bool(torch.isfinite(sync)),
    "nrm_reached_plus_stopped": reached,
    "paths_kept": select_units(torch.tensor([[1.0, 2.0, 3.0]]), c=0.0).tolist(),
    "benchmarks": importlib.util.find_spec("benchmarks") is not None,
    "sys_path": sys.path,
    "plrp_zero_error": float((plrp_zero - base).abs().max()),
    "plrp_changed": float((plrp - base).abs().max()),
    "plrp_finite": bool(torch.isfinite(plrp).all()),
    "nrm_whole_layer": nrm.joint(x, 0, {"3": [0, 1, 2, 3]}).tolist(),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the sources (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            (tmp / "src").mkdir(exist_ok=True)
            shutil.copy2(source, tmp / "src" / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(tmp / "src"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (built,) = (tmp / "dist").glob("neuron_xai-*.whl")
    return built


def test_wheel_holds_the_two_libraries_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {
        "zennit_ext",
        "captum_ext",
    }
    assert {"zennit_ext/py.typed", "captum_ext/py.typed"} <= set(names)


def test_wheel_and_sdist_ship_the_license(wheel):
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    (licence,) = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
    assert archive.read(licence) == (ROOT / "LICENSE").read_bytes()
    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: BSD-3-Clause" in archive.read(metadata).decode()
    assert "License-File: LICENSE" in archive.read(metadata).decode()
    # the sdist, built from the same copy of the sources
    src = wheel.parent.parent / "src"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--sdist",
            "--no-isolation",
            "--outdir",
            str(wheel.parent.parent / "sdist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (sdist,) = (wheel.parent.parent / "sdist").glob("neuron_xai-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        assert any(name.endswith("/LICENSE") and name.count("/") == 1 for name in names), names
        top = next(name for name in names if name.endswith("/LICENSE") and name.count("/") == 1)
        assert tar.extractfile(top).read() == (ROOT / "LICENSE").read_bytes()


def test_installed_wheel_runs_without_the_repository(wheel, tmp_path):
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # the dependencies (torch, zennit, captum) from the running environment, appended after
    # the new environment's own site-packages
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],  # never uninstalls elsewhere
        check=True,
        capture_output=True,
        text=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [python, "-I", "-c", SCRIPT], cwd=work, env=clean, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])

    for package in ("zennit_ext", "captum_ext"):
        assert Path(report[package]).is_relative_to(site), report[package]
    assert not any(Path(entry or ".").resolve() == ROOT for entry in report["sys_path"])
    assert report["benchmarks"] is False
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert report["versions"] == [version, version]
    assert report["synergy"] == ["captum_ext.synergy.neuron", "captum_ext.synergy.layer"]
    assert report["synergy_shape"] == [4, 4] and report["synergy_symmetric"]
    assert report["sync_finite"]
    assert report["nrm_reached_plus_stopped"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert report["paths_kept"] == [[False, True, True]]
    # PLRP with p = 0 is its base composite exactly; p = 0.5 prunes something
    assert report["plrp_zero_error"] < 1e-12
    assert report["plrp_changed"] > 1e-6 and report["plrp_finite"]
    # NRM: the whole layer carries the explained output's relevance 1
    assert report["nrm_whole_layer"] == pytest.approx([1.0, 1.0], abs=1e-9)
