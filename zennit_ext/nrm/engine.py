"""NRM's engine: one registered forward pass, its checked pass, and masked message passing.

A :class:`Session` registers the normalized rules (:mod:`zennit_ext.nrm.rules`) on the model,
runs the forward pass and one checked backward pass, and keeps everything the queries need as
its own explicit state: the input, the output relevance (eq. 18), the captured layer outputs,
the messages of the checked pass and its :class:`Report` (relevance that stops at neurons with
zero column sum, eq. 15 violations). The query functions of this module answer on a session
without another forward or checked pass.

By Theorem 1 of "Normalized Relevance Measure as a Unifying Framework to Explain Neural Network
Latent Structures" (Xiong et al., arXiv:2606.00557), the joint relevance of sets on several
layers is a masked message passing: the message from the output is multiplied by each set's
mask on its way down, and the relevance is the total message arriving at the input.
Conditions run along a new leading axis in batched partial backward passes
(``is_grads_batched``).

Channel messages: where the segment between two set layers is one rule layer (Conv2d or Linear,
one group) plus modules whose backward is the identity (Pass-ruled activations, merged
BatchNorms, Dropout in eval mode, Identity), a message confined to one channel of the upper
layer only needs that channel's filter slice, so all channel messages go through the layer as
one grouped transposed convolution (:func:`channel_messages`); and the edge weights of adjacent
layers are per-sample weight gradients (:func:`edges`). Both read the rule's one linearization
(:meth:`zennit_ext.nrm.rules.NormalizedHook.linearized`); both live in
:mod:`zennit_ext.nrm.fastpaths`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from zennit.canonizers import Canonizer

from zennit_ext._checks import check_finite, parse_target
from zennit_ext.nrm._locate import locate_imbalance, per_sample
from zennit_ext.nrm.fastpaths import close, rule_segment
from zennit_ext.nrm.rules import NormalizedComposite, NormalizedHook, PositiveSumError
from zennit_ext.nrm.sets import Level, reduce_units, set_mask, unit_count, unit_masks

__all__ = [
    "Report",
    "Session",
    "ConservationError",
    "propagate",
    "interactions",
    "layer_relevance",
    "consecutive_edges",
]


#: Largest rounding tolerance of the conservation check, as a share of the output relevance:
#: beyond it a pass is reported ill-conditioned instead of passing unchecked.
UNCHECKABLE = 0.05


class ConservationError(ValueError):
    """The checked pass does not conserve relevance: ``reached + Σ stopped`` is not 1.

    A step of the forward pass that no module hook sees changed the relevance (e.g. a residual
    add ``x + f(x)`` in ``forward``, a scaling, a mean, a detached branch). The message names
    the module whose forward first (in backward order) creates or loses relevance outside its
    submodules and, for a known block type, the canonizer that fixes it.
    """


@dataclass
class Report:
    """What the checked pass found, per sample.

    Attributes
    ----------
    stopped : dict of str to torch.Tensor
        Per layer with a normalized rule: the relevance mass, (batch,), that arrives at its
        output neurons with zero column sum and ends there (eq. 17's dead neurons).
    reached : torch.Tensor
        (batch,): the relevance mass that reaches the input. ``reached + Σ stopped = 1``.
    violations : dict of str to torch.Tensor
        Per layer: the number of neurons, (batch,) long, with a negative column sum that carry
        relevance (eq. 15 violated); only layers with violations are listed.
    """

    stopped: dict[str, torch.Tensor]
    reached: torch.Tensor
    violations: dict[str, torch.Tensor] = field(default_factory=dict)


class Session:
    """One registered forward pass and its checked pass (the state every query reads).

    Parameters
    ----------
    model : torch.nn.Module
        The network; hooks and canonizers are applied until :meth:`close`.
    composite : NormalizedComposite
        Registered on ``model`` for the session's lifetime.
    layers : sequence of str
        NRM's set layers (their outputs are captured).
    x : torch.Tensor
        Input batch (batch, ...).
    target : None, int, tuple, list or torch.Tensor
        Captum's ``TargetType``, or unnormalized output relevance (batch, n_outputs)
        (:func:`output_relevance`).
    messages_per_pass : int
        Messages per batched backward pass.
    show_progress : bool
        Progress bars over message batches.
    fast : bool
        Use the channel-message and edge fast paths where they apply.

    Attributes
    ----------
    inputs, output, relevance : torch.Tensor
        The input leaf, the model output and its normalized relevance (eq. 18).
    outputs : dict of str to torch.Tensor
        Captured outputs of the set layers and of every module with a normalized rule.
    order : list of str
        Captured names in the order their modules finished the forward pass.
    calls : list of str
        Every module call, in the order the calls finished.
    hooks : dict of str to NormalizedHook
        The registered normalized rules by module name.
    messages : dict of str to torch.Tensor
        Message of the checked pass at each captured output (the gradient there).
    heat : torch.Tensor
        The normalized LRP heatmap (input relevance of all walks), like ``x``.
    report : Report
        The checked pass's findings.
    imbalance : torch.Tensor
        (batch,): ``reached + Σ stopped − 1`` (0 up to rounding where relevance is conserved).
    tolerance : torch.Tensor
        (batch,): how far rounding may move ``imbalance`` from 0 (:meth:`_tolerance`).
    ill_conditioned : torch.Tensor
        (batch,) bool: samples whose tolerance exceeds :data:`UNCHECKABLE` (terms of both
        signs cancel so much that rounding alone could hide an imbalance).
    unbalanced : torch.Tensor
        (batch,) bool: samples whose ``|imbalance|`` exceeds the tolerance, or ill-conditioned.
    """

    def __init__(
        self,
        model: nn.Module,
        composite: NormalizedComposite,
        layers: Sequence[str],
        x: torch.Tensor,
        target: Any,
        messages_per_pass: int,
        show_progress: bool,
        fast: bool,
    ) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"x must have the shape (batch, ...), got {tuple(x.shape)}")
        if len(x) == 0:
            raise ValueError(f"x must hold at least one sample, got shape {tuple(x.shape)}")
        check_finite("x", x)
        _refuse_open_session(model)
        self.model, self.composite, self.layers = model, composite, list(layers)
        self.messages_per_pass, self.show_progress, self.fast = (
            messages_per_pass,
            show_progress,
            fast,
        )
        self.modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.calls: list[str] = []
        self._handles: list[Any] = []
        self.segments: dict[tuple[str, str, bool], Any] = {}
        self._open = True
        composite.register(model)
        try:
            #: whether a canonizer changed the model (its layer outputs may then differ from
            #: those of the model as it is, e.g. a convolution with a merged BatchNorm)
            self.canonized = any(isinstance(handle, Canonizer) for handle in composite.handles)
            # with the modules canonizers attached (their rules may stop relevance too)
            self.modules = dict(model.named_modules())
            rules = {
                hook.layer_name: hook
                for hook in composite.hook_refs
                if isinstance(hook, NormalizedHook)
            }
            # in the model's module order (Zennit keeps its hooks in a set): reports, warnings
            # and messages list layers in the same order on every run
            self.hooks = {name: rules[name] for name in self.modules if name in rules}
            self._forward(x)
            self.relevance = output_relevance(self.output, target)
            self._checked_pass()
            self._stored = {name: _stored_input(hook) for name, hook in self.hooks.items()}
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------ life cycle

    def _forward(self, x: torch.Tensor) -> None:
        captured = set(self.layers) | set(self.hooks)
        for name, module in self.modules.items():
            # after the composite's hooks: zennit wraps the outputs the hooks capture
            self._handles.append(module.register_forward_hook(self._recorder(name, captured)))
        self.inputs = x.detach().clone().requires_grad_()
        with torch.enable_grad():
            self.output = self.model(self.inputs)
        if isinstance(self.output, torch.Tensor):
            check_finite("the model output (for a finite x)", self.output)
        missing = [name for name in self.layers if name not in self.outputs]
        if missing:
            raise ValueError(f"layers {missing} were not called in the forward pass")

    def _recorder(self, name: str, captured: set[str]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.calls.append(name)
            if name in captured and isinstance(output, torch.Tensor):
                self.outputs[name] = output
                self.order.append(name)

        return hook

    def _checked_pass(self) -> None:
        """One full backward pass: the heatmap, every captured message, the report (eq. 15)."""
        names = [name for name in self.order if self.outputs[name].requires_grad]
        grads = torch.autograd.grad(
            self.output,
            [self.inputs, *(self.outputs[n] for n in names)],
            self.relevance,
            retain_graph=True,
            allow_unused=True,
        )
        if grads[0] is None:
            raise ValueError(
                "x: no gradient of the model output reaches it (does forward() detach its "
                "input?), so no relevance can reach it"
            )
        self.heat = grads[0]
        self.messages = {
            name: _or_zeros(grad, self.outputs[name])
            for name, grad in zip(names, grads[1:], strict=True)
        }
        for name in self.layers:
            self.messages.setdefault(name, torch.zeros_like(self.outputs[name]))
        stopped, violations = {}, {}
        for name, hook in self.hooks.items():
            if name not in self.messages:
                continue
            message = self.messages[name]
            sums = hook.column_sums(self.modules[name], message.shape)
            carries = message != 0
            # per sample: a module inside windowed attention sees (batch · windows, ...)
            batch = len(self.inputs)
            stopped[name] = per_sample(message * (sums == 0), batch).sum(1)
            violated = per_sample(carries & (sums < 0), batch).sum(1)
            if violated.any():
                violations[name] = violated
        self.report = Report(stopped, self.heat.flatten(1).sum(1), violations)
        self.lost = any(bool((mass != 0).any()) for mass in stopped.values())
        self.imbalance = sum(stopped.values(), self.report.reached) - 1
        self.tolerance = self._tolerance()
        self.ill_conditioned = self.tolerance > UNCHECKABLE
        # NaN compares False: anything not provably within the tolerance is unbalanced
        self.unbalanced = ~(self.imbalance.abs() <= self.tolerance) | self.ill_conditioned
        if violations and self.composite.on_violation == "raise":
            raise PositiveSumError(self.violation_text(next(iter(violations))))
        if self.unbalanced.any() and self.composite.on_violation == "raise":
            raise ConservationError(self.imbalance_text())

    def _tolerance(self) -> torch.Tensor:
        """(batch,): how far the rounding of the pass may move ``reached + Σ stopped`` from 1.

        Every rule layer rounds the relevance terms it moves, and where terms of both signs
        cancel (small γ or ε column sums) the absolute relevance mass exceeds the total: √eps
        of the dtype times the largest absolute mass ``Σ|m|`` of a message or of the heatmap,
        at least 1 (the output relevance). In float32 that is 3.5e-4, far above the rounding
        (~1e-7 at 10⁵ neurons per layer) and far below a relevance that a skip doubles.
        """
        return torch.finfo(self.heat.dtype).eps ** 0.5 * self._largest_mass().clamp(min=1.0)

    def _largest_mass(self) -> torch.Tensor:
        """(batch,): the largest absolute relevance mass ``Σ|m|`` of a message or the heatmap."""
        masses = torch.stack(
            [
                per_sample(values.abs(), len(self.inputs)).sum(1)
                for values in (self.heat, *self.messages.values())
            ]
        )
        return masses.nan_to_num(nan=float("inf")).amax(0)

    def violation_text(self, name: str) -> str:
        """What the report's violation at layer ``name`` means (the warning or the error)."""
        count = int(self.report.violations[name].sum())
        return (
            f"layer {name!r} ({type(self.modules[name]).__name__}, rule "
            f"{type(self.hooks[name]).__bases__[1].__name__}) has {count} negative column sums "
            "at neurons that carry relevance; NRM needs positive sums (eq. 15): use z+ (or a "
            "larger gamma) on a ReLU network"
        )

    def imbalance_text(self) -> str:
        """What an unconserved checked pass means (the warning or the error)."""
        broken = ~torch.isfinite(self.imbalance)
        if broken.any():
            samples = broken.nonzero()[:, 0].tolist()
            return (
                f"relevance is not finite (NaN or ±inf) in samples {samples}: a rule of the "
                "composite divides by zero or overflows (e.g. an ε- or z-rule without "
                "stabilizer, or column sums beyond the dtype's range); "
                "the layers' absolute relevance masses reach "
                + ", ".join(f"{float(self._largest_mass()[i]):.3g}" for i in samples)
            )
        if self.ill_conditioned.any():
            return self._ill_conditioned_text()
        samples = self.unbalanced.nonzero()[:, 0].tolist()
        found = ", ".join(
            f"{float(self.imbalance[i]):+.3g} (tolerance {float(self.tolerance[i]):.1g})"
            for i in samples
        )
        text = (
            f"relevance is not conserved: reached + Σ stopped − 1 is {found} in samples "
            f"{samples}; a step of forward() that no module hook sees changes the relevance "
            "(e.g. a residual add x + f(x), a scaling, a mean, a detached branch)"
        )
        try:  # one more forward and backward pass, probing every module call
            located = locate_imbalance(self)
        except Exception as error:  # the location is a hint: never hide the imbalance
            return f"{text}: make it a module with a rule (locating it failed: {error!r})"
        if located is None:
            return f"{text}: make it a module with a rule (e.g. zennit's Sum through a canonizer)"
        return f"{text}; {located.text()}"

    def _ill_conditioned_text(self) -> str:
        samples = self.ill_conditioned.nonzero()[:, 0].tolist()
        eps = torch.finfo(self.heat.dtype).eps ** 0.5
        found = ", ".join(f"{float(self.tolerance[i]) / eps:.3g}" for i in samples)
        return (
            f"relevance conservation cannot be checked: the absolute relevance mass of a layer "
            f"reaches {found} × the output relevance in samples {samples} (shares of both signs "
            f"cancel), so rounding alone could move reached + Σ stopped by more than "
            f"{UNCHECKABLE:.0%} and the numbers would mean nothing; the rules are ill-conditioned "
            "for this model: use rules whose shares are non-negative (z⁺ on every linear layer, "
            "e.g. nrm_composite(gamma=None), NRM's default for transformers' blocks)"
        )

    def close(self) -> None:
        """Remove the hooks and canonizers (the model is as before) and drop the graph."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.composite.remove()
        if self._open:
            self._open = False
            for name in ("inputs", "output", "relevance", "heat"):
                self.__dict__.pop(name, None)
            self.outputs, self.messages, self.hooks = {}, {}, {}

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (queries need an open session)."""
        return not self._open

    def check_intact(self) -> None:
        """Raise if the model ran another forward pass while the session's hooks were on it:
        the rules would then read that pass's inputs."""
        changed = [
            name
            for name, hook in self.hooks.items()
            if _stored_input(hook) is not self._stored[name]
        ]
        if changed:
            raise RuntimeError(
                f"the model ran a forward pass while this NRM explanation was open (layers "
                f"{changed[:3]} saw new inputs), so its answers would mix two inputs; run other "
                "forward passes outside the `with nrm.explain(...)` block"
            )

    # --------------------------------------------------------------------------- helpers

    def shape(self, name: str) -> torch.Size:
        return self.outputs[name].shape

    def descending(self, names: Iterable[str]) -> list[str]:
        """``names`` from the layer closest to the output down to the input."""
        return sorted(names, key=self.order.index, reverse=True)

    def masks(self, sets: Mapping, level: str) -> dict[str, torch.Tensor]:
        """Float masks of ``{layer: set}`` on the layers' device and dtype."""
        return {name: self.mask(name, spec, level) for name, spec in sets.items()}

    def mask(self, name: str, spec: Any, level: str) -> torch.Tensor:
        like = self.outputs[name]
        return set_mask(spec, like.shape, level, name, dtype=like.dtype, device=like.device)

    def chunks(self, count: int, size: int, desc: str) -> Iterator[torch.Tensor]:
        chunks = torch.arange(count, device=self.inputs.device).split(max(1, size))
        return iter(tqdm(chunks, desc=desc, disable=None if self.show_progress else True))

    def segment(self, upper: str, lower: str | None, messages: torch.Tensor) -> torch.Tensor:
        """Push messages ``(n, *upper shape)`` down to ``lower`` (None: the input) in one batched
        partial backward."""
        below = self.inputs if lower is None else self.outputs[lower]
        if not below.requires_grad:
            raise ValueError(
                f"layer {lower!r} does not depend on the input x (its output carries no "
                "gradient, e.g. a position-bias table or a detached branch): no walk from the "
                f"output through {upper!r} passes it; choose layers on the input's path"
            )
        (result,) = torch.autograd.grad(
            self.outputs[upper],
            below,
            messages,
            retain_graph=True,
            is_grads_batched=True,
            allow_unused=True,
        )
        if result is None:
            raise ValueError("NRM's layers must lie on one path from the input to the output")
        return result

    def steps(self) -> int:
        """Number of layers with a normalized rule (walk length ``L``, Def. 3)."""
        return len(self.hooks)


def _stored_input(hook: NormalizedHook) -> torch.Tensor | None:
    stored = hook.stored_tensors.get("input")
    return stored[0] if stored else None


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _refuse_open_session(model: nn.Module) -> None:
    """A second session on a model would run the first one's hooks too."""
    for name, module in model.named_modules():
        for hook in module._forward_hooks.values():
            if isinstance(getattr(hook, "__self__", None), NormalizedHook):
                raise RuntimeError(
                    f"module {name or 'model'!r} still has NRM's hooks from an explanation that "
                    "was not closed; close it first (use `with nrm.explain(x, target) as e:`)"
                )


def output_relevance(output: torch.Tensor, target: Any) -> torch.Tensor:
    """Normalized output relevance ``R(n_L = k)`` (eq. 18), shape of ``output`` (batch, n).

    ``target`` is Captum's ``TargetType`` (:func:`zennit_ext._checks.parse_target`), or a
    floating-point tensor shaped like the output: the unnormalized output relevance (eq. 16).
    """
    if output.dim() != 2:
        raise ValueError(f"NRM needs a (batch, n_outputs) model output, got {tuple(output.shape)}")
    batch, n_out = output.shape
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if target.shape != output.shape:
            raise ValueError(
                f"target relevance must have the output's shape {tuple(output.shape)}, "
                f"got {tuple(target.shape)}"
            )
        target = target.to(device=output.device, dtype=output.dtype)
        check_finite("target relevance", target)
        total = target.sum(1, keepdim=True)
        if (total <= 0).any():
            raise ValueError("target relevance must have a positive sum per sample (eq. 16)")
        return target / total
    index = parse_target(target, batch, output.shape)  # (batch, 1), or (batch, 0) if n = 1
    column = index[:, 0] if index.shape[1] else torch.zeros(batch, dtype=torch.long)
    return nn.functional.one_hot(column.to(output.device), n_out).to(output.dtype)


# ------------------------------------------------------------------------------- queries


def propagate(session: Session, conditions: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Input relevance of the walks through each condition's masks, ``(n, *x.shape)``.

    Conditions on the same layers share passes. A layer a condition does not name constrains
    nothing, so conditions on different layers are propagated apart: a mask of ones would
    still restrict the walks to those through the layer, which is all of them only where the
    layer is a cut of the network (not inside a residual branch).
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, masks in enumerate(conditions):
        groups.setdefault(tuple(session.descending(set(masks))), []).append(index)
    if len(groups) == 1:
        return _propagate_through(session, next(iter(groups)), conditions)
    out = session.heat.new_empty(len(conditions), *session.heat.shape)
    for names, indices in groups.items():
        out[indices] = _propagate_through(session, names, [conditions[i] for i in indices])
    return out


def _propagate_through(
    session: Session, names: Sequence[str], conditions: list[dict[str, torch.Tensor]]
) -> torch.Tensor:
    """:func:`propagate` for conditions that all name exactly the layers ``names`` (top first)."""
    if not names:
        return session.heat[None].expand(len(conditions), *session.heat.shape)
    results = []
    for chunk in session.chunks(len(conditions), session.messages_per_pass, "NRM conditions"):
        picked = [conditions[i] for i in chunk.tolist()]
        masks = {name: torch.stack([c[name] for c in picked]) for name in names}
        message = session.messages[names[0]][None] * masks[names[0]]
        for upper, name in itertools.pairwise(names):
            message = session.segment(upper, name, message) * masks[name]
        results.append(session.segment(names[-1], None, message))
    return torch.cat(results)


def reach(session: Session, names: Sequence[str]) -> dict[str, torch.Tensor | float]:
    """Fraction of a unit message at each neuron of each layer that reaches the input.

    ``Mᵀ 1`` of the normalized propagation below the layer: 1 for every neuron, except where
    relevance ends at a neuron with zero column sum. If the checked pass saw no relevance end,
    it is 1; otherwise one double backward pass gives it for all ``names`` at once (the
    heatmap of probes on every layer is linear in each probe). It is 0 on a layer no gradient
    connects to the input (e.g. computed from a detached tensor).
    """
    if not session.lost:
        return dict.fromkeys(names, 1.0)
    reaches: dict[str, torch.Tensor | float] = {
        n: torch.zeros_like(session.outputs[n]) for n in names
    }
    live = [n for n in names if session.outputs[n].requires_grad]
    with torch.enable_grad():
        probes = [torch.ones_like(session.outputs[n], requires_grad=True) for n in live]
        (heat,) = torch.autograd.grad(
            [session.outputs[n] for n in live],
            session.inputs,
            probes,
            retain_graph=True,
            create_graph=True,
            allow_unused=True,
        )
        if heat is None:  # none of them depends on the input (or none is live)
            return reaches
        found = torch.autograd.grad(heat.sum(), probes, retain_graph=True, allow_unused=True)
    reaches.update({n: f.detach() for n, f in zip(live, found, strict=True) if f is not None})
    return reaches


def layer_relevance(session: Session) -> dict[str, torch.Tensor]:
    """Marginal relevance ``R(n_l = i)`` of every neuron of every set layer (eq. 9 with one
    layer), ``{layer: (batch, *layer shape)}``: the checked pass's message times the reach."""
    reaches = reach(session, session.layers)
    return {name: session.messages[name] * reaches[name] for name in session.layers}


def interactions(
    session: Session, names: list[str], levels: dict[str, Level], fast: bool | None = None
) -> torch.Tensor:
    """(batch, n_lowest, ..., n_top) joint relevance, ``names`` from top to lowest.

    Fast paths: two layers joined by one rule layer take :func:`edges`; otherwise the top
    layer's channel messages reach the next layer by :meth:`RuleSegment.channel_messages`,
    whose sum must equal the top message pushed down by autograd (one partial backward), or
    the table is recomputed without the fast path.
    """
    fast = session.fast if fast is None else fast
    top, lowest = names[0], names[-1]
    if fast and len(names) == 2:
        table = edges(session, lowest, top, levels)
        if table is not None:
            return table
    counts = [unit_count(levels[name], session.shape(name)) for name in names]
    message = session.messages[top]
    lowest_reach = reach(session, [lowest])[lowest]
    per_top = max(1, session.messages_per_pass // max(1, math.prod(counts[1:-1])))
    segment = rule_segment(session, names[1], top) if fast else None
    if segment is not None and not segment.carries_channels(levels[top]):
        segment = None
    pairs = list(itertools.pairwise(names))
    blocks, total = [], None
    for chunk in session.chunks(counts[0], per_top, "NRM interactions"):
        if segment is not None:
            messages = segment.channel_messages(message, chunk)
            total = messages.sum(0) if total is None else total + messages.sum(0)
            if names[1] != lowest:
                messages = _split(session, names[1], levels[names[1]], messages)
        else:
            masks = unit_masks(levels[top], session.shape(top), chunk, message.dtype)
            messages = message[None] * masks
        for upper, lower in pairs[1:] if segment is not None else pairs:
            messages = session.segment(upper, lower, messages)
            if lower != lowest:  # split every message over the units of the next layer
                messages = _split(session, lower, levels[lower], messages)
        blocks.append(
            reduce_units(messages * lowest_reach, levels[lowest], len(session.shape(lowest)) - 1)
        )
    if (
        segment is not None
        and total is not None
        and not close(total, session.segment(top, names[1], message[None])[0])
    ):
        return interactions(session, names, levels, fast=False)
    table = torch.cat(blocks).view(*counts[:-1], *blocks[0].shape[1:])  # (top.., B, n_low)
    dims = table.dim()
    return table.permute(dims - 2, dims - 1, *reversed(range(dims - 2)))


def _split(session: Session, name: str, level: Level, messages: torch.Tensor) -> torch.Tensor:
    """Every message (n, batch, ...) split over the units of layer ``name``: (n * units, ...)."""
    shape = session.shape(name)
    units = torch.arange(unit_count(level, shape), device=messages.device)
    masks = unit_masks(level, shape, units, messages.dtype)
    return (messages[:, None] * masks[None]).flatten(0, 1)


def consecutive_edges(
    session: Session, level: Level | Mapping[str, Level]
) -> dict[tuple[str, str], torch.Tensor]:
    """Joint relevance of every unit pair of adjacent set layers (in forward order), at one
    level or a level per layer.

    Returns
    -------
    dict of (str, str) to torch.Tensor
        ``{(lower, upper): (batch, n_lower, n_upper)}``, equal to ``pairwise(lower, upper)``.
    """
    ascending = sorted(session.layers, key=session.order.index)
    levels = level if isinstance(level, Mapping) else dict.fromkeys(ascending, level)
    return {
        (lower, upper): interactions(
            session, [upper, lower], {upper: levels[upper], lower: levels[lower]}
        )
        for lower, upper in itertools.pairwise(ascending)
    }


def edges(
    session: Session, lower: str, upper: str, levels: Mapping[str, Level]
) -> torch.Tensor | None:
    """Joint relevance of every (lower unit, upper unit) pair, (batch, n_lower, n_upper), by
    per-sample weight gradients; None where this fast path does not apply.

    With the rule's live terms ``t`` (coefficients ``c_t``, normalized scales ``s̃_t``,
    parameter-modified weights ``W'_t``) and the message ``m`` at ``upper``,
    ``E[i, j] = Σ_t Σ_kernel W'_t[j, i] ⊙ ∂⟨s̃_t ⊙ m, f(c_t; W'_t)⟩/∂W'_t[j, i]``: one
    per-sample weight gradient per term, about one layer forward, no (C_up, C_in, H, W)
    intermediate. It applies where ``upper`` is a Conv2d/Linear rule layer fed from ``lower``
    through identity-backward modules (and pooling, where no relevance stops), at channel
    level (or neurons of (batch, n) layers). Rows must sum to the lower layer's relevance
    (free, from the checked pass), or else to the relevance arriving at ``lower`` from
    ``upper`` (one partial backward; e.g. where a skip connection bypasses ``upper``).
    """
    level_low, level_up = levels[lower], levels[upper]
    if isinstance(level_low, torch.Tensor) or isinstance(level_up, torch.Tensor):
        return None
    segment = rule_segment(session, lower, upper, pooling=not session.lost)
    if segment is None or not segment.carries_channels(level_up):
        return None
    if level_low == "neuron" and session.outputs[lower].dim() != 2:
        return None
    reaches = reach(session, [lower])[lower]
    table = segment.edges(session.messages[upper], reaches)  # (B, C_in, C_up)
    ndim = session.outputs[lower].dim() - 1
    rows = reduce_units(session.messages[lower] * reaches, "channel", ndim)
    if close(table.sum(2), rows):
        return table
    arriving = session.segment(upper, lower, session.messages[upper][None])[0] * reaches
    return table if close(table.sum(2), reduce_units(arriving, "channel", ndim)) else None
