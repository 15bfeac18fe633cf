"""``tools/mutation.py`` and its list of equivalent mutants: entries match what mutmut names and
shows, and none goes stale when the code it describes changes."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import mutation  # noqa: E402

EQUIVALENTS = mutation.load_equivalents()


def _functions(module: str) -> set[str]:
    """Names as :func:`mutation.function_of` gives them: ``f`` and ``x.Class.method``."""
    names = set()
    for node in ast.parse((ROOT / module).read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {
                f"x.{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef)
            }
    return names


def test_mutmut_names_map_to_functions_and_modules():
    method = "zennit_ext.nrm.engine.xǁSessionǁ_checked_pass__mutmut_17"
    assert mutation.function_of(method) == "x.Session._checked_pass"
    assert mutation.module_path(method) == "zennit_ext/nrm/engine.py"
    function = "captum_ext.synergy._masking.x_format_inputs__mutmut_22"
    assert mutation.function_of(function) == "format_inputs"
    assert mutation.module_path(function) == "captum_ext/synergy/_masking.py"


def test_equivalents_match_by_changed_lines_whitespace_normalised():
    diff = (
        "--- a/zennit_ext/nrm/engine.py\n+++ b/zennit_ext/nrm/engine.py\n@@ -1,3 +1,3 @@\n"
        "     def f():\n-        x = g(a,  b)\n+        x = g(a, None)\n"
    )
    assert mutation.changed_lines(diff) == ["-x = g(a, b)", "+x = g(a, None)"]
    entry = {
        "module": "zennit_ext/nrm/engine.py",
        "function": "f",
        "lines": ["-x = g(a, b)", "+x = g(a, None)"],
    }
    name = "zennit_ext.nrm.engine.x_f__mutmut_1"
    assert mutation.equivalent("zennit_ext/nrm/engine.py", name, diff, [entry])
    assert not mutation.equivalent(
        "zennit_ext/nrm/engine.py", name, diff.replace("None", "1"), [entry]
    )
    assert not mutation.equivalent(
        "zennit_ext/nrm/engine.py", "zennit_ext.nrm.engine.x_h__mutmut_1", diff, [entry]
    )
    everything = {**entry, "lines": None}  # diff "*": every mutant of the function
    assert mutation.equivalent("zennit_ext/nrm/engine.py", name, "", [everything])


@pytest.mark.parametrize(
    "entry", EQUIVALENTS, ids=[f"{e['module']}:{e['function']}" for e in EQUIVALENTS]
)
def test_every_equivalent_names_live_code_and_a_reason(entry):
    """Stale entries fail here: the module is a core module, the function exists, and every
    line the mutant removes is still in the module."""
    assert entry["module"] in mutation.CORE_MODULES
    assert entry["function"] in _functions(entry["module"])
    assert len(entry.get("reason", "").split()) >= 4
    source = {" ".join(line.split()) for line in (ROOT / entry["module"]).read_text().splitlines()}
    removed = [line[1:] for line in entry["lines"] or [] if line.startswith("-")]
    assert entry["lines"] is None or removed
    assert all(line in source for line in removed), removed


def test_equivalents_are_listed_once():
    keys = [(e["module"], e["function"], str(e["lines"])) for e in EQUIVALENTS]
    assert len(keys) == len(set(keys))
