"""The small float64 CNN and data set shared by the atlas tests (ties on purpose)."""

from __future__ import annotations

import torch
from random_modules import random_bn
from torch import nn
from torch.utils.data import TensorDataset
from zennit.canonizers import SequentialMergeBatchNorm

from zennit_ext.nrm.rules import nrm_composite

N, DUPLICATES, CLASSES = 40, 10, 3
LAYERS = ["2", "5"]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        random_bn(6, 1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        random_bn(8, 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )
    return model.double().eval()


def make_composite():
    return nrm_composite(gamma=None, canonizers=[SequentialMergeBatchNorm()])


def make_data() -> TensorDataset:
    """40 samples; the last 10 repeat the first 10 (same class): exact ties."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    x[N - DUPLICATES :], y[N - DUPLICATES :] = x[:DUPLICATES], y[:DUPLICATES]
    return TensorDataset(x, y)
