"""Where the exact fast path applies (``_fastpaths.split_after``) and that its folded map
equals the modules it replaces: bias-free maps, BatchNorms without affine parameters, pass-through
modules, nested Sequentials; and the cases it must refuse.

References are the PyTorch modules' own forward passes in eval mode.
"""

from __future__ import annotations

import pytest
import torch
from synergy_reference import randomize_norms
from torch import nn

from captum_ext import LayerSynergy
from captum_ext.synergy._fastpaths import split_after


def _stats(norm: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    c = norm.num_features
    norm.running_mean = torch.randn(c, generator=g, dtype=torch.float64) * 0.5
    norm.running_var = torch.rand(c, generator=g, dtype=torch.float64) + 0.4
    if norm.affine:
        norm.weight.data = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
        norm.bias.data = torch.randn(c, generator=g, dtype=torch.float64) * 0.3


def _dense(bias: bool, affine: bool, between=()) -> nn.Sequential:
    torch.manual_seed(3)
    norm = nn.BatchNorm1d(4, affine=affine)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(3, 5), nn.ReLU()),
        *between,
        nn.Linear(5, 4, bias=bias),
        norm,
        nn.Tanh(),
        nn.Linear(4, 2),
    ).double()
    _stats(norm, 4)
    return model.eval()


CASES = [
    (True, True, ()),
    (False, True, ()),
    (True, False, ()),
    (False, False, (nn.Identity(), nn.Dropout(0.5))),
]


@pytest.mark.parametrize(("bias", "affine", "between"), CASES)
def test_folded_dense_map_equals_linear_then_batchnorm(bias, affine, between):
    model = _dense(bias, affine, between)
    layer = model[0][1]
    split = split_after(model, layer)
    assert split is not None and split.linear is model[1 + len(between)]
    x = torch.randn(9, 3, dtype=torch.float64)
    with torch.no_grad():
        a = model[0](x)
        want = model[2 + len(between)](model[1 + len(between)](a))
        assert torch.allclose(split.z(a), want, rtol=1e-12, atol=1e-12)
        assert torch.equal(split.prefix(x), a)
        assert torch.allclose(split.suffix(want), model(x), rtol=1e-12, atol=1e-12)
    assert not torch.equal(split.bias, torch.zeros_like(split.bias))
    # the fast path gives the hook path's numbers
    fast = LayerSynergy(model, layer).compute(x, target=1)
    slow = LayerSynergy(lambda inp: model(inp), layer).compute(x, target=1)
    assert torch.allclose(fast.importance, slow.importance, rtol=1e-9, atol=1e-12)
    assert torch.allclose(fast.synergy, slow.synergy, rtol=1e-9, atol=1e-12)
    assert fast.importance.abs().min() > 0


def _conv(bias: bool, affine: bool) -> nn.Sequential:
    torch.manual_seed(5)
    norm = nn.BatchNorm2d(3, affine=affine)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 3, 2, stride=2, bias=bias),
        norm,
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 2),
    ).double()
    _stats(norm, 6)
    return model.eval()


@pytest.mark.parametrize(("bias", "affine"), [(True, True), (False, False)])
def test_folded_conv_map_equals_conv_then_batchnorm(bias, affine):
    model = _conv(bias, affine)
    split = split_after(model, model[1])
    assert split is not None and split.is_conv and split.linear is model[2]
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        a = model[:2](x)
        assert torch.allclose(split.z(a), model[3](model[2](a)), rtol=1e-12, atol=1e-12)
    channels = torch.tensor([0, 1, 1, 2]).reshape(1, 4, 1, 1)
    fast = LayerSynergy(model, model[1]).compute(x, target=0, layer_mask=channels)
    slow = LayerSynergy(lambda inp: model(inp), model[1]).compute(x, target=0, layer_mask=channels)
    assert torch.allclose(fast.importance, slow.importance, rtol=1e-9, atol=1e-12)
    assert torch.allclose(fast.synergy, slow.synergy, rtol=1e-9, atol=1e-12)


class _Custom(nn.Sequential):
    def forward(self, x):  # not the chain of its children
        return super().forward(x) * 2.0


def test_no_split_where_the_fast_path_does_not_apply():
    torch.manual_seed(7)
    relu = nn.ReLU()
    twice = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu, nn.Linear(3, 1))
    assert split_after(twice, relu) is None  # the layer is called twice
    last = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    assert split_after(last, last[1]) is None  # nothing after it
    pool = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.MaxPool2d(2))
    assert split_after(pool, pool[1]) is None
    for conv in (
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, groups=2),
    ):
        model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), conv)
        assert split_after(model, model[1]) is None
    custom = _Custom(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    assert split_after(custom, custom[1]) is None
    inner = _Custom(nn.ReLU())  # a custom container is a leaf, not flattened
    outer = nn.Sequential(nn.Linear(3, 3), inner, nn.Linear(3, 1))
    assert split_after(outer, inner[0]) is None
    split = split_after(outer, inner)
    assert split is not None and split.linear is outer[2]
    plain = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), nn.Identity()), nn.Linear(3, 1))
    split = split_after(plain, plain[1])  # a plain Sequential as the layer stays one leaf
    assert split is not None and split.linear is plain[2] and split.prefix[-1] is plain[1]


def test_a_training_mode_batchnorm_is_not_folded():
    model = _dense(True, True)
    model[2].train()
    split = split_after(model, model[0][1])
    assert split is not None and split.suffix[0] is model[2]
    assert torch.equal(split.weight, model[1].weight) and torch.equal(split.bias, model[1].bias)
    conv_after_dense = (
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.BatchNorm2d(4))
        .double()
        .eval()
    )
    split = split_after(conv_after_dense, conv_after_dense[1])  # BatchNorm2d after a Linear
    assert split.suffix[0] is conv_after_dense[3]


def test_fast_path_keeps_dtype_and_model_norms():
    model = _dense(True, True).float()
    randomize_norms(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3)
    res = LayerSynergy(model, model[0][1]).compute(x, target=0)
    assert res.importance.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_batchnorm_that_ends_the_network_is_folded():
    torch.manual_seed(9)
    norm = nn.BatchNorm1d(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), norm).double()
    _stats(norm, 10)
    model.eval()
    split = split_after(model, model[1])
    assert split is not None and len(split.suffix) == 0
    x = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(split.z(model[:2](x)), model(x), rtol=1e-12, atol=1e-12)
