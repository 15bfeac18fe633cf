"""Hugging Face BERT and ViT in ``benchmarks zoo``: built from configs (no download), random
weights, wrapped as one-tensor modules (:class:`zennit_ext.attention.huggingface.Logits`).

``transformers`` is imported lazily: without it :func:`hf_entries` is empty and the zoo runs
the torchvision models only. Quick runs use 2-layer, 64-dim configs; full runs the default
configs (BERT-base: 12 layers, 768 dims, 128 tokens; ViT-B/16 at 224²).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

__all__ = ["HF_MODELS", "hf_available", "hf_entries", "build_hf", "hf_input"]

HF_MODELS = ("hf_bert", "hf_vit")
_CLASSES = 3
_TOKENS = 128  # full BERT input length (quick: 16)
_SMALL = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}


def hf_available() -> bool:
    """Whether ``transformers`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("transformers") is not None


def hf_entries(quick: bool) -> list:
    """Zoo entries of the Hugging Face models: ``size`` is the token count (BERT) or the image
    side (ViT); empty when transformers is absent."""
    from benchmarks.zoo_models import ZooEntry

    if not hf_available():
        return []
    return [ZooEntry("hf_bert", 16 if quick else _TOKENS), ZooEntry("hf_vit", 32 if quick else 224)]


def _config(name: str, size: int, quick: bool) -> object:
    import transformers

    small = dict(_SMALL) if quick else {}
    common = {"num_labels": _CLASSES, "attn_implementation": "eager", **small}
    if name == "hf_bert":
        return transformers.BertConfig(vocab_size=1000 if quick else 30522, **common)
    return transformers.ViTConfig(image_size=size, patch_size=8 if quick else 16, **common)


def build_hf(name: str, size: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """The wrapped model with random weights in eval mode.

    Parameters
    ----------
    name : {'hf_bert', 'hf_vit'}
        Which model.
    size : int
        Token count (BERT) or image side (ViT); below 64 selects the small quick config.
    dtype : torch.dtype
        Parameter dtype.
    seed : int
        Seed of the weights.

    Returns
    -------
    nn.Module
        Maps (N, L, hidden) input embeddings (BERT) or (N, 3, size, size) pixels (ViT) to
        (N, 3) logits.
    """
    import transformers

    from zennit_ext.attention.huggingface import Logits

    if name not in HF_MODELS:
        raise ValueError(f"name must be one of {HF_MODELS}, got {name!r}")
    torch.manual_seed(seed)
    config = _config(name, size, quick=size < 64)
    if name == "hf_bert":
        model = transformers.BertForSequenceClassification(config)
        return Logits(model.to(dtype).eval(), "inputs_embeds").eval()
    model = transformers.ViTForImageClassification(config)
    return Logits(model.to(dtype).eval(), "pixel_values").eval()


def hf_input(name: str, size: int, model: nn.Module, seed: int = 1) -> torch.Tensor:
    """One input for ``model`` (a :func:`build_hf` result): embeddings of random token ids
    (1, size, hidden) for BERT, N(0, 1) pixels (1, 3, size, size) for ViT; float32."""
    generator = torch.Generator().manual_seed(seed)
    if name == "hf_bert":
        embeddings = model.model.get_input_embeddings()
        ids = torch.randint(0, embeddings.num_embeddings, (1, size), generator=generator)
        with torch.no_grad():
            return embeddings(ids).float()
    return torch.randn(1, 3, size, size, generator=generator)
