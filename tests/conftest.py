"""Shared fixtures: fixed seeds, a few threads, tiny models and inputs."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    torch.manual_seed(0)


@pytest.fixture
def tiny_mlp() -> nn.Sequential:
    """A 6-5-4-3 ReLU MLP in float64, eval mode."""
    torch.manual_seed(1)
    return (
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
        .double()
        .eval()
    )


@pytest.fixture
def tiny_cnn() -> nn.Sequential:
    """Conv → ReLU → MaxPool → Conv → ReLU → Flatten → Linear on (N, 3, 8, 8), float64, eval."""
    torch.manual_seed(2)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * 4 * 4, 3),
        )
        .double()
        .eval()
    )


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """(4, 3, 8, 8) float64 non-negative images."""
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
