"""The masked-forward evaluators' errors name the argument, the value and the shapes
(captum_ext.synergy._evaluators): neuron selectors, and a layer that never sees the whole batch."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from captum_ext import LayerSynergy
from captum_ext.synergy._evaluators import select_neuron


def test_selected_neuron_values_and_selector_errors():
    torch.manual_seed(2)
    out = torch.randn(4, 6, dtype=torch.float64) + 3.0
    assert torch.equal(select_neuron((out,), 2, 4), out[:, 2])
    assert torch.equal(select_neuron((out,), (slice(1, 3),), 4), out[:, 1] + out[:, 2])
    assert torch.equal(select_neuron((out,), lambda t: t[:, 5:6], 4), out[:, 5])

    def message(text):
        return re.escape(text)

    with pytest.raises(
        ValueError,
        match=message("neuron_selector 6 is not valid for the layer output of shape(s) [(4, 6)]: "),
    ):
        select_neuron((out,), 6, 4)

    def number(_out):
        return 1.5

    with pytest.raises(
        ValueError, match=message(f"neuron_selector {number!r} must give a tensor, got 1.5")
    ):
        select_neuron((out,), number, 4)
    with pytest.raises(
        ValueError,
        match=message(
            "neuron_selector (slice(7, 9, None),) selects no neuron of the layer output of "
            "shape (4, 6)"
        ),
    ):
        select_neuron((out,), (slice(7, 9),), 4)

    def whole(t):
        return t

    with pytest.raises(
        ValueError,
        match=message(
            f"neuron_selector {whole!r} must give one value per row (4), got shape (4, 6) for "
            "layer output(s) [(4, 6)]"
        ),
    ):
        select_neuron((out,), whole, 4)


def test_a_forward_that_splits_the_batch_is_refused_with_the_row_counts():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double().eval()

    def in_halves(x):  # the layer sees two rows at a time, as a DataParallel replica would
        return torch.cat([model(part) for part in x.split(2)])

    x = torch.randn(3, 3, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "the layer saw a batch of 2 rows, 6 expected: masking needs the whole batch at the "
            "layer (no DataParallel replicas)"
        ),
    ):
        LayerSynergy(in_halves, model[1]).compute(x, perturbations_per_eval=2)
    assert not model[1]._forward_hooks
