"""Speed of the transformer methods as ratios to an anchor in the same process.

- AttnLRP (ours) vs LXT 2.1's documented torchvision-ViT recipe (``lxt.efficient``'s
  ``monkey_patch`` and ``monkey_patch_zennit``, Zennit's γ on conv/linear, input × gradient),
  and CP-LRP (ours) vs the same; target ≤ 1.2×. Our defaults give the γ-rule to every linear
  layer, the attention's q/k/v and output projections included (LXT's recipe runs those as
  ``F.linear``: LRP-0), so they do more work than the anchor; ``cp_lrp_lxt_rules_vs_lxt``
  times CP-LRP with LXT's own rule choice (the configuration whose heatmaps agree with LXT's
  to 1e-5, ``tests/zennit_ext/test_attention_lxt.py``). Ours and the anchor alternate, one
  call each per round (LXT's patch is global: applied and undone around every anchor call);
- PLRP-λ over AttnLRP vs AttnLRP (target ≤ 1.3×);
- NRM's feature × feature joint relevance of two consecutive encoder blocks
  (``NRMExplanation.pairwise(a, b, level='feature')``, D × D pairs) vs one AttnLRP pass
  (target ≤ 2.5×), with the top entries of a cProfile of the NRM call.

Full mode: ViT-B/16 at 224², random weights (head re-drawn), one image; quick mode: a
2-block, 64-dim ViT at 32². Ratios, never asserts: the machine is shared.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from benchmarks.timing import compare

__all__ = ["TARGETS", "speed_rows", "lxt_patched", "build_vit", "measure"]

TARGETS = {
    "attnlrp_vs_lxt": 1.2,
    "cp_lrp_vs_lxt": 1.2,
    "cp_lrp_lxt_rules_vs_lxt": 1.2,
    "plrp_vs_attnlrp": 1.3,
    "nrm_vs_attnlrp": 2.5,
}


def speed_rows(timings: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Table rows: each measurement's seconds, ratio, its target and whether it is met.

    Parameters
    ----------
    timings : dict
        Measurement name (a key of :data:`TARGETS`) → :func:`benchmarks.timing.compare` result.

    Returns
    -------
    list of dict
        ``measurement``, ``ours_s``, ``anchor_s``, ``ratio``, ``target``, ``meets``.
    """
    return [
        {
            "measurement": name,
            "ours_s": t["ours_s"],
            "anchor_s": t["anchor_s"],
            "ratio": t["ratio"],
            "target": TARGETS[name],
            "meets": "yes" if t["ratio"] <= TARGETS[name] else "no",
        }
        for name, t in timings.items()
    ]


def build_vit(quick: bool) -> nn.Module:
    """ViT-B/16 at 224² (full) or a 2-block, 64-dim ViT at 32² (quick); random weights, the
    zero-initialized head re-drawn (N(0, 0.02)), eval mode."""
    import torchvision

    torch.manual_seed(0)
    if quick:
        model = torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
        )
    else:
        model = torchvision.models.vit_b_16(weights=None)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


_LXT_ATTRIBUTES = ("forward", "backward", "original_forward")


@contextlib.contextmanager
def lxt_patched() -> Iterator[None]:
    """LXT 2.1's global patches for torchvision's ViT, undone on exit (also on error).

    Saves the patched attributes of Zennit's ``BasicHook`` and of every ``torch.nn`` module
    class first; afterwards :func:`zennit_ext._lxt.lxt_patch_active` is False again.
    """
    import warnings

    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from torchvision.models import vision_transformer
    from zennit.core import BasicHook

    from zennit_ext._lxt import lxt_patch_active

    classes = [BasicHook] + [
        v for v in vars(torch.nn).values() if isinstance(v, type) and issubclass(v, nn.Module)
    ]
    saved = [(c, a, vars(c)[a] if a in vars(c) else None) for c in classes for a in _LXT_ATTRIBUTES]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monkey_patch(vision_transformer, verbose=False)
            monkey_patch_zennit(verbose=False)
        yield
    finally:
        for cls, name, value in saved:
            if value is not None:
                setattr(cls, name, value)
            elif name in vars(cls):
                delattr(cls, name)
    if lxt_patch_active():
        raise RuntimeError("LXT's patch could not be undone")


def _lrp_pass(model: nn.Module, x: torch.Tensor, composite: Any) -> Callable[[], Any]:
    from zennit.attribution import Gradient

    def run() -> torch.Tensor:
        with Gradient(model, composite) as attributor:
            output, relevance = attributor(x, lambda out: torch.eye(out.shape[1])[[0]] * out)
        return relevance

    return run


def _lxt_pass(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    composite = LayerMapComposite([(nn.Conv2d, Gamma(0.25)), (nn.Linear, Gamma(0.25))])

    def run() -> torch.Tensor:
        inputs = x.clone().requires_grad_()
        composite.register(model)
        try:
            output = model(inputs)
            output[0, 0].backward()
        finally:
            composite.remove()
        return inputs.detach() * inputs.grad

    return run


def _lxt_rules() -> list[tuple[Any, Any]]:
    """LXT's rule choice inside torchvision's attention: LRP-0 for the q/k/v and output
    projections (``F.linear`` there), prepended to our composite's rules."""
    from zennit.rules import Epsilon

    from zennit_ext.attention.modules import AttentionProjection

    projections = (AttentionProjection, nn.modules.linear.NonDynamicallyQuantizableLinear)
    return [(projections, Epsilon(1e-6))]


def _against_lxt(
    ours: dict[str, Callable[[], Any]], anchor: Callable[[], Any], repeats: int
) -> dict[str, dict[str, float]]:
    """Each of ``ours`` and the LXT anchor timed alternately (one warm-up round, then
    ``repeats`` rounds; medians): drift of a shared machine hits both sides alike."""
    import statistics
    import time

    seconds: dict[str, list[float]] = {name: [] for name in [*ours, "anchor"]}
    for round_ in range(repeats + 1):
        for name, fn in [*ours.items(), ("anchor", anchor)]:
            with lxt_patched() if name == "anchor" else contextlib.nullcontext():
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
            if round_:
                seconds[name].append(elapsed)
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    anchor_s = medians.pop("anchor")
    return {
        name: {
            "threads": torch.get_num_threads(),
            "ours_s": ours_s,
            "anchor_s": anchor_s,
            "ratio": ours_s / anchor_s,
            "speedup": anchor_s / ours_s,
        }
        for name, ours_s in medians.items()
    }


def _nrm_pass(model: nn.Module, x: torch.Tensor, blocks: list[str]) -> Callable[[], Any]:
    from zennit_ext import NRM

    nrm = NRM(model, blocks)

    def run() -> torch.Tensor:
        with nrm.explain(x, 0) as e:
            return e.pairwise(blocks[0], blocks[1], level="feature")

    return run


def _profile(fn: Callable[[], Any], top: int = 12) -> list[dict[str, Any]]:
    """The ``top`` functions by cumulative time in one call of ``fn`` (cProfile)."""
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler, stream=io.StringIO()).sort_stats("tottime")
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in list(stats.stats.items()):
        rows.append(
            {
                "function": f"{path.rsplit('/', 2)[-1]}:{line}({name})",
                "calls": calls,
                "own_s": own,
                "cumulative_s": cumulative,
            }
        )
    return sorted(rows, key=lambda r: -r["own_s"])[:top]


def measure(quick: bool, repeats: int = 3) -> dict[str, Any]:
    """Every speed figure on one model and one input, in one process.

    Returns
    -------
    dict
        ``timings`` (name → :func:`~benchmarks.timing.compare` result), ``profile`` (NRM's
        hottest functions), ``model``, ``input``, ``pairs`` (the D × D of the NRM call),
        ``lxt`` (whether LXT was importable).
    """
    from zennit_ext import CPLRP, AttnLRP, PLRPLambda

    model = build_vit(quick)
    size = 32 if quick else 224
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in ((0, 1) if quick else (10, 11))]
    attnlrp = _lrp_pass(model, x, AttnLRP())
    timings = {}
    try:
        import lxt.efficient  # noqa: F401

        has_lxt = True
    except ImportError:
        has_lxt = False
    if has_lxt:
        ours = {
            "attnlrp_vs_lxt": attnlrp,
            "cp_lrp_vs_lxt": _lrp_pass(model, x, CPLRP()),
            "cp_lrp_lxt_rules_vs_lxt": _lrp_pass(model, x, CPLRP(layer_map=_lxt_rules())),
        }
        timings.update(_against_lxt(ours, _lxt_pass(model, x), repeats))
    plrp = _lrp_pass(model, x, PLRPLambda(p=0.2, composite=AttnLRP()))
    timings["plrp_vs_attnlrp"] = compare(plrp, attnlrp, repeats=repeats)
    nrm = _nrm_pass(model, x, blocks)
    timings["nrm_vs_attnlrp"] = compare(nrm, attnlrp, warmup=0, repeats=1 if not quick else 3)
    return {
        "timings": timings,
        "profile": _profile(nrm),
        "model": "ViT 2×64 at 32²" if quick else "ViT-B/16 at 224²",
        "pairs": f"{model.hidden_dim}×{model.hidden_dim} ({blocks[0]} → {blocks[1]})",
        "lxt": has_lxt,
    }
