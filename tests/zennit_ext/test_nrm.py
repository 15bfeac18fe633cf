"""NRM: exact agreement with walk enumeration, the relevance laws, cleanup and errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from walks import Walks
from zennit.composites import LayerMapComposite
from zennit.rules import Gamma, Pass, ZPlus
from zennit.types import Activation
from zennit.types import Linear as AnyLinear

from zennit_ext import NRM
from zennit_ext.nrm.rules import PositiveSumError
from zennit_ext.nrm.sets import cluster_masks

HIDDEN = ["1", "3", "5"]  # ReLU outputs = walk layers 1..3 of the 5-4-4-3-2 MLP
RULES = {"zplus": None, "gamma": 0.5}


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 4),
        nn.ReLU(),
        nn.Linear(4, 4),
        nn.ReLU(),
        nn.Linear(4, 3),
        nn.ReLU(),
        nn.Linear(3, 2),
    )
    for linear in model[::2]:
        linear.bias.data.uniform_(0.0, 0.3)  # keeps units alive, so walks carry relevance
    return model.double().eval()


def _composite(rule: str) -> LayerMapComposite:
    linear = ZPlus() if RULES[rule] is None else Gamma(gamma=RULES[rule])
    return LayerMapComposite([(Activation, Pass()), (AnyLinear, linear)])


@pytest.fixture(params=list(itertools.product(RULES, [0, 1, 2])), ids=lambda p: f"{p[0]}-{p[1]}")
def brute(request):
    """(NRM on the MLP, inputs (3, 5), targets, one Walks reference per sample)."""
    rule, seed = request.param
    model = _mlp(seed)
    x = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    target = torch.tensor([0, 1, 0])
    # γ on random weights breaks eq. 15 at some units: NRM and the reference both normalize
    # by the signed column sum there, so they must still agree
    nrm = NRM(model, HIDDEN, composite=_composite(rule), on_violation="warn")
    walks = [Walks(model, x[i], int(target[i]), RULES[rule]) for i in range(3)]
    return nrm, x, target, walks


def _walk_sets(sets: dict[str, list[int]]) -> dict[int, set[int]]:
    return {HIDDEN.index(name) + 1: set(units) for name, units in sets.items()}


pytestmark = pytest.mark.filterwarnings("ignore:.*negative column sums:RuntimeWarning")

SET_CASES = [
    {"1": [0]},
    {"3": [1, 2]},
    {"1": [0, 3], "5": [2]},
    {"1": [1], "3": [0, 3], "5": [0, 1]},
]


@pytest.mark.parametrize("sets", SET_CASES, ids=str)
def test_joint_and_heatmap_equal_walk_enumeration(brute, sets):
    nrm, x, target, walks = brute
    joint = nrm.joint(x, target, sets)
    heat = nrm.heatmap(x, target, sets)
    for i, reference in enumerate(walks):
        assert joint[i].item() == pytest.approx(reference.joint(_walk_sets(sets)), abs=1e-6)
        torch.testing.assert_close(heat[i], reference.heatmap(_walk_sets(sets)), atol=1e-6, rtol=0)


def test_marginal_and_conditional_equal_walk_enumeration(brute):
    nrm, x, target, walks = brute
    marginal = nrm.marginal(x, target, "3", [2])
    conditional = nrm.conditional(x, target, {"1": [0, 1]}, given={"5": [1]})
    for i, reference in enumerate(walks):
        assert marginal[i].item() == pytest.approx(reference.joint({2: {2}}), abs=1e-6)
        both, given_ = reference.joint({1: {0, 1}, 3: {1}}), reference.joint({3: {1}})
        expected = both / given_ if given_ != 0 else 0.0  # NRM's convention for R(G) = 0
        assert conditional[i].item() == pytest.approx(expected, abs=1e-6)


def test_pairwise_and_triples_equal_walk_enumeration(brute):
    nrm, x, target, walks = brute
    pairs = nrm.pairwise(x, target, "5", "1", level="neuron")  # argument order kept: (B, 3, 4)
    triples = nrm.interactions(x, target, ["1", "3", "5"], level="neuron")  # (B, 4, 4, 3)
    assert pairs.shape == (3, 3, 4) and triples.shape == (3, 4, 4, 3)
    for b, reference in enumerate(walks):
        for i, j in itertools.product(range(3), range(4)):
            expected = reference.joint({3: {i}, 1: {j}})
            assert pairs[b, i, j].item() == pytest.approx(expected, abs=1e-6)
        for i, j, k in itertools.product(range(4), range(4), range(3)):
            expected = reference.joint({1: {i}, 2: {j}, 3: {k}})
            assert triples[b, i, j, k].item() == pytest.approx(expected, abs=1e-6)


# ---- laws on an MLP and a CNN (zennit rules, default NRM composite) ----


def _cnn() -> nn.Sequential:
    torch.manual_seed(3)
    return (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 5, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * 4 * 4, 7),
            nn.ReLU(),
            nn.Linear(7, 3),
        )
        .double()
        .eval()
    )


CNN_LAYERS = ["1", "3", "6", "9"]


@pytest.fixture(params=["mlp", "cnn"])
def net(request):
    """(NRM with z⁺ everywhere, so eq. 15 holds, inputs, targets, layer names)."""
    if request.param == "mlp":
        model, layers = _mlp(5), HIDDEN
        x = torch.rand(4, 5, dtype=torch.float64)
    else:
        model, layers = _cnn(), CNN_LAYERS
        x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    target = model(x).argmax(1)  # a positive logit: the output's z⁺ column sum is positive
    return NRM(model, layers, composite=_composite("zplus")), x, target, layers


def test_input_relevance_sums_to_one(net):
    nrm, x, target, _ = net
    torch.testing.assert_close(nrm.heatmap(x, target).flatten(1).sum(1), torch.ones(4).double())


def test_additivity_and_complement(net):
    nrm, x, target, layers = net
    upper, lower = layers[-1], layers[0]
    size = nrm.pairwise(x, target, lower, upper, level="channel").shape[1]
    part, rest = list(range(size // 2)), list(range(size // 2, size))
    base = {upper: [0, 1]}
    a = nrm.joint(x, target, {**base, lower: part[:1]}, level="channel")
    b = nrm.joint(x, target, {**base, lower: part[1:]}, level="channel")
    ab = nrm.joint(x, target, {**base, lower: part}, level="channel")
    complement = nrm.joint(x, target, {**base, lower: rest}, level="channel")
    torch.testing.assert_close(a + b, ab)  # additivity over disjoint sets
    torch.testing.assert_close(ab + complement, nrm.joint(x, target, base, level="channel"))


def test_marginalization_and_pairwise_equal_joint_calls(net):
    nrm, x, target, layers = net
    lower, upper = layers[0], layers[1]
    pairs = nrm.pairwise(x, target, lower, upper, level="channel")
    for i in range(pairs.shape[1]):
        marginal = nrm.marginal(x, target, lower, [i], level="channel")
        torch.testing.assert_close(pairs[:, i].sum(1), marginal)  # Σ_j R(i, j) = R(i)
    for i, j in [(0, 0), (1, 2), (pairs.shape[1] - 1, pairs.shape[2] - 1)]:
        joint = nrm.joint(x, target, {lower: [i], upper: [j]}, level="channel")
        torch.testing.assert_close(pairs[:, i, j], joint)


def test_conditional_times_marginal_is_joint(net):
    nrm, x, target, layers = net
    sets, given_ = {layers[0]: [0, 2]}, {layers[-1]: [1]}
    conditional = nrm.conditional(x, target, sets, given_, level="channel")
    marginal = nrm.joint(x, target, given_, level="channel")
    joint = nrm.joint(x, target, {**sets, **given_}, level="channel")
    torch.testing.assert_close(conditional * marginal, joint)


def test_additive_relevance_spreads_walks_over_layers(net):
    nrm, x, target, layers = net
    sets = {layers[0]: [0], layers[-1]: [1, 2]}
    marginals = sum(nrm.marginal(x, target, name, units, "channel") for name, units in sets.items())
    steps = 4 if layers == HIDDEN else 5  # layers with a rule (walk length L + 1 = steps + 1)
    torch.testing.assert_close(nrm.additive(x, target, sets, "channel"), marginals / (steps + 1))


@pytest.mark.parametrize("messages_per_pass", [1, 3, 1000])
def test_batching_does_not_change_results(messages_per_pass):
    model, x, target = _cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 2])
    reference = NRM(model, CNN_LAYERS, composite=_composite("zplus"), messages_per_pass=64)
    batched = NRM(
        model, CNN_LAYERS, composite=_composite("zplus"), messages_per_pass=messages_per_pass
    )
    layers = ["1", "6", "9"]
    torch.testing.assert_close(
        batched.interactions(x, target, layers), reference.interactions(x, target, layers)
    )
    conditions = [{"3": [i]} for i in range(8)]
    torch.testing.assert_close(
        batched.joint_many(x, target, conditions, "channel"),
        reference.joint_many(x, target, conditions, "channel"),
    )


def test_heatmap_equals_masked_lrp_on_bias_free_zplus_network():
    """One masked layer: NRM's heatmap is CRP's conditional heatmap, up to normalization."""
    from zennit.attribution import Gradient

    model = _cnn()
    for module in model.modules():
        if getattr(module, "bias", None) is not None:
            module.bias = None
    x, channels = torch.rand(2, 3, 8, 8, dtype=torch.float64), [1, 4]
    nrm = NRM(model, ["3"], composite=_composite("zplus"))
    heat = nrm.heatmap(x, 1, {"3": channels}, level="channel")

    mask = torch.zeros(1, 8, 1, 1, dtype=torch.float64)
    mask[:, channels] = 1.0
    composite = _composite("zplus")  # ε = 1e-6 stabilizer only: almost conservative

    def mask_message(module, args, output):
        output.register_hook(lambda grad: grad * mask)

    with Gradient(model=model, composite=composite) as attributor:
        handle = model[3].register_forward_hook(mask_message)
        try:
            _, crp = attributor(x, torch.eye(3, dtype=torch.float64)[[1, 1]])
        finally:
            handle.remove()
    torch.testing.assert_close(heat, crp, atol=1e-5, rtol=1e-4)


# ---- sets: clusters, masks, properties ----


@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 100))
def test_cluster_masks_partition_positions(k, seed):
    activations = torch.rand(2, 4, 3, 4, generator=torch.Generator().manual_seed(seed))
    masks = cluster_masks(activations, k, seed=seed)
    assert masks.shape == (k, 2, 1, 3, 4) and masks.dtype == torch.bool
    assert (masks.sum(0) == 1).all()
    assert torch.equal(masks, cluster_masks(activations, k, seed=seed))


def test_cluster_pairwise_sums_channel_pairs_over_positions():
    model, x, target = _cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    nrm = NRM(model, CNN_LAYERS, composite=_composite("zplus"))
    activations = model[:4](x)
    clusters = cluster_masks(activations, 3)
    by_cluster = nrm.pairwise(x, target, "3", "9", level={"3": clusters, "9": "neuron"})
    by_neuron = nrm.pairwise(x, target, "3", "9", level="neuron").view(2, 8, 64, 7)
    expected = torch.einsum("bcpj,kbp->bkj", by_neuron, clusters.flatten(2).double())
    torch.testing.assert_close(by_cluster, expected)


@settings(max_examples=15, deadline=None)
@given(units=st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True))
def test_boolean_masks_equal_index_sets(units):
    model, x = _mlp(1), torch.rand(2, 5, dtype=torch.float64)
    nrm = NRM(model, HIDDEN, composite=_composite("zplus"))
    mask = torch.zeros(4, dtype=torch.bool)
    mask[units] = True
    torch.testing.assert_close(nrm.joint(x, 0, {"3": mask}), nrm.joint(x, 0, {"3": units}))


# ---- the model is unchanged; bad input fails early and clearly ----


def _snapshot(model: nn.Module) -> tuple:
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for m in model.modules()
    ]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return hooks, state, model.training


def _assert_same(model: nn.Module, before: tuple) -> None:
    hooks, state, training = _snapshot(model)
    assert hooks == before[0] and training == before[2]
    assert state.keys() == before[1].keys()
    assert all(torch.equal(state[k], before[1][k]) for k in state)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda n, x: n.joint(x, 0, {"3": [9]}), ValueError, "outside"),
        (lambda n, x: n.joint(x, 0, {"2": [0]}), ValueError, "not in NRM's layers"),
        (lambda n, x: n.joint(x, 5, {"3": [0]}), ValueError, "target"),
        (lambda n, x: n.joint(x, 0, {"3": [0.5]}), TypeError, "int indices"),
        (lambda n, x: n.joint(x, 0, {"3": torch.ones(3, dtype=torch.bool)}), ValueError, "shape"),
        (lambda n, x: n.joint(x, 0, [0]), TypeError, "mapping"),
        (lambda n, x: n.pairwise(x, 0, "1", "1"), ValueError, "distinct"),
        (lambda n, x: n.top_interactions(x, 0, ["1", "5"], k=0), ValueError, "k must"),
        (lambda n, x: n.joint(x, torch.zeros(2, 2).double(), {"3": [0]}), ValueError, "positive"),
    ],
)
def test_bad_input_raises_and_leaves_model_unchanged(call, error, match):
    model, x = _mlp(0), torch.rand(2, 5, dtype=torch.float64)
    nrm = NRM(model, HIDDEN, composite=_composite("zplus"))
    before = _snapshot(model)
    with pytest.raises(error, match=match):
        call(nrm, x)
    _assert_same(model, before)


def test_constructor_rejects_unknown_layers_and_bad_settings():
    model = _mlp(0)
    with pytest.raises(ValueError, match="not modules of the model"):
        NRM(model, ["features.3"])
    with pytest.raises(TypeError, match="layers"):
        NRM(model, "1")
    with pytest.raises(ValueError, match="messages_per_pass must be a positive int, got 0"):
        NRM(model, HIDDEN, messages_per_pass=0)
    with pytest.raises(ValueError, match="on_violation"):
        NRM(model, HIDDEN, on_violation="ignore")


def test_negative_column_sums_raise_or_warn_never_nan():
    model = _mlp(0)
    model[2].weight.data = -model[2].weight.data.abs()  # z of layer 2 < 0 …
    model[2].bias.data.fill_(5.0)  # … while the bias keeps its units active
    x = torch.rand(2, 5, dtype=torch.float64)
    epsilon = LayerMapComposite([(Activation, Pass()), (nn.Linear, Gamma(gamma=0.0))])
    before = _snapshot(model)
    message = (
        r"^layer '\d' \(Linear, rule Gamma\) has \d+ negative column sums at neurons that "
        r"carry relevance; NRM needs positive sums \(eq. 15\): use z\+ \(or a larger gamma\) "
        r"on a ReLU network$"
    )
    with pytest.raises(PositiveSumError, match=message):
        NRM(model, HIDDEN, composite=epsilon).joint(x, 0, {"3": [0]})
    _assert_same(model, before)
    lenient = NRM(model, HIDDEN, composite=epsilon, on_violation="warn")
    with pytest.warns(RuntimeWarning, match="negative column sums"):
        heat = lenient.heatmap(x, 0)
    assert torch.isfinite(heat).all()
    torch.testing.assert_close(heat.sum(1), torch.ones(2).double())


def test_zplus_convolutions_handle_signed_inputs_where_gamma_fails():
    from zennit_ext.nrm.rules import nrm_composite

    torch.manual_seed(3)
    # a linear bottleneck: the second convolution reads the first one's signed output
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    ).double()
    model[1].weight.data = -model[1].weight.data.abs()
    model[1].bias.data.fill_(5.0)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(PositiveSumError, match=r"layer '1' \(Conv2d, rule Gamma\)"):
        NRM(model, ["2"], composite=nrm_composite(gamma=0.25)).heatmap(x, 0)
    heat = NRM(model, ["2"], composite=nrm_composite(gamma=None)).heatmap(x, 0)
    total = heat.flatten(1).sum(1)
    assert torch.isfinite(heat).all() and (heat >= 0).all()
    assert (total > 0).all() and (total <= 1 + 1e-12).all()


def test_parameterised_module_without_rule_is_rejected():
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    model[1].running_var.fill_(2.0)  # not merged into the Linear: not the identity
    before = _snapshot(model)
    message = (
        r"^modules \['1'\] have parameters but no rule, so NRM cannot normalize their "
        r"propagation; merge them with a canonizer \(e.g. zennit's SequentialMergeBatchNorm\) "
        r"or give them a rule in the composite$"
    )
    with pytest.raises(ValueError, match=message):
        NRM(model, ["2"]).joint(torch.rand(2, 5), 0, {"2": [0]})
    _assert_same(model, before)


def test_calls_leave_model_unchanged_and_hook_free(net):
    nrm, x, target, layers = net
    before = _snapshot(nrm.model)
    nrm.pairwise(x, target, layers[0], layers[-1])
    nrm.conditional(x, target, {layers[0]: [0]}, {layers[1]: [0]}, "channel")
    _assert_same(nrm.model, before)


def test_canonized_batch_norm_passes_relevance_and_model_is_restored():
    from zennit.canonizers import SequentialMergeBatchNorm

    from zennit_ext.nrm.rules import nrm_composite

    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    ).double()
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    before = _snapshot(model)
    composite = nrm_composite(canonizers=[SequentialMergeBatchNorm()])
    nrm = NRM(model, ["2"], composite=composite, on_violation="warn")
    heat = nrm.heatmap(x, model(x).argmax(1))
    torch.testing.assert_close(heat.flatten(1).sum(1), torch.ones(2).double())
    _assert_same(model, before)


def test_a_bad_set_names_its_layer():
    nrm, x = NRM(_mlp(1), HIDDEN, composite=_composite("zplus")), torch.rand(2, 5).double()
    with pytest.raises(ValueError, match=r"^set for layer '3' has neuron indices \[9\] outside"):
        nrm.joint(x, 0, {"3": [9]})
