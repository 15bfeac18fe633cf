"""Replay Captum's own test configurations with the synergy attributions.

Every entry of ``captum.testing.attr.helpers.test_config.config`` that runs
``NeuronFeatureAblation`` runs ``NeuronSynergy`` with the same arguments, and every entry that
runs ``LayerFeatureAblation`` runs ``LayerSynergy``: shapes per Captum's contracts (input-shaped
for neurons, layer-shaped for layers, tuple in → tuple out), finite values, batch
independence, Δ equal to the mean absolute ablation attribution, no hooks left, the model's
outputs unchanged, a clear error for a bad selector / target, and clean-up after a forward
that raises. Every entry also runs with its arguments passed positionally, in the order of
Captum's signature: the same results as by keyword, for Captum and for the synergy classes.
"""

from __future__ import annotations

import copy
import inspect
import operator

import pytest
import torch
from captum._utils.common import _format_additional_forward_args, _format_tensor_into_tuples
from captum.attr import LayerFeatureAblation, NeuronFeatureAblation
from captum.testing.attr.helpers.test_config import config

from captum_ext import LayerSynergy, NeuronSynergy

NEURON = [c for c in config if NeuronFeatureAblation in c["algorithms"]]
LAYER = [c for c in config if LayerFeatureAblation in c["algorithms"]]
ARGS = (
    "inputs",
    "additional_forward_args",
    "baselines",
    "feature_mask",
    "target",
    "neuron_selector",
    "perturbations_per_eval",
    "layer_baselines",
    "layer_mask",
)


# entries whose single-element features give thousands of pairs, one mask per forward pass:
# the default run replays them with 64 masks per pass (results do not depend on it, see
# test_layer_synergy / test_neuron_synergy), the slow run with Captum's exact arguments
_MANY_PAIRS = 1000


def _pairs_per_pass(entry):
    inputs = _format_tensor_into_tuples(entry["attribute_args"]["inputs"])
    n = sum(x[0].numel() for x in inputs)
    return n * (n - 1) // 2, entry["attribute_args"].get("perturbations_per_eval", 1)


HEAVY = [c for c in NEURON if _pairs_per_pass(c)[0] > _MANY_PAIRS and _pairs_per_pass(c)[1] == 1]


def test_the_replay_covers_captums_entries():
    assert len(NEURON) == 7 and len(LAYER) == 10


def _setup(entry, exact=True):
    model = copy.deepcopy(entry["model"])
    layer = operator.attrgetter(entry["layer"])(model)
    args = dict(entry["attribute_args"])
    unknown = set(args) - set(ARGS)
    assert not unknown, f"entry {entry['name']} uses arguments {unknown}"
    if not exact and entry in HEAVY:
        args["perturbations_per_eval"] = 64
    return model, layer, args


def _rows(args, start, stop):
    """The attribute arguments cut to rows ``start:stop`` (batch tensors and per-row targets)."""
    rows = len(_format_tensor_into_tuples(args["inputs"])[0])

    def cut(value):
        if isinstance(value, tuple):
            return tuple(cut(v) for v in value)
        if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == rows:
            return value[start:stop]
        if isinstance(value, list) and len(value) == rows:
            return value[start:stop]
        return value

    return {k: (v if k == "neuron_selector" else cut(v)) for k, v in args.items()}


def _positional(ablation, args):
    """The arguments of an entry as a positional tuple, in the order of ``ablation.attribute``
    (defaults where the entry leaves one out)."""
    parameters = list(inspect.signature(ablation.attribute).parameters.values())[1:]
    assert not set(args) - {p.name for p in parameters}
    return tuple(args.get(p.name, p.default) for p in parameters)


def _assert_same(a, b):
    for x, y in zip(_format_tensor_into_tuples(a), _format_tensor_into_tuples(b), strict=True):
        assert torch.equal(x, y)


def _outputs(model, args):
    inputs = _format_tensor_into_tuples(args["inputs"])
    extra = _format_additional_forward_args(args.get("additional_forward_args")) or ()
    with torch.no_grad():
        return model(*inputs, *extra)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _check_structure(ours, theirs):
    assert isinstance(ours, tuple) == isinstance(theirs, tuple)
    for a, b in zip(
        _format_tensor_into_tuples(ours), _format_tensor_into_tuples(theirs), strict=True
    ):
        assert a.shape == b.shape and bool(torch.isfinite(a).all())


def _replay(entry, make, ablation, bad):
    model, layer, args = _setup(entry, exact=False)
    before = _outputs(model, args)
    ours = make(model, layer).attribute(**args)
    theirs = ablation(model, layer).attribute(**args)
    _check_structure(ours, theirs)
    # positional arguments in Captum's order mean the same, for Captum and for us
    positional = _positional(ablation, args)
    _assert_same(ablation(model, layer).attribute(*positional), theirs)
    _assert_same(make(model, layer).attribute(*positional), ours)
    # Δ is the mean absolute ablation attribution
    result = make(model, layer).compute(**args)
    theirs_t = _format_tensor_into_tuples(theirs)
    assert result.n <= sum(t[0].numel() for t in theirs_t)
    # batch independence: the first rows alone give the same values
    rows = len(_format_tensor_into_tuples(args["inputs"])[0])
    part = make(model, layer).attribute(**_rows(args, 0, rows // 2))
    for whole, alone in zip(
        _format_tensor_into_tuples(ours), _format_tensor_into_tuples(part), strict=True
    ):
        assert torch.allclose(whole[: rows // 2], alone, rtol=1e-4, atol=1e-5)
    assert _hooks(model) == 0
    after = _outputs(model, args)
    assert torch.equal(before, after)
    # a bad selector / target is refused by name
    with pytest.raises(ValueError, match=bad[0]):
        make(model, layer).attribute(**{**args, bad[0]: bad[1]})
    calls = {"n": 0}

    def failing(*inputs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("forward fails")
        return model(*inputs)

    with pytest.raises(RuntimeError, match="forward fails"):
        make(failing, layer).compute(**args)
    assert _hooks(model) == 0 and torch.equal(before, _outputs(model, args))
    return result, theirs_t


@pytest.mark.parametrize("entry", NEURON, ids=[c["name"] for c in NEURON])
def test_neuron_entries(entry):
    result, theirs = _replay(
        entry, NeuronSynergy, NeuronFeatureAblation, ("neuron_selector", (99,) * 3)
    )
    # Δ per feature (every entry masks single elements): mean |NeuronFeatureAblation|
    flat = torch.cat([t.abs().mean(0).reshape(-1) for t in theirs])
    assert torch.allclose(result.importance, flat, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("entry", HEAVY, ids=[c["name"] for c in HEAVY])
def test_neuron_entries_with_one_mask_per_pass(entry):
    """Captum's exact arguments: the contract part (the rest is covered above)."""
    model, layer, args = _setup(entry, exact=True)
    before = _outputs(model, args)
    ours = NeuronSynergy(model, layer).attribute(**args)
    _check_structure(ours, NeuronFeatureAblation(model, layer).attribute(**args))
    assert _hooks(model) == 0 and torch.equal(before, _outputs(model, args))


@pytest.mark.parametrize("entry", LAYER, ids=[c["name"] for c in LAYER])
def test_layer_entries(entry):
    result, theirs = _replay(entry, LayerSynergy, LayerFeatureAblation, ("target", 99))
    flat = torch.cat([t.abs().mean(0).reshape(-1) for t in theirs])
    assert torch.allclose(result.importance, flat, rtol=1e-4, atol=1e-5)
