"""NRM through squeeze-and-excitation gates: the gate held constant, and a product module
without a rule refused (in the mutation selection, unlike the zoo tests)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation
from zennit.composites import LayerMapComposite
from zennit.rules import Pass, ZPlus
from zennit.types import Activation
from zennit.types import Linear as AnyLinear

from zennit_ext import NRM
from zennit_ext.canonizers import AutoCanonizer


class _Gated(nn.Module):
    """A convolution, torchvision's squeeze-and-excitation gate and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.relu = nn.ReLU()
        self.gate = SqueezeExcitation(8, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gate(self.relu(self.conv(x)))
        return self.head(self.pool(h).flatten(1))


def test_nrm_holds_the_gate_constant_and_rejects_a_product_without_rule():
    torch.manual_seed(0)
    model = _Gated().double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    nrm = NRM(model, ["relu", "gate"])  # 'auto': the gate becomes a Multiply
    with nrm.explain(x, 0) as explanation:
        total = explanation.reached + sum(explanation.stopped.values())
        # the activation receives the gate's message unchanged, the gate's branch nothing
        torch.testing.assert_close(
            explanation.session.messages["relu"], explanation.session.messages["gate"]
        )
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    bare = LayerMapComposite(
        [(Activation, Pass()), (AnyLinear, ZPlus())], canonizers=[AutoCanonizer()]
    )
    message = (
        r"^product modules \['gate.canonizer_multiply'\] have no rule, so their gradient would "
        r"scale the relevance by the other factor; give them zennit_ext.rules.ProductRule in "
        r"the composite \(nrm_composite does for Multiply\)$"
    )
    with pytest.raises(ValueError, match=message):
        NRM(model, ["relu", "gate"], composite=bare).explain(x, 0)
