"""Helpers shared by the attention tests: model snapshots, bias-free copies, explanations."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient

TINY = 1e-12


def snapshot(model: nn.Module) -> dict:
    """Module objects, parameters, instance attributes, hooks and modes of ``model``."""
    return {
        "modules": [(n, id(m), type(m)) for n, m in model.named_modules()],
        "parameters": [(n, id(p), p.detach().clone()) for n, p in model.named_parameters()],
        "attributes": [(n, sorted(vars(m))) for n, m in model.named_modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "training": [m.training for m in model.modules()],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["modules"] == after["modules"]
    assert before["attributes"] == after["attributes"]
    assert before["hooks"] == after["hooks"] and before["training"] == after["training"]
    for (n0, i0, p0), (n1, i1, p1) in zip(before["parameters"], after["parameters"], strict=True):
        assert (n0, i0) == (n1, i1) and torch.equal(p0, p1), n0


def zero_parameters(model: nn.Module, suffixes: Sequence[str]) -> nn.Module:
    """Set every parameter whose name ends with one of ``suffixes`` to 0 (in place)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(tuple(suffixes)):
                parameter.zero_()
    return model


def explain(
    model: nn.Module, composite, x: torch.Tensor, target: Sequence[int], classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zennit's Gradient attributor for the one-hot ``target`` (one class per sample)."""
    with Gradient(model, composite) as attributor:
        return attributor(x, torch.eye(classes, dtype=x.dtype)[list(target)])


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def check_outputs_and_restoration(model: nn.Module, method, x: torch.Tensor) -> float:
    """Canonized outputs equal (1e-6 relative), the model restored; returns the difference."""
    before, reference = snapshot(model), model(x)
    composite = method()
    composite.register(model)
    try:
        difference = relative_difference(model(x), reference)
    finally:
        composite.remove()
    assert difference < 1e-6
    assert_same(before, snapshot(model))
    assert torch.equal(model(x), reference)
    return difference


def check_restored_after_failure(
    monkeypatch, model: nn.Module, x: torch.Tensor, canonizer: type, failing: str, composite
) -> None:
    """Make ``canonizer`` raise at module ``failing`` while ``composite`` registers: the error
    propagates and the model is left exactly as it was (objects, attributes, outputs)."""
    before, reference = snapshot(model), model(x)
    original = canonizer._attribute_map

    def failing_map(name, module):
        if name == failing:
            raise RuntimeError("failing on purpose")
        return original(name, module)

    monkeypatch.setattr(canonizer, "_attribute_map", staticmethod(failing_map))
    with pytest.raises(RuntimeError, match="on purpose"):
        composite.register(model)
    assert_same(before, snapshot(model))
    assert torch.equal(model(x), reference)
