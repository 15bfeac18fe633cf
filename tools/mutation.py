"""Mutation testing of the core modules with mutmut 3 (``make mutation``).

Each package (``zennit_ext``, ``captum_ext``) gets its own scratch copy of the checkout in
``.mutation/<package>/`` with a generated ``[tool.mutmut]`` section: mutmut mutates only the
selected modules, maps every test of the package's test directory to the functions it reaches
(one traced run of that directory) and then runs each mutant against only those tests,
``-x`` and without the cache plugin. Modules run one after the other; the summary
(``reports/mutation/summary.md`` and ``summary.json``) counts per module the mutants, killed,
survived, timeout, and the survivors listed as equivalent in ``tools/mutation_equivalent.toml``
(matched by module, function and the changed lines, not by mutmut's mutant number).

Usage::

    python tools/mutation.py                           # every core module
    python tools/mutation.py zennit_ext/plrp/composites.py        # a subset
    python tools/mutation.py --max-children 1 ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
REPORTS = ROOT / "reports" / "mutation"
EQUIVALENTS = ROOT / "tools" / "mutation_equivalent.toml"

CORE_MODULES = (
    "zennit_ext/plrp/masks.py",
    "zennit_ext/plrp/composites.py",
    "zennit_ext/nrm/rules.py",
    "zennit_ext/nrm/sets.py",
    "zennit_ext/nrm/engine.py",
    "zennit_ext/nrm/fastpaths.py",
    "captum_ext/synergy/_masking.py",
    "captum_ext/synergy/formulas.py",
    "captum_ext/synergy/pruning.py",
    "captum_ext/synergy/_engine.py",
    "captum_ext/synergy/_evaluators.py",
    "captum_ext/synergy/_fastpaths.py",
)

# The tests each package's mutants run against: its own and the bad-input table of both.
# Excluded: the notebooks, the Captum replays, the PLRP runs on ResNet-18/EfficientNet and the
# torchvision zoo of the canonizers (minutes per mutant; the small-network tests reach the same
# code).
TEST_SELECTION = {
    "zennit_ext": [
        "tests/zennit_ext",
        "tests/test_bad_input.py",
        "--deselect=tests/zennit_ext/test_plrp.py::test_real_architectures",
        "--deselect=tests/zennit_ext/test_plrp.py::test_efficientnet_canonizer_keeps_function",
        "--ignore=tests/zennit_ext/test_canonizers_zoo.py",
    ],
    "captum_ext": [
        "tests/captum_ext",
        "tests/test_bad_input.py",
        "--ignore=tests/captum_ext/test_synergy_captum_replay.py",
    ],
}
PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not slow", "-W", "ignore"]
COPIED = ("zennit_ext", "captum_ext", "benchmarks", "tests")
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    -9: "segfault",
    -11: "segfault",
    None: "not checked",
}


@dataclass
class ModuleResult:
    """Counts of one module's mutants."""

    module: str
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    equivalent: int = 0
    timeout: int = 0
    other: int = 0
    unchecked: int = 0
    seconds: float = 0.0
    run: str = "full"
    survivors: list[dict] = field(default_factory=list)

    @property
    def kill_rate(self) -> float:
        """Killed (timeouts count as killed) over the non-equivalent mutants, in percent."""
        live = self.mutants - self.equivalent
        return 100.0 * (self.killed + self.timeout) / live if live else float("nan")


def mutmut_config(package: str, modules: list[str]) -> str:
    """The ``[tool.mutmut]`` section mutating ``modules`` against ``package``'s tests."""
    lines = [
        "[tool.mutmut]",
        f"source_paths = {json.dumps(list(COPIED[:2]))}",
        f"only_mutate = {json.dumps(modules)}",
        f"also_copy = {json.dumps(['benchmarks'])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(TEST_SELECTION[package])}",
        f"pytest_add_cli_args = {json.dumps(PYTEST_ARGS)}",
        "use_git_change_detection = false",
        "track_dependencies = false",
    ]
    return "\n".join(lines) + "\n"


def prepare(package: str, modules: list[str], reuse: bool, retrace: bool) -> Path:
    """The scratch copy of the checkout for ``package``; returns its directory.

    mutmut traces which tests reach which function once per scratch copy, for every core
    module of the package (so a later ``--reuse`` run of another module needs no new trace).
    ``reuse`` refreshes the sources and tests of an existing copy instead of starting afresh
    (mutmut then re-traces only new tests and re-mutates only changed functions); ``retrace``
    also drops mutmut's trace, so that every test is traced again (needed when functions
    moved between modules) while the verdicts of unchanged functions are kept.
    """
    work = WORK / package
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if retrace:
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
    for name in COPIED:
        shutil.copytree(ROOT / name, work / name, ignore=ignore, dirs_exist_ok=True)
    mutated = [m for m in CORE_MODULES if m.startswith(package + "/")]
    mutated += [m for m in modules if m not in mutated]
    pyproject = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(pyproject + "\n" + mutmut_config(package, mutated))
    return work


def mutants_of(work: Path, module: str) -> dict[str, int | None]:
    """Exit code of every mutant of ``module`` from the last run in ``work`` (None: not run).

    Explicit names let mutmut run the clean tests of those mutants only (a pattern that
    names no function runs the whole test selection first).
    """
    meta = work / "mutants" / (module + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def unsettled(work: Path, module: str) -> list[str]:
    """Mutants of ``module`` that the last run in ``work`` did not kill (or did not reach)."""
    codes = mutants_of(work, module)
    return [name for name, code in codes.items() if STATUS.get(code) not in ("killed", "timeout")]


def run_mutmut(
    work: Path,
    modules: list[str],
    max_children: int,
    survivors: bool,
    sample: int,
    equivalents: list[dict],
    together: bool = False,
) -> dict[str, float]:
    """Run mutmut over ``modules`` one at a time; returns the wall time of each in seconds.

    With ``survivors`` only the mutants the last run left alive are run again (new tests
    can only kill more; mutants of changed functions come back unchecked and run too).
    ``sample`` in (2, 5, 10) runs only the mutants whose number ends in every ``sample``-th
    digit (an estimate of the kill rate when the full run does not fit the time).
    """
    env = dict(
        os.environ,
        NEURON_XAI_CACHE=str((ROOT / ".cache").resolve()),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    mutmut = Path(sys.executable).with_name("mutmut")
    seconds = {}
    selected = {}
    for module in modules:
        names = [module.removesuffix(".py").replace("/", ".") + ".*"]
        digits = "0123456789"[::sample]
        if survivors:  # the listed equivalents would only survive again, slowly
            codes = mutants_of(work, module)
            alive = [n for n in unsettled(work, module) if codes[n] is not None or n[-1] in digits]
            known = [n for n in alive if mutants_of(work, module)[n] is not None]
            skip = {
                n for n, d in diffs(work, known).items() if equivalent(module, n, d, equivalents)
            }
            names = [n for n in alive if n not in skip]
            if not names:  # every survivor is a listed equivalent: nothing to rerun
                print(f"== {module}: no survivor to rerun", flush=True)
                continue
        elif sample > 1:  # mutants whose number ends in every sample-th digit
            known = [n for n in mutants_of(work, module) if n[-1] in digits]
            names = known or [names[0] + "__mutmut_*[" + digits + "]"]
        selected[module] = names
    # one mutmut run per module (its own wall time), or one for all (one clean-test run)
    groups = [list(selected)] if together else [[module] for module in selected]
    for group in groups:
        names = [name for module in group for name in selected[module]]
        print(f"== mutmut run {names[0]} ({len(names)} patterns)", flush=True)
        start = time.monotonic()
        cmd = [str(mutmut), "run", "--max-children", str(max_children), *names]
        proc = subprocess.run(cmd, cwd=work, env=env)
        seconds.update(dict.fromkeys(group, time.monotonic() - start))
        if proc.returncode != 0:
            raise SystemExit(f"mutmut run {names[0]} failed with exit code {proc.returncode}")
    return seconds


def changed_lines(diff: str) -> list[str]:
    """The removed and added lines of a unified diff, whitespace-normalised (a stable key)."""
    return [
        line[0] + " ".join(line[1:].split())
        for line in diff.splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]


def function_of(mutant: str) -> str:
    """``Class.method`` or ``function`` of a mutmut mutant name."""
    mangled = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    if "ǁ" in mangled:
        return ".".join(part for part in mangled.split("ǁ") if part)
    return mangled.removeprefix("x_")


def load_equivalents() -> list[dict]:
    """The checked-in list of equivalent mutants."""
    entries = tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])
    for entry in entries:  # diff "*": every mutant of the function
        entry["lines"] = None if entry["diff"].strip() == "*" else changed_lines(entry["diff"])
    return entries


def diffs(work: Path, names: list[str]) -> dict[str, str]:
    """The unified diff of each named mutant (computed by mutmut inside ``work``)."""
    if not names:
        return {}
    code = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "names = json.load(sys.stdin)\n"
        "print(json.dumps({n: get_diff_for_mutant(n, path=p) for n, p in names}))\n"
    )
    pairs = [(name, module_path(name)) for name in names]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def module_path(mutant: str) -> str:
    """``pkg/module.py`` of a mutmut mutant name such as ``pkg.module.x_f__mutmut_3``."""
    dotted = mutant.partition("__mutmut_")[0].rpartition(".")[0]
    return dotted.replace(".", "/") + ".py"


def equivalent(module: str, mutant: str, diff: str, equivalents: list[dict]) -> bool:
    """Whether the mutant with this diff is listed as equivalent."""
    lines, function = changed_lines(diff), function_of(mutant)
    return any(
        e["module"] == module
        and e["function"] == function
        and (e["lines"] is None or e["lines"] == lines)
        for e in equivalents
    )


def collect(work: Path, module: str, seconds: float, equivalents: list[dict]) -> ModuleResult:
    """Count the results mutmut left in ``work`` for ``module``."""
    meta = json.loads((work / "mutants" / (module + ".meta")).read_text())
    result = ModuleResult(module=module, seconds=round(seconds, 1))
    survivors = []
    for name, code in meta["exit_code_by_key"].items():
        status = STATUS.get(code, "other")
        if status == "not checked":  # left out by --sample
            result.unchecked += 1
            continue
        result.mutants += 1
        if status == "killed":
            result.killed += 1
        elif status == "timeout":
            result.timeout += 1
        else:  # survived, or no test reaches it (e.g. code read only under zennit >= 1.0)
            survivors.append(name)
    for name, diff in diffs(work, survivors).items():
        function = function_of(name)
        if equivalent(module, name, diff, equivalents):
            result.equivalent += 1
            continue
        status = STATUS.get(meta["exit_code_by_key"][name], "other")
        if status == "survived":
            result.survived += 1
        else:
            result.other += 1
        result.survivors.append(
            {"mutant": name, "function": function, "status": status, "diff": diff}
        )
    return result


def previous_results() -> list[ModuleResult]:
    """The rows of the last ``summary.json`` (kept for the modules a ``--reuse`` run skips)."""
    path = REPORTS / "summary.json"
    if not path.exists():
        return []
    names = set(ModuleResult.__dataclass_fields__)
    rows = json.loads(path.read_text())
    return [ModuleResult(**{k: v for k, v in row.items() if k in names}) for row in rows]


def write_summary(results: list[ModuleResult]) -> None:
    """``reports/mutation/summary.json`` and ``summary.md`` (table plus the live survivors)."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    rows = [dict(asdict(r), kill_rate=round(r.kill_rate, 1)) for r in results]
    (REPORTS / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    head = (
        "| module | mutants | killed | equivalent | survived | timeout | other "
        "| kill rate | wall time | not run | run |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    table = [head] + [
        f"| {r.module} | {r.mutants} | {r.killed} | {r.equivalent} | {r.survived} | {r.timeout} "
        f"| {r.other} | {r.kill_rate:.1f} % | {r.seconds / 60:.1f} min | {r.unchecked} "
        f"| {r.run} |"
        for r in results
    ]
    text = [
        "# Mutation testing (mutmut)",
        "",
        *table,
        "",
        "Kill rate: (killed + timeout) / (mutants - equivalent). "
        "`other`: no tests reach the mutant, or it crashed the worker. `not run`: left out "
        "by `--sample` (the counts are of the sample).",
        "",
    ]
    for r in results:
        for s in r.survivors:
            text += [f"## {s['mutant']} ({s['status']})", ""]
            if "diff" in s:
                text += ["```diff", s["diff"], "```", ""]
    (REPORTS / "summary.md").write_text("\n".join(text))
    print("\n".join(table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module paths (default: every core module)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant workers")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the scratch copies and trace of the last run"
    )
    parser.add_argument(
        "--retrace", action="store_true", help="with --reuse: trace every test again"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=1,
        choices=(1, 2, 5, 10),
        help="run about 1/N of the mutants (by the last digit of their number)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="one mutmut run for all modules of a package (their wall time is the joint one)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rewrite the summary from the last run (e.g. after adding equivalents)",
    )
    parser.add_argument(
        "--survivors", action="store_true", help="with --reuse: rerun only last run's survivors"
    )
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules for m in m.split()] or list(CORE_MODULES)
    for module in modules:
        if not (ROOT / module).is_file() or module.split("/")[0] not in TEST_SELECTION:
            parser.error(f"modules: {module!r} is not a module of zennit_ext or captum_ext")
    equivalents = load_equivalents()
    run = "survivors" if args.reuse and args.survivors else "full"
    run = f"{run}, sample 1/{args.sample}" if args.sample > 1 else run
    previous = previous_results()
    keep_all = args.reuse or args.report
    kept = [r for r in previous if r.module not in modules] if keep_all else []
    results = []
    for package in TEST_SELECTION:
        selected = [m for m in modules if m.startswith(package + "/")]
        if not selected:
            continue
        if args.report:
            work = WORK / package
            selected = [m for m in selected if (work / "mutants" / (m + ".meta")).exists()]
            before = {r.module: r for r in previous}
            seconds = {m: before[m].seconds if m in before else 0.0 for m in selected}
        else:
            work = prepare(package, selected, args.reuse, args.reuse and args.retrace)
            survivors = args.reuse and args.survivors
            seconds = run_mutmut(
                work,
                selected,
                args.max_children,
                survivors,
                args.sample,
                equivalents,
                args.together,
            )
        for module in selected:
            results.append(collect(work, module, seconds.get(module, 0.0), equivalents))
            results[-1].run = before[module].run if args.report and module in before else run
            if not results[-1].unchecked:  # every mutant ran: not a sample
                results[-1].run = results[-1].run.split(", sample")[0]
        order = {m: i for i, m in enumerate(CORE_MODULES)}
        write_summary(sorted(kept + results, key=lambda r: order.get(r.module, len(order))))
    below = [r.module for r in results if not r.kill_rate >= 90.0]
    if below:
        print(f"kill rate below 90 %: {', '.join(below)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
