"""Masked forward passes honour ``perturbations_per_eval`` and the cap of 65,536 rows per pass,
and a layer with a tuple output is masked element by element as Captum's layer ablation does
(captum_ext.synergy._evaluators)."""

from __future__ import annotations

import torch
from captum.attr import LayerFeatureAblation
from torch import nn

from captum_ext import LayerSynergy, NeuronSynergy


def _recording(model, sizes):
    def forward(x):
        sizes.append(len(x))
        return model(x)

    return forward


def _mlp():
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()


def test_each_pass_holds_per_eval_masks_of_the_rows():
    model = _mlp()
    x = torch.randn(5, 3, dtype=torch.float64)
    for per_eval in (1, 3):
        layer_sizes: list[int] = []
        LayerSynergy(_recording(model, layer_sizes), model[1]).compute(
            x, target=0, perturbations_per_eval=per_eval
        )
        neuron_sizes: list[int] = []
        NeuronSynergy(_recording(model, neuron_sizes), model[1]).compute(
            x, 2, perturbations_per_eval=per_eval
        )
        for sizes, n in ((layer_sizes, 4), (neuron_sizes, 3)):
            # the probe of the first row, the unmasked pass, then blocks of masks
            masks = n + n * (n - 1) // 2
            blocks = -(-n // per_eval) + -(-(n * (n - 1) // 2) // per_eval)
            assert sizes[1] == 5 and max(sizes) == 5 * per_eval
            assert sum(sizes[2:]) == 5 * masks and len(sizes) == 2 + blocks
        assert layer_sizes[0] == 1


def test_a_pass_never_exceeds_65536_rows():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).double().eval()
    x = torch.randn(17_000, 2, dtype=torch.float64)
    sizes: list[int] = []
    res = LayerSynergy(_recording(model, sizes), model[1]).compute(
        x, perturbations_per_eval=8, rows_per_chunk=17_000
    )
    assert max(sizes) == 3 * 17_000  # 65,536 // 17,000 = 3 masks per pass, not 8
    assert res.rows == 17_000


class _Split(nn.Module):
    def forward(self, z):
        return torch.relu(z[:, :3]), torch.tanh(z[:, 3:])


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.lin, self.split, self.out = nn.Linear(4, 5), _Split(), nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.cat(self.split(self.lin(x)), 1))


def test_a_tuple_layer_output_is_masked_like_captum():
    model = _TupleNet().double().eval()
    x = torch.randn(9, 4, dtype=torch.float64)
    res = LayerSynergy(model, model.split).compute(x, target=1, perturbations_per_eval=2)
    first, second = LayerFeatureAblation(model, model.split).attribute(x, target=1)
    want = torch.cat([first.abs().mean(0), second.abs().mean(0)])
    assert want.min() > 0 and res.unit_shapes == ((3,), (2,))
    assert torch.allclose(res.importance, want, rtol=1e-10, atol=0)
