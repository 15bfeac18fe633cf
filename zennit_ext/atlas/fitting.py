"""The fit of an atlas: its configuration and fingerprint, resuming from a store, and the one
sharded pass over the data that :meth:`zennit_ext.atlas.ConceptAtlas.fit` runs.

:class:`Fitting` is the engine with explicit state (``config``, ``state``, ``progress``);
``ConceptAtlas`` only validates its arguments, builds one and keeps what it leaves.

Under torch.distributed every rank runs the same steps (one global batch each,
:func:`zennit_ext.atlas.distributed.rank_batches`). After each step the ranks agree on whether
any of them raised (:func:`zennit_ext.atlas.distributed.failed_ranks`, one ``all_reduce`` of a
flag per rank): the rank whose loader or model raised re-raises its error, every other rank
raises :class:`RuntimeError` naming it, at the same step, instead of blocking in the next merge
until the process group times out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from zennit_ext.atlas import distributed, store
from zennit_ext.atlas.collect import AtlasState, batch_statistics, evaluating, probe
from zennit_ext.atlas.data import Source, model_placement
from zennit_ext.nrm.api import NRM

__all__ = ["Fitting", "fingerprint", "check_fingerprint", "fresh_state", "progress_of"]


class Fitting:
    """One fit of ``nrm``'s layers: configuration, resumed state, the pass, the store writes.

    Parameters
    ----------
    nrm : NRM
        Over the atlas's layers (its model is the fitted model).
    top_k : int
        Samples kept per unit and mode.
    rules : str
        Name of the rules, recorded in the configuration (``'nrm_composite'`` or the
        composite's class name).
    store_path : pathlib.Path, optional
        The on-disk atlas to resume from and write to.

    Attributes
    ----------
    config : dict or None
        The configuration (:meth:`configuration`) once :meth:`run` has probed the model.
    state : AtlasState or None
        The merged state after the last merge (a prefix of the global batches).
    progress : dict
        ``batches_done``, ``n_batches``, ``complete`` of the last store write or resume.
    """

    def __init__(self, nrm: NRM, top_k: int, rules: str, store_path: Path | None = None) -> None:
        self.nrm, self.top_k, self.rules, self.store = nrm, top_k, rules, store_path
        self.config: dict[str, Any] | None = None
        self.state: AtlasState | None = None
        self.progress: dict[str, Any] = {}

    def run(self, data: Any, batch_size: int, checkpoint_every: int, show_progress: bool) -> None:
        """The pass over the global batches of ``data`` not yet in the store (arguments and
        errors as :meth:`zennit_ext.atlas.ConceptAtlas.fit`); ``state`` holds the merged result
        on every rank, also the last merged prefix if it raises."""
        if (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        source = Source(data, batch_size)
        model = self.nrm.model
        rank, size = distributed.world()
        with evaluating(model):
            x, _ = source.fetch([0])
            device, dtype = model_placement(model, x)
            units, n_classes = probe(model, self.nrm.modules, x.to(device, dtype))
            self.config = self.configuration(source, units, n_classes, dtype)
            state = self._resume()
            self.state = state
            partial = state if rank == 0 else state.empty_like()
            schedule = distributed.rank_batches(state.batches_done, source.n_batches, rank, size)
            batches = source.batches([number for number in schedule if number is not None])
            bar = tqdm(
                total=source.n_batches,
                initial=state.batches_done,
                desc="ConceptAtlas",
                disable=None if show_progress and rank == 0 else True,
            )
            try:
                done = state.batches_done
                for step, number in enumerate(schedule):
                    error = None
                    if number is not None:
                        try:
                            x, y = next(batches)
                            _check_labels(y, n_classes, number, source)
                            stats = batch_statistics(self.nrm, x.to(device, dtype), y)
                            indices = torch.tensor(list(source.batch(number)), dtype=torch.int64)
                            partial.update(indices, y, stats)
                        except Exception as exc:  # re-raised below, after the ranks agree
                            error = exc
                    _raise_if_any_failed(error, rank, step, number)
                    now = min(state.batches_done + (step + 1) * size, source.n_batches)
                    last = step == len(schedule) - 1
                    if last or (self.store and now // checkpoint_every > done // checkpoint_every):
                        self.state = distributed.merged(partial)
                        self.state.batches_done = now
                        if self.store is not None and rank == 0:
                            self._write(source)
                    bar.update(now - done)
                    done = now
            finally:
                bar.close()

    def configuration(
        self, source: Source, units: dict[str, int], n_classes: int, dtype: torch.dtype
    ) -> dict[str, Any]:
        """What a store must match to be resumed: model (type and fingerprint), layers and
        their units, classes, ``top_k``, dtype, rules, data size and batch size."""
        layers = list(self.nrm.layers)
        return {
            "model": type(self.nrm.model).__name__,
            "fingerprint": fingerprint(self.nrm.model),
            "layers": layers,
            "units": [units[name] for name in layers],
            "n_classes": n_classes,
            "top_k": self.top_k,
            "dtype": str(dtype).removeprefix("torch."),
            "rules": self.rules,
            "dataset_size": source.size,
            "batch_size": source.batch_size,
        }

    def _resume(self) -> AtlasState:
        assert self.config is not None
        state = fresh_state(self.config)
        found = None if self.store is None else store.read(self.store)
        if found is None:
            return state
        index, tensors = found
        assert self.store is not None
        store.check_config(self.store, index["config"], self.config)
        state.load_tensors(tensors)
        state.batches_done = int(index["batches_done"])
        self.progress = progress_of(index)
        return state

    def _write(self, source: Source) -> None:
        assert self.store is not None and self.config is not None and self.state is not None
        done = self.state.batches_done
        self.progress = {
            "batches_done": done,
            "n_batches": source.n_batches,
            "complete": done == source.n_batches,
        }
        store.write(self.store, self.config, self.state.tensors(), **self.progress)


def fresh_state(config: dict[str, Any]) -> AtlasState:
    """An empty state of the configuration ``config``."""
    units = dict(zip(config["layers"], config["units"], strict=True))
    return AtlasState(units, config["n_classes"], config["top_k"])


def progress_of(index: dict[str, Any]) -> dict[str, Any]:
    """``batches_done``, ``n_batches``, ``complete`` of a store index."""
    return {key: index[key] for key in ("batches_done", "n_batches", "complete")}


def fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state (names, dtypes, shapes and bytes of parameters and buffers)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_fingerprint(model: nn.Module, config: dict[str, Any], store_path: str | Path) -> None:
    """Raise ValueError unless ``model`` is the model the store's ``config`` was written for."""
    if fingerprint(model) != config["fingerprint"]:
        raise ValueError(
            f"model is not the model store {str(store_path)!r} was written for "
            "(its parameters or buffers differ)"
        )


def _check_labels(y: torch.Tensor, n_classes: int, number: int, source: Source) -> None:
    bad = (y < 0) | (y >= n_classes)
    if bool(bad.any()):
        index = source.batch(number)[int(bad.nonzero()[0, 0])]
        raise ValueError(
            f"data[{index}]: y = {int(y[bad][0])} is not a class of the model's output "
            f"(expected 0 … {n_classes - 1})"
        )


def _raise_if_any_failed(error: Exception | None, rank: int, step: int, number: int | None) -> None:
    """Re-raise this rank's ``error``, or raise if another rank failed at this ``step``."""
    failed = distributed.failed_ranks(error is not None)
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(
            f"ConceptAtlas.fit: rank(s) {failed} raised at step {step} (this rank {rank} was at "
            f"global batch {number}); every rank stops, see the error of rank {failed[0]}"
        )
