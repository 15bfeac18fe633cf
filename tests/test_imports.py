"""Importing the plugins stays cheap and acyclic: each module loads only what it needs.

Every module of both packages is imported alone in a fresh interpreter (forked from one that
has loaded only torch and torchvision), and ``sys.modules`` is checked afterwards:

- nothing loads Quantus, matplotlib or scikit-learn beyond what its anchor (``captum.attr``
  for the Captum attributions) loads itself;
- nothing in ``captum_ext`` loads a ``zennit_ext`` engine (PLRP, NRM, paths) or registers a
  Zennit composite;
- nothing in ``zennit_ext`` loads Captum (the deconvolution view imports it when called).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

HEAVY = ("quantus", "matplotlib", "sklearn")
ENGINES = ("zennit_ext.plrp", "zennit_ext.nrm", "zennit_ext.paths")

_PROBE = """
import json, sys
{statement}
composites = sys.modules.get("zennit.composites")
print(json.dumps({{
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in {roots!r}),
    "registered": sorted(
        k for k in getattr(composites, "COMPOSITES", {{}}) if k.startswith("plrp")
    ),
}}))
"""


def _loaded(statement: str) -> dict[str, list[str]]:
    """Top-level packages of interest and PLRP registry names after ``statement``."""
    roots = {"zennit_ext", "captum_ext", "captum", "zennit", *HEAVY}
    code = _PROBE.format(statement=statement, roots=roots)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _heavy(modules: list[str]) -> set[str]:
    return {m for m in modules if m in HEAVY}


def _all_modules() -> list[str]:
    names = []
    for package in ("zennit_ext", "captum_ext"):
        path = importlib.import_module(package).__path__
        names.append(package)
        names += sorted(info.name for info in pkgutil.walk_packages(path, prefix=f"{package}."))
    return names


@pytest.fixture(scope="module")
def anchor_heavy() -> set[str]:
    return _heavy(_loaded("import captum.attr")["modules"])


# One driver interpreter imports torch and torchvision (which most modules need and which load
# none of the packages checked here), then forks a child per module: the child imports the
# module into a fresh copy of that state and reports as a fresh interpreter would, 5× faster.
_DRIVER = """
import json, os, sys
import torch, torchvision  # noqa: F401, E401
for module in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            with os.fdopen(write, "w") as out, open(os.devnull, "w") as devnull:
                sys.stdout = devnull
                namespace = {{"__name__": "__probe__", "module": module}}
                exec(compile({probe!r}, "<probe>", "exec"), namespace)
                out.write(namespace["result"])
            os._exit(0)
        except BaseException as error:
            os.write(2, f"{{module}}: {{error!r}}".encode())
            os._exit(1)
    os.close(write)
    with os.fdopen(read) as answer:
        text = answer.read()
    _, status = os.waitpid(pid, 0)
    if status:
        sys.exit(f"importing {{module}} failed")
    print(json.dumps({{"module": module, "found": json.loads(text)}}), flush=True)
"""


def _loaded_each(modules: list[str]) -> dict[str, dict[str, list[str]]]:
    """``_loaded("import m")`` for every module, through one forking driver interpreter."""
    roots = {"zennit_ext", "captum_ext", "captum", "zennit", *HEAVY}
    probe = (
        "import importlib, json, sys\n"
        "importlib.import_module(module)\n"
        "composites = sys.modules.get('zennit.composites')\n"
        "result = json.dumps({'modules': sorted(m for m in sys.modules "
        f"if m.split('.')[0] in {roots!r}), 'registered': sorted(k for k in "
        "getattr(composites, 'COMPOSITES', {}) if k.startswith('plrp'))})\n"
    )
    code = _DRIVER.format(probe=probe)
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(modules)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    return {row["module"]: row["found"] for row in rows}


@pytest.fixture(scope="module")
def imported() -> dict[str, dict[str, list[str]]]:
    """``_loaded("import m")`` of every module: two forking drivers, half the modules each."""
    modules = _all_modules()
    halves = [modules[::2], modules[1::2]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        found: dict[str, dict[str, list[str]]] = {}
        for part in pool.map(_loaded_each, halves):
            found.update(part)
    assert sorted(found) == sorted(modules)
    return found


@pytest.mark.parametrize("module", _all_modules())
def test_each_module_imports_only_what_it_needs(module, anchor_heavy, imported):
    found = imported[module]
    modules = found["modules"]
    allowed = anchor_heavy if "captum.attr" in modules else set()
    assert _heavy(modules) <= allowed, module
    if module.startswith("captum_ext"):
        assert not [m for m in modules if m.startswith(ENGINES)], module
        assert found["registered"] == [], module
    else:
        assert "captum" not in modules, module


@pytest.mark.parametrize("package", ["zennit_ext", "captum_ext"])
def test_import_of_a_package_loads_no_engine_and_no_library(package):
    modules = _loaded(f"import {package}")["modules"]
    assert modules == sorted({"zennit_ext", "zennit_ext._lazy", package})


def test_plrp_registers_its_composites():
    assert _loaded("import zennit_ext.plrp")["registered"] == ["plrp_lambda", "plrp_m"]
    assert _loaded("from zennit_ext import PLRPM")["registered"] == ["plrp_lambda", "plrp_m"]


def test_lazy_names_resolve_and_unknown_names_fail():
    import captum_ext
    import zennit_ext

    for package in (captum_ext, zennit_ext):
        assert set(package.__all__) <= set(dir(package))
        assert all(callable(getattr(package, name)) for name in package.__all__)
        with pytest.raises(AttributeError, match="no_such_name"):
            package.no_such_name  # noqa: B018
