"""ConceptAtlas: which samples of a data set make each unit fire, and which it serves.

Dataset-wide reference samples per unit (channel or neuron), after "From attribution maps to
human-understandable explanations through Concept Relevance Propagation" (Achtibat et al.,
Nature Machine Intelligence 2023, arXiv:2206.03208): ActMax ranks samples by the unit's
activation, RelMax by its relevance for the sample's class. Relevance is NRM's normalized
measure ("Normalized Relevance Measure as a Unifying Framework to Explain Neural Network Latent
Structures", arXiv:2606.00557), so a unit's RelMax value is its share of the explained output,
comparable across samples and layers; reference heatmaps are conditional heatmaps computed by
the full backward pass from the output (:mod:`zennit_ext.atlas.references`).

One pass over the data (:meth:`ConceptAtlas.fit`) keeps O(units × k) state
(:mod:`zennit_ext.atlas.collect`), merges exactly across batches, processes and resumed runs
(:mod:`zennit_ext.atlas.merge`, :mod:`zennit_ext.atlas.distributed`) and can persist to a store
(:mod:`zennit_ext.atlas.store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from zennit.core import Composite

from zennit_ext.atlas import distributed, store
from zennit_ext.atlas.collect import MODES, AtlasState
from zennit_ext.atlas.data import Source, model_placement
from zennit_ext.atlas.fitting import Fitting, check_fingerprint, fresh_state, progress_of
from zennit_ext.atlas.merge import EMPTY_INDEX
from zennit_ext.atlas.references import References, localized
from zennit_ext.nrm.api import NRM

__all__ = ["ConceptAtlas"]


class ConceptAtlas:
    """Top-k reference samples (ActMax, RelMax) and class statistics of every unit of some layers.

    Parameters
    ----------
    model : torch.nn.Module
        A network NRM can explain (see :class:`~zennit_ext.NRM`), output (batch, n_classes).
        Its modes, parameters and buffers are unchanged (fits run in eval mode and restore it).
    layers : sequence of str
        Names from ``model.named_modules()``; units are channels of (batch, C, ...) outputs and
        neurons of (batch, n) outputs.
    composite : zennit.core.Composite, optional
        Rules of the unnormalized propagation (default :func:`zennit_ext.nrm.rules.nrm_composite`).
    canonizers : list, optional
        Canonizers of the default composite.
    top_k : int
        Reference samples kept per unit and mode.
    store : str or pathlib.Path, optional
        Directory of the on-disk atlas: written during :meth:`fit`, resumed from if it holds a
        partial fit of the same configuration, refused if it holds another configuration.
    on_violation, messages_per_pass, fast
        Options of :class:`~zennit_ext.NRM`, passed on.

    Examples
    --------
    >>> atlas = ConceptAtlas(model, ["layer4"], top_k=8).fit(dataset)      # doctest: +SKIP
    >>> indices, values = atlas.top("layer4", mode="relmax")              # (512, 8) each
    >>> refs = atlas.references("layer4", 42, dataset, mode="relmax")     # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str] | tuple[str, ...],
        composite: Composite | None = None,
        canonizers: list | None = None,
        top_k: int = 8,
        store: str | Path | None = None,
        *,
        on_violation: str = "raise",
        messages_per_pass: int = 64,
        fast: bool = True,
    ) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if store is not None and not isinstance(store, str | Path):
            raise TypeError(f"store must be a directory path or None, got {type(store).__name__}")
        self.nrm = NRM(
            model,
            layers,
            composite=composite,
            canonizers=canonizers,
            on_violation=on_violation,
            messages_per_pass=messages_per_pass,
            fast=fast,
        )
        if len(self.nrm.layers) != len(layers):
            raise ValueError(f"layers must be distinct, got {list(layers)!r}")
        self.model: nn.Module | None = model
        self.layers = tuple(self.nrm.layers)
        self.top_k = top_k
        self.store = None if store is None else Path(store)
        self.options: dict[str, Any] = {
            "composite": composite,
            "canonizers": canonizers,
            "on_violation": on_violation,
            "messages_per_pass": messages_per_pass,
            "fast": fast,
        }
        self.config: dict[str, Any] | None = None
        self.state: AtlasState | None = None
        self.progress: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ fitting

    def fit(
        self,
        data: Any,
        batch_size: int = 32,
        show_progress: bool = False,
        *,
        checkpoint_every: int = 16,
    ) -> ConceptAtlas:
        """One pass over ``data``: top-k samples per unit and mode, per-class sums.

        Parameters
        ----------
        data : torch.utils.data.Dataset or torch.utils.data.DataLoader
            ``(x, y)`` items, ``y`` the class each sample is explained for; a DataLoader must
            not shuffle (sample indices are positions in its data set) and its own batch size
            is used (:class:`~zennit_ext.atlas.data.Source`).
        batch_size : int
            Samples per pass (for a data set). The numbers of a sample are computed inside its
            global batch, so a fixed ``batch_size`` gives identical results with any number of
            processes and across resumed runs.
        show_progress : bool
            Progress bar over the batches (tqdm, silent off a terminal; rank 0 only).
        checkpoint_every : int
            With a store: global batches between writes (at whole steps of ``world_size``
            batches); the last write marks the store complete.

        Returns
        -------
        ConceptAtlas
            ``self``, fitted (on every rank: the merged result).

        Raises
        ------
        TypeError, ValueError
            Before any work, naming the argument: a bad ``data`` (empty, not ``(x, y)`` items,
            a shuffling loader), ``batch_size``, ``checkpoint_every``, a model output that is
            not (batch, n_classes), a label out of range, or a store of another configuration.
        RuntimeError
            Under torch.distributed, on every rank but the failing one, when another rank's
            loader or model raised: after each step the ranks agree on an error flag (one
            ``all_reduce``), so all of them stop at that step (the failing rank re-raises its
            own error) instead of blocking in the next merge until the process group's
            timeout. The store keeps the last write before the step; a new fit resumes there.
        """
        self._need_model("fit")
        composite = self.options["composite"]
        rules = "nrm_composite" if composite is None else type(composite).__name__
        run = Fitting(self.nrm, self.top_k, rules, self.store)
        try:
            run.run(data, batch_size, checkpoint_every, show_progress)
        finally:
            self.config, self.state = run.config, run.state
            self.progress = run.progress or self.progress
        if show_progress and distributed.world()[0] == 0:
            tqdm.write(str(self))
        return self

    # ------------------------------------------------------------------------------ reading

    @classmethod
    def load(
        cls,
        store_path: str | Path,
        model: nn.Module | None = None,
        composite: Composite | None = None,
        canonizers: list | None = None,
        **options: Any,
    ) -> ConceptAtlas:
        """An atlas from a store: :meth:`top`, :meth:`statistics`, :meth:`summary` without data.

        Parameters
        ----------
        store_path : str or pathlib.Path
            A store written by :meth:`fit` (possibly still being written: its last complete
            generation is read).
        model : torch.nn.Module, optional
            The fitted model, for :meth:`references` and :meth:`class_graph`; refused unless
            its parameters are those the store was written for.
        composite, canonizers, **options
            As for :class:`ConceptAtlas`.

        Raises
        ------
        FileNotFoundError
            If ``store_path`` holds no atlas index.
        ValueError
            If ``model`` is not the model of the store.
        """
        found = store.read(store_path)
        if found is None:
            raise FileNotFoundError(f"store {str(store_path)!r} holds no atlas ({store.INDEX})")
        index, tensors = found
        config = index["config"]
        if model is not None:
            atlas = cls(model, config["layers"], composite, canonizers, config["top_k"], **options)
            check_fingerprint(model, config, store_path)
        else:
            atlas = cls.__new__(cls)
            atlas.model, atlas.layers, atlas.top_k = None, tuple(config["layers"]), config["top_k"]
            atlas.options = {}
        atlas.store, atlas.config = Path(store_path), config
        atlas.state = fresh_state(config)
        atlas.state.load_tensors(tensors)
        atlas.state.batches_done = int(index["batches_done"])
        atlas.progress = progress_of(index)
        return atlas

    def top(self, layer: str, mode: str = "actmax") -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k samples of every unit of ``layer``.

        Parameters
        ----------
        layer : str
            One of ``layers``.
        mode : {'actmax', 'actmean', 'relmax'}
            Maximum of the activation over space, its spatial mean, or the unit's NRM relevance
            for the sample's class.

        Returns
        -------
        indices : torch.Tensor
            (n_units, top_k) int64 sample indices, best first, ties to the lower index; −1 in
            slots beyond the number of samples seen.
        values : torch.Tensor
            (n_units, top_k) in the model's dtype (−inf in empty slots).
        """
        state = self._fitted(layer)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        values, indices = state.layers[layer].top[mode]
        indices = torch.where(indices == EMPTY_INDEX, -1, indices)
        return indices.clone(), values.to(self._dtype())

    def statistics(self, layer: str) -> dict[str, torch.Tensor]:
        """Per-class means over the samples seen.

        Returns
        -------
        dict
            ``'relevance'`` (n_classes, n_units): mean NRM relevance of each unit for the
            samples of each class (explained for their class); ``'activation'`` (n_classes,
            n_units): mean spatial-mean activation; ``'count'`` (n_classes,) int64. A class
            without samples has means 0.
        """
        state = self._fitted(layer)
        counts = state.counts.to(torch.float64).clamp(min=1)[:, None]
        sums = state.layers[layer]
        return {
            "relevance": (sums.relevance.value() / counts).to(self._dtype()),
            "activation": (sums.activation.value() / counts).to(self._dtype()),
            "count": state.counts.clone(),
        }

    def summary(self) -> dict[str, Any]:
        """What the atlas holds: sizes, progress, samples per class, the store."""
        if self.state is None or self.config is None:
            return {"fitted": False, "layers": list(self.layers), "top_k": self.top_k}
        return {
            "fitted": True,
            "store": None if self.store is None else str(self.store),
            "model": self.config["model"],
            "layers": dict(zip(self.config["layers"], self.config["units"], strict=True)),
            "top_k": self.config["top_k"],
            "dataset_size": self.config["dataset_size"],
            "batch_size": self.config["batch_size"],
            "batches_done": self.state.batches_done,
            "complete": self.state.batches_done * self.config["batch_size"]
            >= self.config["dataset_size"],
            "samples": int(self.state.counts.sum()),
            "samples_per_class": self.state.counts.tolist(),
        }

    def __str__(self) -> str:
        info = self.summary()
        if not info["fitted"]:
            return f"ConceptAtlas(layers={info['layers']}, top_k={info['top_k']}, not fitted)"
        layers = ", ".join(f"{name} ({n} units)" for name, n in info["layers"].items())
        return (
            f"ConceptAtlas of {info['model']}: {info['samples']} of {info['dataset_size']} "
            f"samples ({'complete' if info['complete'] else 'partial'}), top-{info['top_k']} "
            f"per unit of {layers}; store {info['store']}"
        )

    def _fitted(self, layer: str) -> AtlasState:
        if self.state is None:
            raise RuntimeError("the atlas is not fitted; call fit(data) or ConceptAtlas.load")
        if layer not in self.layers:
            raise ValueError(f"layer must be one of {list(self.layers)}, got {layer!r}")
        return self.state

    def _dtype(self) -> torch.dtype:
        assert self.config is not None
        return getattr(torch, self.config["dtype"])

    def _need_model(self, what: str) -> nn.Module:
        if self.model is None:
            raise RuntimeError(
                f"{what} needs the model: ConceptAtlas.load(store, model=model) or "
                "ConceptAtlas(model, layers, store=store)"
            )
        return self.model

    # --------------------------------------------------------------------------- references

    def references(
        self,
        layer: str,
        unit: int,
        data: Any,
        k: int | None = None,
        mode: str = "relmax",
        localize: bool = True,
        *,
        support: float = 0.1,
    ) -> References:
        """The ``k`` reference samples of one unit, with conditional heatmaps.

        Parameters
        ----------
        layer : str
            One of ``layers``.
        unit : int
            Channel (or neuron) index in ``layer``.
        data : torch.utils.data.Dataset or torch.utils.data.DataLoader
            The fitted data (its size is checked); the references are read from it by index.
        k : int, optional
            Number of references, in [1, top_k]; default ``top_k``.
        mode : {'relmax', 'actmax', 'actmean'}
            Which top-k list the references come from.
        localize : bool
            Compute the conditional heatmaps (one NRM pass over the ``k`` samples, from the
            output with each sample's class through the unit) and their support boxes.
        support : float
            Box threshold in [0, 1]: pixels whose channel-summed ``|heatmap|`` is at least this
            fraction of the maximum (:func:`~zennit_ext.atlas.references.support_boxes`).

        Returns
        -------
        References
        """
        model = self._need_model("references")
        indices, values = self.top(layer, mode)
        assert self.config is not None
        if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < len(indices):
            raise ValueError(f"unit must be an int in [0, {len(indices)}), got {unit!r}")
        k = self.top_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.top_k:
            raise ValueError(f"k must be an int in [1, {self.top_k}], got {k!r}")
        if not 0.0 <= float(support) <= 1.0:
            raise ValueError(f"support must be a fraction in [0, 1], got {support!r}")
        source = Source(data, self.config["batch_size"])
        if source.size != self.config["dataset_size"]:
            raise ValueError(
                f"data has {source.size} samples; the atlas was fitted on "
                f"{self.config['dataset_size']}"
            )
        row = indices[unit, :k]
        chosen = row[row >= 0]
        x, y = source.fetch(chosen.tolist())
        x = x.to(*model_placement(model, x))
        heatmaps, boxes = None, None
        if localize:
            heatmaps, boxes = localized(self.nrm, x, y, layer, unit, support)
        return References(
            layer, unit, mode, chosen, values[unit, : len(chosen)], x, y, heatmaps, boxes
        )

    def figure(
        self,
        layer: str,
        units: list[int],
        data: Any,
        k: int | None = None,
        mode: str = "relmax",
        path: str | Path | None = None,
    ) -> Any:
        """A figure of the references of ``units`` (rows: a unit's crops, then its heatmaps).

        Returns the matplotlib figure; with ``path``, also saves it there (PNG).
        """
        from zennit_ext.atlas.figures import references_figure

        refs = [self.references(layer, unit, data, k, mode) for unit in units]
        return references_figure(refs, path)

    def class_graph(
        self,
        data: Any,
        target: int,
        layers: list[str] | None = None,
        *,
        c: float = 1.0,
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> Any:
        """The mean neuron graph of the samples of class ``target`` in ``data``.

        See :func:`zennit_ext.atlas.classgraph.class_graph`; ``layers`` (bottom → top, default
        the atlas's layers) and the NRM options of the atlas are passed to
        :class:`~zennit_ext.paths.NeuronPaths`.
        """
        from zennit_ext.atlas.classgraph import class_graph
        from zennit_ext.paths.api import NeuronPaths

        model = self._need_model("class_graph")
        paths = NeuronPaths(model, list(self.layers if layers is None else layers), **self.options)
        return class_graph(
            paths, data, target, c=c, batch_size=batch_size, show_progress=show_progress
        )
