"""Paths: unit selection by hand, k-best paths against enumeration and networkx, the neuron
graph export, and deconvolution against a hand-written Algorithm 3 (Zeiler & Fergus)."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from benchmarks.models import VGGSmall
from zennit_ext.paths.api import NeuronPaths
from zennit_ext.paths.graph import NeuronGraph, Paths, select_units
from zennit_ext.plrp.masks import mass_threshold_mask

DTYPES = (torch.float32, torch.float64)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# ------------------------------------------------------------------------------ select_units


def test_select_units_std_by_hand():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    # row 0: mean 3, population σ √2 ≈ 1.414: c = 1 keeps ≥ 1.586, c = −1 keeps ≥ 4.414
    assert select_units(scores, 1.0)[0].tolist() == [False, True, True, True, True]
    assert select_units(scores, -1.0)[0].tolist() == [False, False, False, False, True]
    assert select_units(scores, 0.0)[0].tolist() == [False, False, True, True, True]
    # σ = 0 keeps every unit, whatever c
    for c in (1.0, 0.0, -2.0):
        assert select_units(scores, c)[1].all()


def test_select_units_std_boundary_is_kept():
    scores = torch.tensor([[0.0, 2.0, 2.0, 4.0]], dtype=torch.float64)  # mean 2, σ √2
    kept = select_units(scores, c=0.0)
    assert kept.tolist() == [[False, True, True, True]]  # score == mean is kept


def test_select_units_topk_ties_to_lower_index():
    scores = torch.tensor([[3.0, 1.0, 3.0, 3.0, 0.0]])
    assert select_units(scores, selection="topk", k=2).tolist() == [
        [True, False, True, False, False]
    ]
    assert select_units(scores, selection="topk", k=5).all()


@pytest.mark.parametrize("mass", [1.0, 0.9, 0.5, 0.05])
def test_select_units_mass_is_mass_threshold_mask(mass):
    scores = torch.randn(4, 30, generator=torch.Generator().manual_seed(3)).double()
    scores[0, :5] = 0.0
    expected = mass_threshold_mask(scores, p=1.0 - mass)
    assert torch.equal(select_units(scores, selection="mass", mass=mass), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"selection": "median"}, "selection must be one of"),
        ({"c": float("nan")}, "c must be a finite real number"),
        ({"c": "1"}, "c must be a finite real number"),
        ({"selection": "topk"}, "k must be an int in \\[1, 3\\]"),
        ({"selection": "topk", "k": 4}, "k must be an int in \\[1, 3\\]"),
        ({"selection": "topk", "k": 0}, "k must be an int"),
        ({"selection": "mass"}, "mass must be a fraction in \\(0, 1\\]"),
        ({"selection": "mass", "mass": 0.0}, "mass must be a fraction"),
        ({"selection": "mass", "mass": 1.5}, "mass must be a fraction"),
    ],
)
def test_select_units_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_units(torch.ones(2, 3), **kwargs)


def test_select_units_needs_batch_by_units():
    with pytest.raises(ValueError, match="scores must be a \\(batch, n\\) tensor, got \\(3,\\)"):
        select_units(torch.ones(3))


# ----------------------------------------------------------------------------- k-best paths


def _graph(relevance: list[torch.Tensor], edges: list[torch.Tensor], kept: list[torch.Tensor]):
    """A NeuronGraph of L layers named '0' … 'L−1' (bottom → top) from raw tensors."""
    names = tuple(str(i) for i in range(len(relevance)))
    pairs = list(zip(names[:-1], names[1:], strict=True))
    return NeuronGraph(
        names,
        dict(zip(names, relevance, strict=True)),
        dict(zip(names, relevance, strict=True)),
        dict(zip(names, kept, strict=True)),
        dict(zip(pairs, edges, strict=True)),
        1.0,
        "relevance",
    )


def _enumerate(graph: NeuronGraph, sample: int) -> list[tuple[float, tuple[int, ...]]]:
    """Every path through kept units with its score, best first (ties: lower units first)."""
    names = graph.layers
    choices = [graph.kept[n][sample].nonzero()[:, 0].tolist() for n in names]
    found = []
    for units in itertools.product(*choices):
        score = float(graph.relevance[names[-1]][sample, units[-1]])
        for depth in range(len(names) - 1):
            edge = graph.edges[(names[depth], names[depth + 1])]
            score += float(edge[sample, units[depth], units[depth + 1]])
        found.append((score, units))
    return sorted(found, key=lambda item: (-item[0], item[1]))


@st.composite
def _layered(draw, integer: bool):
    """Random layered DAG: ≤ 4 layers × ≤ 5 units, 2 samples, ≥ 1 kept unit per layer."""
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)

    def values(*shape):
        if integer:  # small integers: many exact ties and zeros
            return torch.randint(-2, 3, shape, generator=g).double()
        return torch.randn(shape, generator=g, dtype=torch.float64)

    relevance = [values(2, n) for n in sizes]
    edges = [values(2, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)]
    kept = []
    for n in sizes:
        mask = torch.rand(2, n, generator=g) < 0.7
        mask[torch.arange(2), torch.randint(n, (2,), generator=g)] = True
        kept.append(mask)
    return _graph(relevance, edges, kept)


@settings(max_examples=60, deadline=None)
@given(graph=_layered(integer=True), k=st.integers(1, 8))
def test_top_paths_equal_enumeration_with_ties(graph, k):
    references = [_enumerate(graph, sample) for sample in range(2)]
    if k > min(map(len, references)):
        with pytest.raises(ValueError, match=f"k={k} exceeds the number of paths"):
            graph.top_paths(k)
        return
    paths = graph.top_paths(k)
    assert paths.units.dtype == torch.long
    assert paths.units.shape == (2, k, len(graph.layers))
    for sample, reference in enumerate(references):
        assert [tuple(u) for u in paths.units[sample].tolist()] == [u for _, u in reference[:k]]
        assert paths.score[sample].tolist() == [s for s, _ in reference[:k]]


def _networkx_paths(graph: NeuronGraph, sample: int, k: int) -> list[tuple[float, tuple]]:
    """k best paths by networkx on weights M − w (every path has L edges plus a 0 sink edge)."""
    names = graph.layers
    weights = [graph.relevance[names[-1]][sample]] + [e[sample] for e in graph.edges.values()]
    shift = max(float(w.max()) for w in weights) + 1.0
    dag = nx.DiGraph()
    for j in graph.kept[names[-1]][sample].nonzero()[:, 0].tolist():
        dag.add_edge("out", (len(names) - 1, j), w=shift - float(weights[0][j]))
    for depth in range(len(names) - 1):
        edge = graph.edges[(names[depth], names[depth + 1])][sample]
        for i in graph.kept[names[depth]][sample].nonzero()[:, 0].tolist():
            for j in graph.kept[names[depth + 1]][sample].nonzero()[:, 0].tolist():
                dag.add_edge((depth + 1, j), (depth, i), w=shift - float(edge[i, j]))
    for i in graph.kept[names[0]][sample].nonzero()[:, 0].tolist():
        dag.add_edge((0, i), "sink", w=0.0)
    found = []
    for path in itertools.islice(nx.shortest_simple_paths(dag, "out", "sink", weight="w"), k):
        cost = sum(dag.edges[a, b]["w"] for a, b in itertools.pairwise(path))
        found.append((len(names) * shift - cost, tuple(unit for _, unit in path[-2:0:-1])))
    return found


@settings(max_examples=30, deadline=None)
@given(graph=_layered(integer=False), k=st.integers(1, 6))
def test_top_paths_equal_networkx_shortest_simple_paths(graph, k):
    counts = [int(graph.kept[n].sum(1).min()) for n in graph.layers]
    k = min(k, int(torch.tensor(counts).prod()))
    paths = graph.top_paths(k)
    for sample in range(2):
        reference = _networkx_paths(graph, sample, k)
        assert [tuple(u) for u in paths.units[sample].tolist()] == [u for _, u in reference]
        torch.testing.assert_close(
            paths.score[sample], torch.tensor([s for s, _ in reference], dtype=torch.float64)
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_top_paths_dtype_and_device(dtype, device):
    g = torch.Generator().manual_seed(0)
    sizes = (6, 5, 4)
    graph = _graph(
        [torch.rand(3, n, generator=g).to(device, dtype) for n in sizes],
        [torch.rand(3, a, b, generator=g).to(device, dtype) for a, b in itertools.pairwise(sizes)],
        [torch.ones(3, n, dtype=torch.bool, device=device) for n in sizes],
    )
    paths = graph.top_paths(4)
    assert paths.score.dtype == dtype and paths.score.device.type == device
    assert paths.units.device.type == device
    assert (paths.score[:, :-1] >= paths.score[:, 1:]).all()


def test_top_paths_errors():
    graph = _graph([torch.ones(1, 2)], [], [torch.tensor([[True, False]])])
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            graph.top_paths(k)
    with pytest.raises(ValueError, match="k=2 exceeds the number of paths through kept units"):
        graph.top_paths(2)
    bad = _graph([torch.tensor([[1.0, float("nan")]])], [], [torch.ones(1, 2, dtype=torch.bool)])
    with pytest.raises(ValueError, match="non-finite"):
        bad.top_paths(1)


def test_single_layer_paths_are_the_top_units():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.3]], dtype=torch.float64)
    graph = _graph([scores], [], [torch.ones(1, 4, dtype=torch.bool)])
    paths = graph.top_paths(3)
    assert paths.units[0, :, 0].tolist() == [1, 2, 3]
    assert paths.score.tolist() == [[0.5, 0.5, 0.3]]


def test_to_networkx_strongest_in_edges_and_path_edges():
    g = torch.Generator().manual_seed(1)
    sizes = (12, 10, 6)
    kept = [torch.rand(1, n, generator=g) < 0.8 for n in sizes]
    graph = _graph(
        [torch.rand(1, n, generator=g).double() for n in sizes],
        [torch.rand(1, a, b, generator=g).double() for a, b in itertools.pairwise(sizes)],
        kept,
    )
    dag = graph.to_networkx(sample=0, in_edges=3, k=4)
    assert dag.number_of_nodes() == 1 + sum(sizes)
    names = graph.layers
    for depth, name in enumerate(names):
        for unit in range(sizes[depth]):
            node = dag.nodes[(name, unit)]
            assert node["kept"] == bool(kept[depth][0, unit])
            assert node["relevance"] == float(graph.relevance[name][0, unit])
            incoming = list(dag.predecessors((name, unit)))
            if not node["kept"]:
                assert all("path" not in dag.edges[p, (name, unit)] for p in incoming)
            if depth < len(names) - 1 and node["kept"]:
                edge = graph.edges[(name, names[depth + 1])][0, unit]
                upper = kept[depth + 1][0].nonzero()[:, 0]
                best = upper[edge[upper].argsort(descending=True, stable=True)[:3]]
                assert {u for _, u in incoming} >= set(best.tolist())
    paths = graph.top_paths(4)
    for rank in range(4):
        units = paths.units[0, rank].tolist()
        chain = ["output"] + [(names[d], units[d]) for d in reversed(range(len(names)))]
        for a, b in itertools.pairwise(chain):
            assert dag.edges[a, b]["path"] <= rank
    with pytest.raises(ValueError, match="sample must be an int in \\[0, 1\\)"):
        graph.to_networkx(sample=1)
    with pytest.raises(ValueError, match="in_edges must be a non-negative int"):
        graph.to_networkx(in_edges=-1)


# ---------------------------------------------------------------------------- deconvolution


def _algorithm3(features: nn.Sequential, x: torch.Tensor, upto: int, channels: torch.Tensor):
    """Zeiler & Fergus deconvnet by hand: forward to ``features[upto]`` with max switches,
    keep the selected channels' maps, then unpool, rectify, transposed convolution (no bias).
    ``channels``: (batch, n_units) bool. Mirrors the paper's Algorithm 3."""
    switches, sizes = {}, {}
    for index in range(upto + 1):
        module = features[index]
        sizes[index] = x.shape
        if isinstance(module, nn.MaxPool2d):
            x, switches[index] = F.max_pool2d(
                x, module.kernel_size, module.stride, return_indices=True
            )
        elif isinstance(module, nn.ReLU | nn.ReLU6):
            x = F.relu6(x) if isinstance(module, nn.ReLU6) else F.relu(x)
        else:
            x = module(x)
    x = x * channels[:, :, None, None].to(x.dtype)
    for index in reversed(range(upto + 1)):
        module = features[index]
        if isinstance(module, nn.MaxPool2d):
            x = F.max_unpool2d(
                x, switches[index], module.kernel_size, module.stride, output_size=sizes[index][-2:]
            )
        elif isinstance(module, nn.ReLU | nn.ReLU6):
            x = F.relu(x)
        elif isinstance(module, nn.Conv2d):
            x = F.conv_transpose2d(x, module.weight, stride=module.stride, padding=module.padding)
        elif isinstance(module, nn.BatchNorm2d):  # eval mode: a per-channel scale
            x = x * (module.weight / (module.running_var + module.eps).sqrt())[:, None, None]
        else:
            raise AssertionError(f"no reference for {module}")
    return x


def _random_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=g))  # signed scales
            module.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _paths(layers, batch: int, k: int, sizes, seed: int) -> Paths:
    g = torch.Generator().manual_seed(seed)
    units = torch.stack([torch.randint(n, (batch, k), generator=g) for n in sizes], -1)
    return Paths(units, torch.zeros(batch, k), tuple(layers))


def _channels(paths: Paths, depth: int, n: int) -> torch.Tensor:
    mask = torch.zeros(paths.units.shape[0], n, dtype=torch.bool)
    mask.scatter_(1, paths.units[:, :, depth], True)
    return mask


def _assert_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = expected.abs().max()
    assert scale > 0
    assert (actual - expected).abs().max() <= rtol * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", ["features.4", "features.10", "features.14"])
def test_deconvolution_is_algorithm3_on_vggsmall(dtype, layer, plrp_unchanged):
    torch.manual_seed(0)
    model = _random_bn(VGGSmall(num_classes=4, batch_norm=True), 1).to(dtype)
    channels = {2: 16, 4: 32, 6: 32, 10: 64, 14: 64}  # outputs of features.<i>
    layers = sorted({"features.2", "features.6", layer}, key=lambda n: int(n.split(".")[1]))
    sizes = [channels[int(n.split(".")[1])] for n in layers]
    paths = _paths(layers, 2, 3, sizes, seed=4)
    x = torch.rand(2, 3, 64, 64, dtype=dtype, generator=torch.Generator().manual_seed(2))
    verify = plrp_unchanged(model)
    ours = NeuronPaths(model, layers).deconvolution(x, paths, layer=layer)
    verify()
    depth = layers.index(layer)
    upto = int(layer.split(".")[1])
    expected = _algorithm3(model.features, x, upto, _channels(paths, depth, sizes[depth]))
    assert ours.shape == x.shape and ours.dtype == dtype
    _assert_relative(ours, expected, 1e-5 if dtype == torch.float32 else 1e-10)


def test_deconvolution_is_algorithm3_on_torchvision_vgg16_inplace_relus():
    from collections import OrderedDict

    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)  # torchvision's VGG16 feature stack; a small head (fast to build)
    model = nn.Sequential(
        OrderedDict(
            features=make_layers(cfgs["D"]),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(512, 10),
        )
    ).eval()
    assert model.features[29].inplace
    layers = ["features.21", "features.28"]
    paths = _paths(layers, 1, 5, (512, 512), seed=0)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = NeuronPaths(model, layers).deconvolution(x, paths)
    expected = _algorithm3(model.features, x, 28, _channels(paths, 1, 512))
    _assert_relative(ours, expected)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _relu6_net() -> nn.Sequential:
    torch.manual_seed(3)
    return (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU6(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 3),
            nn.Sigmoid(),
        )
        .double()
        .eval()
    )


def test_deconvolution_relu6_needs_rectifiers(plrp_unchanged):
    model = _relu6_net()
    paths = _paths(["1", "3"], 2, 2, (6, 8), seed=0)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    view = NeuronPaths(model, ["1", "3"])
    verify = plrp_unchanged(model)
    with pytest.raises(TypeError, match="module '1' is a ReLU6"):
        view.deconvolution(x, paths)
    verify()  # hooks removed after the error too
    ours = view.deconvolution(x, paths, rectifiers=(nn.ReLU, nn.ReLU6))
    verify()
    expected = _algorithm3(model, x, 3, _channels(paths, 1, 8))
    _assert_relative(ours, expected, 1e-10)
    # the Sigmoid above the explained layer does not matter
    assert not torch.equal(ours, torch.zeros_like(ours))


def test_deconvolution_argument_errors():
    model = _relu6_net()
    view = NeuronPaths(model, ["1", "3"])
    paths = _paths(["1", "3"], 2, 2, (6, 8), seed=0)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="layer must be one of \\['1', '3'\\], got '4'"):
        view.deconvolution(x, paths, layer="4", rectifiers=(nn.ReLU, nn.ReLU6))
    with pytest.raises(ValueError, match="rectifiers must be a subset"):
        view.deconvolution(x, paths, rectifiers=(nn.ReLU, nn.Sigmoid))
    with pytest.raises(ValueError, match="paths are for layers"):
        view.deconvolution(x[:1], paths, rectifiers=(nn.ReLU, nn.ReLU6))
    with pytest.raises(TypeError, match="paths must be a Paths"):
        view.deconvolution(x, paths.units, rectifiers=(nn.ReLU, nn.ReLU6))


def test_neuron_paths_constructor_errors():
    model = _relu6_net()
    with pytest.raises(ValueError, match="not modules of the model"):
        NeuronPaths(model, ["1", "nope"])
    with pytest.raises(ValueError, match="layers must be distinct"):
        NeuronPaths(model, ["1", "3", "1"])
