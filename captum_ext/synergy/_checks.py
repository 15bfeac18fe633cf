"""Argument checks shared by the synergy attributions: early errors that name the argument."""

from __future__ import annotations

from typing import Any

from torch import nn

from captum_ext.synergy import formulas as scores

__all__ = [
    "check_attribution",
    "check_per_eval",
    "check_eval_mode",
    "check_rows_per_chunk",
    "hook_rows_per_chunk",
    "ELEMENTS_PER_CHUNK",
    "HOOK_ROWS_PER_CHUNK",
]

# elements held per chunk of rows (masked-score tables, contributions): 64 MB of float32
ELEMENTS_PER_CHUNK = 1 << 24
# rows of one chunk at most when masks run through the whole model (its activations grow with
# the rows of a pass, which are the chunk's rows times the masks per pass)
HOOK_ROWS_PER_CHUNK = 4096


def hook_rows_per_chunk(n_units: int, per_eval: int) -> int:
    """Default rows per chunk when every mask runs a forward pass (the hook paths)."""
    return min(HOOK_ROWS_PER_CHUNK, ELEMENTS_PER_CHUNK // max(n_units, per_eval))


def check_attribution(forward_func: Any, layer: Any, mode: str) -> None:
    """The constructor arguments shared by LayerSynergy and NeuronSynergy."""
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
    if isinstance(forward_func, nn.Module) and all(m is not layer for m in forward_func.modules()):
        raise ValueError(f"layer {layer!r} is not a module of forward_func")
    if mode not in scores.MODES:
        raise ValueError(f"mode must be one of {scores.MODES}, got {mode!r}")


def check_rows_per_chunk(rows_per_chunk: Any, default: int, rows: int) -> int:
    """Rows per chunk: the user's, or ``default``; at most ``rows``."""
    if rows_per_chunk is None:
        return max(1, min(rows, default))
    if isinstance(rows_per_chunk, bool) or not isinstance(rows_per_chunk, int):
        raise ValueError(f"rows_per_chunk must be a positive int or None, got {rows_per_chunk!r}")
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be a positive int or None, got {rows_per_chunk!r}")
    return min(rows, rows_per_chunk)


def check_per_eval(perturbations_per_eval: Any) -> int:
    """``perturbations_per_eval`` as a positive int, or a ValueError naming it."""
    if isinstance(perturbations_per_eval, bool) or not isinstance(perturbations_per_eval, int):
        raise ValueError(
            f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}"
        )
    if perturbations_per_eval < 1:
        raise ValueError(
            f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}"
        )
    return perturbations_per_eval


def check_eval_mode(forward_func: Any) -> None:
    """Refuse a module whose BatchNorm or Dropout layers would use batch statistics or noise.

    Masks of several copies share one batch, so a BatchNorm in training mode, or one without
    running statistics, would mix them; dropout would make scores random.
    """
    if not isinstance(forward_func, nn.Module):
        return
    for name, module in forward_func.named_modules():
        label = repr(name or type(module).__name__)
        stochastic = isinstance(
            module, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd
        )
        if stochastic and module.training:
            raise ValueError(
                f"forward_func's module {label} is in training mode; call .eval() first "
                "(masking with batch statistics or dropout is not defined)"
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is None:
            raise ValueError(
                f"forward_func's BatchNorm {label} has no running statistics "
                "(track_running_stats=False) and normalizes by batch statistics, which masking "
                "in batches would mix"
            )
