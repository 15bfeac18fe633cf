"""Coverage of torchvision's model zoo: which methods run, stay finite and conserve relevance.

``python -m benchmarks zoo [--quick]``.

torchvision classification models (quick: five at 64²; full: one per family at 224², the
smallest variant; models over 150 M parameters skipped) with random weights
(:mod:`benchmarks.zoo_models`), and Hugging Face BERT and ViT built from configs when
``transformers`` is installed (:mod:`benchmarks.zoo_hf`), one input, the largest logit explained.
Methods and what "valid" means:

- ``zennit``: Zennit's ``EpsilonPlusFlat`` with Zennit's canonizers (``ResNetCanonizer`` for
  ResNets, ``SequentialMergeBatchNorm`` otherwise) — what a Zennit user writes today, the
  anchor of the coverage matrix;
- ``attnlrp``, ``cp_lrp``: our composites with their default ``'auto'`` canonizers;
- ``plrp_lambda`` (p = 0.2), ``plrp_m``: PLRP over ``attnlrp``;
- LRP-type methods: ``ratio`` = input relevance ÷ output relevance on the model itself (biases
  absorb a share, so 0.5–1 is plausible), and ``cons_err`` = |input − output| ÷ |output| on the
  :func:`~benchmarks.zoo_models.bias_free` copy in float64 with ε = stabilizer = 10⁻¹², where
  conservation must hold
  (PLRP prunes relevance, so only its finiteness and its ratio are reported);
- ``nrm``: ``NRM(model, layers)`` with its defaults on the last two unit layers of the
  bias-free float64 copy (on the random-weight models γ meets negative column sums and NRM
  refuses with ``PositiveSumError``), ``cons_err`` = max |reached + Σ stopped − 1| (NRM raises
  instead of returning a wrong number: the error is reported);
- ``paths``: ``NeuronPaths`` graph over the same layers; ``synergy``: ``LayerSynergy`` with
  eight channel groups of the top layer (perturbation: runs everywhere).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from benchmarks.report import Report
from benchmarks.zoo_models import (
    MAX_PARAMETERS,
    ZooEntry,
    bias_free,
    build,
    example_input,
    parameter_count,
    unit_layers,
    zoo_entries,
)

__all__ = ["run"]

LRP_METHODS = ("zennit", "attnlrp", "cp_lrp", "plrp_lambda", "plrp_m")
CONSERVING = ("zennit", "attnlrp", "cp_lrp")
TOLERANCE = 1e-4
# the conservation check on the bias-free float64 copy: ε's own absorption would hide the rest
_EXACT = {"epsilon": 1e-12, "stabilizer": 1e-12}


def _zennit_composite(model: nn.Module, exact: bool = False) -> Any:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    resnet = any(type(m).__name__ in ("BasicBlock", "Bottleneck") for m in model.modules())
    canonizers = [ResNetCanonizer() if resnet else SequentialMergeBatchNorm()]
    return EpsilonPlusFlat(canonizers=canonizers, **(_EXACT if exact else {}))


def _composite(method: str, model: nn.Module, exact: bool = False) -> Any:
    """The method's composite; ``exact``: ε = stabilizer = 1e-12 (conservation checks)."""
    from zennit_ext import CPLRP, PLRPM, AttnLRP, PLRPLambda

    if method == "zennit":
        return _zennit_composite(model, exact)
    if method == "attnlrp":
        return AttnLRP(**(_EXACT if exact else {}))
    if method == "cp_lrp":
        return CPLRP(**(_EXACT if exact else {}))
    if method == "plrp_lambda":
        return PLRPLambda(p=0.2, composite=AttnLRP())
    return PLRPM(composite=AttnLRP())


def _lrp(
    method: str, model: nn.Module, x: torch.Tensor, exact: bool = False
) -> tuple[float, float]:
    """(input relevance sum, output relevance) for the largest logit of the first sample."""
    from zennit.attribution import Gradient

    with torch.no_grad():
        logits = model(x)
    target = int(logits[0].argmax())
    one_hot = torch.zeros_like(logits)
    one_hot[:, target] = logits[:, target]
    with Gradient(model, _composite(method, model, exact)) as attributor:
        _, relevance = attributor(x, one_hot)
    return float(relevance[0].sum()), float(one_hot[0].sum())


def _nrm(model: nn.Module, x: torch.Tensor) -> float:
    from zennit_ext import NRM

    with NRM(model, unit_layers(model)).explain(x.double(), _top(model, x.double())) as e:
        total = e.reached + sum(e.stopped.values())
    return float((total - 1).abs().max())


def _paths(model: nn.Module, x: torch.Tensor) -> float:
    from zennit_ext import NeuronPaths

    x = x.double()
    graph = NeuronPaths(model, unit_layers(model)).graph(x, _top(model, x))
    return float(graph.top_paths(k=3).score.abs().sum())


def _synergy(model: nn.Module, x: torch.Tensor) -> float:
    from captum_ext import LayerSynergy

    layer = dict(model.named_modules())[unit_layers(model, 1)[0]]
    with torch.no_grad():
        captured: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda m, a, o: captured.append(o))
        try:
            model(x)
        finally:
            handle.remove()
    channels = captured[0].shape[1]
    groups = torch.arange(channels) * 8 // channels
    shape = [1, channels] + [1] * (captured[0].dim() - 2)
    mask = groups.reshape(shape).expand(captured[0].shape[:1] + captured[0].shape[1:]).clone()
    result = LayerSynergy(model, layer).attribute(x, target=_top(model, x), layer_mask=mask[:1])
    return float(torch.as_tensor(result).abs().sum())


def _top(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x)[0].argmax())


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, str]:
    start = time.perf_counter()
    try:
        value, error = fn(), ""
    except Exception as exc:  # noqa: BLE001 - the matrix records every failure
        value, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return value, time.perf_counter() - start, error


def _model_rows(entry: ZooEntry, methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per method for one model (built once; its bias-free float64 copy likewise)."""
    model = build(entry)
    free = bias_free(build(entry, torch.float64))
    x = example_input(entry, model)
    # each method gets its own copy: a canonizer that fails midway (Zennit's
    # SequentialMergeBatchNorm on DenseNet) must not leave the next method a changed model
    return [
        _cell(entry.name, method, copy.deepcopy(model), copy.deepcopy(free), x)
        for method in methods
    ]


def _cell(
    name: str, method: str, model: nn.Module, free: nn.Module, x: torch.Tensor
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "method": method}
    if method in LRP_METHODS:
        sums, seconds, error = _timed(lambda: _lrp(method, model, x))
        row.update(runs=not error, seconds=seconds, error=error)
        if sums is not None:
            row["finite"] = math.isfinite(sums[0])
            row["ratio"] = sums[0] / sums[1] if sums[1] else float("nan")
        if method in CONSERVING and not error:
            sums64, _, row["error"] = _timed(lambda: _lrp(method, free, x.double(), exact=True))
            if sums64 is not None and sums64[1]:
                row["cons_err"] = abs(sums64[0] - sums64[1]) / abs(sums64[1])
    else:
        fn = {"nrm": _nrm, "paths": _paths, "synergy": _synergy}[method]
        # NRM's γ needs positive column sums (eq. 15): BatchNorm shifts of random weights break
        # them (PositiveSumError, a clear refusal), so NRM and paths run on the bias-free copy
        on = free if method in ("nrm", "paths") else model
        value, seconds, error = _timed(lambda: fn(on, x))
        row.update(runs=not error, seconds=seconds, error=error)
        if value is not None:
            row["finite"] = math.isfinite(value)
            if method == "nrm":
                row["cons_err"] = value
    checked = method in (*CONSERVING, "nrm")
    if method == "attnlrp" and _has_attention(model):
        # AttnLRP's softmax rule absorbs a share by design (eq. 13's bias term): reported only
        row["cons_rule"] = "softmax absorbs"
        checked = False
    row["valid"] = bool(
        row.get("runs")
        and row.get("finite")
        and (not checked or row.get("cons_err", math.inf) <= TOLERANCE)
    )
    return row


def _has_attention(model: nn.Module) -> bool:
    """Whether the model has softmax attention (torchvision's, Swin's, MaxViT's, BERT's, ViT's)."""
    return any("Attention" in type(m).__name__ for m in model.modules())


def _symbol(row: dict[str, Any]) -> str:
    """One cell of the model × method matrix: ✓ valid, ~ runs and finite (not conserving),
    ∞ not finite, ✗ fails; with the conservation error where one was measured."""
    mark = "✓" if row.get("valid") else "✗" if not row.get("runs") else "∞"
    if mark == "∞" and row.get("finite"):
        mark = "~"
    error = row.get("cons_err")
    return mark if error is None else f"{mark} {error:.0e}"


def _pivot(rows: list[dict], methods: tuple[str, ...]) -> list[dict]:
    """One row per model, one column per method (:func:`_symbol`), and the model's seconds."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    cells = {(r["model"], r["method"]): r for r in rows}
    return [
        {"model": model}
        | {m: _symbol(cells[model, m]) for m in methods if (model, m) in cells}
        | {"seconds": sum(cells[model, m].get("seconds", 0.0) for m in methods)}
        for model in models
    ]


def _matrix(rows: list[dict], methods: tuple[str, ...]) -> list[dict]:
    """One row per method: runs / finite / valid counts over the models."""
    out = []
    for method in methods:
        cells = [r for r in rows if r["method"] == method]
        out.append(
            {
                "method": method,
                "runs": f"{sum(bool(r.get('runs')) for r in cells)}/{len(cells)}",
                "finite": f"{sum(bool(r.get('finite')) for r in cells)}/{len(cells)}",
                "valid": f"{sum(bool(r.get('valid')) for r in cells)}/{len(cells)}",
                "seconds": sum(r.get("seconds", 0.0) for r in cells),
            }
        )
    return out


def run(report: Report, quick: bool, progress: bool) -> None:
    """Fill the zoo report: the coverage matrix and one row per model and method."""
    methods = (*LRP_METHODS, "nrm", "paths", "synergy")
    entries = zoo_entries(quick)
    skipped, rows = [], []
    for entry in tqdm(entries, desc="zoo", disable=not progress):
        size = parameter_count(entry)
        if size > MAX_PARAMETERS:
            skipped.append(f"{entry.name} ({size / 1e6:.0f}M parameters)")
            continue
        rows += _model_rows(entry, methods)
    report.add_text(__doc__.split("\n\n", 1)[1])
    report.add_table(
        "Coverage",
        _matrix(rows, methods),
        note=f"{len(entries) - len(skipped)} models at {64 if quick else 224}² "
        "(quick ViT-B/16 32², MaxViT 224², Inception v3 ≥ 75²; Hugging Face BERT with 16 "
        "tokens (quick, 2 layers) or 128 (full, BERT-base config), HF ViT 32² (quick, 2 "
        "layers) or ViT-B/16 config at 224²); valid = runs, finite, and "
        f"for zennit/attnlrp/cp_lrp/nrm a conservation error ≤ {TOLERANCE:g}."
        + (f" Skipped: {', '.join(skipped)}." if skipped else ""),
        key="coverage",
    )
    report.add_table(
        "Models × methods",
        _pivot(rows, methods),
        note="✓ valid, ~ runs and finite but outside the tolerance, ∞ not finite, ✗ fails; "
        "the number is the conservation error (LRP: bias-free float64 copy; NRM: "
        "max |reached + Σ stopped − 1|). attnlrp on attention models: its softmax rule absorbs "
        "a share by design, so its error is reported, not held to the tolerance.",
        key="matrix",
    )
    report.add_table(
        "Per model and method",
        rows,
        direction={"cons_err": "lower"},
        key="cells",
    )
