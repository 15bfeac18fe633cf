"""Bad input to every public entry point: an early ValueError naming the argument.

One table of bad calls, each with the error type and a fragment of its message, run on small
models; after every error the model holds no hook and its parameters are unchanged. Non-finite
inputs and non-finite model outputs are checked in float32 and float64 on every device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from captum_ext import (
    LayerSynergy,
    LocalActivationConsistencyLoss,
    NeuronSynergy,
    SynchronizationLoss,
    metrics,
)
from captum_ext.synergy import pruning
from captum_ext.synergy.formulas import synergistic_importance
from zennit_ext import NRM, PLRPM, PLRPLambda
from zennit_ext.paths.api import NeuronPaths, select_units

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NAN, INF = float("nan"), float("inf")


class Scale(nn.Module):
    """Multiplies its input by a constant (``inf`` makes a model with non-finite output)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def mlp(dtype: torch.dtype = torch.float64, device: str = "cpu", scale: float = 1.0) -> nn.Module:
    """A 6-5-4-3 ReLU MLP with positive biases; ``scale`` multiplies its output."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), Scale(scale)
    )
    for linear in model[:5:2]:
        linear.bias.data.uniform_(0.05, 0.3)
    return model.to(device=device, dtype=dtype).eval()


class Reciprocal(nn.Module):
    """1 / (sum of the first ``units`` inputs): infinite once all of those units are masked."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.units = units

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return 1.0 / h[:, : self.units].sum(1, keepdim=True)


def reciprocal(units: int) -> nn.Module:
    """A 6-4 ReLU layer with positive weights and biases, then :class:`Reciprocal`: finite
    unless ``units`` units of the ReLU layer are masked together."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), Reciprocal(units))
    model[0].weight.data.uniform_(0.1, 1.0)
    model[0].bias.data.uniform_(0.1, 0.3)
    return model.double().eval()


class Summed(nn.Module):
    """Two inputs, summed, into :func:`mlp`."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.body(a + b)


def cnn() -> nn.Module:
    torch.manual_seed(4)
    return (
        nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.ReLU(),
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 3),
        )
        .double()
        .eval()
    )


def with_nan(x: torch.Tensor, value: float = NAN) -> torch.Tensor:
    bad = x.clone()
    bad.view(-1)[1] = value
    return bad


class World:
    """The objects the bad calls use, built fresh for each call."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = mlp()
        self.x = torch.rand(2, 6, dtype=torch.float64)
        self.images = torch.rand(2, 1, 8, 8, dtype=torch.float64)
        self.cnn = cnn()
        self.y = torch.tensor([0, 1])
        self.nrm = NRM(self.model, layers=["1", "3"])
        self.paths = NeuronPaths(self.model, ["1", "3"])
        self.maps = torch.rand(2, 3, 4, 4, dtype=torch.float64)
        self.masks = torch.rand(2, 2, 8, 8) > 0.5

    def query(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """An ``NRMExplanation`` query on a fresh explanation, closed afterwards."""
        with self.nrm.explain(self.x, 0) as explanation:
            return getattr(explanation, name)(*args, **kwargs)

    def top(self, k: int = 2) -> Any:
        return self.paths.graph(self.x, 0).top_paths(k)

    def pruning_curve(self, **kwargs: Any) -> Any:
        arguments = {
            "scores": torch.rand(4, dtype=torch.float64),
            "x_test": self.x,
            "y_test": self.y,
            "show_progress": False,
            **kwargs,
        }
        return pruning.pruning_curve(self.model, self.model[3], **arguments)


def _masked_forward(w: World, units: torch.Tensor) -> Any:
    with pruning.masked_units(w.model[3], units):
        return w.model(w.x)


# (id, call on a World, error type, message fragment)
BAD_CALLS: list[tuple[str, Callable[[World], Any], type[Exception], str]] = [
    # NRM: constructor, explanation, one-shot methods
    (
        "NRM unknown layer",
        lambda w: NRM(w.model, layers=["9"]),
        ValueError,
        "layers ['9'] are not modules of the model",
    ),
    (
        "NRM.explain nan x",
        lambda w: w.nrm.explain(with_nan(w.x), 0),
        ValueError,
        "x must be finite",
    ),
    (
        "NRM.explain inf x",
        lambda w: w.nrm.explain(with_nan(w.x, INF), 0),
        ValueError,
        "x must be finite",
    ),
    (
        "NRM.explain inf output",
        lambda w: NRM(mlp(scale=INF), ["1"]).explain(w.x, 0),
        ValueError,
        "the model output (for a finite x) must be finite",
    ),
    (
        "NRM.explain empty batch",
        lambda w: w.nrm.explain(w.x[:0], 0),
        ValueError,
        "x must hold at least one sample",
    ),
    (
        "NRM.explain list x",
        lambda w: w.nrm.explain(w.x.tolist(), 0),
        TypeError,
        "x must be a torch.Tensor, got list",
    ),
    (
        "NRM.explain 1-D x",
        lambda w: w.nrm.explain(w.x[0], 0),
        ValueError,
        "x must have the shape (batch, ...), got (6,)",
    ),
    (
        "NRM.explain 3-D output",
        lambda w: NRM(nn.Sequential(w.model, nn.Unflatten(1, (3, 1))), ["0.1"]).explain(w.x, 0),
        ValueError,
        "NRM needs a (batch, n_outputs) model output, got (2, 3, 1)",
    ),
    (
        "NRM.explain target 3",
        lambda w: w.nrm.explain(w.x, 3),
        ValueError,
        "target 3 out of range for a forward output of shape (2, 3)",
    ),
    (
        "NRM.explain 3 targets for 2 samples",
        lambda w: w.nrm.explain(w.x, [0, 1, 2]),
        ValueError,
        "target must be None, an int, a tuple of ints, a list with one entry per input row (2) "
        "or a tensor, got [0, 1, 2]",
    ),
    (
        "NRM.explain target relevance summing to 0",
        lambda w: w.nrm.explain(w.x, torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, 0.0]])),
        ValueError,
        "target relevance must have a positive sum per sample (eq. 16)",
    ),
    (
        "NRM.explain target -4",
        lambda w: w.nrm.explain(w.x, -4),
        ValueError,
        "target -4 out of range for a forward output of shape (2, 3)",
    ),
    (
        "NRM.explain target (0, 1) indexes 2 dimensions",
        lambda w: w.nrm.explain(w.x, (0, 1)),
        ValueError,
        "target (0, 1) indexes 2 dimensions of a forward output of shape (2, 3)",
    ),
    (
        "NRM.explain nan target relevance",
        lambda w: w.nrm.explain(w.x, torch.full((2, 3), NAN, dtype=torch.float64)),
        ValueError,
        "target relevance must be finite",
    ),
    (
        "NRM.joint nan x",
        lambda w: w.nrm.joint(with_nan(w.x), 0, {"1": [0]}),
        ValueError,
        "x must be finite",
    ),
    (
        "NRM.pairwise inf output",
        lambda w: NRM(mlp(scale=INF), ["1", "3"]).pairwise(w.x, 0, "1", "3"),
        ValueError,
        "the model output (for a finite x) must be finite",
    ),
    # NRMExplanation queries
    (
        "joint unknown layer",
        lambda w: w.query("joint", {"9": [0]}),
        ValueError,
        "sets: layers ['9'] are not in NRM's layers ['1', '3']",
    ),
    (
        "joint index out of range",
        lambda w: w.query("joint", {"1": [5]}),
        ValueError,
        "set for layer '1' has neuron indices [5] outside [0, 5) (layer output (2, 5))",
    ),
    (
        "joint negative index",
        lambda w: w.query("joint", {"1": [-1]}),
        ValueError,
        "set for layer '1' has neuron indices [-1] outside [0, 5) (layer output (2, 5))",
    ),
    (
        "joint empty set",
        lambda w: w.query("joint", {"1": []}),
        ValueError,
        "set for layer '1' is empty; expected at least one neuron index (or a boolean mask)",
    ),
    (
        "conditional empty given",
        lambda w: w.query("conditional", {"1": [0]}, given={"3": []}),
        ValueError,
        "set for layer '3' is empty; expected at least one neuron index (or a boolean mask)",
    ),
    (
        "marginal unknown layer",
        lambda w: w.query("marginal", "9", [0]),
        ValueError,
        "sets: layers ['9'] are not in NRM's layers ['1', '3']",
    ),
    (
        "pairwise unknown layer",
        lambda w: w.query("pairwise", "1", "9"),
        ValueError,
        "layers: layers ['9'] are not in NRM's layers ['1', '3']",
    ),
    (
        "heatmap channel out of range",
        lambda w: w.query("heatmap", {"3": [4]}),
        ValueError,
        "set for layer '3' has neuron indices [4] outside [0, 4) (layer output (2, 4))",
    ),
    (
        "top_interactions k=0",
        lambda w: w.query("top_interactions", ["1", "3"], k=0),
        ValueError,
        "k must be an int in [1, 20]",
    ),
    (
        "joint unknown level",
        lambda w: w.query("joint", {"1": [0]}, level="bogus"),
        ValueError,
        "level must be one of",
    ),
    # zennit_ext.paths.api
    (
        "NeuronPaths unknown layer",
        lambda w: NeuronPaths(w.model, ["9"]),
        ValueError,
        "layers ['9'] are not modules of the model",
    ),
    (
        "NeuronPaths.graph nan x",
        lambda w: w.paths.graph(with_nan(w.x), 0),
        ValueError,
        "x must be finite",
    ),
    (
        "NeuronPaths.graph empty batch",
        lambda w: w.paths.graph(w.x[:0], 0),
        ValueError,
        "x must hold at least one sample",
    ),
    (
        "NeuronPaths.graph target 7",
        lambda w: w.paths.graph(w.x, 7),
        ValueError,
        "target 7 out of range for a forward output of shape (2, 3)",
    ),
    (
        "NeuronPaths.graph c=nan",
        lambda w: w.paths.graph(w.x, 0, c=NAN),
        ValueError,
        "c must be a finite real number",
    ),
    (
        "NeuronPaths.heatmap nan x",
        lambda w: w.paths.heatmap(with_nan(w.x), 0, w.top()),
        ValueError,
        "x must be finite",
    ),
    (
        "NeuronPaths.heatmap other batch",
        lambda w: w.paths.heatmap(w.x[:1], 0, w.top()),
        ValueError,
        "expected layers ['1', '3'] and batch 1",
    ),
    (
        "NeuronPaths.path_relevance nan x",
        lambda w: w.paths.path_relevance(with_nan(w.x), 0, w.top()),
        ValueError,
        "x must be finite",
    ),
    (
        "NeuronPaths.restricted_heatmap nan x",
        lambda w: w.paths.restricted_heatmap(with_nan(w.x), 0),
        ValueError,
        "x must be finite",
    ),
    (
        "NeuronPaths.tune_threshold nan x",
        lambda w: w.paths.tune_threshold(with_nan(w.x), 0),
        ValueError,
        "x must be finite",
    ),
    (
        "NeuronPaths.deconvolution nan x",
        lambda w: w.paths.deconvolution(with_nan(w.x), w.top()),
        ValueError,
        "x must be finite",
    ),
    (
        "select_units nan scores",
        lambda w: select_units(torch.tensor([[1.0, NAN]]), c=0.0),
        ValueError,
        "scores must be finite",
    ),
    ("top_paths k=0", lambda w: w.top(0), ValueError, "k must be a positive int"),
    # synergy
    (
        "LayerSynergy.compute nan inputs",
        lambda w: LayerSynergy(w.model, w.model[3]).compute(with_nan(w.x), target=0),
        ValueError,
        "inputs must be finite",
    ),
    (
        "LayerSynergy.attribute inf inputs",
        lambda w: LayerSynergy(w.model, w.model[3]).attribute(with_nan(w.x, INF), target=0),
        ValueError,
        "inputs must be finite",
    ),
    (
        "LayerSynergy.attribute nan second of two inputs",
        lambda w: LayerSynergy(m := Summed(), m.body[3]).attribute((w.x, with_nan(w.x)), target=0),
        ValueError,
        "inputs[1] must be finite",
    ),
    (
        "LayerSynergy.compute inf output",
        lambda w: LayerSynergy(m := mlp(scale=INF), m[3]).compute(w.x, target=0),
        ValueError,
        "the explained output (model output or neuron, finite inputs) must be finite",
    ),
    (
        "LayerSynergy.compute empty batch",
        lambda w: LayerSynergy(w.model, w.model[3]).compute(w.x[:0], target=0),
        ValueError,
        "inputs must hold at least one row",
    ),
    (
        "LayerSynergy.compute target 3",
        lambda w: LayerSynergy(w.model, w.model[3]).compute(w.x, target=3),
        ValueError,
        "target 3 out of range",
    ),
    (
        "LayerSynergy.compute baselines shape",
        lambda w: LayerSynergy(w.model, w.model[3]).compute(
            w.x, target=0, layer_baselines=torch.zeros(7, dtype=torch.float64)
        ),
        ValueError,
        "layer_baselines of shape (1, 7) does not broadcast to the layer output (1, 4)",
    ),
    (
        "LayerSynergy.compute nan baselines",
        lambda w: LayerSynergy(w.model, w.model[3]).compute(
            w.x, target=0, layer_baselines=torch.full((1, 4), NAN, dtype=torch.float64)
        ),
        ValueError,
        "layer_baselines must be finite",
    ),
    (
        "LayerSynergy.compute layer_mask shape",
        lambda w: LayerSynergy(w.model, w.model[3]).compute(
            w.x, target=0, layer_mask=torch.zeros(1, 7, dtype=torch.long)
        ),
        ValueError,
        "layer_mask of shape (1, 7) does not broadcast",
    ),
    (
        "LayerSynergy.compute inf with one unit masked",
        lambda w: LayerSynergy(m := reciprocal(1), m[1]).compute(w.x, target=0),
        ValueError,
        "the explained output with one unit masked must be finite",
    ),
    (
        "LayerSynergy.compute inf with two units masked",
        lambda w: LayerSynergy(m := reciprocal(2), m[1]).compute(w.x, target=0),
        ValueError,
        "the explained output with two units masked must be finite",
    ),
    (
        "LayerSynergy.attribute alpha=inf",
        lambda w: LayerSynergy(w.model, w.model[3]).attribute(w.x, target=0, alpha=INF),
        ValueError,
        "alpha must be a finite real number",
    ),
    (
        "NeuronSynergy.attribute nan inputs",
        lambda w: NeuronSynergy(w.model, w.model[3]).attribute(with_nan(w.x), neuron_selector=0),
        ValueError,
        "inputs must be finite",
    ),
    (
        "NeuronSynergy.attribute inf neuron",
        lambda w: NeuronSynergy(m := mlp(scale=INF), m[5]).attribute(w.x, neuron_selector=0),
        ValueError,
        "the explained output (model output or neuron, finite inputs) must be finite",
    ),
    (
        "NeuronSynergy.attribute empty batch",
        lambda w: NeuronSynergy(w.model, w.model[3]).attribute(w.x[:0], neuron_selector=0),
        ValueError,
        "inputs must hold at least one row",
    ),
    (
        "NeuronSynergy.attribute selector 9",
        lambda w: NeuronSynergy(w.model, w.model[3]).attribute(w.x, neuron_selector=9),
        ValueError,
        "neuron_selector 9 is not valid",
    ),
    (
        "NeuronSynergy.attribute baselines shape",
        lambda w: NeuronSynergy(w.model, w.model[3]).attribute(
            w.x, neuron_selector=0, baselines=torch.zeros(7, dtype=torch.float64)
        ),
        ValueError,
        "baselines of shape (1, 7) does not broadcast to the input (2, 6)",
    ),
    (
        "NeuronSynergy.attribute feature_mask shape",
        lambda w: NeuronSynergy(w.model, w.model[3]).attribute(
            w.x, neuron_selector=0, feature_mask=torch.zeros(1, 7, dtype=torch.long)
        ),
        ValueError,
        "feature_mask of shape (1, 7) does not broadcast",
    ),
    (
        "synergistic_importance via result alpha=nan",
        lambda w: (
            LayerSynergy(w.model, w.model[3]).compute(w.x, target=0).synergistic_importance(NAN)
        ),
        ValueError,
        "alpha must be a finite real number",
    ),
    # captum_ext.synergy.pruning
    (
        "pruning_curve nan scores",
        lambda w: w.pruning_curve(scores=torch.tensor([1.0, NAN, 0.0, 1.0])),
        ValueError,
        "scores must be finite",
    ),
    (
        "pruning_curve scores shape",
        lambda w: w.pruning_curve(scores=torch.rand(5)),
        ValueError,
        "scores must have shape (4,)",
    ),
    (
        "pruning_curve nan x_test",
        lambda w: w.pruning_curve(x_test=with_nan(w.x)),
        ValueError,
        "x_test must be finite",
    ),
    (
        "pruning_curve empty x_test",
        lambda w: w.pruning_curve(x_test=w.x[:0], y_test=w.y[:0]),
        ValueError,
        "x_test must be a (N, ...) tensor with at least one row, got (0, 6)",
    ),
    (
        "pruning_curve 0-d x_test",
        lambda w: w.pruning_curve(x_test=torch.tensor(1.0)),
        ValueError,
        "x_test must be a (N, ...) tensor with at least one row, got ()",
    ),
    (
        "pruning_curve list x_test",
        lambda w: w.pruning_curve(x_test=w.x.tolist()),
        ValueError,
        "x_test must be a (N, ...) tensor with at least one row, got list",
    ),
    (
        "pruning_curve empty x_recalibrate",
        lambda w: w.pruning_curve(x_recalibrate=w.x[:0]),
        ValueError,
        "x_recalibrate must be a (N, ...) tensor with at least one row, got (0, 6)",
    ),
    (
        "pruning_curve nan x_recalibrate",
        lambda w: w.pruning_curve(x_recalibrate=with_nan(w.x)),
        ValueError,
        "x_recalibrate must be finite",
    ),
    (
        "pruning_curve y_test length",
        lambda w: w.pruning_curve(y_test=torch.tensor([0, 1, 1])),
        ValueError,
        "y_test must have one label per row",
    ),
    (
        "pruning_curve fraction 1.5",
        lambda w: w.pruning_curve(fractions=[1.5]),
        ValueError,
        "fractions must lie in [0, 1)",
    ),
    (
        "pruning_curve inf output",
        lambda w: pruning.pruning_curve(
            m := mlp(scale=INF), m[3], torch.rand(4), w.x, w.y, show_progress=False
        ),
        ValueError,
        "the model output at 0% pruned must be finite",
    ),
    (
        "taylor_scores nan x",
        lambda w: pruning.taylor_scores(w.cnn, w.cnn[0], with_nan(w.images), w.y),
        ValueError,
        "x must be finite",
    ),
    (
        "taylor_scores y out of range",
        lambda w: pruning.taylor_scores(w.cnn, w.cnn[0], w.images, torch.tensor([0, 5])),
        ValueError,
        "y must hold class indices in [0, 3)",
    ),
    (
        "taylor_scores y = number of classes",
        lambda w: pruning.taylor_scores(w.cnn, w.cnn[0], w.images, torch.tensor([3, 0])),
        ValueError,
        "y must hold class indices in [0, 3)",
    ),
    (
        "taylor_scores inf output",
        lambda w: pruning.taylor_scores(nn.Sequential(w.cnn, Scale(INF)), w.cnn[0], w.images, w.y),
        ValueError,
        "the model output (for a finite x) must be finite",
    ),
    (
        "masked_units out of range",
        lambda w: _masked_forward(w, torch.tensor([4])),
        ValueError,
        "units must be flat indices in [0, 4)",
    ),
    (
        "recalibrate_batchnorm nan x",
        lambda w: pruning.recalibrate_batchnorm(w.model, with_nan(w.x)),
        ValueError,
        "x must be finite",
    ),
    # regularizers and metrics
    (
        "SynchronizationLoss nan maps",
        lambda w: SynchronizationLoss()(with_nan(w.maps)),
        ValueError,
        "maps must be finite",
    ),
    (
        "LocalActivationConsistencyLoss inf maps",
        lambda w: LocalActivationConsistencyLoss()(with_nan(w.maps, INF)),
        ValueError,
        "maps must be finite",
    ),
    (
        "SynchronizationLoss epsilon=inf",
        lambda w: SynchronizationLoss(epsilon=INF),
        ValueError,
        "epsilon must be a finite float",
    ),
    (
        "part_iou nan maps",
        lambda w: metrics.part_iou(with_nan(w.maps), w.masks),
        ValueError,
        "maps must be finite",
    ),
    (
        "filter_metrics nan maps",
        lambda w: metrics.filter_metrics(with_nan(w.maps), w.masks),
        ValueError,
        "maps must be finite",
    ),
    (
        "module_consistency inf maps",
        lambda w: metrics.module_consistency(with_nan(w.maps, INF), 2),
        ValueError,
        "maps must be finite",
    ),
    (
        "interp phi=nan",
        lambda w: metrics.interp(torch.rand(2, 3, 2), phi=NAN),
        ValueError,
        "phi must be a finite real number",
    ),
    (
        "interp inf iou",
        lambda w: metrics.interp(torch.full((2, 3, 2), INF)),
        ValueError,
        "got ±inf",
    ),
    # PLRP settings
    (
        "PLRPM sparsity_gain=inf",
        lambda w: PLRPM(sparsity_gain=INF),
        ValueError,
        "sparsity_gain must be >= 0 and finite",
    ),
    ("PLRPM p=nan", lambda w: PLRPM(p=NAN), ValueError, "p must be in [0, 1)"),
    ("PLRPLambda p=1.5", lambda w: PLRPLambda(p=1.5), ValueError, "p must be in [0, 1)"),
    (
        "PLRPM layer_p inf",
        lambda w: PLRPM(layer_p={"2": INF}),
        ValueError,
        "layer_p['2'] must be in [0, 1)",
    ),
    (
        "PLRPLambda p_neg=-0.1",
        lambda w: PLRPLambda(p=0.1, p_neg=-0.1),
        ValueError,
        "p_neg must be in [0, 1)",
    ),
]


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


@pytest.mark.parametrize(
    ("call", "error", "fragment"), [case[1:] for case in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_call_raises_a_clear_error(call, error, fragment):
    world = World()
    state = {k: v.clone() for k, v in world.model.state_dict().items()}
    with pytest.raises(error) as raised:
        call(world)
    message = str(raised.value)  # the fragment opens or closes the message: nothing around it
    assert message.startswith(fragment) or message.endswith(fragment), message
    # the error came from our checks, not from inside torch
    assert any(
        "zennit_ext" in str(entry.path) or "captum_ext" in str(entry.path)
        for entry in raised.traceback[-1:]
    ), raised.traceback[-1]
    assert _hooks(world.model) == 0 and _hooks(world.cnn) == 0
    assert all(torch.equal(v, state[k]) for k, v in world.model.state_dict().items())
    # the model still explains a good input after the error
    with world.nrm.explain(world.x, 0) as explanation:
        assert torch.isfinite(explanation.reached).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_inputs_and_outputs_raise_in_every_dtype(device, dtype, value):
    model = mlp(dtype, device)
    x = torch.rand(3, 6, dtype=dtype, device=device)
    bad_x = with_nan(x, value)
    broken = mlp(dtype, device, scale=value)
    entry_points = [
        lambda m, v: NRM(m, ["1", "3"]).explain(v, 0),
        lambda m, v: NeuronPaths(m, ["1", "3"]).graph(v, 0),
        lambda m, v: LayerSynergy(m, m[3]).compute(v, target=0),
        lambda m, v: NeuronSynergy(m, m[5]).attribute(v, neuron_selector=1),  # the output
    ]
    for entry in entry_points:
        with pytest.raises(ValueError, match="must be finite"):
            entry(model, bad_x)
        with pytest.raises(ValueError, match="must be finite"):
            entry(broken, x)
    assert _hooks(model) == 0 and _hooks(broken) == 0


def test_good_calls_next_to_the_bad_ones_pass():
    """The checks do not reject what is valid: edges of every range, NaN IoU of absent parts."""
    w = World()
    assert torch.isfinite(w.query("joint", {"1": [0, 4]})).all()
    assert torch.isfinite(w.nrm.joint(w.x, 2, {"3": [3]})).all()
    assert select_units(torch.tensor([[1.0, 1.0]]), c=0.0).all()
    iou = torch.rand(2, 3, 2, dtype=torch.float64)
    iou[0, :, 1] = NAN  # part 1 absent from image 0
    assert torch.isfinite(metrics.interp(iou)).all()
    with pruning.masked_units(w.model[3], torch.tensor([0, 3])):
        assert torch.isfinite(w.model(w.x)).all()
    result = LayerSynergy(w.model, w.model[3]).compute(w.x, target=2)
    assert torch.isfinite(synergistic_importance(result.importance, result.synergy, 0.0)).all()
