"""Offline data sets: shapes, dtypes, label balance, determinism, and exact masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.data import (
    load_cluttered,
    load_dna,
    load_fish,
    load_mnist,
    load_parts,
    load_shapes,
    load_storms,
)
from benchmarks.data.cluttered import TARGET_COLOUR
from benchmarks.data.dna import _frequency_matrices
from benchmarks.data.mnist import load_idx, load_items
from benchmarks.data.shapes import shape_masks


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test builds its data afresh, so caching cannot hide a generator bug."""
    monkeypatch.setenv("NEURON_XAI_CACHE", str(tmp_path))


def _mnist_fetched() -> bool:
    try:
        load_idx("mnist", "test")
    except FileNotFoundError:
        return False
    return True


def _balanced(y: torch.Tensor, classes: int) -> None:
    counts = torch.bincount(y.long(), minlength=classes)
    assert counts.max() - counts.min() <= 1, counts


def test_shapes_masks_are_exactly_the_drawn_object():
    data = load_shapes(n=64, size=48, seed=3)
    assert data.x.shape == (64, 3, 48, 48) and data.x.dtype == torch.float32
    assert data.mask.shape == (64, 1, 48, 48) and data.mask.dtype == torch.bool
    assert data.y.dtype == torch.int64
    _balanced(data.y, 4)
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    changed = (data.x != data.meta["background"]).any(1, keepdim=True)
    assert not (changed & ~data.mask).any(), "pixels outside the mask changed"
    object_pixels = data.x.permute(0, 2, 3, 1)[data.mask[:, 0]]
    colours = data.meta["colour"][:, None, None, :].expand(-1, 48, 48, -1)[data.mask[:, 0]]
    assert torch.equal(object_pixels, colours)
    assert (data.mask.flatten(1).sum(1) > 20).all()


@pytest.mark.parametrize("kind", range(4))
def test_shape_masks_are_centred_and_scaled(kind):
    mask = shape_masks(
        np.array([kind]), np.array([16.0]), np.array([16.0]), np.array([8.0]), np.array([0.0]), 32
    )[0]
    rows, cols = np.nonzero(mask)
    assert abs(cols.mean() - 15.5) < 1.0 and cols.max() - cols.min() <= 17
    assert mask[16, 16] or kind == 2  # the triangle's centroid is not its circumcentre
    assert mask.sum() < 16 * 16


def test_shapes_are_deterministic_and_seeded():
    a, b, c = load_shapes(16, seed=1), load_shapes(16, seed=1), load_shapes(16, seed=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize(("size", "source"), [(64, "auto"), (96, "digits")])
def test_cluttered_mask_is_the_pasted_target(size, source):
    data = load_cluttered(n=40, size=size, seed=0, source=source)
    assert data.x.shape == (40, 3, size, size) and data.mask.shape == (40, 1, size, size)
    _balanced(data.y, 10)
    changed = (data.x != data.meta["background"]).any(1, keepdim=True)
    assert not (changed & ~data.mask).any()
    gold = torch.from_numpy(TARGET_COLOUR)
    pixels = data.x.permute(0, 2, 3, 1)[data.mask[:, 0]]
    ratio = pixels / gold
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-6), "target not gold"
    items, labels, _ = load_items(data.meta["source"])
    for i in range(len(data)):
        top, left, index, _texture = data.meta["placement"][i].tolist()
        assert labels[index] == data.y[i]
        expected = np.zeros((size, size), bool)
        expected[top : top + 28, left : left + 28] = items[index] > 0
        assert np.array_equal(data.mask[i, 0].numpy(), expected)


def test_cluttered_rejects_bad_size():
    with pytest.raises(ValueError, match="size"):
        load_cluttered(n=4, size=70)


@pytest.mark.skipif(not _mnist_fetched(), reason="MNIST not fetched (run `make data`)")
def test_mnist_is_the_real_split():
    test = load_mnist("test")
    assert test.x.shape == (10000, 1, 28, 28) and test.x.dtype == torch.float32
    assert test.y[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]  # the well-known first test labels
    counts = torch.bincount(test.y, minlength=10)
    assert counts.min() > 850 and counts.max() < 1150
    with pytest.raises(ValueError, match="split"):
        load_mnist("valid")


def test_dna_motifs_are_planted_where_the_mask_says():
    data = load_dna(n=200, length=250, seed=0)
    assert data.x.shape == (200, 4, 250) and data.mask.shape == (200, 1, 250)
    assert torch.equal(data.x.sum(1), torch.ones(200, 250)), "not one-hot"
    _balanced(data.y, 2)
    assert not data.mask[data.y == 0].any() and data.mask[data.y == 1].flatten(1).any(1).all()
    matrices = _frequency_matrices()
    ids = data.meta["motif_ids"]
    for i in torch.nonzero(data.y).flatten().tolist():
        expected = torch.zeros(250, dtype=torch.bool)
        for motif, start in data.meta["planted"][i].tolist():
            if motif < 0:
                continue
            pfm = matrices[ids[motif]]
            expected[start : start + len(pfm)] = True
            bases = data.x[i, :, start : start + len(pfm)].argmax(0).numpy()
            assert (pfm[np.arange(len(pfm)), bases] > 0).all(), "base impossible under the PFM"
        assert torch.equal(data.mask[i, 0], expected)


def test_dna_positives_match_their_motif_better_than_negatives():
    data = load_dna(n=400, seed=1)
    pfm = _frequency_matrices()[data.meta["motif_ids"][0]]
    log_odds = torch.from_numpy(np.log(pfm * 4 + 1e-3).T.copy()).float()[None]
    scores = torch.nn.functional.conv1d(data.x, log_odds).amax(-1).squeeze(1)
    has_motif0 = (data.meta["planted"][:, :, 0] == 0).any(1)
    assert scores[has_motif0].mean() > scores[data.y == 0].mean() + 2


@pytest.mark.parametrize("loader", [load_fish, load_storms])
def test_tabular_splits_are_temporal_and_standardised(loader):
    splits = loader()
    for part in (splits.train, splits.val, splits.test):
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.float32
        assert part.x.shape[1] == len(splits.feature_names)
        assert set(part.y.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(splits.train.x.mean(0), torch.zeros(1), atol=1e-4)
    assert torch.allclose(splits.train.x.std(0), torch.ones(1), atol=1e-2)
    rows = [p.meta["rows"] for p in (splits.train, splits.val, splits.test)]
    assert len(set(torch.cat(rows).tolist())) == sum(map(len, rows)), "splits overlap"
    assert 0.15 < splits.train.y.mean() < 0.85


def test_fish_effects_are_learnable_and_documented():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    splits = load_fish(n=6000)
    assert len(splits.feature_names) == 16 and "temperature" in splits.meta["true_effects"]
    model = HistGradientBoostingClassifier(random_state=0).fit(splits.train.x, splits.train.y)
    auc = roc_auc_score(splits.test.y, model.predict_proba(splits.test.x)[:, 1])
    assert auc > 0.9


@pytest.mark.parametrize("rate", [0.216, 0.5])
def test_fish_positive_rate_shifts_only_the_labels(rate):
    default = load_fish(n=4000)
    shifted, rarer = load_fish(n=4000, positive_rate=rate), load_fish(n=4000, positive_rate=0.1)
    parts = ("train", "val", "test")
    y = torch.cat([getattr(shifted, p).y for p in parts])
    assert abs(y.mean().item() - rate) < 0.025  # 4,000 Bernoulli draws: sd <= 0.008
    assert shifted.meta["positive_rate"] == rate and default.meta["positive_rate"] is None
    for part in parts:  # same features and draws: a rarer table's positives stay positive
        assert torch.equal(getattr(shifted, part).x, getattr(default, part).x)
        assert (getattr(rarer, part).y <= getattr(shifted, part).y).all()
    assert abs(torch.cat([getattr(default, p).y for p in parts]).mean().item() - 0.5) < 0.03


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.2, 1.5])
def test_fish_rejects_a_positive_rate_outside_the_open_unit_interval(rate):
    with pytest.raises(ValueError, match=f"positive_rate must lie in \\(0, 1\\), got {rate}"):
        load_fish(n=400, positive_rate=rate)


def test_storms_drops_label_defining_columns():
    splits = load_storms()
    assert not {"status", "category", "wind", "pressure"} & set(splits.feature_names)
    assert {"lat", "long"} <= set(splits.feature_names)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 19537


def test_parts_masks_are_disjoint_and_cover_the_object():
    data = load_parts(n=60, size=48, seed=0)
    assert data.x.shape == (60, 3, 48, 48) and data.mask.shape == (60, 4, 48, 48)
    _balanced(data.y, 3)
    assert data.mask.sum(1).max() <= 1, "parts overlap"
    present = data.mask.flatten(2).any(2)
    assert present[:, [0, 1, 3]].all(), "torso, legs and head are always drawn"
    assert torch.equal(present[:, 2], data.y != 0), "only bipeds have no tail"
    for k in range(4):  # each part is one flat colour
        pixels = data.x.permute(0, 2, 3, 1)[data.mask[:, k]]
        owners = torch.nonzero(data.mask[:, k])[:, 0]
        for i in owners.unique()[:5]:
            assert pixels[owners == i].unique(dim=0).shape[0] == 1


@pytest.mark.parametrize(
    ("loader", "kwargs", "word"),
    [(load_shapes, {"n": 0}, "n"), (load_parts, {"size": 8}, "size"), (load_dna, {"n": 1}, "n")],
)
def test_loaders_name_bad_arguments(loader, kwargs, word):
    with pytest.raises(ValueError, match=word):
        loader(**kwargs)


def test_hard_parts_hide_the_colour_shortcut_and_keep_exact_masks():
    easy = load_parts(n=90, size=48, seed=3)
    data = load_parts(n=90, size=48, seed=3, hard=True)
    occluder = data.meta["occluder"]
    assert data.x.shape == (90, 3, 48, 48) and data.mask.shape == (90, 4, 48, 48)
    assert data.x.min() >= 0 and data.x.max() <= 1
    _balanced(data.y, 3)
    assert torch.equal(data.y, easy.y), "same figures, only their looks change"
    assert data.mask.sum(1).max() <= 1, "parts overlap"
    assert not (data.mask & occluder[:, None]).any(), "an occluded pixel is still in a mask"
    assert occluder.flatten(1).any(1).all(), "every image has an occluder"
    visible = data.mask.flatten(2).any(2)
    assert visible[:, 0].float().mean() > 0.9 and not visible[data.y == 0, 2].any()
    for k in range(4):  # a part's visible pixels are one flat colour
        owners = torch.nonzero(data.mask[:, k])[:, 0]
        pixels = data.x.permute(0, 2, 3, 1)[data.mask[:, k]]
        for i in owners.unique()[:5]:
            assert pixels[owners == i].unique(dim=0).shape[0] == 1
    # colour no longer names the part: every part's mean colour is the shared mean (0.5),
    # where the easy variant dims one channel per part
    for dataset, shared in ((data, True), (easy, False)):
        means = torch.stack(
            [dataset.x.permute(0, 2, 3, 1)[dataset.mask[:, k]].mean(0) for k in range(4)]
        )
        assert bool(((means - 0.5).abs() < 0.1).all()) is shared
    # textured background: neighbouring background pixels correlate (noise would not)
    for dataset, hidden, textured in ((data, occluder, True), (easy, 0 * occluder, False)):
        background = ~(dataset.mask.any(1) | hidden.bool())
        pairs = background[:, :, :-1] & background[:, :, 1:]
        grey = dataset.x.mean(1)
        neighbours = torch.stack([grey[:, :, :-1][pairs], grey[:, :, 1:][pairs]])
        assert bool(torch.corrcoef(neighbours)[0, 1] > 0.5) is textured
