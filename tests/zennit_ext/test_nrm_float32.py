"""float32 NRM and NeuronPaths give what float64 gives, at the size of VGG16's features.28.

Every comparison explains the same inputs (batch 2, 3 × 28 × 28) with a float32 model and its
float64 copy (``copy.deepcopy(model).double()``). The model: a stride-2 stem convolution (flat
rule), a 64 → 512 convolution whose BatchNorm keeps 8 channels at 0, a depthwise convolution
(z⁺) where the relevance of those channels stops (zero column sums), the two set layers
``features.9`` and ``features.12``, 512 → 512 3×3 convolutions at 14 × 14 (100,352 units
each, the size of VGG16's features.26 and features.28; γ = 0.25, whose signed weights make
the column sums and messages sums of cancelling terms), average pooling and a dense head.
Weights and biases are random, BatchNorms have random affine parameters and running
statistics near those of the data (:func:`_calibrate`).

Two choices keep the comparison about rounding, not about the forward pass's near-ties:

- eq. 15 holds (every merged bias of a γ layer is ≤ 0), so NRM runs with the default
  ``on_violation='raise'`` (the comparison warns instead: a check that fires fails one test,
  :func:`test_no_check_fires_in_float32`). Where a positive bias holds up a neuron whose γ
  column sum is near 0, its normalized relevance is ill-conditioned in the layer's input: in a
  draw with such neurons, the float32 forward pass's rounding (2·10⁻⁷) alone moved up to 10⁻³
  of the relevance mass of the heatmap and of the lowest messages, also with NRM's backward
  recomputed in float64 from the float32 activations (measured), so no change in NRM can make
  such a model agree; the defaults refuse it.
- no max pooling: a window whose two largest inputs lie within float32 rounding of each other
  routes its relevance to another neuron in float32 than in float64.

Tolerance rule. Relevance is measured in units of the total output relevance, 1 per sample
(eq. 18), and every quantity may differ by ``TOL = 1e-4`` of its own scale:

- a sum over units (joint, marginal, ``reached``, ``stopped``, the total of a heatmap or of a
  pairwise table, sums over 10⁵–10⁶ entries): ``|Δ| ≤ TOL`` (its scale is the total, 1);
- a tensor of per-unit relevance (heatmap, the messages of the checked pass at every rule
  layer, a pairwise table, unit relevance, edge weights): ``Σ|Δ| ≤ TOL · Σ|reference|`` per
  sample, i.e. float32 puts at most ``TOL`` of the relevance mass elsewhere than float64;
- a conditional ``R(S, G) / R(G)``: the sum tolerance carried through the quotient,
  ``TOL · (1 + |R(S | G)|) / |R(G)|``;
- column sums divide the messages (eq. 17), so a relative error δ_j of neuron j's sum sends
  ``δ_j |m_j|`` of relevance astray: ``Σ_j |m_j| |Δs_j| / |s_j| ≤ TOL · Σ|m|``; zero sums
  (where relevance stops) are zero in both dtypes;
- the units ``select_units`` keeps are equal except at near-ties: units whose float64 score
  is within ``TOL`` of the threshold ``mean − c·σ``.

float32 rounds each operation to 6·10⁻⁸; the ≤ 2·10⁻⁶ measured come from the cancelling
terms. The checks with a dtype-dependent tolerance must not fire in float32 at this size: the
conservation check of the checked pass (``reached + Σ stopped = 1``, √eps of the dtype times
the largest absolute relevance mass) and the agreement checks of the fast paths (√eps of the
largest value). The conservation check must still catch, in float32, a residual add done in
``forward`` (``h + block(h)``: no module hook sees it, and the skip doubles the relevance).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from typing import Any

import pytest
import torch
from random_modules import random_bn
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import MixedComposite, NameMapComposite
from zennit.core import Composite
from zennit.layer import Sum
from zennit.rules import ZPlus

from zennit_ext import NRM
from zennit_ext.nrm import engine
from zennit_ext.nrm.rules import nrm_composite
from zennit_ext.paths.api import NeuronPaths
from zennit_ext.paths.graph import select_units

TOL = 1e-4
LAYERS = ["features.9", "features.12"]
TARGET = torch.tensor([3, 7])
GAMMA = (3, 9, 12)  # the γ layers of `features` (the stem is flat, the depthwise layer z⁺)
DEAD = 8  # channels of features.3 that a BatchNorm shift of -10 keeps at 0 after the ReLU
CONSERVATION = "relevance is not conserved"


def _model() -> nn.Module:
    """The float32 test network in eval mode (see the module docstring)."""
    torch.manual_seed(0)  # convolution weights and biases: PyTorch's default initialization
    features = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 512, 3, padding=1),
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.Conv2d(512, 512, 3, padding=1, groups=512),
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.Conv2d(512, 512, 3, padding=1),
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.Conv2d(512, 512, 3, padding=1),
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.AvgPool2d(2),
    )
    layers = OrderedDict(features=features, flatten=nn.Flatten(), classifier=nn.Linear(25088, 10))
    model = nn.Sequential(layers)
    _calibrate(model, features)
    return model.eval()


def _calibrate(model: nn.Module, features: nn.Sequential) -> None:
    """Random BatchNorms with running statistics near those of the data.

    Affine scales in [0.5, 1.5] and shifts N(0, 0.1²); the running statistics of 16 random
    images, their means moved by N(0, 0.1²) σ and variances scaled by [0.8, 1.25]. The shifts
    of the γ layers are then capped so that their merged bias is ≤ 0: a neuron with a positive
    output has a positive column sum (eq. 15).
    """
    generator = torch.Generator().manual_seed(0)
    norms = [module for module in features if isinstance(module, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
            norm.bias.copy_(0.1 * torch.randn(norm.num_features, generator=generator))
            norm.momentum = None  # the running statistics of one batch are its own
        model.train()(torch.rand(16, 3, 28, 28, generator=generator))
        for norm in norms:
            sigma = norm.running_var.sqrt()
            norm.running_mean.add_(0.1 * sigma * torch.randn(len(sigma), generator=generator))
            norm.running_var.mul_(0.8 + 0.45 * torch.rand(len(sigma), generator=generator))
        for index in GAMMA:
            conv, norm = features[index], features[index + 1]
            scale = norm.weight / (norm.running_var + norm.eps).sqrt()
            norm.bias.sub_(((conv.bias - norm.running_mean) * scale + norm.bias).clamp(min=0))
        features[4].bias[:DEAD] = -10.0


def _composite() -> Composite:
    """NRM's default rules (flat, γ, z⁺) with z⁺ on the depthwise convolution, merged BNs."""
    return MixedComposite(
        [NameMapComposite([(("features.6",), ZPlus())]), nrm_composite()],
        canonizers=[SequentialMergeBatchNorm()],
    )


def _input(dtype: torch.dtype) -> torch.Tensor:
    """(2, 3, 28, 28): the same values in both dtypes."""
    return torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(1)).to(dtype)


def _explain(model: nn.Module, x: torch.Tensor, graph: bool) -> dict[str, Any]:
    """Every compared quantity of one explanation of ``x`` (with ``graph``, also
    ``NeuronPaths.graph``: its own explanation), the warnings and the fast-path decisions
    (``fallbacks``: tables recomputed without the fast path, ``no edges``: edge tables the
    agreement checks refused)."""
    decisions: dict[str, int] = {"fallbacks": 0, "no edges": 0}
    interactions, edges = engine.interactions, engine.edges

    def counted_interactions(session: Any, names: Any, levels: Any, fast: Any = None) -> Any:
        decisions["fallbacks"] += fast is False
        return interactions(session, names, levels, fast)

    def counted_edges(*args: Any) -> Any:
        table = edges(*args)
        decisions["no edges"] += table is None
        return table

    every_third = list(range(0, 512 * 14 * 14, 3))  # neurons of features.12
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        patch.setattr(engine, "interactions", counted_interactions)
        patch.setattr(engine, "edges", counted_edges)
        warnings.simplefilter("always")
        nrm = NRM(model, LAYERS, composite=_composite(), on_violation="warn")
        with nrm.explain(x, TARGET) as e:
            session = e.session
            sums = {
                name: hook.column_sums(session.modules[name], session.messages[name].shape)
                for name, hook in session.hooks.items()
            }
            result = {
                "rules": {
                    name: type(hook).__bases__[1].__name__ for name, hook in session.hooks.items()
                },
                "sums": sums,
                "messages": {name: session.messages[name] for name in sums},
                "reached": e.reached,
                "stopped": e.stopped,
                "heatmap": e.heatmap(),
                "heatmap of a set": e.heatmap({"features.12": list(range(0, 512, 2))}, "channel"),
                "joint of channels": e.joint(
                    {"features.9": list(range(0, 512, 3)), "features.12": list(range(0, 512, 2))},
                    "channel",
                ),
                "joint of neurons": e.joint({"features.12": every_third}),
                "marginal": e.marginal("features.9", list(range(100)), "channel"),
                "pairwise": e.pairwise("features.9", "features.12"),
                "conditionals": [  # (R(S | G), R(G)); G: half the channels, one channel
                    (e.conditional(sets, given, "channel"), e.joint(given, "channel"))
                    for sets, given in [
                        ({"features.9": [1, 5, 7]}, {"features.12": list(range(256))}),
                        ({"features.9": list(range(0, 512, 2))}, {"features.12": [50]}),
                    ]
                ],
            }
        if graph:
            paths = NeuronPaths(model, LAYERS, composite=_composite(), on_violation="warn")
            result["graph"] = paths.graph(x, TARGET)
    result["warnings"] = [str(warning.message) for warning in caught]
    return {**result, **decisions}


@pytest.fixture(scope="module")
def explained() -> tuple[dict[str, Any], dict[str, Any]]:
    """(float32 results with NeuronPaths' graph, float64 results) of the same model and
    inputs."""
    model = _model()
    reference = copy.deepcopy(model).double()
    return _explain(model, _input(torch.float32), True), _explain(
        reference, _input(torch.float64), False
    )


def _assert_sum_close(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    """Sums over units, (batch,): ``|Δ| ≤ TOL`` of the total relevance."""
    assert ours.dtype == torch.float32 and reference.dtype == torch.float64, what
    error = (ours.double() - reference).abs().max().item()
    assert error <= TOL, f"{what}: float32 differs from float64 by {error:.2e} > {TOL:.0e}"


def _assert_mass_close(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    """Per-unit relevance, (batch, ...): ``Σ|Δ| ≤ TOL · Σ|reference|`` per sample."""
    assert ours.dtype == torch.float32 and reference.dtype == torch.float64, what
    moved = (ours.double() - reference).flatten(1).abs().sum(1)
    ratio = (moved / reference.flatten(1).abs().sum(1)).max().item()
    assert ratio <= TOL, f"{what}: float32 moves {ratio:.2e} of the relevance mass > {TOL:.0e}"


def test_the_model_has_the_intended_rules_and_stops(explained):
    for result in explained:
        assert result["rules"] == {
            "features.0": "Flat",
            "features.3": "Gamma",
            "features.6": "ZPlus",
            "features.9": "Gamma",
            "features.12": "Gamma",
            "features.15": "Norm",
            "classifier": "ZPlus",
        }
        assert result["messages"]["features.12"][0].numel() == 100_352
        assert result["stopped"]["features.6"].gt(0.01).all()  # the dead channels end there
        assert result["messages"]["features.9"].lt(0).any()  # γ: relevance of both signs


def test_column_sums_and_normalized_messages(explained):
    """normalize.py: the column sums of every rule layer and the messages they normalize."""
    ours, reference = explained
    for name, sums in reference["sums"].items():
        mine, message = ours["sums"][name], reference["messages"][name]
        assert mine.dtype == torch.float32 and mine.shape == sums.shape
        assert torch.equal(mine == 0, sums == 0), name  # relevance stops at the same neurons
        safe = torch.where(sums == 0, 1.0, sums)
        astray = (message.abs() * (mine.double() - sums).abs() / safe.abs()).flatten(1).sum(1)
        ratio = (astray / message.flatten(1).abs().sum(1)).max().item()
        assert ratio <= TOL, f"column sums of {name}: {ratio:.2e} of the relevance astray"
        _assert_mass_close(ours["messages"][name], message, f"message at {name}")


def test_reached_and_stopped(explained):
    ours, reference = explained
    _assert_sum_close(ours["reached"], reference["reached"], "reached")
    assert ours["stopped"].keys() == reference["stopped"].keys()
    for name, stopped in reference["stopped"].items():
        _assert_sum_close(ours["stopped"][name], stopped, f"stopped at {name}")


def test_no_check_fires_in_float32(explained):
    """At 10⁵ neurons per layer: no conservation warning, reached + Σ stopped = 1 within the
    rounding, and the fast paths' agreement checks accept every table."""
    for result in explained:
        assert not [text for text in result["warnings"] if CONSERVATION in text]
        assert not [text for text in result["warnings"] if "negative column sums" in text]
        assert result["fallbacks"] == result["no edges"] == 0
        total = result["reached"].double() + sum(result["stopped"].values())
        assert (total - 1).abs().max() <= TOL


@pytest.mark.parametrize("key", ["joint of channels", "joint of neurons", "marginal"])
def test_joint_and_marginal(explained, key):
    ours, reference = explained
    _assert_sum_close(ours[key], reference[key], key)


def test_conditional(explained):
    ours, reference = explained
    for (mine, _), (expected, given) in zip(
        ours["conditionals"], reference["conditionals"], strict=True
    ):
        assert mine.dtype == torch.float32 and given.abs().min() > 1e-3
        tolerance = TOL * (1 + expected.abs()) / given.abs()
        error = (mine.double() - expected).abs()
        assert (error <= tolerance).all(), f"conditional: {error.tolist()} > {tolerance.tolist()}"


@pytest.mark.parametrize("key", ["heatmap", "heatmap of a set"])
def test_heatmaps(explained, key):
    ours, reference = explained
    _assert_mass_close(ours[key], reference[key], key)
    _assert_sum_close(ours[key].flatten(1).sum(1), reference[key].flatten(1).sum(1), key)


def test_pairwise(explained):
    """The 512 × 512 channel table of the two set layers (2 · 512² entries)."""
    ours, reference = explained
    _assert_mass_close(ours["pairwise"], reference["pairwise"], "pairwise")
    _assert_sum_close(ours["pairwise"].sum((1, 2)), reference["pairwise"].sum((1, 2)), "total")


def test_neuron_paths_unit_selection_and_edges(explained):
    """float32 ``NeuronPaths.graph`` against float64's pairwise table: for adjacent layers it
    is the table of consecutive edges (the same engine path), and its row and column sums are
    the unit relevance of the two layers (every walk passes one unit of each)."""
    ours, table = explained[0]["graph"], explained[1]["pairwise"]
    assert ours.layers == tuple(LAYERS) and ours.c == 1.0 and ours.score == "relevance"
    for name, scores in zip(LAYERS, (table.sum(2), table.sum(1)), strict=True):
        _assert_mass_close(ours.relevance[name], scores, f"unit relevance of {name}")
        expected = select_units(scores)  # c = 1: mean − σ
        threshold = scores.mean(1, keepdim=True) - scores.std(1, correction=0, keepdim=True)
        differ = ours.kept[name] != expected
        assert ((scores - threshold).abs()[differ] <= TOL).all(), name
        assert not expected.all()  # the threshold splits the units
    assert list(ours.edges) == [tuple(LAYERS)]
    assert ours.edges[tuple(LAYERS)].shape == table.shape == (2, 512, 512)
    _assert_mass_close(ours.edges[tuple(LAYERS)], table, "edges")


# ---- the conservation check catches relevance that module hooks cannot see


class _Residual(nn.Module):
    """A 512-channel block at 14 × 14 with a skip: ``h + block(h)`` in ``forward`` (no hook
    sees the add, so the skip doubles the relevance) or a Zennit ``Sum`` module (normalized)."""

    def __init__(self, skip: str) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1),
            random_bn(64, 6),
            nn.ReLU(),
            nn.Conv2d(64, 512, 3, padding=1),
            random_bn(512, 7),
            nn.ReLU(),
        )
        self.block = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1), random_bn(512, 8), nn.ReLU())
        self.add = Sum()
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(25088, 10))
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if self.skip == "functional":
            return self.head(h + self.block(h))
        return self.head(self.add(torch.stack([h, self.block(h)], dim=-1)))


def _residual_nrm(skip: str, on_violation: str) -> NRM:
    """z⁺ on the convolutions (no eq. 15 violations), so only the conservation check can fire."""
    composite = nrm_composite(gamma=None, canonizers=[SequentialMergeBatchNorm()])
    return NRM(_Residual(skip).eval(), ["block.0"], composite, on_violation=on_violation)


def test_the_conservation_check_catches_a_functional_residual_add_in_float32():
    x = _input(torch.float32)
    with pytest.raises(ValueError, match=CONSERVATION):
        _residual_nrm("functional", "raise").explain(x, TARGET)
    with pytest.warns(RuntimeWarning, match=CONSERVATION):
        with _residual_nrm("functional", "warn").explain(x, TARGET) as e:
            total = e.reached + sum(e.stopped.values())
    _assert_sum_close(total, torch.full((2,), 2.0, dtype=torch.float64), "doubled relevance")


def test_the_same_skip_as_a_sum_module_conserves_relevance_in_float32():
    with _residual_nrm("module", "raise").explain(_input(torch.float32), TARGET) as e:
        total = e.reached + sum(e.stopped.values())
    _assert_sum_close(total, torch.ones(2, dtype=torch.float64), "reached + stopped")
