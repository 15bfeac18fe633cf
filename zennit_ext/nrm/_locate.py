"""Where an unconserved checked pass creates or loses relevance (for NRM's error message).

When ``reached + Σ stopped`` is not 1, the session's forward pass is run once more with a
probe on every module call: each tensor a module receives is passed on as a copy of its own,
and each output likewise, so that the gradient there (the relevance, in Zennit's frame) is
what this call alone consumes and produces. A call's own imbalance is

    (relevance of its inputs − relevance of its output + relevance stopped at its rule)
    − Σ over the calls it makes of (their input − their output relevance),

i.e. what the expressions of its ``forward`` outside submodules create or lose (a residual add
``x + f(x)`` in a block doubles the skip's relevance). The call reported is the first in
backward order (the last to finish its forward) whose own imbalance exceeds the rounding.
The session's rule state is restored afterwards, so an open session stays usable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zennit_ext.canonizers.auto import canonizer_for
from zennit_ext.layers import MatMul, Multiply

if TYPE_CHECKING:
    from zennit_ext.nrm.engine import Session

__all__ = ["Located", "locate_imbalance", "per_sample"]


@dataclass
class _Call:
    name: str
    module: nn.Module
    parent: int | None
    inputs: list[torch.Tensor] = field(default_factory=list)
    output: torch.Tensor | None = None
    finished: int = -1


@dataclass
class Located:
    """The module call where relevance is first created or lost, in backward order."""

    name: str
    module: nn.Module
    imbalance: float
    sample: int

    def text(self) -> str:
        """The sentence NRM's error adds."""
        where = f"module {self.name!r}" if self.name else "the model's own forward"
        kind = type(self.module).__name__
        found = (
            f"it is first created or lost (in backward order) in {where} ({kind}): its input "
            f"relevance + stopped − output relevance is {self.imbalance:+.3g} in sample "
            f"{self.sample}, beyond what its submodules account for"
        )
        return f"{found}; {_remedy(self.module)}"


def _remedy(module: nn.Module) -> str:
    if isinstance(module, Multiply | MatMul):
        return "give it zennit_ext.rules.ProductRule in the composite"
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
        return "dropout in training mode rescales what it keeps: call model.eval()"
    factory = canonizer_for(module)
    if factory is not None:
        name = getattr(factory, "__qualname__", repr(factory))
        return (
            f"zennit_ext.canonizers.{name} makes this block's operations modules with rules "
            "(NRM's default canonizers='auto' apply it)"
        )
    return (
        "make the operation in its forward a module with a rule through a canonizer "
        "(e.g. zennit's Sum for a residual add x + f(x))"
    )


def _probe(value: Any, captured: list[torch.Tensor]) -> Any:
    """``value`` with every tensor that requires grad replaced by a copy of a captured copy."""
    if isinstance(value, torch.Tensor):
        if not value.requires_grad:
            return value
        own = value.clone()
        captured.append(own)
        return own.clone()
    if isinstance(value, list | tuple):
        return type(value)(_probe(item, captured) for item in value)
    return value


def per_sample(values: torch.Tensor, batch: int) -> torch.Tensor:
    """``values`` as (batch, rest): the first axis is the batch, or the batch times windows
    (batch-major, as in windowed attention); a tensor without a batch axis is shared evenly."""
    if values.dim() and values.shape[0] % batch == 0:
        return values.reshape(batch, -1)
    return (values.sum() / batch).expand(batch, 1)


def _masses(
    tensors: list[torch.Tensor], grads: dict[int, torch.Tensor | None], batch: int
) -> tuple:
    """(Σ relevance, Σ |relevance|) of ``tensors``, each (batch,)."""
    total = absolute = torch.zeros(())
    for tensor in tensors:
        grad = grads.get(id(tensor))
        if grad is not None:
            total = total + per_sample(grad, batch).sum(1)
            absolute = absolute + per_sample(grad.abs(), batch).sum(1)
    return total, absolute


def _run(session: Session) -> tuple[list[_Call], dict[int, torch.Tensor | None]]:
    """The probed forward and backward pass: the calls and the gradient of every probe."""
    calls: list[_Call] = []
    stack: list[int] = []
    finished = [0]
    handles = []

    def pre_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple) -> tuple:
            call = _Call(name, module, stack[-1] if stack else None)
            probed = _probe(args, call.inputs)
            stack.append(len(calls))
            calls.append(call)
            return probed

        return hook

    def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
        call = calls[stack.pop()]
        call.finished, finished[0] = finished[0], finished[0] + 1
        if isinstance(output, torch.Tensor) and output.requires_grad:
            call.output = output
            return output.clone()
        return None

    try:
        for name, module in session.model.named_modules():
            handles.append(module.register_forward_pre_hook(pre_hook(name), prepend=True))
            handles.append(module.register_forward_hook(post_hook))
        inputs = session.inputs.detach().requires_grad_()
        with torch.enable_grad():
            output = session.model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    tensors = [t for call in calls for t in call.inputs]
    tensors += [call.output for call in calls if call.output is not None]
    found = torch.autograd.grad(output, tensors, session.relevance, allow_unused=True)
    return calls, {id(t): g for t, g in zip(tensors, found, strict=True)}


def _own_imbalance(
    session: Session, calls: list[_Call], grads: dict[int, torch.Tensor | None]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per call: (own imbalance, rounding tolerance), each (batch,)."""
    unclaimed = dict(session.report.stopped)  # a module called twice stops relevance once
    net, scales = [], []
    own: list[torch.Tensor] = []
    batch = len(session.inputs)
    for call in calls:
        inflow, inabs = _masses(call.inputs, grads, batch)
        outflow, outabs = _masses([] if call.output is None else [call.output], grads, batch)
        net.append(inflow - outflow)
        own.append(net[-1] + unclaimed.pop(call.name, 0.0))
        scales.append(torch.maximum(inabs, outabs))
    for index, call in enumerate(calls):
        if call.parent is not None:
            own[call.parent] = own[call.parent] - net[index]
    eps = torch.finfo(session.inputs.dtype).eps ** 0.5
    return [(value, eps * scale.clamp(min=1.0)) for value, scale in zip(own, scales, strict=True)]


def locate_imbalance(session: Session) -> Located | None:
    """The module call where the checked pass first creates or loses relevance.

    Parameters
    ----------
    session : zennit_ext.nrm.engine.Session
        A session whose checked pass found ``reached + Σ stopped ≠ 1`` (its composite is still
        registered).

    Returns
    -------
    Located or None
        None if no single call accounts for the imbalance.
    """
    hooks = list(session.composite.hook_refs)
    saved = [(hook, dict(vars(hook)), dict(hook.stored_tensors)) for hook in hooks]
    lengths = (len(session.calls), len(session.order))
    outputs = dict(session.outputs)
    try:
        calls, grads = _run(session)
    finally:
        for hook, attributes, stored in saved:
            for key in set(vars(hook)) - set(attributes):
                delattr(hook, key)
            vars(hook).update({k: v for k, v in attributes.items() if k != "stored_tensors"})
            hook.stored_tensors.clear()
            hook.stored_tensors.update(stored)
        del session.calls[lengths[0] :], session.order[lengths[1] :]
        session.outputs.clear()
        session.outputs.update(outputs)
    samples = session.unbalanced.nonzero()[:, 0]
    ranked = sorted(
        zip(calls, _own_imbalance(session, calls, grads), strict=True),
        key=lambda item: item[0].finished,
        reverse=True,
    )
    for call, (own, tolerance) in ranked:
        excess = (own.abs() - tolerance)[samples]
        if (excess > 0).any():
            sample = int(samples[excess.argmax()])
            return Located(call.name, call.module, float(own[sample]), sample)
    return None
