"""NeuronPaths on NRM: graphs, path heatmaps and threshold curves against one-shot NRM calls
and independent references; cleanup and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zennit_ext import NRM
from zennit_ext.paths.api import NeuronPaths, select_units

LAYERS = ["0", "3", "6"]  # conv outputs, bottom → top
DTYPES = (torch.float32, torch.float64)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

pytestmark = pytest.mark.filterwarnings("ignore:.*negative column sums:RuntimeWarning")


def _cnn(dtype=torch.float64, device="cpu") -> nn.Sequential:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
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
            module.bias.data.uniform_(0.0, 0.2)
    return model.to(device, dtype).eval()


@pytest.fixture
def setup():
    model = _cnn()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([0, 2])
    return model, x, target, NeuronPaths(model, LAYERS, on_violation="warn")


def test_graph_scores_edges_and_kept(setup):
    model, x, target, paths = setup
    graph = paths.graph(x, target, c=0.5)
    nrm = NRM(model, LAYERS, on_violation="warn")
    outputs = {}
    handles = [
        model[int(n)].register_forward_hook(
            lambda m, a, out, n=n: outputs.__setitem__(n, out.detach())
        )
        for n in LAYERS
    ]
    model(x)
    for handle in handles:
        handle.remove()
    with nrm.explain(x, target) as explanation:  # marginals and pairwise of one explanation
        for name in LAYERS:
            units = [{name: [u]} for u in range(graph.relevance[name].shape[1])]
            marginals = explanation.joint_many(units, level="channel").T
            torch.testing.assert_close(graph.relevance[name], marginals, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(graph.activation[name], outputs[name].sum((2, 3)))
            assert torch.equal(graph.kept[name], select_units(graph.relevance[name], 0.5))
        for (lower, upper), edges in graph.edges.items():
            torch.testing.assert_close(
                edges, explanation.pairwise(lower, upper), rtol=1e-10, atol=1e-12
            )
    assert list(graph.edges) == [("0", "3"), ("3", "6")]
    by_activation = paths.graph(x, target, c=0.5, score="activation")
    for name in LAYERS:
        assert torch.equal(by_activation.kept[name], select_units(graph.activation[name], 0.5))


def test_k_path_heatmap_is_sum_of_single_path_heatmaps(setup):
    model, x, target, paths = setup
    top = paths.graph(x, target, c=1.0).top_paths(k=4)
    heat = paths.heatmap(x, target, top)
    relevance = paths.path_relevance(x, target, top)
    nrm = NRM(model, LAYERS, on_violation="warn")
    assert heat.shape == x.shape and relevance.shape == (2, 4)
    for b in range(2):
        singles = []
        with nrm.explain(x[b : b + 1], int(target[b])) as explanation:
            for rank in range(4):
                sets = {n: [int(u)] for n, u in zip(LAYERS, top.units[b, rank], strict=True)}
                singles.append(explanation.heatmap(sets, level="channel")[0])
        torch.testing.assert_close(
            relevance[b], torch.stack(singles).flatten(1).sum(1), rtol=1e-10, atol=1e-14
        )
        torch.testing.assert_close(heat[b], torch.stack(singles).sum(0), rtol=1e-10, atol=1e-14)
    assert (relevance.abs() > 0).all()


def test_restricted_heatmap_is_nrm_heatmap_of_kept_units(setup):
    model, x, target, paths = setup
    graph = paths.graph(x, target, c=0.0)
    sets = {n: graph.kept[n][:, :, None, None] for n in LAYERS}
    expected = NRM(model, LAYERS, on_violation="warn").heatmap(x, target, sets)
    torch.testing.assert_close(paths.restricted_heatmap(x, target, c=0.0), expected)


def _score_with_channels_removed(model, x, target, kept) -> torch.Tensor:
    """Class score per sample with unkept conv channels removed from the weights."""
    scores = []
    for b in range(len(x)):
        pruned = copy.deepcopy(model)
        for name, mask in kept.items():
            conv = pruned[int(name)]
            conv.weight.data[~mask[b]] = 0.0
            conv.bias.data[~mask[b]] = 0.0
        scores.append(pruned(x[b : b + 1])[0, target[b]])
    return torch.stack(scores).detach()


def test_tune_threshold_by_hand(setup):
    model, x, target, paths = setup
    grid = (1e6, 0.0, -1.0)
    found = paths.tune_threshold(x, target, grid=grid, max_error=0.3)
    full = NRM(model, LAYERS, on_violation="warn").heatmap(x, target)
    assert found.kept_fraction.shape == (3, 2, 3) and found.nmse.shape == (3, 2)
    # c = 1e6 keeps every unit: the restricted heatmap is the full one
    assert torch.equal(found.kept_fraction[0], torch.ones(2, 3, dtype=torch.float64))
    assert found.nmse[0].abs().max() < 1e-20 and found.smape[0].abs().max() < 1e-6
    torch.testing.assert_close(found.score_ratio[0], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(found.kept_relevance[0], full.flatten(1).sum(1))
    for index, c in [(2, grid[2])]:  # one restricted c checked by hand (time)
        restricted = paths.restricted_heatmap(x, target, c)
        h, hc = full.sum(1).flatten(1), restricted.sum(1).flatten(1)
        nmse = ((hc - h) ** 2).mean(1) / (h**2).mean(1)
        terms = [
            2 * abs(a - b) / (abs(a) + abs(b)) if a != b else 0.0
            for a, b in zip(hc.flatten().tolist(), h.flatten().tolist(), strict=True)
        ]
        smape = torch.tensor(terms, dtype=torch.float64).view(2, -1).mean(1)
        torch.testing.assert_close(found.nmse[index], nmse)
        torch.testing.assert_close(found.smape[index], smape)
        torch.testing.assert_close(found.kept_relevance[index], restricted.flatten(1).sum(1))
        graph = paths.graph(x, target, c=c)
        torch.testing.assert_close(found.kept_fraction[index], graph.kept_fraction())
        score = _score_with_channels_removed(model, x, target, graph.kept)
        baseline = model(x).detach()[torch.arange(2), target]
        torch.testing.assert_close(found.score_ratio[index], score / baseline)
    mean_kept = found.kept_fraction.mean((1, 2))
    feasible = [i for i in range(3) if found.nmse[i].mean() <= 0.3]
    assert found.met and found.chosen == grid[min(feasible, key=lambda i: mean_kept[i])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_dtype_and_device(dtype, device):
    model = _cnn(dtype, device)
    x = torch.rand(2, 3, 12, 12, dtype=dtype, device=device)
    paths = NeuronPaths(model, LAYERS, on_violation="warn")
    graph = paths.graph(x, 1)
    top = graph.top_paths(3)
    for tensor in (*graph.relevance.values(), *graph.edges.values(), top.score):
        assert tensor.dtype == dtype and tensor.device.type == device
    heat = paths.heatmap(x, 1, top)
    assert heat.dtype == dtype and heat.device.type == device
    found = paths.tune_threshold(x, 1, grid=(1.0, 0.0))
    assert found.nmse.dtype == dtype and torch.isfinite(found.nmse).all()


def test_model_unchanged_and_errors(setup, plrp_unchanged):
    model, x, target, paths = setup
    verify = plrp_unchanged(model)
    top = paths.graph(x, target).top_paths(2)
    paths.heatmap(x, target, top)
    paths.tune_threshold(x, target, grid=(1.0, -1.0))
    verify()
    for kwargs, match in [
        ({"c": float("inf")}, "c must be a finite real number"),
        ({"score": "gradient"}, "score must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            paths.graph(x, target, **kwargs)
        verify()
    for grid, match in [
        ((), "grid must be a non-empty sequence"),
        ("1", "grid must be a non-empty sequence"),
        ((1.0, 1.0), "grid must not repeat values"),
        ((1.0, float("nan")), "grid values must be a finite real number"),
    ]:
        with pytest.raises(ValueError, match=match):
            paths.tune_threshold(x, target, grid=grid)
    with pytest.raises(ValueError, match="max_error must be positive"):
        paths.tune_threshold(x, target, max_error=0.0)
    with pytest.raises(ValueError, match="paths are for layers"):
        paths.heatmap(x[:1], target[:1], top)
    with pytest.raises(ValueError, match="not modules of the model"):
        NeuronPaths(model, ["0", "features.3"])
    upside_down = NeuronPaths(model, LAYERS[::-1], on_violation="warn")
    with pytest.raises(ValueError, match="layers must be given bottom → top"):
        upside_down.graph(x, target)
    verify()
