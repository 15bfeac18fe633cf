"""NeuronPaths on a ViT: MLP neurons (features), tokens and attention heads as units."""

from __future__ import annotations

import pytest
import torch
from test_nrm_transformers import BLOCK_0, BLOCK_1, HEADS_1, MLP_1, _images, _vit

from zennit_ext import NRM, NeuronPaths

HEADS_0 = "encoder.layers.encoder_layer_0.self_attention.canonizer_weighting"
MLP_0 = "encoder.layers.encoder_layer_0.mlp.0"
TARGET = [0, 1, 2]


def _check_graph_against_nrm(paths: NeuronPaths, levels: dict[str, str]) -> None:
    """Edges, unit scores and path relevance equal NRM queries made one set at a time."""
    x = _images()
    graph = paths.graph(x, TARGET)
    top = graph.top_paths(k=3)
    path_relevance = paths.path_relevance(x, TARGET, top)
    heat = paths.heatmap(x, TARGET, top)
    with NRM(_vit(), list(levels)).explain(x, TARGET) as e:
        for (lower, upper), edges in graph.edges.items():
            for i, j in [(0, 0), (1, edges.shape[2] - 1), (edges.shape[1] - 1, 1)]:
                sets = {
                    lower: _unit(e, lower, levels[lower], i),
                    upper: _unit(e, upper, levels[upper], j),
                }
                torch.testing.assert_close(edges[:, i, j], e.joint(sets), rtol=1e-9, atol=1e-13)
        for name, level in levels.items():
            count = graph.relevance[name].shape[1]
            expected = torch.stack(
                [e.joint({name: _unit(e, name, level, u)}) for u in range(count)]
            )
            torch.testing.assert_close(graph.relevance[name], expected.T, rtol=1e-9, atol=1e-13)
        for rank in range(3):
            units = {
                name: _unit_per_sample(e, name, levels[name], top.units[:, rank, depth])
                for depth, name in enumerate(paths.layers)
            }
            torch.testing.assert_close(
                path_relevance[:, rank], e.joint(units), rtol=1e-9, atol=1e-13
            )
    torch.testing.assert_close(heat.sum((1, 2, 3)), path_relevance.sum(1), rtol=1e-9, atol=1e-13)
    assert (path_relevance > 0).any(1).all()


def _unit(e, name: str, level: str, index: int) -> torch.Tensor:
    shape = e.session.outputs[name].shape
    batch = torch.full((shape[0],), index, dtype=torch.long)
    return _unit_per_sample(e, name, level, batch)


def _unit_per_sample(e, name: str, level: str, units: torch.Tensor) -> torch.Tensor:
    """Bool mask of unit ``units[b]`` of sample b along the level's axis, built by hand."""
    shape = e.session.outputs[name].shape
    mask = torch.zeros(shape, dtype=torch.bool)
    for b, unit in enumerate(units.tolist()):
        if level == "feature":
            mask[b, ..., unit] = True
        else:  # token, head, channel: axis 1
            mask[b, unit] = True
    return mask


def test_paths_over_blocks_with_mlp_neurons_as_units():
    levels = {BLOCK_0: "feature", MLP_1: "feature", BLOCK_1: "feature"}
    paths = NeuronPaths(_vit(), list(levels), level="feature")
    _check_graph_against_nrm(paths, levels)


def test_paths_with_heads_and_mlp_neurons():
    levels = {HEADS_0: "head", MLP_0: "feature", HEADS_1: "head", MLP_1: "feature"}
    paths = NeuronPaths(_vit(), list(levels), level=levels)
    _check_graph_against_nrm(paths, levels)


def test_tokens_as_units_and_the_threshold_zeroes_whole_tokens():
    paths = NeuronPaths(_vit(), [BLOCK_0, BLOCK_1], level="token")
    found = paths.tune_threshold(_images(), TARGET, grid=(100.0, -0.5))  # mean − c·σ
    # keeping every token changes nothing: the class score is the model's own
    torch.testing.assert_close(found.score_ratio[0], torch.ones(3, dtype=torch.float64))
    assert found.kept_fraction[0].eq(1).all() and found.kept_fraction[1].lt(1).all()
    assert (found.score_ratio[1] != 1).all()  # zeroing the unkept tokens changes the score


def test_units_that_need_channels_or_own_modules_are_refused_clearly():
    x = _images()
    heads = NeuronPaths(_vit(), [HEADS_0, HEADS_1], level="head")
    with pytest.raises(ValueError, match="zeroing the unkept units needs the model's own"):
        heads.tune_threshold(x, TARGET, grid=(0.0,))
    tokens = NeuronPaths(_vit(), [BLOCK_0, BLOCK_1], level="token")
    top = tokens.graph(x, TARGET).top_paths(k=1)
    with pytest.raises(ValueError, match="deconvolution needs level 'channel'"):
        tokens.deconvolution(x, top)
    with pytest.raises(ValueError, match="one level per layer"):
        NeuronPaths(_vit(), [BLOCK_0, BLOCK_1], level={BLOCK_0: "token"})


def test_a_layer_off_the_inputs_path_is_named():
    """Swin V2's position-bias MLP reads a fixed coordinate table, not the image."""
    from test_attention_swin import images, small_swin

    layers = ["features.3.1.attn.cpb_mlp.0", "features.3.1.mlp.0"]
    with pytest.raises(ValueError, match=r"'features.3.1.attn.cpb_mlp.0' does not depend on"):
        NeuronPaths(small_swin(True), layers).graph(images(32), 0)
