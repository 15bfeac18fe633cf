"""Report writer: ``report.md``, ``results.json`` and PNG figures under one folder."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Report"]


def _jsonable(value: Any) -> Any:
    """Numbers, arrays and tensors as plain JSON values (NaN/inf become None)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return "–"
        return f"{value:.4g}"
    return str(value)


class Report:
    """Collects one suite's tables, figures and numbers and writes them to ``out``.

    Parameters
    ----------
    suite : str
        Suite name, the report's title.
    out : str or pathlib.Path
        Folder for ``report.md``, ``results.json`` and the PNGs (created).

    Examples
    --------
    >>> report = Report("plrp", "reports/plrp")                      # doctest: +SKIP
    >>> report.add_table("Gini vs p", rows, direction={"gini": "higher"})  # doctest: +SKIP
    >>> report.add_figure(fig, "gini_vs_p", "Gini of the heatmaps")  # doctest: +SKIP
    >>> report.write()                                               # doctest: +SKIP
    """

    def __init__(self, suite: str, out: str | Path) -> None:
        self.suite = suite
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {}
        self._sections: list[str] = []

    def add_text(self, markdown: str) -> None:
        """Append a paragraph of markdown."""
        self._sections.append(markdown.strip())

    def add_table(
        self,
        title: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        direction: Mapping[str, str] | None = None,
        note: str | None = None,
        key: str | None = None,
    ) -> None:
        """Append a markdown table and store its rows under ``results[key or title]``.

        Parameters
        ----------
        title : str
            Section heading.
        rows : sequence of mappings
            One mapping per row; the columns are the keys of the first row.
        direction : mapping, optional
            Column name → ``"higher"`` or ``"lower"`` (which is better); shown in the header.
        note : str, optional
            Text under the table.
        key : str, optional
            Key in ``results``; defaults to ``title``.
        """
        direction = dict(direction or {})
        for column, way in direction.items():
            if way not in ("higher", "lower"):
                raise ValueError(f"direction[{column!r}] must be 'higher' or 'lower', got {way!r}")
        self.results[key or title] = [dict(row) for row in rows]
        lines = [f"## {title}", ""]
        if rows:
            columns = list(rows[0].keys())
            arrows = {"higher": " ↑", "lower": " ↓"}
            header = [f"{c}{arrows.get(direction.get(c, ''), '')}" for c in columns]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
        else:
            lines.append("(no rows)")
        if direction:
            lines += ["", "↑ higher is better, ↓ lower is better."]
        if note:
            lines += ["", note.strip()]
        self._sections.append("\n".join(lines))

    def add_figure(self, fig: Any, name: str, caption: str) -> Path:
        """Save a matplotlib figure as ``<name>.png``, close it, and reference it in the report.

        Returns
        -------
        pathlib.Path
            The PNG written.
        """
        import matplotlib.pyplot as plt

        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.results.setdefault("figures", []).append(path.name)
        self._sections.append(f"![{caption}]({path.name})\n\n*{caption}*")
        return path

    def add_speed(self, name: str, timing: Mapping[str, float], *, ours: str, anchor: str) -> None:
        """Record a :func:`benchmarks.timing.compare` result as a table row and in results."""
        row = {"measurement": name, "ours": ours, "anchor": anchor, **timing}
        self.results.setdefault("speed", []).append(dict(row))
        self._sections.append(
            f"**Speed – {name}**: {ours} {timing['ours_s']:.4g} s vs {anchor} "
            f"{timing['anchor_s']:.4g} s → ratio {timing['ratio']:.3g} "
            f"(speed-up {timing['speedup']:.3g}×, {timing.get('threads', '?')} threads)"
        )

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of the suite (also when it raises); :meth:`write` lists the stages.

        The seconds land in ``results["stages_s"][name]``, so a suite's budget can be read
        off its report.
        """
        start = time.perf_counter()
        try:
            yield
        finally:
            self.results.setdefault("stages_s", {})[name] = time.perf_counter() - start

    def write(self) -> Path:
        """Write ``report.md`` and ``results.json``; return the path of ``report.md``."""
        (self.out / "results.json").write_text(json.dumps(_jsonable(self.results), indent=2))
        sections = list(self._sections)
        stages = self.results.get("stages_s")
        if stages:
            sections.append(
                "Wall time by stage: "
                + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
                + "."
            )
        body = f"# {self.suite}\n\n" + "\n\n".join(sections) + "\n"
        path = self.out / "report.md"
        path.write_text(body)
        return path
