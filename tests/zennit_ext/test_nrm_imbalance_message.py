"""The words of NRM's conservation error: the numbers it reports and its three endings."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from zennit_ext import NRM
from zennit_ext.nrm import engine
from zennit_ext.nrm.engine import ConservationError


class _Skip(nn.Module):
    """``x + relu(W x)`` with the add in ``forward``: no hook sees it, relevance doubles."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.relu(self.inner(x))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.ReLU(), _Skip(), nn.Linear(4, 2, bias=False)
    )
    with torch.no_grad():  # positive weights: every unit carries relevance in both samples
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.uniform_(0.1, 1.0)
    return model.double().eval()


X = torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.1, 2.0]], dtype=torch.float64)
HEAD = "relevance is not conserved: reached + Σ stopped − 1 is "
LAYERS = ["1"]


def _expected_head() -> str:
    """The first sentence, from the public report of the same pass in 'warn' mode."""
    with (
        pytest.warns(RuntimeWarning),
        NRM(_model(), LAYERS, on_violation="warn").explain(X, 0) as e,
    ):
        imbalance = e.report.reached + sum(e.report.stopped.values()) - 1
        tolerance = e.session.tolerance
    found = ", ".join(
        f"{float(i):+.3g} (tolerance {float(t):.1g})"
        for i, t in zip(imbalance, tolerance, strict=True)
    )
    return (
        f"{HEAD}{found} in samples [0, 1]; a step of forward() that no module hook sees changes "
        "the relevance (e.g. a residual add x + f(x), a scaling, a mean, a detached branch)"
    )


def _message() -> str:
    with pytest.raises(ConservationError) as error:
        NRM(_model(), LAYERS).explain(X, 0)
    return str(error.value)


def test_the_message_reports_each_sample_and_names_the_block():
    message = _message()
    head = _expected_head()
    assert message.startswith(head + "; ")
    assert re.search(r"is \+\d", message), "the skip adds relevance: a positive imbalance"
    located = message[len(head) + 2 :]
    assert located.startswith(
        "it is first created or lost (in backward order) in module '2' (_Skip): its input "
        "relevance + stopped − output relevance is +"
    )
    assert located.endswith(
        "beyond what its submodules account for; make the operation in its forward a module "
        "with a rule through a canonizer (e.g. zennit's Sum for a residual add x + f(x))"
    )


def test_when_no_module_is_at_fault_the_message_says_what_to_do(monkeypatch):
    monkeypatch.setattr(engine, "locate_imbalance", lambda session: None)
    assert _message() == (
        f"{_expected_head()}: make it a module with a rule (e.g. zennit's Sum through a canonizer)"
    )


def test_when_locating_fails_the_imbalance_is_still_reported(monkeypatch):
    def fail(session: engine.Session) -> None:
        raise RuntimeError("probe broke")

    monkeypatch.setattr(engine, "locate_imbalance", fail)
    assert _message() == (
        f"{_expected_head()}: make it a module with a rule "
        "(locating it failed: RuntimeError('probe broke'))"
    )
