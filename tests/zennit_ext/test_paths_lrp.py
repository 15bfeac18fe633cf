"""NeuronPaths' paper settings: LRP unit relevance (Algorithm 1), the block reconstruction
(Algorithm 2) and the activation-based k-path heatmap (Fig. 7), against hand-written references
that share no code with zennit_ext.paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from zennit.composites import LayerMapComposite
from zennit.rules import Gamma, Pass
from zennit.types import Activation

from zennit_ext import NRM
from zennit_ext.nrm.rules import nrm_composite
from zennit_ext.paths.api import NeuronPaths, select_units
from zennit_ext.paths.graph import Paths

DTYPES = (torch.float32, torch.float64)
GAMMA = 0.25
LAYERS = ["0", "3", "6"]

pytestmark = pytest.mark.filterwarnings("ignore:.*negative column sums:RuntimeWarning")


def _mlp(dtype) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    for module in model:
        if isinstance(module, nn.Linear):
            module.bias.data.uniform_(0.05, 0.3)
    return model.to(dtype).eval()


def _gamma_lrp_by_hand(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor) -> dict:
    """γ-LRP (weights and biases γ-modified, ReLU passes) written out layer by layer."""
    activations = [x]
    for module in model:
        activations.append(module(activations[-1]))
    relevance = F.one_hot(target, 3).to(x.dtype)
    found = {}
    for index in (4, 2):
        weight, bias = model[index].weight, model[index].bias
        weight, bias = weight + GAMMA * weight.clamp(min=0), bias + GAMMA * bias.clamp(min=0)
        a = activations[index]  # input of the linear layer = output of layer index − 2
        z = a @ weight.T + bias
        relevance = a * ((relevance / z) @ weight)
        found[str(index - 2)] = relevance.detach()
    return found


@pytest.mark.parametrize("dtype", DTYPES)
def test_lrp_unit_relevance_is_gamma_lrp_by_hand(dtype, plrp_unchanged):
    model = _mlp(dtype)
    x = torch.rand(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(1)) + 0.1
    target = torch.tensor([0, 2, 1])
    composite = LayerMapComposite([(Activation, Pass()), (nn.Linear, Gamma(gamma=GAMMA))])
    paths = NeuronPaths(model, ["0", "2"], composite=composite, on_violation="warn")
    verify = plrp_unchanged(model)
    found = paths.unit_relevance(x, target, relevance="lrp")
    verify()
    expected = _gamma_lrp_by_hand(model, x, target)
    for name in ("0", "2"):
        assert found[name].dtype == dtype
        torch.testing.assert_close(found[name], expected[name], rtol=1e-4, atol=1e-6)
    # biases absorb relevance: LRP is not NRM's normalized marginals here
    nrm = paths.unit_relevance(x, target, relevance="nrm")
    assert not torch.allclose(found["0"], nrm["0"], rtol=1e-3)


def _cnn(dtype=torch.float64, bias=True) -> nn.Sequential:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(20, 3),
    )
    for module in model:
        if isinstance(module, nn.Conv2d | nn.Linear):
            if bias:
                module.bias.data.uniform_(0.0, 0.2)
            else:
                module.bias.data.zero_()
    return model.to(dtype).eval()


def _x(dtype=torch.float64, size=12):
    return torch.rand(2, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_free_lrp_conserves_and_equals_nrm(dtype):
    # no bias absorbs relevance: every column of γ/z⁺ sums to 1, so LRP is NRM (one-hot start)
    model = _cnn(dtype, bias=False)
    paths = NeuronPaths(model, LAYERS, composite=nrm_composite(low=0.0, high=1.0))
    x, target = _x(dtype), torch.tensor([1, 2])
    lrp = paths.unit_relevance(x, target, "lrp")
    nrm = paths.unit_relevance(x, target, "nrm")
    tolerance = {"rtol": 1e-3, "atol": 1e-3}  # the rules' stabilizer (1e-6 added to each z)
    for name in LAYERS:
        torch.testing.assert_close(lrp[name].sum(1), torch.ones(2, dtype=dtype), **tolerance)
        torch.testing.assert_close(lrp[name], nrm[name], **tolerance)


def test_graph_with_lrp_relevance_selects_on_lrp_and_keeps_nrm_edges(plrp_unchanged):
    model = _cnn()
    paths = NeuronPaths(model, LAYERS, on_violation="warn")
    x, target = _x(), torch.tensor([0, 2])
    verify = plrp_unchanged(model)
    nrm_graph = paths.graph(x, target, c=0.5)
    graph = paths.graph(x, target, c=0.5, relevance="lrp")
    verify()
    lrp = paths.unit_relevance(x, target, "lrp")
    assert graph.relevance_kind == "lrp" and nrm_graph.relevance_kind == "nrm"
    for name in LAYERS:
        torch.testing.assert_close(graph.relevance[name], lrp[name], rtol=1e-12, atol=0)
        assert torch.equal(graph.kept[name], select_units(lrp[name], 0.5))
    assert any(not torch.equal(graph.kept[n], nrm_graph.kept[n]) for n in LAYERS)
    for pair, edges in graph.edges.items():
        torch.testing.assert_close(edges, nrm_graph.edges[pair], rtol=1e-12, atol=0)
    torch.testing.assert_close(graph.top_edges(), nrm_graph.relevance["6"], rtol=1e-12, atol=0)
    top = graph.top_paths(3)
    for depth, name in enumerate(LAYERS):  # every path unit is kept by LRP
        assert graph.kept[name].gather(1, top.units[:, :, depth]).all()
    # activation selection does not depend on the relevance kind
    by_activation = paths.graph(x, target, c=0.5, score="activation", relevance="lrp")
    for name in LAYERS:
        assert torch.equal(by_activation.kept[name], select_units(graph.activation[name], 0.5))
    with pytest.raises(ValueError, match="relevance must be one of"):
        paths.graph(x, target, relevance="LRP")
    with pytest.raises(ValueError, match="target"):
        paths.graph(x, torch.tensor([0, 7]), relevance="lrp")
    verify()


def test_restricted_heatmap_and_threshold_with_lrp_selection():
    model = _cnn()
    paths = NeuronPaths(model, LAYERS, on_violation="warn")
    x, target = _x(), torch.tensor([0, 2])
    lrp = paths.unit_relevance(x, target, "lrp")
    kept = {n: select_units(lrp[n], 0.0) for n in LAYERS}
    nrm = NRM(model, LAYERS, on_violation="warn")
    sets = {n: kept[n][:, :, None, None] for n in LAYERS}
    expected = nrm.heatmap(x, target, sets)
    found = paths.restricted_heatmap(x, target, 0.0, relevance="lrp")
    torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-12)
    tuned = paths.tune_threshold(x, target, grid=(1.0, 0.0), relevance="lrp")
    graph = paths.graph(x, target, c=0.0, relevance="lrp")
    torch.testing.assert_close(tuned.kept_fraction[1], graph.kept_fraction())
    torch.testing.assert_close(tuned.kept_relevance[1], expected.flatten(1).sum(1))


# ------------------------------------------------------------------- Algorithm 2 by hand


def _max_pool_unpool_by_hand(a: torch.Tensor, keep: torch.Tensor, size: int) -> torch.Tensor:
    """Zero all but the window maxima of the kept channels (non-overlapping windows)."""
    out = torch.zeros_like(a)
    batch, channels, height, width = a.shape
    for b in range(batch):
        for ch in range(channels):
            if not keep[b, ch]:
                continue
            for i in range(0, height - size + 1, size):
                for j in range(0, width - size + 1, size):
                    window = a[b, ch, i : i + size, j : j + size]
                    flat = int(window.flatten().argmax())
                    out[b, ch, i + flat // size, j + flat % size] = window.max()
    return out


def _transposed_by_autograd(conv: nn.Conv2d, conv_input: torch.Tensor, maps: torch.Tensor):
    """The adjoint of the bias-free convolution applied to ``maps`` (vector-Jacobian product)."""
    z = conv_input.detach().requires_grad_(True)
    out = F.conv2d(z, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return torch.autograd.grad(out, z, maps)[0]


def _strided(dtype) -> nn.Sequential:
    torch.manual_seed(5)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, stride=2, padding=1),  # 11 → 6: needs an output padding of 0/1
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(54, 3),
        )
        .to(dtype)
        .eval()
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [11, 12])
def test_reconstruct_block_is_algorithm2_by_hand(dtype, size, plrp_unchanged):
    model = _strided(dtype)
    x = torch.rand(2, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(6))
    paths = NeuronPaths(model, ["0", "2"], on_violation="warn")
    keep = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    verify = plrp_unchanged(model)
    found = paths.reconstruct_block(x, keep, layer="2")
    verify()
    with torch.no_grad():
        conv_input = F.relu(model[0](x))
        a = F.relu(model[2](conv_input))
    expected = _transposed_by_autograd(model[2], conv_input, _max_pool_unpool_by_hand(a, keep, 2))
    assert found.shape == conv_input.shape and found.dtype == dtype
    torch.testing.assert_close(found, expected)
    # a block without a pool (layer '0' feeds a convolution): pooling is the identity
    found = paths.reconstruct_block(x, keep[:, :4], layer="0")
    masked = F.relu(model[0](x)).detach() * keep[:, :4, None, None]
    torch.testing.assert_close(found, _transposed_by_autograd(model[0], x, masked))


def test_reconstruct_block_from_paths_and_errors():
    model = _strided(torch.float64)
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    paths = NeuronPaths(model, ["0", "2"], on_violation="warn")
    top = paths.graph(x, 0).top_paths(2)
    keep = torch.zeros(2, 6, dtype=torch.bool)
    for b in range(2):
        keep[b, top.units[b, :, 1]] = True
    torch.testing.assert_close(paths.reconstruct_block(x, top), paths.reconstruct_block(x, keep))
    with pytest.raises(ValueError, match="keep must be a bool tensor of shape"):
        paths.reconstruct_block(x, keep.float())
    with pytest.raises(TypeError, match="units must be a Paths or a bool tensor"):
        paths.reconstruct_block(x, [1, 2])
    with pytest.raises(ValueError, match="layer must be one of"):
        paths.reconstruct_block(x, keep, layer="4")
    mlp = NeuronPaths(_mlp(torch.float64), ["0", "2"], on_violation="warn")
    with pytest.raises(TypeError, match="module must be an nn.Conv2d"):
        mlp.reconstruct_block(torch.rand(2, 4, dtype=torch.float64), torch.ones(2, 5).bool())


# ------------------------------------------------------------- activation-based heatmap


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_heatmap_by_hand(dtype):
    model = _cnn(dtype)
    paths = NeuronPaths(model, LAYERS, on_violation="warn")
    x = _x(dtype)
    units = torch.tensor([[[0, 1, 2], [5, 7, 4]], [[3, 3, 0], [3, 3, 0]]])  # (batch, k, L)
    top = Paths(units, torch.zeros(2, 2, dtype=dtype), tuple(LAYERS))
    found = paths.activation_heatmap(x, top)
    with torch.no_grad():
        outputs = [model[:1](x), model[:4](x), model[:7](x)]
    expected = torch.zeros(2, 12, 12, dtype=dtype)
    for b in range(2):
        for rank in range(2):
            for depth, out in enumerate(outputs):
                unit_map = out[b, units[b, rank, depth]]
                if unit_map.shape != (12, 12):  # layer 0 keeps the input's size
                    unit_map = F.interpolate(
                        unit_map[None, None], size=(12, 12), mode="bilinear", align_corners=False
                    )[0, 0]
                expected[b] += unit_map / out[b].abs().max()
    assert found.shape == (2, 12, 12) and found.dtype == dtype
    torch.testing.assert_close(found, expected)
    single = [Paths(units[:, r : r + 1], top.score[:, :1], top.layers) for r in range(2)]
    torch.testing.assert_close(found, sum(paths.activation_heatmap(x, p) for p in single))
    with pytest.raises(ValueError, match="paths are for layers"):
        paths.activation_heatmap(x[:1], top)
