"""Attention heads as the units of :class:`~captum_ext.synergy.LayerSynergy`.

Multi-head attention concatenates its heads' outputs (N, L, heads · d) and projects them
(``out_proj`` of ``nn.MultiheadAttention``, ``attention.output.dense`` of Hugging Face's BERT
and ViT). Masking the features of one head in that concatenation removes the head; with the
groups of :func:`head_groups` as ``layer_mask`` on the projection's input
(``attribute_to_layer_input=True``), LayerSynergy's units are the heads and its pairs are
head pairs::

    name = "bert.encoder.layer.0.attention.self"
    layer = head_output_layer(model, name)        # bert.encoder.layer.0.attention.output.dense
    result = LayerSynergy(forward, layer).compute(
        ids, target=0, layer_mask=head_groups(model, name), attribute_to_layer_input=True
    )                                             # result.synergy: (heads, heads)

The projection, not the attention module, is the layer: transformers' self-attention
returns a tuple ``(context, weights)`` (``weights`` None with SDPA), whose second element
Captum's layer attributions cannot mask (``LayerFeatureAblation`` fails with
``'NoneType' object has no attribute 'clone'``). ``nn.MultiheadAttention`` never calls its
``out_proj`` module (the fused kernel reads its weights): inside :func:`exposed_heads` it does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["head_groups", "head_output_layer", "exposed_heads"]


def _module(model: nn.Module, layer_name: str | None) -> nn.Module:
    if layer_name is None:
        return model
    if not isinstance(layer_name, str):
        raise TypeError(f"layer_name must be a str or None, got {type(layer_name).__name__}")
    try:
        return model.get_submodule(layer_name)
    except AttributeError as error:
        raise ValueError(f"layer_name {layer_name!r} is not a submodule of the model") from error


def _heads_and_width(module: Any, num_heads: int | None) -> tuple[int, int]:
    """(heads, features of the concatenated head outputs) of an attention or projection."""
    if isinstance(module, nn.MultiheadAttention):
        return module.num_heads, module.embed_dim
    if hasattr(module, "num_attention_heads") and hasattr(module, "all_head_size"):
        return int(module.num_attention_heads), int(module.all_head_size)
    if isinstance(module, nn.Linear):
        if num_heads is None:
            raise ValueError(
                f"num_heads is needed for an nn.Linear (in_features={module.in_features}): "
                "the module does not say how many heads its input concatenates"
            )
        return num_heads, module.in_features
    raise TypeError(
        "head_groups expects nn.MultiheadAttention, a transformers self-attention (with "
        f"num_attention_heads) or the nn.Linear after it, got {type(module).__name__}"
    )


def head_groups(
    module_or_model: nn.Module, layer_name: str | None = None, *, num_heads: int | None = None
) -> Tensor:
    """A ``layer_mask`` grouping the features of concatenated head outputs by head.

    Parameters
    ----------
    module_or_model : torch.nn.Module
        The attention (``nn.MultiheadAttention``, a transformers self-attention such as
        ``BertSelfAttention``), the ``nn.Linear`` that projects the heads' outputs, or a
        model containing one of these at ``layer_name``.
    layer_name : str, optional
        Dotted name of that module inside ``module_or_model``. Default None: the module
        itself.
    num_heads : int, optional
        Number of heads; needed only for an ``nn.Linear``. Keyword-only.

    Returns
    -------
    torch.Tensor
        (1, 1, heads · d) int64: feature f belongs to head ``f // d`` (the layout of
        ``nn.MultiheadAttention`` and transformers); broadcasts over (N, L, heads · d).

    Raises
    ------
    ValueError
        If ``num_heads`` is missing or does not divide the width, or ``layer_name`` is not a
        submodule.
    TypeError
        For a module that is not one of the above.
    """
    module = _module(module_or_model, layer_name)
    heads, width = _heads_and_width(module, num_heads)
    if heads < 1 or width % heads:
        raise ValueError(f"num_heads must be >= 1 and divide {width}, got {heads}")
    return (torch.arange(width) // (width // heads)).view(1, 1, width)


def head_output_layer(model: nn.Module, layer_name: str) -> nn.Module:
    """The module whose input is the concatenation of the heads' outputs of ``layer_name``.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    layer_name : str
        Dotted name of an attention: a transformers self-attention (BERT's
        ``….attention.self``, ViT's ``….attention.attention``), whose sibling
        ``output.dense`` is returned, or an ``nn.MultiheadAttention``, whose ``out_proj`` is
        returned (use it inside :func:`exposed_heads`).

    Returns
    -------
    torch.nn.Module
        Pass it to ``LayerSynergy`` with ``attribute_to_layer_input=True``.

    Raises
    ------
    ValueError
        If the module is neither, or its parent has no ``output.dense``.
    """
    module = _module(model, layer_name)
    if isinstance(module, nn.MultiheadAttention):
        return module.out_proj
    parent_name = layer_name.rpartition(".")[0]
    parent = _module(model, parent_name or None)
    dense = getattr(getattr(parent, "output", None), "dense", None)
    if not hasattr(module, "num_attention_heads") or not isinstance(dense, nn.Linear):
        raise ValueError(
            f"layer_name {layer_name!r} ({type(module).__name__}) is neither an "
            "nn.MultiheadAttention nor a transformers self-attention whose parent has "
            "output.dense"
        )
    return dense


class _Concatenation(nn.Module):
    """Stands in for ``out_proj`` inside the fused kernel: the identity map (exact)."""

    def __init__(self, projection: nn.Linear) -> None:
        super().__init__()
        weight = projection.weight
        self.weight = torch.eye(projection.in_features, dtype=weight.dtype, device=weight.device)
        self.bias = weight.new_zeros(projection.in_features)  # the fused kernel needs one


@contextmanager
def exposed_heads(attention: nn.MultiheadAttention) -> Iterator[nn.Linear]:
    """Make ``attention.out_proj`` run as a module, so hooks on it see the heads' outputs.

    Inside the context the fused kernel projects with the identity (the concatenated head
    outputs, exactly) and a forward hook applies ``out_proj``; outputs are unchanged and the
    attention weights too. Everything is restored on exit, also on error.

    Parameters
    ----------
    attention : torch.nn.MultiheadAttention
        The attention (any ``batch_first``).

    Yields
    ------
    torch.nn.Linear
        ``attention.out_proj`` (input (N, L, embed_dim) batch first, or (L, N, embed_dim)).
    """
    if not isinstance(attention, nn.MultiheadAttention):
        raise TypeError(f"attention must be nn.MultiheadAttention, got {type(attention).__name__}")
    projection = attention.out_proj

    def project(module: nn.Module, args: Any, output: Any) -> Any:
        return (projection(output[0]), *output[1:])

    del attention._modules["out_proj"]
    attention.out_proj = _Concatenation(projection)  # type: ignore[assignment]
    handle = attention.register_forward_hook(project)
    try:
        yield projection
    finally:
        handle.remove()
        del attention._modules["out_proj"]
        attention.out_proj = projection
