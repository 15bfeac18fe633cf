"""NRM's fast paths: where each one applies, its result against masked message passing, and
the checks that send a query back to the batched partial backward (skip connections, modules
whose backward is not the identity, relevance that stops at neurons)."""

from __future__ import annotations

import itertools

import pytest
import torch
from random_modules import random_bn
from test_nrm_explain import _stopping_mlp
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite
from zennit.rules import AlphaBeta, Gamma, Pass, ZPlus
from zennit.types import Activation, Convolution

from zennit_ext import NRM
from zennit_ext.nrm import engine
from zennit_ext.nrm import fastpaths as segments

pytestmark = pytest.mark.filterwarnings("ignore:.*negative column sums:RuntimeWarning")


def _rules(linear=ZPlus, canonizers=()) -> LayerMapComposite:
    return LayerMapComposite(
        [(Activation, Pass()), (Convolution, ZPlus()), (nn.Linear, linear())],
        canonizers=list(canonizers),
    )


def _reference(e, lower: str, upper: str, level: str = "channel") -> torch.Tensor:
    """(batch, n_lower, n_upper) from one masked message pass per unit pair (no fast path)."""
    counts = [e.session.shape(name)[1] for name in (lower, upper)]
    pairs = list(itertools.product(range(counts[0]), range(counts[1])))
    joint = e.joint_many([{lower: [i], upper: [j]} for i, j in pairs], level)  # (n, batch)
    return joint.T.reshape(-1, *counts)


def _assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-9 * scale)


class _Residual(nn.Module):
    """conv-BN-ReLU, then a conv-BN-ReLU block whose identity skip joins before or after the
    block's ReLU, and a dense head."""

    def __init__(self, skip: str) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.skip = skip
        self.conv0, self.bn0, self.relu0 = nn.Conv2d(3, 4, 3, padding=1), random_bn(4, 7), nn.ReLU()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(4, 4, 3, padding=1), random_bn(4, 8), nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu0(self.bn0(self.conv0(x)))
        h = self.bn1(self.conv1(a))
        b = self.relu1(h + a) if self.skip == "before" else self.relu1(h) + a
        return self.head(b)


def _residual(skip: str, stopping: bool = False):
    """NRM on relu0 and relu1 of :class:`_Residual` and an input (2, 3, 5, 5); ``stopping``:
    relu0's channel 0 lives on its bias alone (negative conv weights, positive BN scale and a
    large shift), so z⁺ relevance ends there."""
    model = _Residual(skip).double().eval()
    if stopping:
        model.conv0.weight.data[0] = -model.conv0.weight.data[0].abs()
        model.bn0.weight.data[0] = model.bn0.weight.data[0].abs()
        model.bn0.bias.data[0] = 5.0
    nrm = NRM(
        model,
        ["relu0", "relu1"],
        _rules(canonizers=[SequentialMergeBatchNorm()]),
        on_violation="warn",
    )
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return nrm, x


@pytest.mark.parametrize("stopping", [False, True])
def test_edges_take_the_skip_connections_second_check(stopping):
    """A skip that bypasses the upper layer: rows differ from the lower layer's relevance,
    but equal the relevance arriving from the upper layer, so the weight gradients apply
    (also where relevance ends at the lower layer: both sides weighted by the reach)."""
    nrm, x = _residual("after", stopping)
    with nrm.explain(x, 0) as e:
        reaches = engine.reach(e.session, ["relu0"])["relu0"]
        if stopping:  # channel 0 ends all relevance it receives, the others pass it all on
            assert e.session.lost and not reaches[:, 0].any() and e.stopped["conv0"].gt(0).all()
            torch.testing.assert_close(reaches[:, 1:], torch.ones_like(reaches[:, 1:]))
            assert e.session.messages["relu0"][:, 0].gt(0).any()  # relevance arrives there
        else:
            assert reaches == 1.0
        levels = {"relu0": "channel", "relu1": "channel"}
        table = engine.edges(e.session, "relu0", "relu1", levels)
        assert table is not None
        rows = e.layer_relevance()["relu0"].flatten(2).sum(2)
        assert not segments.close(table.sum(2), rows)  # the skip carries relevance
        _assert_close(table, _reference(e, "relu0", "relu1"))
        _assert_close(e.pairwise("relu0", "relu1"), table)


@pytest.fixture
def interaction_calls(monkeypatch) -> list:
    """The ``fast`` argument of every ``engine.interactions`` call (None: the fast try,
    False: the batched-backward fallback)."""
    calls = []
    original = engine.interactions

    def counted(session, names, levels, fast=None):
        calls.append(fast)
        return original(session, names, levels, fast)

    monkeypatch.setattr(engine, "interactions", counted)
    return calls


def test_interactions_fall_back_where_the_skip_joins_inside_the_segment(interaction_calls):
    """The skip joins before the upper ReLU: neither the edges nor the channel messages see
    it, so both checks fail and the table is computed by the batched backward."""
    nrm, x = _residual("before")
    with nrm.explain(x, 0) as e:
        levels = {"relu0": "channel", "relu1": "channel"}
        assert segments.rule_segment(e.session, "relu0", "relu1") is not None
        assert engine.edges(e.session, "relu0", "relu1", levels) is None
        table = e.pairwise("relu0", "relu1")
        assert interaction_calls == [None, False]  # the fast try, then the fallback
        _assert_close(table, _reference(e, "relu0", "relu1"))


def test_interactions_keep_the_channel_messages_where_they_are_right(interaction_calls):
    nrm, x = _residual("after")
    with nrm.explain(x, 0) as e:
        table = e.pairwise("relu0", "relu1", level={"relu0": "neuron", "relu1": "channel"})
        assert interaction_calls == [None]  # no fallback
        reference = _reference(e, "relu0", "relu1")
        _assert_close(table.view(2, 4, 25, 4).sum(2), reference)


def test_edges_with_stopped_relevance_weight_rows_by_the_reach(monkeypatch):
    """Relevance ends at zero column sums below the lower layer: the edge table is weighted by
    the share of each lower neuron's relevance that reaches the input."""
    model = _stopping_mlp(0)
    x = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nrm = NRM(model, ["1", "3", "5"], _rules())
    with nrm.explain(x, torch.tensor([0, 1, 0])) as e:
        assert e.session.lost
        reaches = engine.reach(e.session, ["1"])["1"]
        assert (reaches < 1 - 1e-6).any() and (reaches > 1e-6).any()
        partial = []  # the rows equal the lower layer's relevance: no partial backward
        monkeypatch.setattr(e.session, "segment", lambda *args: partial.append(args))
        table = engine.edges(e.session, "1", "3", {"1": "neuron", "3": "neuron"})
        monkeypatch.undo()
        assert table is not None and partial == []
        _assert_close(table, _reference(e, "1", "3", "neuron"))


def test_reach_keeps_the_graph_for_later_queries():
    model = _stopping_mlp(1)
    x = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    nrm = NRM(model, ["1", "3", "5"], _rules())
    with nrm.explain(x, torch.tensor([0, 1, 0])) as e:
        first = e.layer_relevance()
        heat = e.heatmap({"3": [2]})
        again = e.layer_relevance()
        for name in first:
            torch.testing.assert_close(again[name], first[name], rtol=0, atol=0)
        torch.testing.assert_close(heat.sum(1), e.joint({"3": [2]}))


def test_edges_of_a_linear_layer_with_two_live_terms():
    """α-β on a layer whose inputs and weights have both signs: two live terms."""
    torch.manual_seed(6)
    model = (
        nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        .double()
        .eval()
    )
    rules = LayerMapComposite([(Activation, Pass()), (nn.Linear, AlphaBeta(2.0, 1.0))])
    nrm = NRM(model, ["1", "3"], rules, on_violation="warn")
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with nrm.explain(x, 0) as e:
        segment = segments.rule_segment(e.session, "1", "3")
        assert segment is not None and len(segment.terms) >= 2
        table = engine.edges(e.session, "1", "3", {"1": "neuron", "3": "neuron"})
        assert table is not None
        _assert_close(table, _reference(e, "1", "3", "neuron"))


def test_layers_on_two_branches_are_refused():
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)
            self.relu_a, self.relu_b, self.head = nn.ReLU(), nn.ReLU(), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.relu_a(self.a(x)), self.relu_b(self.b(x))], 1))

    torch.manual_seed(0)
    nrm = NRM(Branches().double().eval(), ["relu_a", "relu_b"], _rules())
    x = torch.rand(2, 4, dtype=torch.float64)
    message = "^NRM's layers must lie on one path from the input to the output$"
    with nrm.explain(x, 0) as e, pytest.raises(ValueError, match=message):
        e.joint({"relu_a": [0], "relu_b": [1]})


# ---- which segments the fast paths accept ----


def _block(middle: nn.Module, conv: nn.Conv2d | None = None, after: nn.Module | None = None):
    """conv-ReLU (layer '1'), ``middle``, ``conv``, ``after``, ReLU (layer '5'), dense head."""
    torch.manual_seed(9)
    conv = conv if conv is not None else nn.Conv2d(4, 4, 3, padding=1)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            middle,
            conv,
            after if after is not None else nn.Identity(),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 3),
        )
        .double()
        .eval()
    )


SEGMENTS = {  # model, whether the channel fast path applies between layers '1' and '5'
    "identity": (lambda: _block(nn.Identity()), True),
    "dropout-eval": (lambda: _block(nn.Dropout2d(0.5)), True),
    "dropout-train": (lambda: _block(nn.Dropout2d(0.5).train()), False),
    "dropout-train-above": (lambda: _block(nn.Identity(), after=nn.Dropout(0.5).train()), False),
    "grouped": (lambda: _block(nn.Identity(), nn.Conv2d(4, 4, 3, padding=1, groups=2)), False),
    "circular": (
        lambda: _block(nn.Identity(), nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")),
        False,
    ),
    "same": (lambda: _block(nn.Identity(), nn.Conv2d(4, 4, 3, padding="same")), False),
    "pool-above": (lambda: _block(nn.Identity(), after=nn.MaxPool2d(3, 1, 1)), False),
}


@pytest.mark.parametrize("case", list(SEGMENTS))
def test_segment_conditions(case):
    build, applies = SEGMENTS[case]
    model = build()
    for module in model.modules():  # dropout in train mode where the case says so
        module.training = isinstance(module, nn.Dropout2d | nn.Dropout) and "train" in case
    nrm = NRM(model, ["1", "5"], _rules(), on_violation="warn")
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)  # the same dropout masks in every run
    with nrm.explain(x, 0) as e:
        found = segments.rule_segment(e.session, "1", "5")
        assert (found is not None) == applies
        assert (segments.rule_segment(e.session, "1", "5", pooling=True) is not None) == applies
        table = e.pairwise("1", "5")
        _assert_close(table, _reference(e, "1", "5"))


def test_three_layers_with_a_channel_segment_and_mixed_levels():
    """Top channels through the grouped transposed convolution, then each message split over
    the middle layer's channels and read at the lowest layer's neurons."""
    model = _block(nn.Identity())
    nrm = NRM(model, ["0", "1", "5"], _rules(), on_violation="warn")
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    levels = {"5": "channel", "1": "channel", "0": "neuron"}
    with nrm.explain(x, 0) as e:
        assert segments.rule_segment(e.session, "1", "5") is not None
        table = engine.interactions(e.session, ["5", "1", "0"], levels)
        reference = engine.interactions(e.session, ["5", "1", "0"], levels, fast=False)
        assert table.shape == (2, 64, 4, 4)
        _assert_close(table, reference)
        # summed over the lowest layer's neurons: the (channel, channel) pairs of '1' and '5'
        _assert_close(table.sum(1), _reference(e, "1", "5"))


def test_a_negative_column_sum_without_relevance_is_no_violation():
    """Eq. 15 matters only where relevance flows: an output neuron with a negative column sum
    but no target relevance neither raises nor counts."""

    class Head(nn.Linear):
        pass

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), Head(3, 2)).double().eval()
    model[0].bias.data.fill_(0.5)  # every hidden unit active on inputs in [0, 1]
    model[2].weight.data[0] = model[2].weight.data[0].abs()
    model[2].weight.data[1] = -model[2].weight.data[1].abs()  # column sum of output 1 < 0
    model[2].bias.data.fill_(5.0)  # … though the output itself is positive
    rules = LayerMapComposite(
        [(Activation, Pass()), (Head, Gamma(gamma=0.0)), (nn.Linear, ZPlus())]
    )
    x = torch.rand(3, 4, dtype=torch.float64)
    with NRM(model, ["1"], rules, on_violation="raise").explain(x, 0) as e:
        assert e.violations == {}
    with (
        pytest.warns(RuntimeWarning),
        NRM(model, ["1"], rules, on_violation="warn").explain(x, 1) as e,
    ):
        torch.testing.assert_close(e.violations["2"], torch.ones(3, dtype=torch.long))


class _Detached(nn.Module):
    """Two branches a and b into a dense head; b is computed from a detached tensor: its
    linear layer's output (``detach='output'``, then no gradient at all) or its input
    (``'input'``, then a gradient only through b's parameters)."""

    def __init__(self, detach: str) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)
        self.relu_a, self.relu_b, self.head = nn.ReLU(), nn.ReLU(), nn.Linear(6, 2)
        self.detach = detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b(x).detach() if self.detach == "output" else self.b(x.detach())
        return self.head(torch.cat([self.relu_a(self.a(x)), self.relu_b(b)], 1))


@pytest.mark.parametrize("detach", ["output", "input"])
@pytest.mark.parametrize("stopping", [False, True])
def test_a_layer_no_gradient_reaches_has_zero_relevance(stopping, detach):
    """A set layer cut off from the input carries no relevance to it (zeros, not an error),
    also where relevance ends elsewhere (``stopping``: unit 0 of layer a lives on its bias)."""
    torch.manual_seed(1)
    model = _Detached(detach).double().eval()
    if stopping:
        model.a.weight.data[0] = -model.a.weight.data[0].abs()
        model.a.bias.data[0] = 1.0
        model.head.weight.data[:, 0] = 1.0  # relevance arrives at unit 0
    nrm = NRM(model, ["relu_a", "relu_b"], _rules())
    x = torch.rand(2, 4, dtype=torch.float64)
    with nrm.explain(x, 0) as e:
        assert e.session.lost == stopping and (e.reached < 1 - 1e-6).all() == stopping
        relevance = e.layer_relevance()
        assert relevance["relu_b"].shape == (2, 3) and not relevance["relu_b"].any()
        torch.testing.assert_close(relevance["relu_a"].sum(1), e.reached)
        alone = engine.reach(e.session, ["relu_b"])["relu_b"]  # no probe reaches the input
        assert alone == 1.0 if not stopping else not alone.any() and alone.shape == (2, 3)


def test_a_reshaping_step_between_the_layers_is_no_segment():
    """A functional step that changes the rule layer's input shape (not a module, so not in
    the recorded calls) rules the fast paths out."""

    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.relu_a = nn.Linear(4, 3), nn.ReLU()
            self.b, self.relu_b, self.head = nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relu_a(self.a(x))
            return self.head(self.relu_b(self.b(torch.cat([h, 2 * h], 1))))

    torch.manual_seed(2)
    # 2 * h scales the relevance of the second copy: the checked pass sees it unconserved
    nrm = NRM(Doubled().double().eval(), ["relu_a", "relu_b"], _rules(), on_violation="warn")
    x = torch.rand(2, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="relevance is not conserved"), nrm.explain(x, 0) as e:
        for pooling in (False, True):
            assert segments.rule_segment(e.session, "relu_a", "relu_b", pooling) is None
        table = e.pairwise("relu_a", "relu_b", "neuron")
        _assert_close(table, _reference(e, "relu_a", "relu_b", "neuron"))


def test_output_relevance_checks_and_normalizes_float_targets():
    output = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.1, 0.2]], dtype=torch.float64)
    small = torch.tensor([[0.1, 0.3, 0.0], [0.05, 0.0, 0.15]], dtype=torch.float64)  # sums < 1
    expected = torch.tensor([[0.25, 0.75, 0.0], [0.25, 0.0, 0.75]], dtype=torch.float64)
    torch.testing.assert_close(engine.output_relevance(output, small), expected)
    bad = small.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^target relevance must be finite, got 1 non-finite"):
        engine.output_relevance(output, bad)


def test_a_layer_the_forward_pass_skips_is_refused():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
            self.unused = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    nrm = NRM(Unused().double().eval(), ["body.1", "unused"], _rules())
    with pytest.raises(ValueError, match=r"\['unused'\] were not called"):
        nrm.explain(torch.rand(2, 4, dtype=torch.float64), 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_close_is_relative_to_the_largest_value_and_refuses_non_finite(dtype):
    """``close`` accepts differences below √eps of the dtype times the largest reference
    value, and nothing against a reference that is not finite."""
    reference = torch.tensor([[-300.0, 2.0], [0.0, 5.0]], dtype=dtype)
    step = torch.finfo(dtype).eps ** 0.5 * 300.0
    assert segments.close(reference + 0.5 * step, reference)
    assert not segments.close(reference + torch.tensor([[0.0, 2.0 * step], [0, 0]]), reference)
    assert segments.close(torch.zeros(3, dtype=dtype), torch.zeros(3, dtype=dtype))
    if dtype == torch.float64:  # √eps = 2⁻²⁶ exactly: a difference of exactly the tolerance
        edge = torch.tensor([2.0**26, 0.0], dtype=dtype)
        assert segments.close(edge + 1.0, edge) and not segments.close(edge + 1.5, edge)
    for bad in (float("inf"), float("-inf"), float("nan")):
        broken = reference.clone()
        broken[1, 0] = bad
        assert not segments.close(reference, broken) and not segments.close(broken, reference)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_is_affine_accepts_the_layers_own_map_only(kind):
    """A term is affine when its output is the layer's map with the modified parameters; an
    output modifier (here ×2, or a shift in one entry) breaks it."""
    torch.manual_seed(0)
    if kind == "linear":
        module, x = nn.Linear(4, 3).double(), torch.rand(2, 4, dtype=torch.float64)
    else:
        module = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1).double()
        x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    weight, bias = module.weight.clamp(min=0), module.bias.abs() + 0.1  # a z⁺-like term
    output = module._conv_forward(x, weight, bias) if kind == "conv" else x @ weight.T + bias
    assert segments._is_affine(module, x, weight, bias, output)
    assert not segments._is_affine(module, x, weight, bias, 2 * output)
    shifted = output.clone()
    shifted.view(-1)[3] += 1e-3
    assert not segments._is_affine(module, x, weight, bias, shifted)
    assert not segments._is_affine(module, x, weight, None, output)  # the bias belongs to it


def test_interactions_keep_the_channel_messages_of_a_linear_layer(interaction_calls):
    """Three MLP layers: the top neurons' messages through the Linear layer below them are
    right (no fallback) and give the table of the batched backward."""
    model = _stopping_mlp(1)
    nrm = NRM(model, ["1", "3", "5"], _rules())
    x = torch.rand(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with nrm.explain(x, 0) as e:
        assert segments.rule_segment(e.session, "3", "5") is not None
        table = engine.interactions(e.session, ["5", "3", "1"], dict.fromkeys("135", "neuron"))
        assert interaction_calls == [None]
        reference = engine.interactions(
            e.session, ["5", "3", "1"], dict.fromkeys("135", "neuron"), fast=False
        )
    assert table.shape == (2, 4, 4, 3)
    _assert_close(table, reference)
