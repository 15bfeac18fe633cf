"""Captum's target, feature-mask units and row chunks, against hand indexing (synergy._masking).

Every reference is a plain Python loop over rows and elements; the error tests assert the
messages a user reads (argument name, value received, what was expected).
"""

from __future__ import annotations

import re

import pytest
import torch

from captum_ext.synergy._masking import RowSlice, Target, Transform, Units, format_inputs

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NAMES = ("layer_mask", "layer_baselines")


def _hand_select(output, per_row):
    """output[r, *per_row[r]] row by row."""
    return torch.stack([output[(r, *per_row[r])] for r in range(len(output))])


def _message(text):
    return re.escape(text)


# ----------------------------------------------------------------------------------- Target


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_every_target_kind_selects_like_hand_indexing(dtype, device):
    torch.manual_seed(2)
    out2 = torch.randn(4, 3, dtype=dtype, device=device) + 2.0  # no zero scores
    out3 = torch.randn(4, 2, 3, dtype=dtype, device=device) + 2.0
    cases = [
        (out2, 2, [(2,)] * 4),
        (out2, -3, [(0,)] * 4),  # -size is a valid index: the first column
        (out2, -1, [(2,)] * 4),
        (out2, (1,), [(1,)] * 4),
        (out2, [0, 2, 1, -3], [(0,), (2,), (1,), (0,)]),
        (out2, torch.tensor([1]), [(1,)] * 4),
        (out2, torch.tensor(2), [(2,)] * 4),
        (out2, torch.tensor([2, 0, 0, 1]), [(2,), (0,), (0,), (1,)]),
        (out2, torch.tensor([2, 0, 1, 1], dtype=torch.int32), [(2,), (0,), (1,), (1,)]),
        (out2, torch.tensor([1, 0, 2, 1], dtype=torch.uint8), [(1,), (0,), (2,), (1,)]),
        (out3, (1, 2), [(1, 2)] * 4),
        (out3, (-2, -3), [(0, 0)] * 4),
        (out3, [(0, 1), (1, 2), (1, 0), (0, 2)], [(0, 1), (1, 2), (1, 0), (0, 2)]),
    ]
    for output, target, per_row in cases:
        selected = Target(target, 4).select(output)
        assert selected.shape == (4,) and selected.dtype == dtype
        assert selected.device == output.device
        assert torch.equal(selected, _hand_select(output, per_row)), target


def test_no_target_takes_the_one_value_of_each_row():
    torch.manual_seed(3)
    for output in (torch.randn(5) + 3.0, torch.randn(5, 1) + 3.0, torch.randn(5, 1, 1) + 3.0):
        assert torch.equal(Target(None, 5).select(output), output.reshape(5))
    with pytest.raises(
        ValueError,
        match=_message(
            "target must be given for a forward output of shape (5, 2) (more than one value"
        ),
    ):
        Target(None, 5).select(torch.ones(5, 2))


def test_stacked_copies_repeat_the_per_row_target():
    torch.manual_seed(4)
    per_row = [2, 0, 1]
    output = torch.randn(2 * 3, 4, dtype=torch.float64) + 2.0  # two stacked copies of 3 rows
    selected = Target(per_row, 3).select(output, copies=2)
    assert torch.equal(selected, _hand_select(output, [(t,) for t in per_row * 2]))
    index = torch.tensor([3, 1, 0])
    assert torch.equal(
        Target(index, 3).select(output, copies=2), _hand_select(output, [(3,), (1,), (0,)] * 2)
    )


def test_rows_of_a_target_by_slice_and_by_index():
    torch.manual_seed(5)
    target = Target([0, 1, 2, 3, 1], 5)
    output = torch.randn(5, 4) + 2.0
    assert torch.equal(target.rows(slice(1, 4)).select(output[1:4]), output[[1, 2, 3], [1, 2, 3]])
    picked = torch.tensor([4, 0, 3])
    assert torch.equal(target.rows(picked).select(output[picked]), output[[4, 0, 3], [1, 0, 3]])
    none = Target(None, 5).rows(slice(0, 2))
    assert torch.equal(none.select(output[:2, :1]), output[:2, 0])
    assert target.rows(picked).raw == [0, 1, 2, 3, 1]


def test_an_empty_output_selects_nothing_in_its_dtype():
    empty = torch.zeros(0, 3, dtype=torch.float64)
    selected = Target(1, 0).select(empty)
    assert selected.shape == (0,) and selected.dtype == torch.float64


def test_target_errors_name_the_target_and_the_shapes():
    output = torch.ones(4, 3)
    with pytest.raises(
        ValueError,
        match=_message("target (1, 2) indexes 2 dimensions of a forward output of shape (4, 3)"),
    ):
        Target((1, 2), 4).select(output)
    with pytest.raises(
        ValueError, match=_message("target 3 out of range for a forward output of shape (4, 3)")
    ):
        Target(3, 4).select(output)
    with pytest.raises(
        ValueError, match=_message("target -4 out of range for a forward output of shape (4, 3)")
    ):
        Target(-4, 4).select(output)
    with pytest.raises(
        ValueError,
        match=_message("target (0, 3) out of range for a forward output of shape (4, 5, 3)"),
    ):
        Target((0, 3), 4).select(torch.ones(4, 5, 3))  # the second index is checked against 3
    with pytest.raises(
        ValueError,
        match=_message(
            "target 1 selects 2 values per row of a forward output of shape (4, 3, 2); one is "
            "needed"
        ),
    ):
        Target(1, 4).select(torch.ones(4, 3, 2))
    with pytest.raises(
        ValueError,
        match=_message("target 2 selects 3 values per row of a forward output of shape (1, 4, 3)"),
    ):
        Target(2, 1).select(torch.ones(1, 4, 3))  # a single row
    with pytest.raises(
        ValueError,
        match=_message(
            "target tensor must hold one element or one per input row (4), got shape (2,)"
        ),
    ):
        Target(torch.tensor([1, 2]), 4)
    with pytest.raises(
        ValueError,
        match=_message(
            "target tensor must hold one element or one per input row (4), got shape (4, 1)"
        ),
    ):
        Target(torch.zeros(4, 1, dtype=torch.long), 4)
    with pytest.raises(
        ValueError,
        match=_message(
            "target list must hold ints or equal-length tuples of ints, got [(0, 1), 2]"
        ),
    ):
        Target([(0, 1), 2], 2)
    for bad in ([1.5, 2], [True, 0], [(0, 1.0), (1, 1)], [(True,), (1,)]):  # never truncated
        with pytest.raises(
            ValueError,
            match=_message(
                f"target list must hold ints or equal-length tuples of ints, got {bad!r}"
            ),
        ):
            Target(bad, 2)
    for bad in (True, 1.5, "1", [0, 1, 2], (1, False)):
        with pytest.raises(
            ValueError,
            match=_message(
                "target must be None, an int, a tuple of ints, a list with one entry per input "
                f"row (4) or a tensor, got {bad!r}"
            ),
        ):
            Target(bad, 4)


# ---------------------------------------------------------------------------------- Transform


def test_transforms_are_the_named_functions():
    torch.manual_seed(6)
    out = torch.randn(3, 2, 4, dtype=torch.float64)
    assert Transform(None)(out) is out
    assert torch.equal(Transform("sigmoid")(out), 1.0 / (1.0 + torch.exp(-out)))
    soft = Transform("softmax")(out)
    assert torch.allclose(soft, out.exp() / out.exp().sum(-1, keepdim=True), rtol=1e-12)
    assert torch.equal(Transform(lambda t: 2 * t)(out), 2 * out)
    with pytest.raises(
        ValueError,
        match=_message(
            "output_transform must be None, 'sigmoid', 'softmax' or a callable, got 'tanh'"
        ),
    ):
        Transform("tanh")


# -------------------------------------------------------------------------------------- Units


def _hand_apply(tensors, ids_of, baselines, masks, ids):
    """Copy k of every tensor with the elements whose id is in ``ids[masks[k]]`` replaced."""
    out = []
    for t, mask_ids, base in zip(tensors, ids_of, baselines, strict=True):
        copies = []
        for k in range(len(masks)):
            masked_ids = {int(ids[u]) for u in range(len(ids)) if masks[k, u]}
            c = t.clone()
            for r in range(len(t)):
                for e in range(t[0].numel()):
                    position = torch.unravel_index(torch.tensor(e), t.shape[1:])
                    m = mask_ids[(min(r, len(mask_ids) - 1), *position)]
                    if int(m) in masked_ids:
                        b = base[(min(r, len(base) - 1), *position)]
                        c[(r, *position)] = b
            copies.append(c)
        out.append(torch.cat(copies))
    return tuple(out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_units_mask_groups_with_global_ids_and_baselines_like_hand_loops(dtype, device):
    torch.manual_seed(8)
    rows = 3
    a = torch.randn(rows, 2, 3, dtype=dtype, device=device) + 1.5
    b = torch.randn(rows, 4, dtype=dtype, device=device) - 1.5
    mask_a = torch.tensor([[[7, 3, 3], [0, 7, 5]]])  # (1, 2, 3)
    mask_b = torch.tensor([[5], [3], [5], [11]]).t()  # (1, 4): ids shared with mask_a
    base_a = torch.linspace(-0.4, 0.6, 3, dtype=dtype)  # broadcast over the last dim
    base_b = 0.25
    units = Units((a, b), (mask_a, mask_b), (base_a, base_b), NAMES, "layer output", rows)
    assert torch.equal(units.ids, torch.tensor([0, 3, 5, 7, 11], device=device))
    assert units.n == 5 and units.shapes == ((2, 3), (4,)) and not units.per_row
    masks = torch.tensor(
        [[0, 1, 0, 0, 0], [0, 0, 1, 0, 1], [1, 0, 0, 1, 0], [0] * 5, [1] * 5], dtype=torch.bool
    )
    stacked = tuple(t.repeat(len(masks), *([1] * (t.dim() - 1))) for t in (a, b))
    got = units.apply(stacked, masks)
    full_base = (
        base_a.to(device).expand(1, 2, 3),
        torch.full((1, 4), base_b, dtype=dtype, device=device),
    )
    want = _hand_apply((a, b), (mask_a.to(device), mask_b.to(device)), full_base, masks, units.ids)
    for g, w, t in zip(got, want, (a, b), strict=True):
        assert g.dtype == dtype and g.device == t.device
        assert torch.equal(g, w)
    # every unit changes something and an all-false mask changes nothing
    assert torch.equal(got[0][3 * rows : 4 * rows], a)


def test_per_row_masks_and_baselines_are_cut_with_the_rows():
    torch.manual_seed(9)
    rows = 4
    x = torch.randn(rows, 5, dtype=torch.float64) + 2.0
    mask = torch.tensor([[0, 0, 1, 1, 2], [2, 1, 1, 0, 0], [0, 1, 2, 0, 1], [1, 1, 1, 2, 2]])
    base = torch.randn(rows, 5, dtype=torch.float64) - 2.0
    units = Units((x,), mask, base, NAMES, "layer output", rows)
    assert units.per_row and units.n == 3
    part = units.rows(1, 3)
    masks = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.bool)
    got = part.apply((x[1:3].repeat(2, 1),), masks)
    want = _hand_apply((x[1:3],), (mask[1:3],), (base[1:3],), masks, units.ids)
    assert torch.equal(got[0], want[0])
    shared = Units((x,), mask[:1], 0.5, NAMES, "layer output", rows)
    assert not shared.per_row
    assert not shared.rows(1, 3).per_row
    assert Units((x,), mask[:1], base, NAMES, "layer output", rows).per_row
    kept = shared.rows(2, 4).apply((x[2:4],), masks[:1])
    assert torch.equal(
        kept[0],
        _hand_apply(
            (x[2:4],),
            (mask[:1],),
            (torch.full((1, 5), 0.5, dtype=torch.float64),),
            masks[:1],
            shared.ids,
        )[0],
    )


def test_no_mask_makes_every_element_a_unit_and_expand_spreads_unit_values():
    torch.manual_seed(10)
    x = torch.randn(2, 2, 3) + 2.0
    units = Units((x,), None, None, NAMES, "layer output", 2)
    assert units.n == 6 and torch.equal(units.ids, torch.arange(6))
    masked = units.apply((x,), torch.eye(6, dtype=torch.bool)[[4]])[0]
    want = x.clone()
    want[:, 1, 1] = 0.0
    assert torch.equal(masked, want)
    grouped = Units(
        (x, x[:, 0]),
        (torch.tensor([[[2, 0, 2], [1, 1, 0]]]), torch.tensor([[3, 2, 0]])),
        None,
        NAMES,
        "layer output",
        2,
    )
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0], [-1.0, -2.0, -3.0, -4.0]])
    first, second = grouped.expand(values)
    assert torch.equal(
        first,
        torch.tensor(
            [[[30.0, 10.0, 30.0], [20.0, 20.0, 10.0]], [[-3.0, -1.0, -3.0], [-2.0, -2.0, -1.0]]]
        ),
    )
    assert torch.equal(second, torch.tensor([[40.0, 30.0, 10.0], [-4.0, -3.0, -1.0]]))


def test_unit_errors_name_the_argument_the_value_and_the_shapes():
    x = torch.ones(4, 2, 3)
    y = torch.ones(4, 5)

    def units(mask=None, baselines=None, tensors=(x,)):
        return Units(tensors, mask, baselines, NAMES, "layer output", 4)

    with pytest.raises(
        ValueError,
        match=_message("layer_mask must hold one tensor per layer output tensor (2), got 1"),
    ):
        units(torch.zeros(1, 2, 3, dtype=torch.long), tensors=(x, y))
    for bad in (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, dtype=torch.bool)):
        with pytest.raises(ValueError, match="layer_mask must hold integer tensors, got tensor"):
            units(bad)
    with pytest.raises(
        ValueError,
        match=_message(
            "layer_mask of shape (1, 1, 2, 3) has more dimensions than the layer output (4, 2, 3)"
        ),
    ):
        units(torch.zeros(1, 1, 2, 3, dtype=torch.long))
    for shape in ((2, 2, 3), (1, 3, 3), (1, 2, 2)):
        with pytest.raises(
            ValueError,
            match=_message(
                f"layer_mask of shape {shape} does not broadcast to the layer output (4, 2, 3) "
                "(first dim 1 or 4)"
            ),
        ):
            units(torch.zeros(shape, dtype=torch.long))
    with pytest.raises(
        ValueError,
        match=_message("layer_baselines of shape (3, 2, 3) does not broadcast to the layer output"),
    ):
        units(baselines=torch.zeros(3, 2, 3))
    with pytest.raises(
        ValueError, match=_message("layer_baselines must hold one entry per tensor (1), got 2")
    ):
        units(baselines=(0.0, 1.0))
    for bad in (True, "0", None):
        with pytest.raises(
            ValueError,
            match=_message(f"layer_baselines entries must be numbers or tensors, got {bad!r}"),
        ):
            units(baselines=(bad,))
    # the accepted forms: a left-padded mask, ints, per-row tensors; a number baseline takes
    # the tensors' dtype (0.1 in float64, not 0.1 rounded to float32)
    x64 = torch.ones(4, 3, dtype=torch.float64)
    tenth = Units((x64,), None, (0.1,), NAMES, "layer output", 4)
    assert tenth.baselines[0].dtype == torch.float64
    assert tenth.apply((x64,), torch.eye(3, dtype=torch.bool)[:1])[0][0, 0].item() == 0.1
    assert units(torch.tensor([0, 1, 0]), 1).n == 2
    assert units(baselines=torch.zeros(4, 1, 3)).per_row


# ----------------------------------------------------------------------------- rows and inputs


def test_row_slices_cut_batch_arguments_and_repeat_them_for_stacked_copies():
    torch.manual_seed(11)
    x = torch.randn(5, 3)
    per_row = torch.arange(5.0)[:, None] * torch.ones(1, 2)
    other = torch.randn(2, 2)  # first dim not N: passes unchanged
    scalar = torch.tensor(7.0)
    labels = torch.arange(10, 15)  # one dimension, N long: cut and repeated
    args = (per_row, other, scalar, "mode", labels)
    part = RowSlice((x, x + 1), args, Target([0, 1, 2, 0, 1], 5), 1, 4)
    assert len(part) == 3 and (part.start, part.stop) == (1, 4)
    assert torch.equal(part.inputs[0], x[1:4]) and torch.equal(part.inputs[1], x[1:4] + 1)
    cut, same, zero_dim, text, cut_labels = part.args
    assert torch.equal(cut_labels, torch.tensor([11, 12, 13]))
    assert torch.equal(cut, per_row[1:4]) and same is other and zero_dim is scalar
    assert text == "mode"
    repeated = part.repeated_args(2)
    assert torch.equal(repeated[0], torch.cat([per_row[1:4]] * 2))
    assert torch.equal(repeated[1], torch.cat([other] * 2))
    assert repeated[2] is scalar and repeated[3] == "mode"
    assert torch.equal(repeated[4], torch.tensor([11, 12, 13, 11, 12, 13]))
    out = torch.randn(3, 3)
    assert torch.equal(part.target.select(out), out[[0, 1, 2], [1, 2, 0]])
    assert RowSlice((x,), None, Target(None, 5), 0, 2).args == ()


def test_inputs_are_a_tuple_with_rows_and_one_batch_size():
    x = torch.ones(3, 2)
    y = x[:, :1]
    assert format_inputs(x)[0] is x
    vector = torch.ones(3)  # one dimension is the batch alone
    assert format_inputs(vector)[0] is vector
    assert all(a is b for a, b in zip(format_inputs((x, y)), (x, y), strict=True))
    for bad in ((x, 2.0), torch.tensor(1.0), ()):
        with pytest.raises(
            ValueError,
            match="inputs must be a tensor or a tuple of tensors with a batch dimension, got",
        ):
            format_inputs(bad)
    with pytest.raises(ValueError, match="^inputs must hold at least one row, got an empty batch$"):
        format_inputs(x[:0])
    with pytest.raises(
        ValueError,
        match=_message("inputs must share the batch dimension, got shapes [(3, 2), (2, 2)]"),
    ):
        format_inputs((x, x[:2]))


def test_apply_keeps_the_masked_tensors_dtype_and_needs_one_tensor_per_unit_tensor():
    torch.manual_seed(12)
    a64, b64 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    units = Units((a64, b64), None, (0.1, -0.2), NAMES, "layer output", 2)  # baselines float64
    a32 = torch.randn(2, 3) + 1.0
    masks = torch.eye(5, dtype=torch.bool)[[0, 4]]
    (masked_a, masked_b) = units.apply((a32, b64), masks[:1])
    assert masked_a.dtype == torch.float32
    want = a32.clone()
    want[:, 0] = 0.1
    assert torch.equal(masked_a, want)
    with pytest.raises(ValueError, match="zip"):  # a tensor missing is an error, never dropped
        units.apply((a32,), masks)
