"""NRM on transformers: Σ = 1 with biases, class token and position embedding; the laws at
token, feature and head level; each transformer rule against a hand-computed case; an
ill-conditioned composite is refused instead of passing unchecked."""

from __future__ import annotations

import pytest
import torch
from attention_common import assert_same, snapshot
from test_attention_vit import bias_free, small_vit
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon

from zennit_ext import CPLRP, NRM
from zennit_ext.attention.modules import AttentionWeighting, EmbeddingSum, StreamSum
from zennit_ext.canonizers.core import attached_names
from zennit_ext.nrm import sets
from zennit_ext.nrm.engine import ConservationError
from zennit_ext.nrm.products import NormalizedWeightingRule
from zennit_ext.nrm.streams import AbsoluteShares, StreamOnly

BLOCK_0 = "encoder.layers.encoder_layer_0"
BLOCK_1 = "encoder.layers.encoder_layer_1"
MLP_1 = f"{BLOCK_1}.mlp.0"
HEADS_1 = f"{BLOCK_1}.self_attention.canonizer_weighting"  # (batch, heads, tokens, d)
CLASS_TOKEN = "canonizer_class_token"
TOKENS, FEATURES, HEADS = 17, 16, 2


def _images(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)).to(dtype)


def _vit(dtype: torch.dtype = torch.float64, free: bool = False) -> nn.Module:
    model = small_vit()
    with torch.no_grad():  # non-zero biases, class token and position embedding
        for name, parameter in model.named_parameters():
            if name.endswith(("bias", "class_token", "pos_embedding")):
                parameter.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return (bias_free(model) if free else model).to(dtype)


# ---------------------------------------------------------------- Σ = 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_is_one_and_the_class_token_stops_what_it_takes(dtype):
    model = _vit(dtype)
    before = snapshot(model)
    with NRM(model, [BLOCK_0, BLOCK_1]).explain(_images(dtype), [0, 1, 2]) as e:
        reached, stopped = e.reached, e.stopped
    total = reached + sum(stopped.values())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=tol)
    # relevance that flows into the class token's rows is counted there, nowhere else
    assert set(name for name, mass in stopped.items() if mass.abs().max() > tol) == {CLASS_TOKEN}
    assert (stopped[CLASS_TOKEN] > 0.01).all() and (reached > 0.01).all()
    assert_same(before, snapshot(model))


def test_bias_free_vit_reaches_the_input_whole():
    with NRM(_vit(free=True), [BLOCK_0]).explain(_images(), [0, 1, 2]) as e:
        torch.testing.assert_close(
            e.reached, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12
        )
        # shares are non-negative everywhere: the heatmap's absolute mass is its sum
        heat = e.heatmap()
        torch.testing.assert_close(heat.abs().sum((1, 2, 3)), heat.sum((1, 2, 3)))


# ---------------------------------------------------------------- the laws at the new levels


@pytest.fixture(scope="module")
def explained():
    explanation = NRM(_vit(), [BLOCK_0, MLP_1, HEADS_1]).explain(_images(), [0, 1, 2])
    yield explanation
    explanation.close()


@pytest.mark.parametrize(
    ("layer", "level", "count"),
    [(BLOCK_0, "token", TOKENS), (BLOCK_0, "feature", FEATURES), (HEADS_1, "head", HEADS)],
)
def test_units_of_a_level_add_up_to_the_whole_layer(explained, layer, level, count):
    parts = torch.stack([explained.marginal(layer, [unit], level) for unit in range(count)])
    whole = explained.marginal(layer, list(range(count)), level)
    torch.testing.assert_close(parts.sum(0), whole, rtol=1e-10, atol=1e-12)
    assert (parts >= -1e-12).all()  # non-negative shares: every unit's relevance is ≥ 0
    # the whole residual stream after block 0 carries what reaches the input
    if layer == BLOCK_0:
        torch.testing.assert_close(whole, explained.reached, rtol=1e-10, atol=1e-12)


def test_the_levels_select_the_axis_they_name(explained):
    """A token set is a row of the (batch, T, D) output, a feature set a column, a head set a
    slice of the weighting's (batch, H, T, d): checked against boolean masks built by hand."""
    shape = explained.session.outputs[BLOCK_0].shape
    rows = torch.zeros(shape, dtype=torch.bool)
    rows[:, [3, 5]] = True
    columns = torch.zeros(shape, dtype=torch.bool)
    columns[..., [0, 7]] = True
    for spec, level, mask in (([3, 5], "token", rows), ([0, 7], "feature", columns)):
        torch.testing.assert_close(
            explained.marginal(BLOCK_0, spec, level), explained.joint({BLOCK_0: mask})
        )
    head_shape = explained.session.outputs[HEADS_1].shape
    assert head_shape[1] == HEADS
    head = torch.zeros(head_shape, dtype=torch.bool)
    head[:, 1] = True
    torch.testing.assert_close(
        explained.marginal(HEADS_1, [1], "head"), explained.joint({HEADS_1: head})
    )


def test_conditional_times_marginal_is_joint_across_blocks(explained):
    given = {BLOCK_0: [0, 4]}
    sets_1 = {MLP_1: [0]}  # the class token's row: the head reads only that token
    conditional = explained.conditional(sets_1, given, level="token")
    marginal = explained.marginal(BLOCK_0, [0, 4], "token")
    joint = explained.joint({**given, **sets_1}, level="token")
    torch.testing.assert_close(conditional * marginal, joint, rtol=1e-10, atol=1e-14)
    assert (joint > 0).all() and (joint < marginal).all()
    # the last block's MLP acts on each token alone: its other rows carry nothing
    others = explained.marginal(MLP_1, list(range(1, TOKENS)), "token")
    torch.testing.assert_close(others, torch.zeros_like(others), rtol=0, atol=1e-14)


def test_a_level_needs_its_rank():
    head = (
        r"level 'head' needs a layer output of 4 dimensions \(batch, H, L, d: an attention's "
        r"weighting\), but layer 'block' has shape \(2, 17, 16\)"
    )
    with pytest.raises(ValueError, match=head):
        sets.set_mask([0], torch.Size([2, 17, 16]), level="head", name="block")
    token = (
        r"level 'token' needs a layer output of 3 dimensions \(batch, T, D\), but layer 'conv' "
        r"has shape \(2, 8, 4, 4\)"
    )
    with pytest.raises(ValueError, match=token):
        sets.set_mask([0], torch.Size([2, 8, 4, 4]), level="token", name="conv")


def test_layers_that_canonizers_attach_are_accepted_and_the_model_left_alone():
    model = _vit()
    before = snapshot(model)
    assert HEADS_1 not in dict(model.named_modules())
    nrm = NRM(model, [HEADS_1])
    assert HEADS_1 in attached_names(model, nrm.composite.canonizers)
    assert_same(before, snapshot(model))
    with pytest.raises(ValueError, match="not modules of the model"):
        NRM(model, [f"{BLOCK_1}.self_attention.canonizer_nothing"])


# ---------------------------------------------------------------- each rule by hand


def _input_relevance(module: nn.Module, rule, inputs: tuple, relevance: torch.Tensor):
    """Zennit's gradient through one module with ``rule``: the rule's input relevance."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    handles = rule.register(module)
    try:
        output = module(*leaves)
        grads = torch.autograd.grad(output, leaves, relevance, allow_unused=True)
    finally:
        handles.remove()
    return grads


def test_absolute_shares_split_a_signed_sum_by_magnitude():
    terms = torch.tensor([[[2.0, -1.0], [0.0, 0.0], [-3.0, 1.0]]], dtype=torch.float64)
    relevance = torch.tensor([[6.0, 5.0, 8.0]], dtype=torch.float64)
    (got,) = _input_relevance(StreamSum(), AbsoluteShares(), (terms,), relevance)
    expected = torch.tensor([[[4.0, 2.0], [0.0, 0.0], [6.0, 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_stream_only_gives_the_embeddings_nothing():
    terms = torch.tensor([[[2.0, -7.0, 1.0], [-1.0, 3.0, 0.5]]], dtype=torch.float64)
    relevance = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    (got,) = _input_relevance(EmbeddingSum(), StreamOnly(), (terms,), relevance)
    expected = torch.tensor([[[1.5, 0.0, 0.0], [-2.0, 0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_weighting_gives_v_the_absolute_shares_and_the_weights_nothing():
    weights = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]], dtype=torch.float64)  # (1, 1, 2, 2)
    values = torch.tensor([[[[2.0], [-1.0]]]], dtype=torch.float64)  # (1, 1, 2, 1)
    relevance = torch.tensor([[[[3.0], [6.0]]]], dtype=torch.float64)
    grad_a, grad_v = _input_relevance(
        AttentionWeighting(), NormalizedWeightingRule(), (weights, values), relevance
    )
    # output 0: contributions |.| 0.5 and 0.75 -> 3·0.4, 3·0.6; output 1: 1 and 0.5 -> 4, 2
    expected = torch.tensor([[[[1.2 + 4.0], [1.8 + 2.0]]]], dtype=torch.float64)
    torch.testing.assert_close(grad_v, expected)
    assert not grad_a.any()


# ---------------------------------------------------------------- ill-conditioned rules


def test_a_composite_whose_shares_explode_is_refused_not_passed_unchecked():
    """CP-LRP's ε-rule, normalized, divides by near-zero pre-activations of a signed stream:
    absolute masses of 10²⁰ and more, where the rounding tolerance would hide any imbalance."""
    composite = CPLRP(gamma=None, epsilon=1e-12)
    with pytest.raises(ConservationError, match="conservation cannot be checked"):
        NRM(_vit(free=True), [BLOCK_0], composite=composite).explain(_images(), 0)


def test_the_checked_tolerance_never_exceeds_five_percent():
    """A single ε-rule layer with a near-cancelling column: flagged, whatever Σ is."""
    model = nn.Sequential(nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[1e9, 1e9 - 1.0]], dtype=torch.float64)
    composite = LayerMapComposite([(nn.Linear, Epsilon(1e-12))])
    message = (
        r"relevance conservation cannot be checked: the absolute relevance mass of a layer "
        r"reaches [0-9.]+e\+09 × the output relevance in samples \[0\] \(shares of both signs "
        r"cancel\), so rounding alone could move reached \+ Σ stopped by more than 5% and the "
        r"numbers would mean nothing; the rules are ill-conditioned for this model: use rules "
        r"whose shares are non-negative \(z⁺ on every linear layer, e.g. "
        r"nrm_composite\(gamma=None\), NRM's default for transformers' blocks\)$"
    )
    with pytest.raises(ConservationError, match=message):
        NRM(model, ["0"], composite=composite).explain(x, 0)


def test_an_imbalance_at_the_tolerance_is_within_it(monkeypatch):
    """The check is ``|imbalance| <= tolerance``: a tolerance equal to the imbalance passes."""
    from zennit_ext.nrm.engine import Session

    monkeypatch.setattr(Session, "_tolerance", lambda self: self.imbalance.abs())
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with NRM(model, ["1"]).explain(x, 0) as explained:
        assert explained.reached.shape == (2,)


def test_unit_count_and_per_sample_masks_check_the_levels_rank():
    message = r"level 'token' needs a layer output of 3 dimensions"
    with pytest.raises(ValueError, match=message):
        sets.unit_count("token", torch.Size([2, 8, 4, 4]))
    with pytest.raises(ValueError, match=message):
        sets.per_sample_mask(torch.ones(2, 8, dtype=torch.bool), "token", torch.Size([2, 8, 4, 4]))


# ---------------------------------------------------------------- Hugging Face


def test_hugging_face_bert_and_vit_conserve_with_all_their_biases():
    pytest.importorskip("transformers")
    from test_attention_hf import bert_input, pixels
    from test_attention_hf import small_bert as hf_bert
    from test_attention_hf import small_vit as hf_vit

    from zennit_ext.attention.huggingface import Logits

    bert, embeddings = bert_input(hf_bert())
    vit = Logits(hf_vit(), "pixel_values")
    cases = [
        (bert, embeddings, "model.bert.encoder.layer.0.output", set()),
        (
            vit,
            pixels(),
            "model.vit.encoder.layer.0.output",
            {"model.vit.embeddings." + CLASS_TOKEN},
        ),
    ]
    for model, x, layer, stopping in cases:
        with NRM(model, [layer]).explain(x, 0) as e:
            total = e.reached + sum(e.stopped.values())
            torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
            assert {n for n, mass in e.stopped.items() if mass.abs().max() > 1e-12} == stopping
            tokens = e.session.outputs[layer].shape[1]
            rows = torch.stack([e.marginal(layer, [t], "token") for t in range(tokens)])
            torch.testing.assert_close(rows.sum(0), e.reached, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- windows and layer scale


@pytest.mark.parametrize("v2", [False, True])
def test_swin_windows_count_per_sample(v2):
    """Modules inside windowed attention see (batch · windows, ...): stops and tolerances are
    summed back per sample; Σ = 1 per sample with every bias (shifted windows, 2 stages)."""
    from test_attention_swin import images, small_swin

    model = small_swin(v2)
    stages = ["features.1", "features.3"]
    x = images(32, n=3)  # 8² patches: windows of 4² tile them, patch merging needs no padding
    with NRM(model, stages).explain(x, 0) as e:
        total = e.reached + sum(e.stopped.values())
        torch.testing.assert_close(total, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
        assert e.session.tolerance.shape == (3,)
        rows = [e.marginal(stages[0], [1, 5], "channel")[i] for i in range(3)]
    alone = [
        NRM(model, stages).marginal(x[i : i + 1], 0, stages[0], [1, 5], "channel") for i in range(3)
    ]
    torch.testing.assert_close(torch.stack(rows), torch.cat(alone))


@pytest.mark.parametrize("v2", [False, True])
def test_swin_patch_merging_of_an_odd_map_stops_at_the_padding(v2):
    """A 36² image gives a 9² patch map: patch merging pads it to 10². V1 normalizes before
    its reduction, so the padded entries are nonzero there and LayerNorm's pass rule sends
    relevance to them: it stops at the GridPad (reported), and Σ = 1 holds per sample with
    every bias. V2's reduction reads the zeros first: nothing reaches the padding."""
    from test_attention_swin import images, small_swin

    model = small_swin(v2)
    with NRM(model, ["features.1", "features.3"]).explain(images(36), [0, 2]) as e:
        total = e.reached + sum(e.stopped.values())
        torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
        padding = e.stopped["features.2.canonizer_pad"]
        assert (padding > 0).all() if not v2 else (padding == 0).all()
        assert (e.reached > 0.5).all()


def test_convnext_layer_scale_and_channels_last_norm_pass_relevance():
    """Σ = 1 with biases; what stops, stops at z⁺ layers whose contributions are all ≤ 0."""
    from test_attention_vit import small_convnext

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)).double()
    with NRM(small_convnext(), ["features.1", "features.3"]).explain(x, 0) as e:
        total = e.reached + sum(e.stopped.values())
        torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
        assert (e.reached > 0.99).all()
        kinds = {
            type(e.session.modules[name]).__name__
            for name, mass in e.stopped.items()
            if mass.abs().max() > 0
        }
        assert kinds <= {"Conv2d", "Linear"}


def _explain_without_stabilizer(x: torch.Tensor) -> None:
    """NRM with an ε-rule of ε = 0 on a ReLU net whose first unit is exactly 0 when
    ``x[:, 0] == -x[:, 1]``: 0/0 there."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    model = model.double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    composite = LayerMapComposite([(nn.Linear, Epsilon(0.0))])
    NRM(model, ["1"], composite=composite).explain(x, 0)


def test_a_non_finite_relevance_is_an_error_not_a_number():
    """An ε-rule without stabilizer on an output that is exactly 0 gives 0/0: NaN relevance
    must raise (NaN compares False with any tolerance), naming the samples."""
    x = torch.tensor([[1.0, -1.0], [2.0, 1.0]], dtype=torch.float64)  # sample 0: unit 0 is 0
    message = (
        r"not finite \(NaN or ±inf\) in samples \[0\]: a rule of the composite divides by "
        r"zero or overflows \(e.g. an ε- or z-rule without stabilizer, or column sums beyond "
        r"the dtype's range\); the layers' absolute relevance masses reach inf$"
    )
    with pytest.raises(ConservationError, match=message):
        _explain_without_stabilizer(x)


def test_every_non_finite_sample_reports_its_mass():
    """Both samples give 0/0 at the first layer: both are named, with their masses."""
    x = torch.tensor([[1.0, -1.0], [3.0, -3.0]], dtype=torch.float64)
    message = r"in samples \[0, 1\]: .* relevance masses reach inf, inf$"
    with pytest.raises(ConservationError, match=message):
        _explain_without_stabilizer(x)


def test_a_one_output_model_needs_no_target():
    """``target=None`` on a (batch, 1) output: all relevance starts at that output."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with NRM(model, ["1"]).explain(x, None) as explained:
        total = explained.reached + sum(explained.stopped.values())
        assert explained.reached.sum() > 0
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64))


def test_nrm_composite_passes_rms_norm_and_names_a_bad_canonizers_string():
    """RMSNorm (a parameter of its own, no bias) gets the pass rule: Σ = 1 through it; an
    unknown canonizers string is refused with the accepted values."""
    from zennit_ext.nrm.rules import nrm_composite

    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Linear(6, 5), nn.RMSNorm(5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)
    ).double()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 6, dtype=torch.float64)
    composite = nrm_composite(gamma=None)
    with NRM(model, ["1", "3"], composite=composite).explain(x, 0) as e:
        total = e.reached + sum(e.stopped.values())
        torch.testing.assert_close(e.session.messages["1"].sum(1), e.layer_relevance()["1"].sum(1))
    torch.testing.assert_close(total, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"^canonizers must be a list, 'auto' or None, got 'all'$"):
        nrm_composite(canonizers="all")
