"""Slow, obvious references for the synergy tests: one forward pass per mask."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def randomize_norms(model: nn.Module) -> None:
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.3, 0.3)


def brute_force(model, layer, x, units, score, mode, baseline=0.0):
    """Δ_i, S_ij and per-row d with one forward pass per mask; ``units`` lists element sets.

    ``units[k]`` is a list of flat indices into one row of the layer output.
    """

    def run(masked):
        def hook(_m, _i, out):
            flat = out.reshape(len(out), -1).clone()
            base = torch.as_tensor(baseline, dtype=out.dtype).expand(out.shape[1:]).reshape(-1)
            index = [e for k in masked for e in units[k]]
            flat[:, index] = base[index].to(flat.device)
            return flat.reshape(out.shape)

        handle = layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return score(model(x))
        finally:
            handle.remove()

    def diff(a, b):
        return (a - b).abs() if mode == "abs_mean" else a - b

    p = run(())
    n = len(units)
    d = torch.stack([diff(p, run((i,))) for i in range(n)], dim=1)  # (N, n)
    d_pair = torch.zeros(len(x), n, n, dtype=p.dtype, device=p.device)
    for i, j in itertools.combinations(range(n), 2):
        d_pair[:, i, j] = d_pair[:, j, i] = diff(p, run((i, j)))
    s_rows = d_pair - d[:, :, None] - d[:, None, :]
    s_rows[:, range(n), range(n)] = 0.0
    return d.mean(0), s_rows.mean(0), d, s_rows


def evaluator_of(attribution, x, target=None, layer_mask=None):
    """The evaluator a LayerSynergy call on ``x`` would use for all its rows."""
    plan, _ = attribution._plan(x, None, target, None, layer_mask, False, 1, False, None)
    return plan.evaluator(0, len(x))
