"""Fixtures of the zennit_ext tests (small float64 models)."""

from __future__ import annotations

import pytest
import torch
from random_modules import random_bn
from torch import nn

# ---- PLRP fixtures (tests/zennit_ext/test_plrp.py, test_explain.py) ----


def _plrp_build(name: str) -> tuple[nn.Module, tuple[int, ...], list]:
    """(model in float64 eval mode, input shape without batch, canonizers) for a zoo name."""
    from zennit.canonizers import SequentialMergeBatchNorm

    torch.manual_seed(7)
    if name == "mlp":
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(12, 10),
            nn.ReLU(),
            nn.Linear(10, 8),
            nn.ReLU(),
            nn.Linear(8, 6),
            nn.ReLU(),
            nn.Linear(6, 3),
        )
        return model.double().eval(), (12,), []
    if name in ("cnn_maxpool", "cnn_inplace"):
        inplace = name == "cnn_inplace"
        model = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 2 * 2, 10),
            nn.ReLU(inplace=inplace),
            nn.Linear(10, 3),
        )
        return model.double().eval(), (3, 8, 8), []
    if name == "cnn_bn":
        model = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            random_bn(6, 1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            random_bn(8, 2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, 3),
        )
        return model.double().eval(), (3, 8, 8), [SequentialMergeBatchNorm()]
    raise ValueError(name)


PLRP_ZOO = ("mlp", "cnn_maxpool", "cnn_inplace", "cnn_bn")


@pytest.fixture(params=PLRP_ZOO)
def plrp_zoo_model(request) -> tuple[nn.Module, torch.Tensor, list]:
    """(model, input batch (3, ...) float64, canonizers) for each small PLRP test model."""
    model, shape, canonizers = _plrp_build(request.param)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return model, x, canonizers


def _plrp_snapshot(model: nn.Module) -> dict:
    """Everything about a model that PLRP must leave unchanged."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [(n, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "modules": [n for n, _ in model.named_modules()],
        "attributes": [sorted(vars(m)) for m in model.modules()],
    }


def _plrp_assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    assert [(n, r) for n, _, r in before["params"]] == [(n, r) for n, _, r in after["params"]]
    for (name, a, _), (_, b, _) in zip(before["params"], after["params"], strict=True):
        assert torch.equal(a, b), name
    for key in ("training", "hooks", "modules", "attributes"):
        assert before[key] == after[key], key


@pytest.fixture
def plrp_unchanged():
    """``verify = plrp_unchanged(model)`` snapshots the model; ``verify()`` asserts it is the
    same (state_dict, parameters, requires_grad, train/eval mode, hooks, modules)."""

    def take(model: nn.Module):
        before = _plrp_snapshot(model)
        return lambda: _plrp_assert_same(before, _plrp_snapshot(model))

    return take
