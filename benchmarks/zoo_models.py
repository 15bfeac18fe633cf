"""The model zoo of ``benchmarks zoo``: torchvision's classification models with random weights.

Every model is built with ``weights=None`` and a fixed seed; BatchNorm statistics are
re-estimated on random inputs (so activations have realistic scales), ViT's zero-initialized
head is re-drawn, and :func:`bias_free` gives the copy on which LRP must conserve relevance.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

__all__ = [
    "ZooEntry",
    "zoo_entries",
    "build",
    "example_input",
    "parameter_count",
    "bias_free",
    "unit_layers",
]

# the quick suite: small models of the families that needed new canonizers or rules
QUICK_MODELS = ("resnet18", "densenet121", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16")
# one representative per family, the smallest variant (the full suite)
FAMILY_MODELS = (
    "alexnet",
    "vgg11_bn",
    "resnet18",
    "squeezenet1_1",
    "densenet121",
    "googlenet",
    "inception_v3",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
    "swin_v2_t",
    "maxvit_t",
)
# larger than this many parameters: skipped in the full run (memory and time on 2 cores)
MAX_PARAMETERS = 150_000_000
# the smallest input each model accepts (MaxViT partitions 7×7 windows of 32× downsampling)
MIN_SIZE = {"inception_v3": 75, "maxvit_t": 224}


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its torchvision builder name and the input size of this run."""

    name: str
    size: int


def zoo_entries(quick: bool, names: tuple[str, ...] | None = None) -> list[ZooEntry]:
    """The models of the run: five at 64² (quick) or one per family at 224² (full); ``names``
    picks others (e.g. ``torchvision.models.list_models(module=torchvision.models)``)."""
    from benchmarks.zoo_hf import HF_MODELS, hf_entries

    if names is None:
        names = QUICK_MODELS if quick else FAMILY_MODELS
        hf = hf_entries(quick)  # Hugging Face BERT/ViT from configs, when transformers is there
    else:
        hf = [e for e in hf_entries(quick) if e.name in names]
        names = tuple(n for n in names if n not in HF_MODELS)
    size = 64 if quick else 224
    sizes = {name: max(size, MIN_SIZE.get(name, size)) for name in names}
    if quick and "vit_b_16" in sizes:
        sizes["vit_b_16"] = 32  # 4 patches: the quick suite's budget (2 min on 2 cores)
    return [ZooEntry(name, sizes[name]) for name in names] + hf


def build(entry: ZooEntry, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """The model with random weights in eval mode, BatchNorm statistics re-estimated.

    Parameters
    ----------
    entry : ZooEntry
        Builder name and input size.
    dtype : torch.dtype
        Parameter dtype.
    seed : int
        Seed of the weights and of the inputs used for the statistics.
    """
    from benchmarks.zoo_hf import HF_MODELS, build_hf

    if entry.name in HF_MODELS:
        return build_hf(entry.name, entry.size, dtype, seed)
    torch.manual_seed(seed)
    model = torchvision.models.get_model(entry.name, **_kwargs(entry)).to(dtype)
    for module in model.modules():  # ViT zero-initializes its head: every logit would be 0
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the batches below
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, 3, entry.size, entry.size, dtype=dtype))
    return model.eval()


def parameter_count(entry: ZooEntry) -> int:
    """Number of parameters, from torchvision's weight metadata (nothing is built; the
    Hugging Face models are built once and counted)."""
    from benchmarks.zoo_hf import HF_MODELS

    if entry.name in HF_MODELS:
        return sum(p.numel() for p in build(entry).parameters())
    weights = torchvision.models.get_model_weights(entry.name)
    return int(next(iter(weights)).meta["num_params"])


def _kwargs(entry: ZooEntry) -> dict:
    kwargs: dict = {"weights": None}
    if entry.name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    if entry.name.startswith("vit_"):
        kwargs["image_size"] = entry.size
    return kwargs


_ZEROED_PARAMETERS = ("class_token", "pos_embedding", "relative_position_bias_table", "cls_token")
# Hugging Face's additive embeddings, matched on the end of the parameter name
_ZEROED_SUFFIXES = (
    "position_embeddings",
    "position_embeddings.weight",
    "token_type_embeddings.weight",
)


def bias_free(model: nn.Module) -> nn.Module:
    """A copy with every additive term set to 0: biases, BatchNorm means and shifts, LayerNorm
    shifts, ViT's class token and position embedding, Swin's relative position bias, BERT's
    position and token-type embeddings.

    On such a copy every linear layer maps 0 to 0, so LRP's ε/z⁺ rules must conserve relevance.
    """
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in copied.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or leaf in _ZEROED_PARAMETERS or name.endswith(_ZEROED_SUFFIXES):
                parameter.zero_()
        for module in copied.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
    return copied


def unit_layers(model: nn.Module, count: int = 2) -> list[str]:
    """The last ``count`` convolutions (CNNs), Inception blocks (GoogLeNet, Inception v3) or
    MLP input projections (transformers): the layers whose units NRM, paths and synergy
    explain in the zoo run."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    mlps = [
        n
        for n, m in model.named_modules()
        # ".mlp.0", not Swin V2's "cpb_mlp.0" (the position-bias MLP, off the input's path)
        if isinstance(m, nn.Linear) and n.endswith((".mlp.0", ".mlp.fc1", "intermediate.dense"))
    ]
    # GoogLeNet / Inception: the last convolutions lie in parallel branches of one block,
    # not on one path (NeuronPaths needs that); their blocks' outputs do
    blocks = [n for n, m in model.named_children() if type(m).__name__.startswith("Inception")]
    names = mlps if mlps else blocks if convs and ".branch" in convs[-1] else convs
    return names[-count:]


def example_input(entry: ZooEntry, model: nn.Module, seed: int = 1) -> torch.Tensor:
    """The zoo's one input for ``model``: (1, 3, size, size) N(0, 1) pixels, or for BERT the
    embeddings of ``size`` random token ids (1, size, hidden); float32."""
    from benchmarks.zoo_hf import HF_MODELS, hf_input

    if entry.name in HF_MODELS:
        return hf_input(entry.name, entry.size, model, seed)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, entry.size, entry.size, generator=generator)
