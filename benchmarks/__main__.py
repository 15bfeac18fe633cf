"""``python -m benchmarks SUITE [--quick] [--out DIR]``.

SUITE is one of plrp, nrm, synergy, sync, paths, atlas, zoo, vit, tour, all.

Each suite is a module ``benchmarks.<suite>`` with one entry point
``run(report: Report, quick: bool, progress: bool) -> None`` that fills the report.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path

from benchmarks.report import Report

SUITES = ("plrp", "nrm", "synergy", "sync", "paths", "atlas", "zoo", "vit")


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"benchmarks.{name}") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("suite", choices=(*SUITES, "tour", "all"))
    parser.add_argument("--quick", action="store_true", help="small settings (≤ 2 min a suite)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (reports/<suite>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    if args.suite == "all":
        names = [s for s in SUITES if _available(s)] + ["tour"]
        missing = [s for s in SUITES if not _available(s)]
        if missing:
            print(f"not yet built, skipped: {', '.join(missing)}")
    else:
        names = [args.suite]
        if not _available(args.suite):
            parser.error(f"suite {args.suite!r} is not built yet")

    written = []
    times: dict[str, float] = {}
    for name in names:
        root = args.out or Path("reports")
        out = args.out if (args.out and len(names) == 1) else root / name
        report = Report(name, out)
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.perf_counter()
        print(f"== {name} {'(quick)' if args.quick else ''}", flush=True)
        module.run(report, quick=args.quick, progress=not args.no_progress)
        report.results["wall_time_s"] = times[name] = time.perf_counter() - start
        report.results["quick"] = args.quick
        written.append(report.write())
        print(f"   {name}: {report.results['wall_time_s']:.1f} s → {written[-1]}", flush=True)
    print("reports written:\n" + "\n".join(f"  {p}" for p in written))
    print("time per suite:\n" + "\n".join(f"  {n:<8} {t:7.1f} s" for n, t in times.items()))
    print(f"  {'total':<8} {sum(times.values()):7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
