"""Seeded training with progress, and cached reference models: ``get_trained(name)``."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from benchmarks.cache import cache_dir
from benchmarks.data.tabular import SYNXAI_POSITIVE_RATE
from benchmarks.models.architectures import DNACNN, MNISTMLP, NRMTable2MLP, SynergyMLP, VGGSmall
from benchmarks.models.vit import parts_vit

__all__ = ["fit", "evaluate", "get_trained", "trained_info", "training_setup", "MODEL_NAMES"]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict:
    """Accuracy (and ROC-AUC for one-logit binary models) of ``model`` on (x, y), eval mode.

    Returns
    -------
    dict
        ``accuracy`` and, for binary tasks, ``roc_auc``; ``loss`` (cross-entropy or BCE).
    """
    from sklearn.metrics import roc_auc_score

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    if out.shape[1] == 1:
        score = out[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(score, y.float()).item()
        return {
            "accuracy": ((score > 0).float() == y).float().mean().item(),
            "roc_auc": float(roc_auc_score(y.numpy(), score.numpy())),
            "loss": loss,
        }
    result = {
        "accuracy": (out.argmax(1) == y).float().mean().item(),
        "loss": nn.functional.cross_entropy(out, y.long()).item(),
    }
    if out.shape[1] == 2:
        result["roc_auc"] = float(roc_auc_score(y.numpy(), out.softmax(1)[:, 1].numpy()))
    return result


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    patience: int | None = None,
    seed: int = 0,
    progress: bool = True,
    regularizer: Callable[[], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train with Adam on (x, y) — BCE for one logit, cross-entropy otherwise — seeded.

    Parameters
    ----------
    model : nn.Module
        Trained in place; left in eval mode, with the best validation weights when
        ``patience`` is given.
    train, val : tuple of tensors
        (x (N, ...), y (N,)).
    epochs, lr, batch_size : int, float, int
        Adam settings.
    patience : int, optional
        Early stopping on validation loss (needs ``val``).
    seed : int
        Seeds the shuffling (and nothing else: initialise the model under your own seed).
    progress : bool
        tqdm bar over epochs (shown only on a terminal).
    regularizer : callable, optional
        Called with no arguments after each training forward pass; returns a 0-d tensor added
        to that step's loss (e.g. ``lambda: 0.2 * loss_fn(maps.value)`` with the maps captured
        by a forward hook). Not applied to validation losses.

    Returns
    -------
    dict
        ``epochs`` run, ``train_time_s``, ``history`` of validation losses,
        ``val_accuracy_history``, ``train_history`` (mean training loss of each epoch's steps,
        regularizer included); with a ``regularizer``, ``regularizer_history``: its mean value
        over each epoch's steps.
    """
    if patience is not None and val is None:
        raise ValueError("patience needs val data")
    if regularizer is not None and not callable(regularizer):
        raise TypeError(f"regularizer must be a callable or None, got {type(regularizer)}")
    x, y = train
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, waited, history, penalties = float("inf"), None, 0, [], []
    train_history, val_accuracy = [], []
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=type(model).__name__, disable=None if progress else True)
    for _epoch in bar:
        model.train()
        penalty_sum, steps, loss_sum, batches = 0.0, 0, 0.0, 0
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            out = model(x[index])
            if out.shape[1] == 1:
                loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], y[index].float())
            else:
                loss = nn.functional.cross_entropy(out, y[index].long())
            if regularizer is not None:
                penalty = regularizer()
                if not isinstance(penalty, torch.Tensor) or penalty.ndim != 0:
                    raise ValueError(f"regularizer must return a 0-d tensor, got {penalty!r}")
                loss = loss + penalty
                penalty_sum, steps = penalty_sum + float(penalty.detach()), steps + 1
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum, batches = loss_sum + float(loss.detach()), batches + 1
        train_history.append(loss_sum / max(batches, 1))
        if regularizer is not None:
            penalties.append(penalty_sum / steps)
        if val is not None:
            scores = evaluate(model, *val)
            val_loss = scores["loss"]
            history.append(val_loss)
            val_accuracy.append(scores["accuracy"])
            bar.set_postfix(val_loss=f"{val_loss:.4f}")
            if val_loss < best - 1e-6:
                best, waited = val_loss, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            elif patience is not None:
                waited += 1
                if waited >= patience:
                    break
    if patience is not None and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    log = {
        "epochs": len(history) or epochs,
        "train_time_s": time.perf_counter() - start,
        "history": history,
        "val_accuracy_history": val_accuracy,
        "train_history": train_history,
    }
    return log | ({"regularizer_history": penalties} if regularizer is not None else {})


@dataclass(frozen=True)
class _Recipe:
    build: Callable[[], nn.Module]
    data: Callable[[bool], tuple]  # quick -> (train, val, test) tuples of (x, y)
    quick: dict
    full: dict


def _images(loader: Callable, n_quick: int, n_full: int, **kwargs) -> Callable[[bool], tuple]:
    def data(quick: bool) -> tuple:
        n = n_quick if quick else n_full
        train = loader(n=n, seed=0, **kwargs)
        test = loader(n=max(n // 4, 200), seed=1, **kwargs)
        half = len(test) // 2
        return (train.x, train.y), (test.x[:half], test.y[:half]), (test.x[half:], test.y[half:])

    return data


def _cluttered(n: int, seed: int) -> Any:
    from benchmarks.data import load_cluttered

    return load_cluttered(n=n, seed=seed, split="train" if seed == 0 else "test")


def _shapes(n: int, seed: int) -> Any:
    from benchmarks.data import load_shapes

    return load_shapes(n=n, seed=seed)


def _parts(n: int, seed: int) -> Any:
    from benchmarks.data import load_parts

    return load_parts(n=n, seed=seed)


def _parts32(n: int, seed: int) -> Any:
    from benchmarks.data import load_parts

    return load_parts(n=n, seed=seed, size=32)


def _dna(n: int, seed: int) -> Any:
    from benchmarks.data import load_dna

    return load_dna(n=n, seed=seed)


def _mnist(quick: bool) -> tuple:
    from benchmarks.data import load_mnist

    train, test = load_mnist("train"), load_mnist("test")
    if quick:
        train = train.subset(slice(0, 10000))
    return (train.x[:-5000], train.y[:-5000]), (train.x[-5000:], train.y[-5000:]), (test.x, test.y)


def _table(loader_name: str, **kwargs: Any) -> Callable[[bool], tuple]:
    def data(quick: bool) -> tuple:
        from benchmarks import data as datasets

        splits = getattr(datasets, loader_name)(**kwargs)
        train = splits.train
        if quick:  # every k-th row: about _TABLE_QUICK_ROWS rows spanning the whole period
            train = train.subset(slice(None, None, max(len(train) // _TABLE_QUICK_ROWS, 1)))
        return tuple((s.x, s.y) for s in (train, splits.val, splits.test))

    return data


_SYNXAI = {"epochs": 50, "lr": 5e-4, "batch_size": 256, "patience": 5}
_SYNXAI_QUICK = {**_SYNXAI, "epochs": 10}
_TABLE_QUICK_ROWS = 4000
_DNA_QUICK = {"epochs": 20, "lr": 3e-3, "batch_size": 64, "patience": 3}
_DNA_FULL = {"epochs": 40, "lr": 3e-3, "batch_size": 64, "patience": 5}
_RECIPES = {
    "shapes_cnn": _Recipe(
        lambda: VGGSmall(num_classes=4, batch_norm=True),
        _images(_shapes, 2048, 8192),
        {"epochs": 6, "lr": 2e-3, "batch_size": 64, "patience": 6},
        {"epochs": 12, "lr": 2e-3, "batch_size": 64, "patience": 4},
    ),
    "cluttered_cnn": _Recipe(
        lambda: VGGSmall(num_classes=10),
        _images(_cluttered, 3000, 20000),
        {"epochs": 6},
        {"epochs": 15},
    ),
    "parts_cnn": _Recipe(
        lambda: VGGSmall(num_classes=3),
        _images(_parts, 512, 3000),
        {"epochs": 2, "batch_size": 64},
        {"epochs": 8, "batch_size": 64},
    ),
    # the transformers suite's ViT (64², 8×8 patches) and its quick 32² twin
    "parts_vit": _Recipe(
        parts_vit,
        _images(_parts, 4000, 4000),
        {"epochs": 20, "lr": 1e-3, "batch_size": 64, "patience": 4},
        {"epochs": 20, "lr": 1e-3, "batch_size": 64, "patience": 4},
    ),
    "parts_vit_small": _Recipe(
        lambda: parts_vit(image_size=32),
        _images(_parts32, 768, 768),
        {"epochs": 4, "lr": 2e-3, "batch_size": 32},
        {"epochs": 4, "lr": 2e-3, "batch_size": 32},
    ),
    "dna_cnn4": _Recipe(lambda: DNACNN(4), _images(_dna, 4000, 10000), _DNA_QUICK, _DNA_FULL),
    "dna_cnn32": _Recipe(lambda: DNACNN(32), _images(_dna, 4000, 10000), _DNA_QUICK, _DNA_FULL),
    "dna_cnn32_local": _Recipe(
        lambda: DNACNN(32, pool=29), _images(_dna, 4000, 10000), _DNA_QUICK, _DNA_FULL
    ),
    "mnist_mlp": _Recipe(MNISTMLP, _mnist, {"epochs": 3}, {"epochs": 12}),
    "mnist_mlp_nobias": _Recipe(
        lambda: MNISTMLP(bias=False), _mnist, {"epochs": 3}, {"epochs": 12}
    ),
    "mnist_mlp2_nobias": _Recipe(NRMTable2MLP, _mnist, {"epochs": 3}, {"epochs": 12}),
    "fish_mlp": _Recipe(SynergyMLP, _table("load_fish"), _SYNXAI_QUICK, _SYNXAI),
    # the fish table at SynXAI's share of positives (21.6 %) instead of about half
    "fish_mlp_rare": _Recipe(
        SynergyMLP,
        _table("load_fish", positive_rate=SYNXAI_POSITIVE_RATE),
        _SYNXAI_QUICK,
        _SYNXAI,
    ),
    "storms_mlp": _Recipe(
        lambda: SynergyMLP(in_features=8), _table("load_storms"), _SYNXAI_QUICK, _SYNXAI
    ),
}
MODEL_NAMES = tuple(_RECIPES)


def get_trained(
    name: str, quick: bool = False, progress: bool = True, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """A reference model trained on its offline data set, cached after the first call.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`: 'shapes_cnn', 'cluttered_cnn', 'parts_cnn', 'dna_cnn4',
        'dna_cnn32', 'dna_cnn32_local' (local max-pooling, 8 windows of 29), 'mnist_mlp',
        'mnist_mlp_nobias', 'mnist_mlp2_nobias' (two hidden layers, NRM's Table 2), 'fish_mlp',
        'fish_mlp_rare' (21.6 % positives), 'storms_mlp', 'parts_vit' (a 4-block ViT on the
        64² parts images), 'parts_vit_small' (the same at 32², a quick stand-in).
    quick : bool
        Small data and few epochs (seconds to a minute on 2 cores) instead of full training.
    progress : bool
        Progress bar while training.
    seed : int
        Initialisation and shuffling seed.

    Returns
    -------
    model : nn.Module
        In eval mode.
    info : dict
        Test ``accuracy`` (and ``roc_auc`` for binary tasks), ``epochs``, ``train_time_s``,
        sizes, ``seed``, ``quick``; ``cached`` says whether it was loaded from disk.
    """
    recipe = _RECIPES[_check_name(name)]
    stem = _stem(name, quick, seed)
    torch.manual_seed(seed)
    model = recipe.build()
    if stem.with_suffix(".pt").exists() and stem.with_suffix(".json").exists():
        model.load_state_dict(torch.load(stem.with_suffix(".pt"), weights_only=True))
        info = json.loads(stem.with_suffix(".json").read_text())
        return model.eval(), {**info, "cached": True}
    train, val, test = recipe.data(quick)
    settings = recipe.quick if quick else recipe.full
    log = fit(model, train, val, seed=seed, progress=progress, **settings)
    info = {
        **evaluate(model, *test),
        **{k: log[k] for k in ("epochs", "train_time_s")},
        **{"n_train": len(train[0]), "n_test": len(test[0]), "seed": seed, "quick": quick},
    }
    _atomic(lambda path: torch.save(model.state_dict(), path), stem.with_suffix(".pt"))
    _atomic(lambda path: Path(path).write_text(json.dumps(info)), stem.with_suffix(".json"))
    return model, {**info, "cached": False}


def training_setup(name: str, quick: bool = False) -> tuple[tuple, dict[str, Any]]:
    """The data and :func:`fit` settings :func:`get_trained` uses for ``name`` (nothing cached).

    Returns
    -------
    data : tuple
        ``(train, val, test)``, each ``(x, y)``.
    settings : dict
        Keyword arguments of :func:`fit` (epochs, lr, batch_size, patience).
    """
    recipe = _RECIPES[_check_name(name)]
    return recipe.data(quick), dict(recipe.quick if quick else recipe.full)


def trained_info(name: str, quick: bool = False, seed: int = 0) -> dict[str, Any] | None:
    """The ``info`` of :func:`get_trained` if that model is in the cache, else ``None``.

    Reads only the small JSON beside the checkpoint: nothing is trained or loaded.
    """
    path = _stem(_check_name(name), quick, seed).with_suffix(".json")
    if not (path.exists() and path.with_suffix(".pt").exists()):
        return None
    return {**json.loads(path.read_text()), "cached": True}


def _check_name(name: str) -> str:
    if name not in _RECIPES:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    return name


def _stem(name: str, quick: bool, seed: int) -> Path:
    """Cache path of a trained model: its name, mode, seed and a digest of its recipe's
    settings, so that a model trained under other settings is never loaded."""
    digest = _recipe_digest(_RECIPES[name], quick)
    return cache_dir("models") / f"{name}-{'quick' if quick else 'full'}-s{seed}-{digest}"


def _recipe_digest(recipe: _Recipe, quick: bool) -> str:
    """8 hex digits of the training settings and the data loader's plain parameters (its
    sizes and options, read from the closure of :func:`_images`-style loaders)."""
    cells = [cell.cell_contents for cell in recipe.data.__closure__ or ()]
    plain = [c for c in cells if isinstance(c, int | float | str | bool | dict | tuple)]
    settings = recipe.quick if quick else recipe.full
    text = json.dumps({"settings": settings, "data": plain}, sort_keys=True, default=repr)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _atomic(write: Callable[[str], Any], path: os.PathLike) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    write(tmp)
    os.replace(tmp, path)
