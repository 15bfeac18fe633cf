"""Additional forward arguments reach every masked pass: Δ equals Captum's feature ablations
(``NeuronFeatureAblation``, ``LayerFeatureAblation``) when the forward takes a per-row tensor, a
0-dim tensor and a number after the inputs, in chunks and with several masks per pass."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerFeatureAblation, NeuronFeatureAblation
from synergy_reference import randomize_norms
from torch import nn

from captum_ext import LayerSynergy, NeuronSynergy


class _Shifted(nn.Module):
    """out(act(norm(lin(x) + shift) * scale + offset)); shift (N, 6), offset 0-dim, scale float."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.lin = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.act = nn.Tanh()
        self.out = nn.Linear(6, 3)

    def forward(self, x, shift, offset, scale):
        return self.out(self.act(self.norm(self.lin(x) + shift) * scale + offset))


def _setup():
    model = _Shifted().double()
    randomize_norms(model)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    shift = torch.randn(7, 6, generator=g, dtype=torch.float64)
    offset = torch.tensor(-0.4, dtype=torch.float64)
    return model.eval(), x, (shift, offset, 1.7)


@pytest.mark.parametrize(("per_eval", "chunk"), [(1, None), (3, 2)])
def test_neuron_importance_with_additional_arguments_equals_captum(per_eval, chunk):
    model, x, args = _setup()
    ours = NeuronSynergy(model, model.act).compute(
        x,
        2,
        additional_forward_args=args,
        perturbations_per_eval=per_eval,
        rows_per_chunk=chunk,
    )
    theirs = NeuronFeatureAblation(model, model.act).attribute(x, 2, additional_forward_args=args)
    assert theirs.abs().min() > 0
    assert torch.allclose(ours.importance, theirs.abs().mean(0), rtol=1e-10, atol=0)


@pytest.mark.parametrize(("per_eval", "chunk"), [(1, None), (4, 3)])
def test_layer_importance_with_additional_arguments_equals_captum(per_eval, chunk):
    model, x, args = _setup()
    ours = LayerSynergy(model, model.act).compute(
        x,
        target=1,
        additional_forward_args=args,
        perturbations_per_eval=per_eval,
        rows_per_chunk=chunk,
    )
    theirs = LayerFeatureAblation(model, model.act).attribute(
        x, target=1, additional_forward_args=args
    )
    assert theirs.abs().min() > 0
    assert torch.allclose(ours.importance, theirs.abs().mean(0), rtol=1e-10, atol=0)
