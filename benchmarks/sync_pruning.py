"""Fig. 9 of the sync suite: accuracy as filters of the regularized layer are pruned.

Two curves per model, both by Molchanov et al.'s first-order Taylor criterion ("Pruning
Convolutional Neural Networks for Resource Efficient Inference", arXiv:1611.06440), no
fine-tuning:

- :func:`one_shot_curve`: one ranking on the unpruned model, the lowest k filters zeroed;
- :func:`sequential_curve`: the paper's "sequentially removing the redundant filter that has
  the least impact": after each removal the remaining filters are re-scored on the pruned
  model and the lowest is removed next.

Pruning at the regularized layer leaves everything before it unchanged, so the sequential
curve runs the network's head (layer maps → logits) on maps computed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["one_shot_curve", "sequential_curve"]


def one_shot_curve(
    model: nn.Module, layer: nn.Module, train_set: tuple, test, fractions: Sequence[float]
) -> dict[str, list[float]]:
    """Test accuracy as the filters of ``layer`` with the lowest Taylor score are zeroed.

    Parameters
    ----------
    model : nn.Module
        A trained classifier (restored afterwards).
    layer : nn.Module
        Its layer with (N, C, h, w) outputs.
    train_set : tuple of tensors
        (x, y) the scores are computed on.
    test : Dataset
        ``x``, ``y`` the accuracy is measured on.
    fractions : sequence of float
        Fractions of the C filters pruned, in [0, 1).

    Returns
    -------
    dict
        :func:`captum_ext.synergy.pruning.pruning_curve`'s ``fraction``, ``pruned``,
        ``accuracy``.
    """
    from captum_ext.synergy.pruning import pruning_curve, taylor_scores

    scores = taylor_scores(model, layer, *train_set)
    channels = torch.arange(scores.numel()).reshape(1, -1, 1, 1)
    return pruning_curve(
        model,
        layer,
        scores,
        test.x,
        test.y,
        layer_mask=channels,
        fractions=fractions,
        show_progress=False,
    )


def _channel_units(channels: list[int], shape: torch.Size) -> Tensor:
    """Flat indices (of one (C, h, w) output) of every position of ``channels``."""
    per_channel = shape[1:].numel()
    grid = torch.arange(shape.numel()).reshape(shape[0], per_channel)
    return grid[torch.tensor(channels, dtype=torch.long)].flatten()


def sequential_curve(
    head: nn.Module,
    train_maps: Tensor,
    train_y: Tensor,
    test_maps: Tensor,
    test_y: Tensor,
    fractions: Sequence[float],
    show_progress: bool = False,
) -> dict[str, list]:
    """Test accuracy as filters are removed one by one, re-scored after each removal.

    Step s scores the filters still in place by the Taylor criterion on the model with the
    first s removed (zeroed), and removes the lowest (the first of equal lowest scores).

    Parameters
    ----------
    head : nn.Module
        The network after the pruned layer: (N, C, h, w) maps → (N, classes) logits. Its
        parameters, gradients and mode are left as they were.
    train_maps, train_y : torch.Tensor
        (N, C, h, w) layer maps and (N,) labels the scores are computed on.
    test_maps, test_y : torch.Tensor
        (M, C, h, w) layer maps and (M,) labels the accuracy is measured on.
    fractions : sequence of float
        Fractions of the C filters removed, in [0, 1).
    show_progress : bool
        Progress bar over removals.

    Returns
    -------
    dict
        ``fraction``, ``pruned`` (k = int(C · fraction)), ``accuracy`` per fraction, and
        ``order``, the filters in the order they were removed.
    """
    from captum_ext.synergy.pruning import masked_units, taylor_scores

    if not fractions or any(not 0.0 <= f < 1.0 for f in fractions):
        raise ValueError(f"fractions must be a non-empty sequence in [0, 1), got {fractions}")
    if train_maps.shape[1:] != test_maps.shape[1:]:
        raise ValueError(
            f"train_maps and test_maps must share (C, h, w), got {tuple(train_maps.shape)} "
            f"and {tuple(test_maps.shape)}"
        )
    c = train_maps.shape[1]
    gate = nn.Identity()
    stack = nn.Sequential(gate, head)
    training = head.training
    stack.eval()  # taylor_scores restores this mode
    order: list[int] = []
    steps = max(int(c * f) for f in fractions)
    try:
        for _ in tqdm(
            range(steps), desc="sequential pruning", disable=None if show_progress else True
        ):
            with masked_units(gate, _channel_units(order, train_maps.shape[1:])):
                score = taylor_scores(stack, gate, train_maps, train_y).to(torch.float64)
            score[order] = float("inf")
            order.append(int(torch.argmin(score)))  # the first lowest
        curve: dict[str, list] = {"fraction": [], "pruned": [], "accuracy": [], "order": order}
        with torch.no_grad():
            for fraction in fractions:
                k = int(c * fraction)
                kept = test_maps.clone()
                kept[:, order[:k]] = 0.0
                predicted = head(kept).argmax(-1)
                curve["fraction"].append(float(fraction))
                curve["pruned"].append(k)
                curve["accuracy"].append(float((predicted == test_y).double().mean()))
    finally:
        head.train(training)
    return curve
