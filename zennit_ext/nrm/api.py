"""NRM: normalized joint, marginal and conditional relevance of neuron sets across layers.

Implements "Normalized Relevance Measure as a Unifying Framework to Explain Neural Network
Latent Structures" (Xiong, Schnake, Montavon, Müller, Nakajima; arXiv:2606.00557). A
:class:`~zennit_ext.nrm.rules.NormalizedComposite` makes every layer pass on exactly the
relevance it receives (eq. 17) and the output relevance sums to 1 (eq. 18), so relevance is a
normalized measure on the walks through the network; by Theorem 1 the joint relevance of sets
on several layers is a masked message passing (:mod:`zennit_ext.nrm.engine`).

:meth:`NRM.explain` runs the forward pass and the checked pass once and returns an
:class:`NRMExplanation` that answers any number of queries for those inputs; the methods of
:class:`NRM` are one-shot wrappers around it.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import torch
from torch import nn
from zennit.core import Composite

from zennit_ext.canonizers.core import attached_names
from zennit_ext.nrm import engine
from zennit_ext.nrm.rules import NormalizedComposite, nrm_composite
from zennit_ext.nrm.sets import Level, SetSpec

__all__ = ["NRM", "NRMExplanation"]

Sets = Mapping[str, SetSpec]


class NRM:
    """Normalized relevance of neuron sets (joint, marginal, conditional, pairwise, additive).

    Parameters
    ----------
    model : torch.nn.Module
        A feed-forward network; residual adds need a canonizer that makes them Zennit ``Sum``
        modules (the default canonizers do for torchvision's CNNs). Its train/eval mode is not
        changed.
    layers : sequence of str
        Names (as in ``model.named_modules()``) of the layers whose output neurons may carry
        sets. They must lie on one path from input to output.
    composite : zennit.core.Composite, optional
        Rules of the unnormalized propagation (eq. 14). Default :func:`nrm_composite`: γ on
        convolutions, z⁺ on dense layers, flat on the first layer (use
        ``nrm_composite(low, high)`` for the box rule).
    canonizers : list, optional
        Canonizers of the default composite (give them to ``composite`` otherwise). Default:
        the canonizers the model needs, chosen when NRM registers its rules
        (:class:`~zennit_ext.canonizers.auto.AutoCanonizer`, i.e. ``'auto'``: every
        torchvision CNN family); ``[]``: none.
    on_violation : {'raise', 'warn'}
        What a negative column sum at a neuron carrying relevance (eq. 15) does, and a checked
        pass that does not conserve relevance (``reached + Σ stopped`` not 1 up to rounding).
    messages_per_pass : int
        Relevance messages (conditions) per batched backward pass (not samples: every pass
        runs on the whole batch ``x``).
    show_progress : bool
        Progress bar over the passes (tqdm, silent when the output is not a terminal).
    fast : bool
        Use the channel-message and edge fast paths where they apply (False: always the
        batched partial backward passes, the reference).

    Examples
    --------
    >>> nrm = NRM(model, layers=['features.26', 'features.28'])          # doctest: +SKIP
    >>> nrm.joint(x, target, sets={'features.26': [3], 'features.28': [7]})
    >>> with nrm.explain(x, target) as e:                                 # doctest: +SKIP
    ...     e.pairwise('features.26', 'features.28'), e.heatmap(), e.report.reached
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        composite: Composite | None = None,
        canonizers: list | str | None = None,
        on_violation: str = "raise",
        messages_per_pass: int = 64,
        show_progress: bool = False,
        fast: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(layers, str) or not layers:
            raise TypeError(f"layers must be a non-empty sequence of module names, got {layers!r}")
        if composite is not None and canonizers is not None:
            raise ValueError("give canonizers to the composite, not to NRM, when composite= is set")
        if composite is None:
            composite = nrm_composite(canonizers="auto" if canonizers is None else canonizers)
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules or name == ""]
        if unknown and set(unknown) - {""} <= attached_names(model, composite.canonizers):
            unknown = [name for name in unknown if name == ""]
        if unknown:
            raise ValueError(
                f"layers {unknown} are not modules of the model (nor attached by its "
                f"canonizers); expected names from model.named_modules(), e.g. "
                f"{list(modules)[1:6]}"
            )
        if (
            isinstance(messages_per_pass, bool)
            or not isinstance(messages_per_pass, int)
            or messages_per_pass < 1
        ):
            raise ValueError(f"messages_per_pass must be a positive int, got {messages_per_pass!r}")
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        # the model's own modules among the layers (not those canonizers attach while open)
        self.modules = {name: modules[name] for name in self.layers if name in modules}
        self.composite = NormalizedComposite(composite, on_violation=on_violation)
        self.messages_per_pass = messages_per_pass
        self.show_progress = show_progress
        self.fast = fast

    # ----------------------------------------------------------------------------- public API

    def explain(self, x: torch.Tensor, target: Any) -> NRMExplanation:
        """Register the normalized rules, run the forward pass and the checked pass once.

        Parameters
        ----------
        x : torch.Tensor
            Input batch, (batch, ...), on the model's device.
        target : int, tuple, list, torch.Tensor or None
            Explained class: Captum's ``TargetType`` (an int for every sample, a 1-tuple
            ``(k,)`` likewise, a list or 1-D integer tensor with one class per sample, None
            for a model with one output), parsed by :func:`zennit_ext._checks.parse_target`;
            or a floating-point tensor, the unnormalized output relevance r̃ of shape
            (batch, n_outputs) with a positive sum per sample (eq. 13).

        Returns
        -------
        NRMExplanation
            Answers queries for ``x`` until closed; use it as a context manager (the model
            keeps NRM's hooks while it is open).

        Raises
        ------
        ValueError
            If ``x`` is empty or not finite, no gradient reaches ``x`` (a model that detaches
            its input), the model output is not finite, or ``target`` is out of range; no hook
            is left on the model.
        PositiveSumError
            With ``on_violation='raise'``, if a neuron carrying relevance has a negative
            column sum (eq. 15); the model is restored first.
        ConservationError
            With ``on_violation='raise'``, if ``reached + Σ stopped`` differs from 1 by more
            than the rounding of the pass (√eps of the dtype, relative to the largest absolute
            relevance mass), e.g. through a residual add in ``forward`` that no hook sees; the
            model is restored first.
        """
        session = engine.Session(
            self.model,
            self.composite,
            self.layers,
            x,
            target,
            messages_per_pass=self.messages_per_pass,
            show_progress=self.show_progress,
            fast=self.fast,
        )
        for name in session.report.violations:
            warnings.warn(session.violation_text(name), RuntimeWarning, stacklevel=_stacklevel())
        if session.unbalanced.any():
            warnings.warn(session.imbalance_text(), RuntimeWarning, stacklevel=_stacklevel())
        return NRMExplanation(self, session)

    def joint(
        self, x: torch.Tensor, target: Any, sets: Sets, level: str = "neuron"
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.joint`, (batch,)."""
        with self.explain(x, target) as e:
            return e.joint(sets, level)

    def marginal(
        self, x: torch.Tensor, target: Any, layer: str, units: SetSpec, level: str = "neuron"
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.marginal`, (batch,)."""
        with self.explain(x, target) as e:
            return e.marginal(layer, units, level)

    def conditional(
        self, x: torch.Tensor, target: Any, sets: Sets, given: Sets, level: str = "neuron"
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.conditional`, (batch,)."""
        with self.explain(x, target) as e:
            return e.conditional(sets, given, level)

    def heatmap(
        self, x: torch.Tensor, target: Any, sets: Sets | None = None, level: str = "neuron"
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.heatmap`, like ``x``."""
        with self.explain(x, target) as e:
            return e.heatmap(sets, level)

    def heatmaps(
        self, x: torch.Tensor, target: Any, conditions: Sequence[Sets], level: str = "neuron"
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.heatmaps`, ``(n_conditions, *x.shape)``."""
        with self.explain(x, target) as e:
            return e.heatmaps(conditions, level)

    def joint_many(
        self, x: torch.Tensor, target: Any, conditions: Sequence[Sets], level: str = "neuron"
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.joint_many`, (n_conditions, batch)."""
        with self.explain(x, target) as e:
            return e.joint_many(conditions, level)

    def additive(
        self, x: torch.Tensor, target: Any, sets: Sets, level: str = "neuron"
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.additive`, (batch,)."""
        with self.explain(x, target) as e:
            return e.additive(sets, level)

    def pairwise(
        self,
        x: torch.Tensor,
        target: Any,
        layer_a: str,
        layer_b: str,
        level: Level | Mapping[str, Level] = "channel",
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.pairwise`, ``(batch, |A|, |B|)``."""
        with self.explain(x, target) as e:
            return e.pairwise(layer_a, layer_b, level)

    def interactions(
        self,
        x: torch.Tensor,
        target: Any,
        layers: Sequence[str],
        level: Level | Mapping[str, Level] = "channel",
    ) -> torch.Tensor:
        """One-shot :meth:`NRMExplanation.interactions`, ``(batch, |L1|, |L2|, …)``."""
        with self.explain(x, target) as e:
            return e.interactions(layers, level)

    def top_interactions(
        self,
        x: torch.Tensor,
        target: Any,
        layers: Sequence[str],
        k: int = 5,
        level: Level | Mapping[str, Level] = "channel",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-shot :meth:`NRMExplanation.top_interactions`: (indices, values)."""
        with self.explain(x, target) as e:
            return e.top_interactions(layers, k, level)

    def check_sets(self, sets: Any, argument: str) -> None:
        """Raise if ``sets`` is not a mapping over NRM's layers."""
        if not isinstance(sets, Mapping):
            raise TypeError(
                f"{argument} must be a mapping {{layer: set}}, got {type(sets).__name__}"
            )
        outside = [name for name in sets if name not in self.layers]
        if outside:
            raise ValueError(f"{argument}: layers {outside} are not in NRM's layers {self.layers}")


def _stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the caller name the line that called
    into ``zennit_ext`` (through ``explain``, a one-shot method or :class:`NeuronPaths`)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in (
        "zennit_ext",
        "contextlib",
    ):
        frame, level = frame.f_back, level + 1
    return level


class NRMExplanation:
    """NRM's answers for one input batch: one forward pass and one checked pass, many queries.

    Created by :meth:`NRM.explain`; a context manager whose exit removes NRM's hooks from the
    model and releases the graph (:meth:`close`). While it is open the model carries NRM's
    hooks: run other forward passes of the model outside the block (queries raise otherwise).

    Attributes
    ----------
    report : zennit_ext.nrm.engine.Report
        What the checked pass found: ``stopped`` relevance per layer, ``reached`` share and
        eq. 15 ``violations``.
    """

    def __init__(self, nrm: NRM, session: engine.Session) -> None:
        self.nrm, self._session = nrm, session
        self.report = session.report

    def __enter__(self) -> NRMExplanation:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and canonizers from the model and drop the graph."""
        self._session.close()

    @property
    def session(self) -> engine.Session:
        """The open engine session (raises once closed)."""
        if self._session.closed:
            raise RuntimeError("this NRM explanation is closed; call nrm.explain(x, target) again")
        self._session.check_intact()
        return self._session

    @property
    def canonized(self) -> bool:
        """Whether a canonizer changed the model for this explanation: its layer outputs may
        then differ from those of the model as it is (e.g. a convolution with a merged
        BatchNorm)."""
        return self._session.canonized

    @property
    def stopped(self) -> dict[str, torch.Tensor]:
        """Relevance mass ending at neurons with zero column sum, ``{layer: (batch,)}``."""
        return self.report.stopped

    @property
    def reached(self) -> torch.Tensor:
        """(batch,) share of the output relevance that reaches the input."""
        return self.report.reached

    @property
    def violations(self) -> dict[str, torch.Tensor]:
        """Neurons carrying relevance with a negative column sum, ``{layer: (batch,)}``."""
        return self.report.violations

    def joint(self, sets: Sets, level: str = "neuron") -> torch.Tensor:
        """Joint relevance ``R(S_Λ)`` of the walks through every set (eq. 9, 24–25).

        Parameters
        ----------
        sets : mapping of str to indices or boolean mask
            ``{layer: set}``; see :func:`zennit_ext.nrm.sets.set_mask`.
        level : {'neuron', 'channel', 'token', 'feature', 'head'}
            How integer indices are read.

        Returns
        -------
        torch.Tensor
            Shape (batch,).
        """
        return self.heatmap(sets, level).flatten(1).sum(1)

    def marginal(self, layer: str, units: SetSpec, level: str = "neuron") -> torch.Tensor:
        """Marginal relevance ``R(n_layer ∈ units)``, shape (batch,): one-layer :meth:`joint`."""
        return self.joint({layer: units}, level)

    def conditional(self, sets: Sets, given: Sets, level: str = "neuron") -> torch.Tensor:
        """Conditional relevance ``R(S | G) = R(S, G) / R(G)`` (eq. 11), shape (batch,).

        Where ``R(G)`` is 0 the conditional is defined as 0. A layer in both ``sets`` and
        ``given`` is conditioned on the intersection of its two sets.
        """
        self.nrm.check_sets(sets, "sets")
        self.nrm.check_sets(given, "given")
        session = self.session
        masks = [session.masks(given, level), session.masks({**given, **sets}, level)]
        for name in set(sets) & set(given):
            masks[1][name] = masks[1][name] * session.mask(name, given[name], level)
        denominator, numerator = engine.propagate(session, masks).flatten(2).sum(2)
        safe = torch.where(denominator != 0, denominator, 1.0)
        return torch.where(denominator != 0, numerator / safe, 0.0)

    def heatmap(self, sets: Sets | None = None, level: str = "neuron") -> torch.Tensor:
        """Input relevance of the walks through the sets (eq. 37; CRP-style), shape of ``x``.

        Without sets it is the normalized LRP heatmap, which sums to ``reached`` per sample
        (1 where no relevance stops).
        """
        sets = {} if sets is None else sets
        self.nrm.check_sets(sets, "sets")
        return engine.propagate(self.session, [self.session.masks(sets, level)])[0]

    def heatmaps(self, conditions: Sequence[Sets], level: str = "neuron") -> torch.Tensor:
        """:meth:`heatmap` of many set combinations in batched passes.

        Returns ``(n_conditions, *x.shape)``.
        """
        for index, sets in enumerate(conditions):
            self.nrm.check_sets(sets, f"conditions[{index}]")
        session = self.session
        return engine.propagate(session, [session.masks(sets, level) for sets in conditions])

    def joint_many(self, conditions: Sequence[Sets], level: str = "neuron") -> torch.Tensor:
        """:meth:`joint` of many set combinations in batched passes, (n_conditions, batch)."""
        return self.heatmaps(conditions, level).flatten(2).sum(2)

    def additive(self, sets: Sets, level: str = "neuron") -> torch.Tensor:
        """Additive relevance of a neuron set spread over layers (Def. 3, §3.5.2), (batch,).

        Every walk spreads its relevance equally over the ``L + 1`` neurons it visits, so
        ``R_add(S) = Σ_l R(n_l ∈ S_l) / (L + 1)``: additive over neurons of the whole network.
        ``L`` counts the layers with a (normalized) ``BasicHook`` rule; activations, pooling
        and flattening do not add walk steps.
        """
        self.nrm.check_sets(sets, "sets")
        session = self.session
        masks = [session.masks({name: spec}, level) for name, spec in sets.items()]
        marginals = engine.propagate(session, masks).flatten(2).sum(2)
        return marginals.sum(0) / (session.steps() + 1)

    def pairwise(
        self, layer_a: str, layer_b: str, level: Level | Mapping[str, Level] = "channel"
    ) -> torch.Tensor:
        """Joint relevance ``R(n_a = i, n_b = j)`` of every pair of units, ``(batch, |A|, |B|)``.

        The message at the upper layer is split over its units, all these messages go down to
        the lower layer in batched partial backward passes (or, for channels through one
        convolution, one grouped transposed convolution), and all lower units are read at once.

        Parameters
        ----------
        layer_a, layer_b : str
            Two of ``layers``, in either order; the result's axes follow the argument order.
        level : {'neuron', 'channel', 'token', 'feature', 'head'}, torch.Tensor, or mapping
            Unit kind for both layers, or per layer ``{name: level}``; a tensor gives stacked
            boolean unit masks (n_units, batch or 1, ...), e.g. from
            :func:`~zennit_ext.nrm.sets.cluster_masks`.
        """
        return self.interactions([layer_a, layer_b], level)

    def interactions(
        self, layers: Sequence[str], level: Level | Mapping[str, Level] = "channel"
    ) -> torch.Tensor:
        """Joint relevance of every combination of one unit per layer, ``(batch, |L1|, |L2|, …)``.

        The generalization of :meth:`pairwise` to any number of layers (e.g. triples).
        """
        if len(set(layers)) != len(layers) or len(layers) < 2:
            raise ValueError(f"layers must be at least two distinct layer names, got {layers!r}")
        self.nrm.check_sets(dict.fromkeys(layers), "layers")
        levels = level if isinstance(level, Mapping) else dict.fromkeys(layers, level)
        session = self.session
        ordered = session.descending(layers)
        table = engine.interactions(session, ordered, {name: levels[name] for name in ordered})
        # table axes: (batch, lowest, ..., top); reorder to the argument order
        position = {name: axis + 1 for axis, name in enumerate(reversed(ordered))}
        return table.permute(0, *[position[name] for name in layers])

    def top_interactions(
        self,
        layers: Sequence[str],
        k: int = 5,
        level: Level | Mapping[str, Level] = "channel",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most relevant unit combinations per sample.

        Returns
        -------
        indices : torch.Tensor
            Shape (batch, k, len(layers)): unit index per layer, in the order of ``layers``.
        values : torch.Tensor
            Shape (batch, k): their joint relevance, descending.
        """
        table = self.interactions(layers, level)
        if not isinstance(k, int) or not 1 <= k <= table[0].numel():
            raise ValueError(f"k must be an int in [1, {table[0].numel()}], got {k!r}")
        values, flat = table.flatten(1).topk(k, dim=1)
        indices = torch.stack(torch.unravel_index(flat, table.shape[1:]), dim=-1)
        return indices, values

    def layer_relevance(self) -> dict[str, torch.Tensor]:
        """Marginal relevance of every neuron of every NRM layer, ``{layer: (batch, *shape)}``.

        From the checked pass (times the share that reaches the input where relevance stops,
        one double backward pass then).
        """
        return engine.layer_relevance(self.session)

    def consecutive_edges(
        self, level: Level | Mapping[str, Level] = "channel"
    ) -> dict[tuple[str, str], torch.Tensor]:
        """:meth:`pairwise` of every two adjacent NRM layers (forward order), at one level or
        a level per layer (``{layer: level}``).

        Returns
        -------
        dict of (str, str) to torch.Tensor
            ``{(lower, upper): (batch, n_lower, n_upper)}``. Where ``upper`` is a Conv2d/Linear
            rule layer fed from ``lower`` only through channel-wise modules, one per-sample
            weight gradient per live rule term gives it; otherwise (or if its rows do not sum
            to the lower layer's relevance) :meth:`pairwise`.
        """
        return engine.consecutive_edges(self.session, level)
