"""The NRM session's contracts that no number shows: the batch size bounds every backward pass,
progress bars appear on a terminal only when asked for, ``fast=False`` takes no fast path,
unused modules and detached inputs are handled."""

from __future__ import annotations

import io
import math

import pytest
import torch
from test_nrm import HIDDEN, _composite
from test_nrm_explain import _stopping_mlp
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.rules import Pass, ZPlus
from zennit.types import Activation, Convolution

from zennit_ext import NRM
from zennit_ext.nrm import engine
from zennit_ext.nrm import fastpaths as segments


def _pooled() -> nn.Sequential:
    """conv-ReLU (4 channels of 4×4), max-pool (2×2), conv-ReLU (4 channels), dense head: the
    layers around the pool differ in shape."""
    torch.manual_seed(3)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16, 3),
        )
        .double()
        .eval()
    )


def _rules() -> LayerMapComposite:
    return LayerMapComposite([(Activation, Pass()), (Convolution, ZPlus()), (nn.Linear, ZPlus())])


LAYERS = ["1", "2", "3", "4"]
X = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("messages_per_pass", [1, 3, 8])
def test_messages_per_pass_bounds_every_backward_pass(messages_per_pass, fast, monkeypatch):
    """At most ``messages_per_pass`` messages per partial backward, or one top unit's messages split
    over the middle layers' units where that alone is more."""
    nrm = NRM(_pooled(), LAYERS, _rules(), messages_per_pass=messages_per_pass, fast=fast)
    queries = {  # query: the messages one top unit splits into
        "joint_many": (lambda e: e.joint_many([{"2": [i % 4]} for i in range(5)]), 1),
        "pairwise": (lambda e: e.pairwise("2", "4"), 1),
        "three": (lambda e: e.interactions(["1", "2", "4"], level="channel"), 4),
        "four": (lambda e: e.interactions(["1", "2", "3", "4"], level="channel"), 16),
    }
    with nrm.explain(X, 0) as e:
        original = e.session.segment
        for name, (query, split) in queries.items():
            sizes = []

            def counted(upper, lower, messages, sizes=sizes):
                sizes.append(len(messages))
                return original(upper, lower, messages)

            monkeypatch.setattr(e.session, "segment", counted)
            result = query(e)
            monkeypatch.undo()
            assert result.abs().sum() > 0
            assert max(sizes, default=0) <= max(messages_per_pass, split), (name, sizes)
            assert sizes or (fast and name == "pairwise")  # (the weight-gradient edges)
            if messages_per_pass == 8 and name in ("joint_many", "three"):
                assert max(sizes) > math.ceil(messages_per_pass / 2), (
                    name,
                    sizes,
                )  # fills the batch


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("show_progress", [True, False])
def test_progress_bars_on_a_terminal_only_when_asked(show_progress, monkeypatch):
    nrm = NRM(_pooled(), LAYERS, _rules(), messages_per_pass=1, show_progress=show_progress)
    with nrm.explain(X, 0) as e:
        for stream in (_TTY(), io.StringIO()):  # a terminal; a pipe (never a bar)
            monkeypatch.setattr("sys.stderr", stream)
            e.joint_many([{"2": [0]}, {"2": [1]}])
            e.interactions(["1", "2", "4"], level="channel")
            monkeypatch.undo()
            shown = stream.getvalue()
            if show_progress and isinstance(stream, _TTY):
                assert "NRM conditions: 100%" in shown and "NRM interactions: 100%" in shown
            else:
                assert shown == ""


def test_fast_false_takes_no_fast_path(monkeypatch):
    """``fast=False`` answers every query by batched backward passes (the reference the fast
    paths are checked against), with the same numbers."""
    fast = NRM(_pooled(), LAYERS, _rules())
    with fast.explain(X, 0) as e:
        expected = [e.pairwise("3", "4"), e.interactions(["1", "2", "4"]), e.consecutive_edges()]

    def refuse(*args, **kwargs):
        raise AssertionError("a fast path ran")

    monkeypatch.setattr(engine, "edges", refuse)
    monkeypatch.setattr(segments.RuleSegment, "channel_messages", refuse)
    slow = NRM(_pooled(), LAYERS, _rules(), fast=False)
    with slow.explain(X, 0) as e:
        results = [e.pairwise("3", "4"), e.interactions(["1", "2", "4"]), e.consecutive_edges()]
    torch.testing.assert_close(results[:2], expected[:2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results[2], expected[2], rtol=1e-10, atol=1e-12)
    assert expected[0].abs().sum() > 0


def test_interactions_split_over_the_middle_layer_of_another_shape():
    """Top channels through the grouped transposed convolution (layer 4 over conv 3 from the
    pooled layer 2), split over layer 2's 2×2 neurons, read at layer 1's 4×4 neurons."""
    nrm = NRM(_pooled(), LAYERS, _rules())
    levels = {"4": "channel", "2": "neuron", "1": "channel"}
    with nrm.explain(X, 0) as e:
        assert segments.rule_segment(e.session, "2", "4") is not None
        table = engine.interactions(e.session, ["4", "2", "1"], levels)
        reference = engine.interactions(e.session, ["4", "2", "1"], levels, fast=False)
    assert table.shape == (2, 4, 16, 4) and table.abs().sum() > 0
    torch.testing.assert_close(table, reference, rtol=1e-10, atol=1e-12)


def test_top_units_that_are_no_channels_take_the_batched_backward(monkeypatch):
    """Unit masks on the top layer of a rule segment: no channel messages, the same table."""
    clusters = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)[:, None, :, None, None]
    levels = {"4": clusters, "2": "channel", "1": "channel"}
    nrm = NRM(_pooled(), LAYERS, _rules())
    with nrm.explain(X, 0) as e:
        per_channel = engine.interactions(e.session, ["4", "2", "1"], {**levels, "4": "channel"})
        monkeypatch.setattr(segments.RuleSegment, "channel_messages", None)
        table = engine.interactions(e.session, ["4", "2", "1"], levels)
    expected = torch.einsum("bijc,kc->bijk", per_channel, clusters[:, 0, :, 0, 0].double())
    assert table.shape == (2, 4, 4, 2) and expected.sum((1, 2)).gt(0).all()
    torch.testing.assert_close(table, expected, rtol=1e-10, atol=1e-12)


class _WithUnused(nn.Module):
    """A model with a module it never calls (registered first) around ``body``."""

    def __init__(self, body: nn.Module, detach: bool = False) -> None:
        super().__init__()
        self.unused, self.body, self.detach = nn.Linear(5, 5).double(), body, detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.detach() if self.detach else x)


def test_a_module_the_forward_pass_skips_changes_no_report():
    """The report covers every rule layer the pass reached, also after a hooked module that
    never ran: relevance stopped at layer 2 and the reached share as without it."""
    x = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = NRM(_stopping_mlp(0), HIDDEN, composite=_composite("zplus"))
    wrapped = NRM(
        _WithUnused(_stopping_mlp(0)), [f"body.{n}" for n in HIDDEN], composite=_composite("zplus")
    )
    with plain.explain(x, 0) as e, wrapped.explain(x, 0) as w:
        assert e.stopped["2"].gt(0).all()
        assert (
            list(w.stopped)
            == [f"body.{n}" for n in e.stopped]
            == ["body.0", "body.2", "body.4", "body.6"]
        )
        for name, mass in e.stopped.items():
            torch.testing.assert_close(w.stopped[f"body.{name}"], mass)
        torch.testing.assert_close(w.reached, e.reached)


def test_a_model_that_detaches_its_input_is_refused_and_left_hook_free():
    model = _WithUnused(_stopping_mlp(0), detach=True)
    nrm = NRM(model, [f"body.{n}" for n in HIDDEN], composite=_composite("zplus"))
    x = torch.rand(3, 5, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=r"^x: no gradient of the model output reaches it "
        r"\(does forward\(\) detach its input\?\), so no relevance can reach "
        r"it$",
    ):
        nrm.explain(x, 0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_the_session_keeps_only_the_outputs_it_reads_and_closes_twice():
    """Outputs of the set layers and the rule layers only (not of every module), and a
    second close is a no-op."""
    model = _pooled()
    nrm = NRM(model, ["1", "4"], _rules())
    explanation = nrm.explain(X, 0)
    session = explanation.session
    assert set(session.outputs) == {"0", "1", "3", "4", "6"} == {"1", "4"} | set(session.hooks)
    explanation.close()
    explanation.close()
    assert session.closed
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _LinearRoot(nn.Linear):
    """A model that is itself a rule layer (a Linear with a ReLU child on its input)."""

    def __init__(self) -> None:
        super().__init__(4, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.act(x))


def test_an_open_explanation_on_a_model_that_is_a_rule_layer_is_named_model():
    model = _LinearRoot().double()
    nrm = NRM(model, ["act"], _rules())
    x = torch.rand(2, 4, dtype=torch.float64)
    with nrm.explain(x, 0), pytest.raises(RuntimeError, match=r"^module 'model' still has NRM"):
        nrm.explain(x, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_class_targets_give_one_hot_relevance_in_the_output_dtype(dtype):
    output = torch.zeros(3, 4, dtype=dtype)
    relevance = engine.output_relevance(output, [2, 0, 3])
    assert relevance.dtype == dtype
    assert torch.equal(relevance, torch.eye(4, dtype=dtype)[[2, 0, 3]])
    assert torch.equal(engine.output_relevance(output, 1), torch.eye(4, dtype=dtype)[[1, 1, 1]])


def test_each_rule_is_linearized_once_per_forward_pass(monkeypatch):
    """The checked pass and every later query reuse a layer's linearized rule: its terms are
    computed once per hooked layer, not once per backward pass."""
    from zennit_ext import NRM
    from zennit_ext.nrm import rules

    calls: list[int] = []
    terms = rules.NormalizedHook._terms

    def counted(self, *args, **kwargs):
        calls.append(id(self))
        return terms(self, *args, **kwargs)

    monkeypatch.setattr(rules.NormalizedHook, "_terms", counted)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    with NRM(model.double(), ["1", "3"]).explain(x.double(), 0) as explained:
        explained.marginal("1", [0, 2])
        explained.joint({"1": [1], "3": [0, 4]})
        explained.heatmap({"3": [2]})
    assert calls and len(calls) == len(set(calls))
