"""The sync suite's protocol: networks, loss variants, settings, cached training, layer maps.

Paper: "Synchronization-inspired Interpretable Neural Networks" (Han et al., arXiv:2310.05419).
Two networks (:data:`ARCHS`): VGGSmall with the losses on ``features.10`` (ReLU of the top
conv) and ResNetSmall with the losses on ``layer3`` (the top residual stage's output, after its
ReLU), both 64 filters at 8×8 on 64-px ``parts`` figures. The paper halves λ1, λ2 for
ResNet-18 (:attr:`Arch.lam_scale`). :data:`VARIANTS` holds the baseline, +L_lac, and +both
with L_sync reduced as we do by default (mean over filters with a neighbour) and as eq. 6
writes it (a sum over filters, with or without eq. 1's self-neighbourhood).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.cache import cache_dir
from benchmarks.data import load_parts
from benchmarks.models.architectures import ResNetSmall, VGGSmall
from benchmarks.models.training import fit

EPSILON = 0.03
N_PARTS = 4
PHI = 0.2
_CACHE_VERSION = 2


@dataclass(frozen=True)
class Arch:
    """One network of the suite: how to build it and where the losses act."""

    build: Callable[[], nn.Module]  # 3 classes, initialised under the caller's seed
    layer: str  # regularized layer (64 filters at 8×8)
    top_conv: str  # the conv whose weights the loss landscape perturbs
    head: Callable[[nn.Module], nn.Module]  # the model after ``layer``: maps → logits
    lam_scale: float  # λ1, λ2 of the variants times this


def _vgg_head(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.features[11:], model.classifier)


def _resnet_head(model: nn.Module) -> nn.Module:
    return model.head


ARCHS = {
    "VGGSmall": Arch(lambda: VGGSmall(num_classes=3), "features.10", "features.9", _vgg_head, 1.0),
    "ResNetSmall": Arch(
        lambda: ResNetSmall(num_classes=3), "layer3", "layer3.0.conv2", _resnet_head, 0.5
    ),
}


@dataclass(frozen=True)
class Variant:
    """Loss weights (VGG's; scaled per :class:`Arch`) and L_sync's reduction."""

    lam1: float
    lam2: float
    reduction: str = "mean"
    include_self: bool = False


VARIANTS = {
    "baseline": Variant(0.0, 0.0),
    "+L_lac": Variant(0.2, 0.0),
    "+both": Variant(0.2, 0.1),
    "+both (eq. 6 sum)": Variant(0.2, 0.1, "sum"),
    "+both (eq. 6 sum, eq. 1 self)": Variant(0.2, 0.1, "sum", True),
}
MAIN_VARIANTS = ("baseline", "+L_lac", "+both")
BOTH_VARIANTS = tuple(v for v in VARIANTS if v.startswith("+both"))
PAPER_COLUMN = {"baseline": 0, "+L_lac": 1, **dict.fromkeys(BOTH_VARIANTS, 2)}
"""Which of the paper's columns (baseline, w/o sync, ours) a variant is compared with."""


@dataclass(frozen=True)
class Settings:
    """One run's protocol (:data:`FULL` by default; :data:`QUICK` for --quick)."""

    n_train: int = 3000
    n_test: int = 600
    epochs: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    data: tuple[str, ...] = ("easy", "hard")
    sweep_epochs: int | None = 4  # Figs. 7/8; None skips the sweeps
    sweep_data: str = "hard"
    sweep_values: tuple[float, ...] = (0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5)
    lr: float = 1e-3
    batch_size: int = 64
    landscape_images: int = 200
    landscape_grid: int = 11
    prune_fractions: tuple[float, ...] = tuple(np.round(np.arange(0.0, 0.951, 0.05), 2))
    extra_seeds: int | None = None  # eq. 6 variants: the first this many seeds; None: all
    resnet_data: tuple[str, ...] = ("easy", "hard")  # () skips the ResNet rows
    resnet_seeds: int | None = None  # ResNet rows: the first this many seeds; None: all
    resnet_variants: tuple[str, ...] = tuple(VARIANTS)
    landmark_thresholds: tuple[float, ...] = (2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32)

    def variants_of(self, arch: str) -> tuple[str, ...]:
        """The variants trained on ``arch``."""
        return self.resnet_variants if arch == "ResNetSmall" else tuple(VARIANTS)

    def seeds_of(self, arch: str, variant: str) -> tuple[int, ...]:
        """Seeds a (network, variant) pair is trained under: a prefix of ``seeds``."""
        counts = [len(self.seeds)]
        if arch == "ResNetSmall" and self.resnet_seeds is not None:
            counts.append(self.resnet_seeds)
        if variant not in MAIN_VARIANTS and self.extra_seeds is not None:
            counts.append(self.extra_seeds)
        return self.seeds[: max(1, min(counts))]


@dataclass(frozen=True)
class Config:
    """One trained model: data, loss weights and reduction, radius, seed, schedule, network."""

    data: str
    lam1: float
    lam2: float
    epsilon: float
    seed: int
    epochs: int
    n_train: int
    lr: float
    batch_size: int
    reduction: str = "mean"
    include_self: bool = False
    arch: str = "VGGSmall"

    @classmethod
    def of(cls, arch: str, variant: str, data: str, seed: int, settings: Settings, **changes):
        """The config of ``variant`` on ``arch`` (λ scaled) under ``settings``."""
        v = VARIANTS[variant]
        scale = ARCHS[arch].lam_scale
        fields = {
            "epochs": settings.epochs,
            "n_train": settings.n_train,
            "lr": settings.lr,
            "batch_size": settings.batch_size,
            "epsilon": EPSILON,
            "lam1": v.lam1 * scale,
            "lam2": v.lam2 * scale,
            **changes,
        }
        return cls(data=data, seed=seed, reduction=v.reduction, include_self=v.include_self,
                   arch=arch, **fields)  # fmt: skip


def parts(name: str, n: int, seed: int):
    """``n`` easy or hard ``parts`` figures of 64 px."""
    return load_parts(n=n, size=64, seed=seed, hard=name == "hard")


def regularizer(maps: Any, config: Config) -> Callable[[], Tensor] | None:
    """λ1 L_lac + λ2 L_sync on the captured maps, or None for the baseline."""
    from captum_ext.module.sync import LocalActivationConsistencyLoss, SynchronizationLoss

    terms: list[tuple[float, nn.Module]] = []
    if config.lam1:
        terms.append((config.lam1, LocalActivationConsistencyLoss()))
    if config.lam2:
        sync = SynchronizationLoss(
            epsilon=config.epsilon, reduction=config.reduction, include_self=config.include_self
        )
        terms.append((config.lam2, sync))
    if not terms:
        return None
    return lambda: sum(weight * loss(maps.value) for weight, loss in terms)


def cache_path(key: dict[str, Any], suffix: str) -> Path:
    """Where a result keyed by ``key`` (every setting it depends on) is cached."""
    text = json.dumps({**key, "v": _CACHE_VERSION}, sort_keys=True)
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    return cache_dir("models", "sync") / f"{digest}{suffix}.pt"


def save(value: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(value, tmp)
    os.replace(tmp, path)


def train(config: Config, train_set: tuple, progress: bool) -> tuple[nn.Module, dict]:
    """The config's network initialised under ``config.seed``, trained with its losses (cached).

    Parameters
    ----------
    config : Config
        Every setting that determines the weights (the cache key).
    train_set : tuple of tensors
        (x (N, 3, 64, 64), y (N,)), the ``parts`` training images of ``config``.
    progress : bool
        Progress bar over epochs.

    Returns
    -------
    model : nn.Module
        In eval mode.
    log : dict
        :func:`benchmarks.models.training.fit`'s log and ``cached``.
    """
    from captum_ext.module.sync import capture_output

    arch = ARCHS[config.arch]
    path = cache_path(asdict(config), "")
    torch.manual_seed(config.seed)
    model = arch.build()
    if path.exists():
        saved = torch.load(path, weights_only=False)
        model.load_state_dict(saved["state"])
        return model.eval(), {**saved["log"], "cached": True}
    with capture_output(model.get_submodule(arch.layer)) as maps:
        log = fit(
            model,
            train_set,
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
            regularizer=regularizer(maps, config),
        )
    save({"state": model.state_dict(), "log": log, "config": asdict(config)}, path)
    return model, {**log, "cached": False}


@torch.no_grad()
def layer_maps(model: nn.Module, layer: str, x: Tensor, batch_size: int = 200) -> Tensor:
    """(N, 64, 8, 8) outputs of the regularized ``layer`` on ``x``, eval mode."""
    from captum_ext.module.sync import capture_output

    model.eval()
    chunks = []
    with capture_output(model.get_submodule(layer)) as maps:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
            chunks.append(maps.value)
    return torch.cat(chunks)


def scores(sim: Tensor, threshold: float) -> dict[str, float]:
    """Filter-set means of Interp, Stability, Purity (over filters) and Diversity (images).

    ``sim`` (N, C, K): IoUs with ``threshold`` φ, or −distances with ``threshold`` −t.
    """
    from captum_ext.metrics.filters import diversity, interp, purity, stability

    metrics = {"interp": interp, "stability": stability, "purity": purity, "diversity": diversity}
    return {name: float(metric(sim, threshold).mean()) for name, metric in metrics.items()}
