"""The conventions of ``docs/conventions.rst`` that span entry points.

- ``target``: one parser (``zennit_ext._checks.parse_target``) against hand indexing for every
  target kind × output shape, its errors, and every entry point taking ``target`` (NRM,
  NeuronPaths, the Quantus adapter, the synergy attributions) giving equal results for the
  equal targets of different kinds;
- ``show_progress: bool = False`` wherever there is a progress bar, and no ``progress``;
- ``NeuronPaths`` takes every option of ``NRM`` with its default and passes it on.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from captum_ext import LayerSynergy, NeuronSynergy
from captum_ext.metrics.filters import filter_metrics, module_consistency
from captum_ext.synergy.pruning import pruning_curve
from zennit_ext import NRM
from zennit_ext._checks import parse_target
from zennit_ext.paths import api as paths_api
from zennit_ext.paths.api import NeuronPaths
from zennit_ext.quantus import explain

N = 4


def _hand(output: torch.Tensor, per_row: list[tuple[int, ...]]) -> torch.Tensor:
    """output[r, *per_row[r]] row by row, (N,)."""
    return torch.stack([output[(r, *per_row[r])].reshape(()) for r in range(len(output))])


def _select(output: torch.Tensor, target: Any) -> torch.Tensor:
    index = parse_target(target, len(output), output.shape)
    return output[(torch.arange(len(output)), *index.t())].reshape(len(output))


# (output shape, target, the index tuple of each of the N rows)
TABLE = [
    ((N,), None, [()] * N),
    ((N, 1), None, [()] * N),
    ((N, 1, 1), None, [()] * N),
    ((N, 5), 3, [(3,)] * N),
    ((N, 5), -1, [(4,)] * N),
    ((N, 5), (2,), [(2,)] * N),
    ((N, 5), np.int64(1), [(1,)] * N),
    ((N, 5), [0, 4, 1, -5], [(0,), (4,), (1,), (0,)]),
    ((N, 5), [(0,), (4,), (1,), (3,)], [(0,), (4,), (1,), (3,)]),
    ((N, 5), torch.tensor(2), [(2,)] * N),
    ((N, 5), torch.tensor([2]), [(2,)] * N),
    ((N, 5), torch.tensor([1, 0, 4, 2]), [(1,), (0,), (4,), (2,)]),
    ((N, 5), torch.tensor([1, 0, 4, 2], dtype=torch.int32), [(1,), (0,), (4,), (2,)]),
    ((N, 5, 1), 3, [(3,)] * N),  # the trailing size-1 dimension selects one value
    ((N, 2, 3), (1, 2), [(1, 2)] * N),
    ((N, 2, 3), (-1, 0), [(1, 0)] * N),
    ((N, 2, 3), [(0, 1), (1, 2), (1, 0), (0, 2)], [(0, 1), (1, 2), (1, 0), (0, 2)]),
    ((N, 2, 3, 4), (1, 2, 3), [(1, 2, 3)] * N),
]


@pytest.mark.parametrize(("shape", "target", "per_row"), TABLE)
def test_parse_target_is_hand_indexing(shape, target, per_row):
    torch.manual_seed(0)
    output = torch.randn(shape, dtype=torch.float64)
    index = parse_target(target, N, shape)
    assert index.dtype == torch.int64 and index.shape == (N, len(per_row[0]))
    assert index.tolist() == [list(p) for p in per_row]  # negative indices made non-negative
    assert torch.equal(_select(output, target), _hand(output, per_row))


def test_a_tuple_is_one_index_for_every_row_not_one_class_per_row():
    output = torch.arange(2 * 5.0).reshape(2, 5)
    assert torch.equal(_select(output, (3,)), _select(output, 3))
    assert torch.equal(_select(output, [3, 1]), torch.tensor([3.0, 6.0]))
    with pytest.raises(ValueError, match=re.escape("target (3, 1) indexes 2 dimensions")):
        parse_target((3, 1), 2, output.shape)


@pytest.mark.parametrize(
    ("target", "shape", "message"),
    [
        (5, (N, 5), "target 5 out of range for a forward output of shape (4, 5)"),
        (-6, (N, 5), "target -6 out of range for a forward output of shape (4, 5)"),
        ([0, 1, 5, 2], (N, 5), "target [0, 1, 5, 2] out of range"),
        ((0, 3), (N, 2, 3), "target (0, 3) out of range for a forward output of shape (4, 2, 3)"),
        ((0, 1), (N, 5), "target (0, 1) indexes 2 dimensions of a forward output of shape (4, 5)"),
        (1, (N, 2, 3), "target 1 selects 3 values per row of a forward output of shape (4, 2, 3)"),
        (None, (N, 5), "target must be given for a forward output of shape (4, 5)"),
        ([0, 1], (N, 5), "a list with one entry per input row (4) or a tensor, got [0, 1]"),
        (True, (N, 5), "target must be None, an int, a tuple of ints, a list"),
        (1.0, (N, 5), "got 1.0"),
        ("1", (N, 5), "got '1'"),
        ((), (N, 5), "got ()"),
        ([0, (1,), 2, (3, 0)], (N, 5), "target list must hold ints or equal-length tuples"),
        ([0, 1, 2.0, 3], (N, 5), "target list must hold ints or equal-length tuples"),
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), (N, 5), "target tensor must hold integer indices"),
        (torch.zeros(N, 1, dtype=torch.long), (N, 5), "one per input row (4), got shape (4, 1)"),
        (torch.tensor([1, 2]), (N, 5), "one per input row (4), got shape (2,)"),
    ],
)
def test_parse_target_errors_name_target_the_value_and_what_was_expected(target, shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_target(target, N, shape)


def test_parse_target_without_a_shape_checks_the_structure_only():
    assert parse_target(7, 3).tolist() == [[7]] * 3
    assert parse_target(None, 3).shape == (3, 0)
    with pytest.raises(ValueError, match="one entry per input row"):
        parse_target([1, 2], 3)


# ------------------------------------------------------------- every entry point, every kind


def _mlp() -> nn.Module:
    """A 6-5-4-3 ReLU MLP in float64 with positive biases."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    for linear in model[::2]:
        linear.bias.data.uniform_(0.05, 0.3)
    return model.double().eval()


X = torch.rand(N, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
PER_ROW = [2, 0, 1, 2]
# equal targets of every kind: the first group means class 2 for every row, the second PER_ROW
SAME_CLASS = [2, -1, (2,), [2] * N, [(2,)] * N, torch.tensor(2), torch.tensor([2] * N)]
PER_SAMPLE = [PER_ROW, [(t,) for t in PER_ROW], torch.tensor(PER_ROW), [2, 0, -2, -1]]


def _all_equal(results: list[torch.Tensor | np.ndarray]) -> None:
    for result in results[1:]:
        np.testing.assert_allclose(np.asarray(result), np.asarray(results[0]), rtol=0, atol=0)


@pytest.mark.parametrize("kinds", [SAME_CLASS, PER_SAMPLE], ids=["same", "per-sample"])
def test_every_entry_point_takes_every_target_kind(kinds):
    model = _mlp()
    nrm = NRM(model, ["1", "3"])
    paths = NeuronPaths(model, ["1", "3"])
    synergy = LayerSynergy(model, model[3])
    results: dict[str, list] = {"nrm": [], "paths": [], "score": [], "quantus": [], "synergy": []}
    for target in kinds:
        results["nrm"].append(nrm.heatmap(X, target).detach())
        results["paths"].append(paths.graph(X, target).relevance["3"])
        results["score"].append(paths.tune_threshold(X, target, grid=(0.0,)).score_ratio)
        results["quantus"].append(explain(model, X, target, batch_size=3))
        results["synergy"].append(synergy.compute(X, target=target).importance)
    for name, found in results.items():
        _all_equal(found)
        assert not np.allclose(np.asarray(found[0]), 0), name
    if kinds is PER_SAMPLE:  # numpy targets, as Quantus passes them
        found = explain(model, X, np.array(PER_ROW), batch_size=3)
        _all_equal([results["quantus"][0], found])


def test_the_per_sample_target_is_hand_indexing_in_nrm_and_the_quantus_adapter():
    model = _mlp()
    nrm = NRM(model, ["1", "3"])
    per_row = nrm.heatmap(X, PER_ROW)
    quantus = explain(model, X, PER_ROW, batch_size=3)
    for row, target in enumerate(PER_ROW):
        torch.testing.assert_close(per_row[row], nrm.heatmap(X, target)[row])
        np.testing.assert_allclose(quantus[row], explain(model, X, target)[row], rtol=1e-6)


# ------------------------------------------------------------------------ options and names


def _parameters(function: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


@pytest.mark.parametrize(
    "function",
    [
        NRM.__init__,
        NeuronPaths.__init__,
        LayerSynergy.compute,
        LayerSynergy.attribute,
        NeuronSynergy.compute,
        NeuronSynergy.attribute,
        pruning_curve,
        module_consistency,
        filter_metrics,
    ],
)
def test_progress_is_show_progress_false(function):
    parameters = _parameters(function)
    assert "progress" not in parameters
    assert parameters["show_progress"].default is False


def test_nrm_counts_messages_not_samples():
    parameters = _parameters(NRM.__init__)
    assert "batch_size" not in parameters and parameters["messages_per_pass"].default == 64


def test_neuron_paths_takes_every_option_of_nrm_with_its_default():
    nrm, paths = _parameters(NRM.__init__), _parameters(NeuronPaths.__init__)
    for name, parameter in nrm.items():
        assert name in paths, name
        assert paths[name].default == parameter.default, name
        assert paths[name].kind == parameter.kind, name


def test_neuron_paths_passes_every_option_to_its_nrm(monkeypatch):
    received: dict[str, Any] = {}

    class Recording:
        def __init__(self, model: nn.Module, layers: list[str], **options: Any) -> None:
            received.update(options)
            self.layers = list(layers)

    options = {
        name: object()
        for name in _parameters(NRM.__init__)
        if name not in ("self", "model", "layers")
    }
    monkeypatch.setattr(paths_api, "NRM", Recording)
    NeuronPaths(_mlp(), ["1", "3"], **options)
    assert received.keys() == options.keys()
    assert all(received[name] is value for name, value in options.items())


def test_neuron_paths_options_reach_a_real_nrm():
    paths = NeuronPaths(
        _mlp(), ["1", "3"], on_violation="warn", messages_per_pass=3, show_progress=True, fast=False
    )
    nrm = paths.nrm
    assert (nrm.messages_per_pass, nrm.show_progress, nrm.fast) == (3, True, False)
    assert nrm.composite.on_violation == "warn"
