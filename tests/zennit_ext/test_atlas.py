"""ConceptAtlas: top-k and class statistics against a brute-force pass, batch sizes, reference
heatmaps against one NRM heatmap each, localization from the output against the start-layer
shortcut, resuming a stopped fit, the store, bad input and model restoration."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from atlas_common import CLASSES, DUPLICATES, LAYERS, N, make_composite, make_data, make_model
from random_modules import random_bn
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon, ZPlus

from zennit_ext.atlas import ConceptAtlas
from zennit_ext.nrm.api import NRM
from zennit_ext.nrm.rules import nrm_composite

MODES = ("actmax", "actmean", "relmax")
K = 5


def _atlas(model, **kwargs):
    return ConceptAtlas(model, LAYERS, composite=make_composite(), top_k=K, **kwargs)


def _brute_force(model, data, batch_size):
    """Per sample and unit: activation max/mean (plain forward hooks, no NRM) and NRM relevance
    (spatial sum of layer_relevance), the samples explained in the same global batches."""
    x, y = data.tensors
    nrm = NRM(model, LAYERS, composite=make_composite())
    found = {name: {mode: [] for mode in MODES} for name in LAYERS}
    modules = dict(model.named_modules())
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        outputs: dict = {}
        handles = [
            modules[n].register_forward_hook(lambda m, a, o, n=n, d=outputs: d.__setitem__(n, o))
            for n in LAYERS
        ]
        with torch.no_grad():
            model(xb)
        for handle in handles:
            handle.remove()
        with nrm.explain(xb, yb) as e:
            relevance = e.layer_relevance()
        for name in LAYERS:
            found[name]["actmax"].append(outputs[name].flatten(2).amax(2))
            found[name]["actmean"].append(outputs[name].flatten(2).mean(2))
            found[name]["relmax"].append(relevance[name].flatten(2).sum(2))
    return {n: {m: torch.cat(v) for m, v in modes.items()} for n, modes in found.items()}


def _sorted_topk(values: torch.Tensor, k: int):
    """(N, units) → (units, k) indices and values: value descending, ties to the lower index."""
    rows = values.T.tolist()
    indices = [sorted(range(len(r)), key=lambda i: (-r[i], i))[:k] for r in rows]
    chosen = [[r[i] for i in row] for r, row in zip(rows, indices, strict=True)]
    return torch.tensor(indices), torch.tensor(chosen, dtype=torch.float64)


def _hooks(model):
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for m in model.modules()
    ]


@pytest.fixture(scope="module")
def fitted():
    model, data = make_model(), make_data()
    return model, data, {b: _atlas(model).fit(data, batch_size=b) for b in (4, 7, 40)}


@pytest.mark.parametrize("batch_size", [4, 7, 40])
def test_topk_is_the_brute_force_top_k_with_ties_to_the_lower_index(fitted, batch_size):
    model, data, atlases = fitted
    brute = _brute_force(model, data, batch_size)
    for name in LAYERS:
        for mode in MODES:
            indices, values = atlases[batch_size].top(name, mode)
            expected_indices, expected_values = _sorted_topk(brute[name][mode], K)
            assert torch.allclose(values, expected_values, rtol=1e-12, atol=1e-14), (name, mode)
            if mode == "relmax":  # same pass (NRM) as the atlas: the same numbers, bit for bit
                assert torch.equal(indices, expected_indices), (name, mode)
            else:  # the atlas reads the canonized forward pass: equal up to rounding
                _assert_same_order(indices, values, expected_indices)


def _assert_same_order(indices, values, expected, tol=1e-10):
    """Equal, except that values within ``tol`` may swap (a tie up to rounding)."""
    for row in range(len(indices)):
        for position in range(indices.shape[1]):
            if indices[row, position] != expected[row, position]:
                near = (values[row] - values[row, position]).abs() <= tol
                assert near.sum() > 1, (row, position)


def test_duplicates_tie_and_the_lower_index_comes_first(fitted):
    _, _, atlases = fitted
    for atlas in atlases.values():
        for name in LAYERS:
            indices, values = atlas.top(name, "actmax")
            for row in range(len(indices)):
                for a in range(K - 1):
                    i, j = int(indices[row, a]), int(indices[row, a + 1])
                    if j == i + N - DUPLICATES:  # a sample and its duplicate, adjacent
                        assert values[row, a] == values[row, a + 1]
                    if j + N - DUPLICATES == i:
                        pytest.fail(f"duplicate {i} before the original {j}")


def test_batch_sizes_agree(fitted):
    _, _, atlases = fitted
    base = atlases[40]
    for atlas in (atlases[4], atlases[7]):
        for name in LAYERS:
            for mode in MODES:
                indices, values = atlas.top(name, mode)
                expected_indices, expected_values = base.top(name, mode)
                assert torch.allclose(values, expected_values, rtol=1e-12, atol=1e-14)
                _assert_same_order(indices, values, expected_indices)
            stats, expected = atlas.statistics(name), base.statistics(name)
            assert torch.equal(stats["count"], expected["count"])
            for key in ("relevance", "activation"):
                assert torch.allclose(stats[key], expected[key], rtol=1e-12, atol=1e-14)


def test_class_statistics_are_brute_force_means(fitted):
    model, data, atlases = fitted
    brute = _brute_force(model, data, 7)
    y = data.tensors[1]
    for name in LAYERS:
        stats = atlases[7].statistics(name)
        assert stats["count"].tolist() == torch.bincount(y, minlength=CLASSES).tolist()
        for key, mode in (("relevance", "relmax"), ("activation", "actmean")):
            expected = torch.stack([brute[name][mode][y == c].mean(0) for c in range(CLASSES)])
            assert torch.allclose(stats[key], expected, rtol=1e-12, atol=1e-14), key
        # relevance shares of every unit of a layer sum to 1 per sample (nothing stops here)
        total = (stats["relevance"] * stats["count"][:, None]).sum(1)
        assert torch.allclose(total, stats["count"].double(), atol=1e-10)


def test_a_dataloader_gives_the_dataset_result(fitted):
    model, data, atlases = fitted
    atlas = _atlas(model).fit(DataLoader(data, batch_size=7))
    for name in LAYERS:
        for mode in MODES:
            assert all(
                torch.equal(a, b)
                for a, b in zip(atlas.top(name, mode), atlases[7].top(name, mode), strict=True)
            )


def test_relmax_references_are_one_nrm_conditional_heatmap_each(fitted):
    model, data, atlases = fitted
    atlas = atlases[7]
    before = _hooks(model)
    refs = atlas.references("5", 3, data, mode="relmax")
    assert _hooks(model) == before
    indices, values = atlas.top("5", "relmax")
    assert torch.equal(refs.indices, indices[3]) and torch.equal(refs.values, values[3])
    nrm = NRM(model, LAYERS, composite=make_composite())
    x, y = data.tensors
    for row, index in enumerate(refs.indices.tolist()):
        single = nrm.heatmap(x[index : index + 1], int(y[index]), {"5": [3]}, level="channel")
        assert torch.allclose(refs.heatmaps[row], single[0], rtol=1e-10, atol=1e-13)
        # the heatmap sums to the unit's relevance: the RelMax value
        assert math.isclose(float(single.sum()), float(values[3, row]), rel_tol=1e-9)
    assert refs.boxes.shape == (K, 2, 2)
    crops = refs.crops()
    assert crops[0][0].shape[1:] == tuple((refs.boxes[0, :, 1] - refs.boxes[0, :, 0]).tolist())


class _Signs(nn.Module):
    """Two channels that both fire on the input; channel 1 feeds class 0 negatively."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2 * 6 * 6, 2)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
            )
            self.conv.bias.zero_()
            self.fc.weight.zero_()
            self.fc.weight[0, :36] = 1.0  # channel 0: +
            self.fc.weight[0, 36:] = -0.5  # channel 1: − (relevance and activation disagree)
            self.fc.weight[1] = 1.0
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.flat(self.relu(self.conv(x))))


def test_localization_from_the_output_differs_from_the_start_layer_shortcut():
    model = _Signs().double().eval()
    x = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    data = TensorDataset(x, torch.zeros(6, dtype=torch.long))
    composite = LayerMapComposite([(nn.Linear, Epsilon(1e-9)), (nn.Conv2d, ZPlus())])
    atlas = ConceptAtlas(model, ["relu"], composite=composite, top_k=3).fit(data)
    refs = atlas.references("relu", 1, data, mode="relmax")
    assert (refs.values < 0).all()  # channel 1 works against class 0
    assert (atlas.top("relu", "actmax")[1][1] > 0).all()  # although it fires
    # start-layer shortcut: relevance starts at the channel's activation at layer 'relu'
    shortcut = []
    for index in refs.indices.tolist():
        inputs = x[index : index + 1]
        start = model.relu(_conv(model.conv.weight, inputs)).detach()
        start[:, 0] = 0.0  # the channel's activation only
        shortcut.append(_zplus_heat(model.conv, inputs, start))
    shortcut = torch.cat(shortcut)
    full = refs.heatmaps
    assert (full.flatten(1).sum(1) < 0).all() and (shortcut.flatten(1).sum(1) > 0).all()
    correlation = torch.corrcoef(torch.stack([full.flatten(), shortcut.flatten()]))[0, 1]
    assert correlation < -0.9  # the shortcut's heatmap is the inverted one


def _conv(weight, x):
    return nn.functional.conv2d(x, weight, padding=1)


def _zplus_heat(conv, x, relevance):
    """z⁺ rule through the first conv by hand: R_in = x ⊙ W⁺ᵀ (R / (x * W⁺))."""
    weight = conv.weight.clamp(min=0)
    z = _conv(weight, x)
    ratio = torch.where(z > 0, relevance / z.clamp(min=1e-30), 0.0)
    return x * nn.functional.conv_transpose2d(ratio, weight, padding=1)


class _Stops(Dataset):
    """The data set, raising once ``limit`` items were read (a killed run)."""

    def __init__(self, data, limit):
        self.data, self.limit, self.read = data, limit, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.read += 1
        if self.read > self.limit:
            raise RuntimeError("loader stopped")
        return self.data[index]


def test_a_stopped_fit_resumes_to_the_uninterrupted_result(fitted, tmp_path):
    model, data, atlases = fitted
    before = _hooks(model)
    store = tmp_path / "store"
    with pytest.raises(RuntimeError, match="loader stopped"):
        _atlas(model, store=store).fit(_Stops(data, 2 + 21), batch_size=7, checkpoint_every=1)
    assert _hooks(model) == before and not model.training
    partial = ConceptAtlas.load(store)
    assert partial.summary()["batches_done"] == 3 and not partial.summary()["complete"]
    resumed = _atlas(model, store=store).fit(data, batch_size=7, checkpoint_every=1)
    loaded = ConceptAtlas.load(store)
    for atlas in (resumed, loaded):
        assert atlas.summary()["complete"] and atlas.summary()["samples"] == N
        for name in LAYERS:
            for mode in MODES:
                for a, b in zip(atlas.top(name, mode), atlases[7].top(name, mode), strict=True):
                    assert torch.equal(a, b)
            for key, value in atlas.statistics(name).items():
                assert torch.equal(value, atlases[7].statistics(name)[key])


def test_a_store_of_another_configuration_is_refused(fitted, tmp_path):
    model, data, _ = fitted
    _atlas(model, store=tmp_path).fit(data, batch_size=20)
    for kwargs, fragment in (
        ({"top_k": 3}, "top_k 5"),
        ({"layers": ["5"]}, "layers"),
    ):
        options = {"top_k": K, "layers": LAYERS, **kwargs}
        atlas = ConceptAtlas(
            model,
            options["layers"],
            composite=make_composite(),
            top_k=options["top_k"],
            store=tmp_path,
        )
        with pytest.raises(ValueError, match=f"store .* another configuration.*{fragment}"):
            atlas.fit(data, batch_size=20)
    other = make_model()
    with torch.no_grad():
        other[0].weight.add_(1.0)
    with pytest.raises(ValueError, match="fingerprint"):
        _atlas(other, store=tmp_path).fit(data, batch_size=20)
    with pytest.raises(ValueError, match="model is not the model"):
        ConceptAtlas.load(tmp_path, model=other, composite=make_composite())
    assert ConceptAtlas.load(tmp_path, model=model, composite=make_composite()).top("5")


@pytest.mark.parametrize(
    ("build", "fit", "error", "fragment"),
    [
        ({"layers": ["nope"]}, None, ValueError, "layers \\['nope'\\] are not modules"),
        ({"top_k": 0}, None, ValueError, "top_k must be a positive int, got 0"),
        ({}, {"data": TensorDataset(torch.zeros(0, 3, 8, 8))}, ValueError, "data is empty"),
        ({}, {"data": [torch.zeros(3, 8, 8)]}, ValueError, "data\\[0\\] must be an \\(x, y\\)"),
        ({}, {"data": [(torch.zeros(3, 8, 8), 0.5)]}, ValueError, "y must be an int class"),
        ({}, {"data": [(torch.zeros(3, 8, 8), 7)]}, ValueError, "data\\[0\\]: y = 7"),
        ({}, {"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({}, {"checkpoint_every": 0}, ValueError, "checkpoint_every must be a positive"),
        ({}, {"data": DataLoader(make_data(), shuffle=True)}, ValueError, "must read its data"),
        ({}, {"data": 5}, TypeError, "data must be a map-style Dataset"),
    ],
)
def test_bad_input_raises_naming_the_argument(build, fit, error, fragment):
    model = make_model()
    before = _hooks(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=fragment):
        atlas = ConceptAtlas(
            model,
            build.get("layers", LAYERS),
            composite=make_composite(),
            top_k=build.get("top_k", K),
        )
        atlas.fit(**{"data": make_data(), **(fit or {})})
    assert _hooks(model) == before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_fit_restores_train_mode_and_unfitted_reads_fail():
    model = make_model().train()
    atlas = _atlas(model)
    with pytest.raises(RuntimeError, match="not fitted"):
        atlas.top("5")
    atlas.fit(make_data(), batch_size=40)
    assert model.training and all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="layer must be one of"):
        atlas.top("9")
    with pytest.raises(ValueError, match="mode must be one of"):
        atlas.top("5", mode="relmean")
    with pytest.raises(ValueError, match="unit must be an int in \\[0, 8\\)"):
        atlas.references("5", 8, make_data())
    with pytest.raises(ValueError, match="k must be an int in \\[1, 5\\]"):
        atlas.references("5", 0, make_data(), k=6)


def test_class_graph_is_the_mean_of_per_sample_graphs(fitted):
    model, data, atlases = fitted
    from zennit_ext.paths.api import NeuronPaths

    graph = atlases[7].class_graph(data, 1, batch_size=7)
    x, y = data.tensors
    chosen = x[y == 1]
    single = NeuronPaths(model, LAYERS, composite=make_composite()).graph(chosen, 1)
    assert graph.count == len(chosen)
    for name in LAYERS:
        assert torch.allclose(graph.relevance[name][0], single.relevance[name].mean(0))
        assert torch.allclose(graph.activation[name][0], single.activation[name].mean(0))
    edges = single.edges[("2", "5")].mean(0)
    assert torch.allclose(graph.edges[("2", "5")][0], edges, rtol=1e-10, atol=1e-13)
    top = graph.top_paths(3)
    assert top.units.shape == (1, 3, 2)
    with pytest.raises(ValueError, match="target must be a class in \\[0, 3\\)"):
        atlases[7].class_graph(data, 3)


def test_figures_write_pngs(fitted, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from zennit_ext.atlas.figures import class_graph_figure

    _, data, atlases = fitted
    atlases[7].figure("5", [0, 3], data, k=3, path=tmp_path / "refs.png")
    class_graph_figure(atlases[7].class_graph(data, 0), k=3, path=tmp_path / "graph.png")
    assert (tmp_path / "refs.png").stat().st_size > 0 and (tmp_path / "graph.png").exists()


@pytest.mark.parametrize("canonizers", [False, True])
def test_activations_are_the_model_outputs_before_an_inplace_rectifier(canonizers):
    """Without canonizers the activations come from NRM's own forward pass; with a BatchNorm
    merged into the first convolution (its output then differs) from another one. Both record
    a layer's output before the in-place ReLU after it rectifies it (negative maxima stay
    negative), exactly as a plain forward hook on the model as it is sees it."""
    torch.manual_seed(6)
    norm = [random_bn(4, 3)] if canonizers else []
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            *norm,
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(5 * 36, 3),
        )
        .double()
        .eval()
    )
    layers = ["0", str(len(norm) + 2)]
    with torch.no_grad():
        model[int(layers[1])].bias.fill_(-2.0)  # most of its maxima are negative
    x = torch.randn(12, 3, 6, 6, dtype=torch.float64)
    y = torch.arange(12) % 3
    expected = {}
    handles = [
        model[int(n)].register_forward_hook(
            lambda m, a, o, n=n: expected.__setitem__(n, o.flatten(2).clone())
        )
        for n in layers
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    composite = nrm_composite(
        gamma=None, canonizers=[SequentialMergeBatchNorm()] if canonizers else None
    )
    with NRM(model, layers, composite=composite).explain(x[:1], 0) as explanation:
        assert explanation.canonized == canonizers
    atlas = ConceptAtlas(model, layers, composite=composite, top_k=12, on_violation="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        atlas.fit(TensorDataset(x, y), batch_size=5)
    for name in layers:
        for mode, reduce in (("actmax", lambda a: a.amax(2)), ("actmean", lambda a: a.mean(2))):
            indices, values = atlas.top(name, mode)
            reference = reduce(expected[name]).T.gather(1, indices)
            assert torch.equal(values, reference), (name, mode)
    assert (atlas.top(layers[1], "actmax")[1] < 0).any()
