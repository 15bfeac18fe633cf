"""NRM explanations: one forward and one checked pass answer every query; the checked pass's
report; devices and dtypes; the channel fast paths equal the batched partial backward."""

from __future__ import annotations

import itertools

import pytest
import torch
from random_modules import random_bn
from test_nrm import CNN_LAYERS, HIDDEN, _cnn, _composite, _mlp
from torch import nn
from walks import Walks
from zennit.composites import LayerMapComposite
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Pass, WSquare, ZBox, ZPlus
from zennit.types import Activation, Convolution

from zennit_ext import NRM, NRMExplanation
from zennit_ext.nrm import engine
from zennit_ext.nrm import fastpaths as segments
from zennit_ext.nrm.rules import PositiveSumError
from zennit_ext.paths.api import NeuronPaths

pytestmark = pytest.mark.filterwarnings("ignore:.*negative column sums:RuntimeWarning")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]


class _Counter:
    """Counts the model's forward passes and the engine's checked passes."""

    def __init__(self, model: nn.Module, monkeypatch) -> None:
        self.forward = self.checked = 0
        self.handle = model.register_forward_pre_hook(self._count_forward)
        original = engine.Session._checked_pass

        def checked(session):
            self.checked += 1
            return original(session)

        monkeypatch.setattr(engine.Session, "_checked_pass", checked)

    def _count_forward(self, module, args) -> None:
        self.forward += 1


def test_one_explanation_answers_every_query_like_the_one_shot_methods(monkeypatch):
    model, x, target = _cnn(), torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 2, 1])
    nrm = NRM(model, CNN_LAYERS, composite=_composite("zplus"))
    sets, given = {"1": [0, 2], "9": [1]}, {"6": [3]}
    conditions = [{"3": [i]} for i in range(4)]
    expected = {
        "joint": nrm.joint(x, target, sets, "channel"),
        "marginal": nrm.marginal(x, target, "3", [1, 5], "channel"),
        "conditional": nrm.conditional(x, target, sets, given, "channel"),
        "heatmap": nrm.heatmap(x, target, sets, "channel"),
        "heatmaps": nrm.heatmaps(x, target, conditions, "channel"),
        "joint_many": nrm.joint_many(x, target, conditions, "channel"),
        "additive": nrm.additive(x, target, sets, "channel"),
        "pairwise": nrm.pairwise(x, target, "6", "1"),
        "interactions": nrm.interactions(x, target, ["1", "3", "9"]),
        "top": nrm.top_interactions(x, target, ["3", "6"], k=4),
    }
    counter = _Counter(model, monkeypatch)
    try:
        with nrm.explain(x, target) as e:
            assert isinstance(e, NRMExplanation)
            found = {
                "joint": e.joint(sets, "channel"),
                "marginal": e.marginal("3", [1, 5], "channel"),
                "conditional": e.conditional(sets, given, "channel"),
                "heatmap": e.heatmap(sets, "channel"),
                "heatmaps": e.heatmaps(conditions, "channel"),
                "joint_many": e.joint_many(conditions, "channel"),
                "additive": e.additive(sets, "channel"),
                "pairwise": e.pairwise("6", "1"),
                "interactions": e.interactions(["1", "3", "9"]),
                "top": e.top_interactions(["3", "6"], k=4),
            }
            e.layer_relevance(), e.consecutive_edges()
    finally:
        counter.handle.remove()
    assert (counter.forward, counter.checked) == (1, 1)
    for key, value in expected.items():
        if key == "top":
            assert torch.equal(found[key][0], value[0])
            torch.testing.assert_close(found[key][1], value[1], rtol=1e-12, atol=1e-14)
        else:
            torch.testing.assert_close(found[key], value, rtol=1e-12, atol=1e-14, msg=key)


def test_closed_explanation_refuses_queries_and_model_is_hook_free():
    model, x = _cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    nrm = NRM(model, CNN_LAYERS, composite=_composite("zplus"))
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    explanation = nrm.explain(x, 0)
    with pytest.raises(
        RuntimeError,
        match=r"^module '0' still has NRM's hooks from an "
        r"explanation that was not closed; close it first \(use `with "
        r"nrm.explain\(x, target\) as e:`\)$",
    ):
        nrm.explain(x, 0)  # a second open explanation would run the first one's hooks
    session = explanation.session
    explanation.close()
    for name in ("inputs", "output", "relevance", "heat"):  # the graph is dropped
        assert not hasattr(session, name), name
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    with pytest.raises(RuntimeError, match="closed"):
        explanation.heatmap()
    with nrm.explain(x, 0) as e:  # usable again
        assert e.heatmap().shape == x.shape
        model(x)  # another forward pass through the hooked model: the rules' inputs change
        with pytest.raises(
            RuntimeError,
            match=r"^the model ran a forward pass while this NRM "
            r"explanation was open \(layers \['0', '2', '5'\] saw new "
            r"inputs\), so its answers would mix two inputs; run other forward "
            r"passes outside the `with nrm.explain\(...\)` block$",
        ):
            e.heatmap()


def _stopping_mlp(seed: int) -> nn.Sequential:
    """An MLP with units that receive relevance but have zero z⁺ column sum."""
    model = _mlp(seed)
    model[2].weight.data[:2] = -model[2].weight.data[:2].abs()  # units 0, 1 of layer 3
    model[2].bias.data[:2] = 1.0  # … stay active through their bias alone
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_report_stopped_mass_and_reached_share_sum_to_one(seed):
    model = _stopping_mlp(seed)
    x = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    target = torch.tensor([0, 1, 0])
    nrm = NRM(model, HIDDEN, composite=_composite("zplus"))
    with nrm.explain(x, target) as e:
        stopped = sum(e.stopped.values())
        torch.testing.assert_close(e.reached + stopped, torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(e.heatmap().sum(1), e.reached)
        assert (e.stopped["2"] > 0).all() and (e.reached < 1).all()
        assert e.violations == {}
        relevance = e.layer_relevance()
        edges = e.consecutive_edges(level="neuron")
    for i in range(3):  # reached = total relevance of the walks (zero column sums end walks)
        walks = Walks(model, x[i], int(target[i]), gamma=None)
        assert e.reached[i].item() == pytest.approx(walks.joint({}), abs=1e-10)
        for layer, name in enumerate(HIDDEN, start=1):  # layer relevance = marginals
            marginal = [walks.joint({layer: {unit}}) for unit in range(walks.sizes[layer])]
            torch.testing.assert_close(relevance[name][i], torch.tensor(marginal).double())
    for (lower, upper), table in edges.items():  # rows sum to the lower layer's relevance
        torch.testing.assert_close(table.sum(2), relevance[lower])
        with nrm.explain(x, target) as reference:
            torch.testing.assert_close(table, reference.pairwise(lower, upper, "neuron"))


def test_layer_whose_inputs_are_all_zero_stops_everything_without_error():
    """A rule layer with no live term (every input 0 on every sample) ends all relevance."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    model = model.double().eval()
    model[2].bias.data.fill_(-10.0)  # relu 3 is 0 on every input in [0, 1]^6
    x = torch.rand(2, 6, dtype=torch.float64)
    assert not model[:4](x).any() and model(x).abs().sum() > 0
    nrm = NRM(model, ["1", "3"], composite=_composite("zplus"))
    torch.testing.assert_close(nrm.joint(x, 0, {"3": [0, 1, 2, 3]}), torch.zeros(2).double())
    with nrm.explain(x, 0) as e:
        torch.testing.assert_close(e.stopped["4"], torch.ones(2).double())
        torch.testing.assert_close(e.reached, torch.zeros(2).double())
        assert not e.pairwise("1", "3", level="neuron").any()
        assert not e.heatmap().isnan().any()


def _violating() -> tuple[NRM, torch.Tensor]:
    """NRM (warning on violations) on an MLP whose layer 2 has negative column sums at units
    that carry relevance, and an input (2, 5)."""
    model = _mlp(0)
    model[2].weight.data = -model[2].weight.data.abs()
    model[2].bias.data.fill_(5.0)
    rules = LayerMapComposite([(Activation, Pass()), (nn.Linear, Gamma(gamma=0.0))])
    return NRM(model, HIDDEN, rules, on_violation="warn"), torch.rand(2, 5, dtype=torch.float64)


def test_violations_are_reported_per_layer():
    nrm, x = _violating()
    with pytest.warns(RuntimeWarning) as records, nrm.explain(x, 0) as e:
        assert "2" in e.violations and (e.violations["2"] > 0).all()
        assert all(count.shape == (2,) and count.sum() > 0 for count in e.violations.values())
    texts = [
        f"layer {name!r} (Linear, rule Gamma) has {int(count.sum())} negative column sums at "
        "neurons that carry relevance; NRM needs positive sums (eq. 15): use z+ (or a larger "
        "gamma) on a ReLU network"
        for name, count in e.violations.items()
    ]
    assert [str(record.message) for record in records] == texts
    strict = NRM(
        nrm.model, HIDDEN, LayerMapComposite([(Activation, Pass()), (nn.Linear, Gamma(gamma=0.0))])
    )
    with pytest.raises(PositiveSumError) as raised:
        strict.explain(x, 0)
    assert str(raised.value) == texts[0]  # the first layer in module order


def test_violation_warnings_name_the_callers_line():
    """The warning points at the user's line, through `explain` and through a one-shot query."""
    nrm, x = _violating()
    with pytest.warns(RuntimeWarning, match="negative column sums") as explained:
        with nrm.explain(x, 0):
            pass
    with pytest.warns(RuntimeWarning, match="negative column sums") as one_shot:
        nrm.joint(x, 0, {"1": [0]})
    paths = NeuronPaths(
        nrm.model,
        HIDDEN,
        composite=LayerMapComposite([(Activation, Pass()), (nn.Linear, Gamma(gamma=0.0))]),
        on_violation="warn",
    )
    with pytest.warns(RuntimeWarning, match="negative column sums") as through_paths:
        paths.graph(x, 0)
    records = [*explained, *one_shot, *through_paths]
    assert {record.filename for record in records} == {__file__}


# ---- devices and dtypes ----


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_devices_and_dtypes(device, dtype):
    model = _cnn().to(device=device, dtype=dtype)
    x = torch.rand(2, 3, 8, 8, dtype=dtype, device=device)
    target = model(x).argmax(1).cpu()  # a positive logit; on the CPU: moved to the output's
    clusters = torch.rand(3, 2, 1, 8, 8, device=device) > 0.5
    fast = NRM(model, CNN_LAYERS, composite=_composite("zplus"))
    slow = NRM(model, CNN_LAYERS, composite=_composite("zplus"), fast=False)
    tolerance = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {}
    with fast.explain(x, target) as e, torch.no_grad():
        results = [
            e.heatmap({"3": torch.ones(8, 8, dtype=torch.bool, device=device)}),
            e.joint({"1": [0, 1]}, "channel"),
            e.conditional({"1": [0]}, {"9": [2]}),
            e.pairwise("1", "3"),
            e.pairwise("1", "3", level={"1": clusters, "3": "channel"}),
            e.interactions(["1", "3", "6"]),
            *e.layer_relevance().values(),
            *e.consecutive_edges().values(),
            e.reached,
        ]
        masks = e.session.masks(
            {"1": [0, 1], "3": torch.ones(8, 8, dtype=torch.bool, device=device)}, "channel"
        )
        for result in [*results, *masks.values()]:
            assert result.device.type == device and result.dtype == dtype
        torch.testing.assert_close(e.reached, torch.ones(2, dtype=dtype, device=device))
    with slow.explain(x, target) as reference:
        torch.testing.assert_close(results[3], reference.pairwise("1", "3"), **tolerance)
        edges = reference.consecutive_edges()
        for ours, theirs in zip(results[-len(edges) - 1 : -1], edges.values(), strict=True):
            torch.testing.assert_close(ours, theirs, **tolerance)


# ---- channel messages by grouped transposed convolution ----


def _vgg_blocks() -> nn.Sequential:
    """Two VGG-style blocks (conv-BN-ReLU ×2, max-pool) with a strided conv, a dense head."""
    torch.manual_seed(11)
    return (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            random_bn(6, 1),
            nn.ReLU(),
            nn.Conv2d(6, 7, 3, padding=1),
            random_bn(7, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(7, 5, 3, padding=2, stride=2, dilation=2),
            random_bn(5, 3),
            nn.ReLU(),
            nn.Conv2d(5, 4, (3, 1), padding=(1, 0)),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 2 * 2, 3),
        )
        .double()
        .eval()
    )


CONV_RULES = {
    "epsilon": lambda: Epsilon(epsilon=1e-3),
    "zplus": ZPlus,
    "gamma": lambda: Gamma(gamma=0.25),
    "alphabeta": lambda: AlphaBeta(alpha=2.0, beta=1.0),
    "zbox": lambda: ZBox(low=-1.0, high=1.0),
    "flat": Flat,
    "wsquare": WSquare,
}


@pytest.mark.parametrize("rule", list(CONV_RULES))
@pytest.mark.parametrize("net", ["cnn", "vgg_blocks"])
def test_grouped_channel_messages_equal_batched_backward(rule, net, monkeypatch):
    from zennit.canonizers import SequentialMergeBatchNorm

    if net == "cnn":
        model, layers, pairs = _cnn(), ["1", "3", "6"], [("1", "3")]
        x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    else:  # each pair has one conv (and a merged BatchNorm, a ReLU) between
        model, layers = _vgg_blocks(), ["2", "3", "5", "6", "8", "9", "10", "11"]
        pairs = [("2", "3"), ("2", "5"), ("6", "8"), ("6", "9"), ("9", "10"), ("9", "11")]
        x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    canonizers = [SequentialMergeBatchNorm()] if net == "vgg_blocks" else []
    rules = [(Activation, Pass()), (Convolution, CONV_RULES[rule]()), (nn.Linear, ZPlus())]
    composites = [LayerMapComposite(rules, canonizers=canonizers) for _ in range(2)]
    fast = NRM(model, layers, composites[0], on_violation="warn", messages_per_pass=4)
    slow = NRM(model, layers, composites[1], on_violation="warn", messages_per_pass=4, fast=False)
    # neurons below: the grouped transposed convolution; channels below: weight gradients
    calls = {"grouped": 0, "edges": 0}
    for method, key in (
        (segments.RuleSegment.channel_messages, "grouped"),
        (segments.RuleSegment.edges, "edges"),
    ):
        monkeypatch.setattr(segments.RuleSegment, method.__name__, _counted(method, calls, key))
    # every check of a fast result against autograd must pass: a failed check silently
    # recomputes the slow way, which would hide a wrong fast path from the comparison below
    verdicts = []
    check = engine.close
    monkeypatch.setattr(engine, "close", lambda a, b: verdicts.append(check(a, b)) or verdicts[-1])

    def queries(e):
        found = {pair: e.pairwise(*pair) for pair in pairs}
        found.update(
            {
                ("neurons", *pair): e.pairwise(*pair, level={pair[0]: "neuron", pair[1]: "channel"})
                for pair in pairs
            }
        )
        found["triple"] = e.interactions([pairs[0][0], pairs[0][1], layers[-1]])
        return found

    with fast.explain(x, 0) as e:
        found = queries(e)
        taken = [
            segments.rule_segment(e.session, lower, upper) is not None for lower, upper in pairs
        ]
    assert all(taken), taken  # the fast paths ran (else this test compares a path with itself)
    assert calls["grouped"] >= len(pairs) and calls["edges"] >= len(pairs), calls
    assert verdicts and all(verdicts), verdicts
    with slow.explain(x, 0) as reference:
        expected = queries(reference)
    for key, value in expected.items():
        scale = value.abs().max()
        torch.testing.assert_close(found[key], value, rtol=0, atol=1e-6 * scale, msg=str(key))


def _counted(method, calls: dict, key: str):
    def counted(*args, **kwargs):
        calls[key] += 1
        return method(*args, **kwargs)

    return counted


def test_segments_with_pooling_or_two_rule_layers_fall_back():
    from zennit.canonizers import SequentialMergeBatchNorm

    model, x = _vgg_blocks(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    nrm = NRM(
        model, ["2", "5", "6", "7"], on_violation="warn", canonizers=[SequentialMergeBatchNorm()]
    )
    with nrm.explain(x, 0) as e:
        assert segments.rule_segment(e.session, "6", "7") is not None
        assert segments.rule_segment(e.session, "5", "7") is None  # pooling between
        assert segments.rule_segment(e.session, "5", "7", pooling=True) is not None  # edges only
        assert segments.rule_segment(e.session, "2", "7") is None  # two convolutions
        assert segments.rule_segment(e.session, "5", "6") is None  # pooling only, no rule layer


# ---- consecutive edges: per-sample weight gradients ----


def _tiny_mlp() -> nn.Sequential:
    torch.manual_seed(2)
    return (
        nn.Sequential(
            nn.Linear(6, 5, bias=False),
            nn.ReLU(),
            nn.Linear(5, 4, bias=False),
            nn.ReLU(),
            nn.Linear(4, 3, bias=False),
            nn.ReLU(),
            nn.Linear(3, 2, bias=False),
        )
        .double()
        .eval()
    )


EDGE_RULES = {"gamma": lambda: Gamma(gamma=0.25), "zplus": ZPlus, "flat": Flat}


def _vgg_small() -> nn.Module:
    from benchmarks.models.architectures import VGGSmall

    torch.manual_seed(5)
    return VGGSmall(num_classes=4, widths=(4, 6, 8, 8), image_size=16).double().eval()


@pytest.mark.parametrize("rule", list(EDGE_RULES))
@pytest.mark.parametrize("net", ["vgg_small", "mlp"])
def test_consecutive_edges_fast_path_equals_pairwise(rule, net):
    if net == "mlp":
        model, x, level = _tiny_mlp(), torch.rand(3, 6, dtype=torch.float64), "neuron"
        layers = ["1", "3", "5"]
    else:  # conv outputs, ReLU outputs and pooled outputs: fast pairs with and without pooling
        model, x, level = _vgg_small(), torch.rand(2, 3, 16, 16, dtype=torch.float64), "channel"
        layers = [
            "features.0",
            "features.2",
            "features.3",
            "features.4",
            "features.6",
            "features.9",
            "features.11",
            "classifier.2",
        ]
    rules = [
        (Activation, Pass()),
        (Convolution, EDGE_RULES[rule]()),
        (nn.Linear, EDGE_RULES[rule]()),
    ]
    composites = [LayerMapComposite(rules) for _ in range(2)]
    fast = NRM(model, layers, composites[0], on_violation="warn")
    slow = NRM(model, layers, composites[1], on_violation="warn", fast=False)
    with fast.explain(x, 0) as e:
        edges = e.consecutive_edges(level)
        relevance = e.layer_relevance()
        taken = {
            pair: engine.edges(e.session, *pair, dict.fromkeys(pair, level)) is not None
            for pair in edges
        }
        pairwise = {pair: e.pairwise(*pair, level=level) for pair in edges}
    expected_fast = {
        "mlp": {("1", "3"), ("3", "5")},
        "vgg_small": {
            ("features.2", "features.3"),
            ("features.4", "features.6"),
            ("features.6", "features.9"),
        },
    }[net]
    assert {pair for pair, ok in taken.items() if ok} == expected_fast
    with slow.explain(x, 0) as reference:
        forced = reference.consecutive_edges(level)
    for pair, table in edges.items():
        scale = table.abs().max()
        torch.testing.assert_close(table, pairwise[pair], rtol=0, atol=1e-10 * scale)
        torch.testing.assert_close(forced[pair], table, rtol=0, atol=1e-10 * scale)
        lower = relevance[pair[0]]
        rows = lower.flatten(2).sum(2) if lower.dim() > 2 else lower
        torch.testing.assert_close(table.sum(2), rows, rtol=0, atol=1e-10 * scale)


def test_unit_masks_on_a_weight_gradient_pair_sum_the_neuron_table():
    """Unit masks on either layer of a pair the weight-gradient path serves: the joint
    relevance of two masks is the neuron table summed over their members (linear in the
    sets). The masks overlap and leave a unit out."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    for linear in model[::2]:  # mostly positive weights: every unit pair carries relevance
        linear.weight.data.uniform_(-0.2, 1.0)
    model, x = model.double().eval(), torch.rand(3, 5, dtype=torch.float64)
    lower = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)[:, None]
    upper = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)[:, None]
    nrm = NRM(model, ["1", "3"], LayerMapComposite([(Activation, Pass()), (nn.Linear, ZPlus())]))
    with nrm.explain(x, 0) as e:
        assert engine.edges(e.session, "1", "3", dict.fromkeys("13", "neuron")) is not None
        neurons = e.pairwise("1", "3", level="neuron")  # (3, 4, 4)
        low = e.pairwise("1", "3", level={"1": lower, "3": "neuron"})
        up = e.pairwise("1", "3", level={"1": "neuron", "3": upper})
    assert (neurons > 0).sum() > neurons.numel() / 2
    tolerance = {"rtol": 1e-10, "atol": 1e-12}
    expected = torch.einsum("bij,ki->bkj", neurons, lower[:, 0].double())
    torch.testing.assert_close(low, expected, **tolerance)
    expected = torch.einsum("bij,kj->bik", neurons, upper[:, 0].double())
    torch.testing.assert_close(up, expected, **tolerance)


def test_layer_relevance_equals_marginals():
    model, x = _cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    nrm = NRM(model, CNN_LAYERS, composite=_composite("zplus"))
    with nrm.explain(x, torch.tensor([0, 1])) as e:
        relevance = e.layer_relevance()
        for name in CNN_LAYERS:
            units = relevance[name].flatten(1).shape[1]
            for unit in itertools.islice(range(units), 0, units, max(1, units // 5)):
                torch.testing.assert_close(
                    relevance[name].flatten(1)[:, unit], e.marginal(name, [unit])
                )


def test_float_target_is_normalized_per_sample_in_the_output_dtype():
    output = torch.zeros(2, 3, dtype=torch.float64)
    target = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 3.0]])  # float32, sums 2 and 4
    relevance = engine.output_relevance(output, target)
    assert relevance.dtype == torch.float64
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]], dtype=torch.float64)
    assert torch.equal(relevance, expected)
    with pytest.raises(
        ValueError,
        match=r"^target relevance must have the output's shape "
        r"\(2, 3\), got \(3, 2\)$",
    ):
        engine.output_relevance(output, target.T)
