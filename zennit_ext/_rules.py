"""Shared machinery for composites that wrap the rules of another Zennit composite.

PLRP (pruning) and NRM (normalization) both keep every rule a base composite assigns and add
behaviour to its ``backward``. The pieces they share live here:

- :func:`mixin_hook` copies a rule hook and places a mixin class in front of the rule's class,
  so the rule's forward/backward machinery is inherited unchanged on zennit 0.5 and 1.0;
- :class:`StatefulHook` keeps the mixin's attributes through Zennit's ``copy()``;
- :class:`ModuleState` restores a model's parameter and buffer objects;
- :class:`RuleWrappingComposite` wires the three into a composite that leaves the model as it
  found it, also when registering fails;
- :class:`BatchCheck` (with :func:`~zennit_ext._checks.check_finite`) stops an empty or
  non-finite batch, and a non-finite model output, at the root module before any relevance is
  computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from zennit.core import Composite, Hook

from zennit_ext._checks import check_finite

__all__ = [
    "StatefulHook",
    "mixin_hook",
    "ModuleState",
    "RuleWrappingComposite",
    "BatchCheck",
]


if TYPE_CHECKING:  # to a type checker, a mixin is the zennit rule it is placed before
    from zennit.core import BasicHook as _RuleBase
else:
    _RuleBase = object


class StatefulHook(_RuleBase):
    """Mixin base: the attributes named in ``state_names`` survive Zennit's ``copy()``.

    Zennit's composites copy one template hook per module, and ``BasicHook.copy`` rebuilds the
    hook from its modifiers only. At run time the mixin derives from ``object``;
    :func:`mixin_hook` places it before the rule's class.
    """

    state_names: ClassVar[tuple[str, ...]] = ()

    def copy(self) -> Hook:
        """Copy of the rule with this mixin's state (shared, not deep-copied)."""
        copy = super().copy()
        for name in self.state_names:
            setattr(copy, name, getattr(self, name))
        return copy


_MIXED_CLASSES: dict[tuple[type, type], type] = {}


def _mixed_class(mixin: type, rule: type) -> type:
    """The class ``<Mixin><Rule>(mixin, rule)``, made once per pair."""
    key = (mixin, rule)
    if key not in _MIXED_CLASSES:
        _MIXED_CLASSES[key] = type(f"{mixin.__name__}{rule.__name__}", (mixin, rule), {})
    return _MIXED_CLASSES[key]


def mixin_hook(hook: Hook, mixin: type[StatefulHook], **state: Any) -> Hook:
    """Copy ``hook`` and make the copy an instance of ``mixin`` placed before its rule class.

    Parameters
    ----------
    hook : zennit.core.Hook
        The rule (e.g. ``Gamma()``); it is copied, not changed.
    mixin : type
        A :class:`StatefulHook` subclass overriding e.g. ``backward``.
    **state
        Values for every name in ``mixin.state_names``.

    Returns
    -------
    zennit.core.Hook
        A hook of class ``<Mixin><Rule>``, a subclass of the rule's class.
    """
    if not isinstance(hook, Hook):
        raise TypeError(f"hook must be a zennit Hook, got {type(hook).__name__}")
    if set(state) != set(mixin.state_names):
        raise TypeError(f"{mixin.__name__} needs state {mixin.state_names}, got {sorted(state)}")
    wrapped = hook.copy()
    wrapped.__class__ = _mixed_class(mixin, type(hook))
    for name, value in state.items():
        setattr(wrapped, name, value)
    return wrapped


class ModuleState:
    """The parameter and buffer objects and attribute names of every submodule, to restore.

    zennit 1.0's BatchNorm merge leaves merged tensors in ``state_dict()`` and shadowing
    instance attributes after the canonizer is removed (upstream issue #237); restoring the
    original objects undoes that without copying data.

    Parameters
    ----------
    model : torch.nn.Module
        Captured on construction; :meth:`restore` puts everything back.
    """

    def __init__(self, model: nn.Module) -> None:
        self.saved = [
            (module, dict(module._parameters), dict(module._buffers), set(vars(module)))
            for module in model.modules()
        ]

    def restore(self) -> None:
        """Reassign the captured parameters and buffers; drop attributes added since."""
        for module, parameters, buffers, names in self.saved:
            module._parameters.clear()
            module._parameters.update(parameters)
            module._buffers.clear()
            module._buffers.update(buffers)
            for name in set(vars(module)) - names:
                del module.__dict__[name]


class RuleWrappingComposite(Composite):
    """A composite that keeps a base composite's canonizers and rules and wraps the rules.

    Subclasses implement :meth:`wrap_rule` and may check the result in :meth:`check_registered`.
    Registering restores the model on error; :meth:`remove` restores its parameter and buffer
    objects (see :class:`ModuleState`).

    Parameters
    ----------
    base : zennit.core.Composite
        The composite whose rules and canonizers are used.
    """

    def __init__(self, base: Composite) -> None:
        if not isinstance(base, Composite):
            raise TypeError(
                f"composite must be a zennit Composite instance, got {type(base).__name__}"
            )
        self.base = base
        self.module_state: ModuleState | None = None
        super().__init__(module_map=self._module_map, canonizers=base.canonizers)

    def _module_map(self, ctx: dict, name: str, module: nn.Module) -> Hook | None:
        template = self.base.module_map(ctx, name, module)
        if template is None:
            return self.fallback_rule(name, module)
        return self.wrap_rule(ctx, name, module, template)

    def fallback_rule(self, name: str, module: nn.Module) -> Hook | None:
        """The hook for a module the base composite gives no rule (default: none)."""
        return None

    def wrap_rule(self, ctx: dict, name: str, module: nn.Module, template: Hook) -> Hook:
        """The hook to register for ``module`` given the base composite's ``template``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what the previous registration recorded (called before registering)."""

    def check_registered(self, module: nn.Module) -> None:
        """Raise if the registration is unusable (called after registering, before returning)."""

    def register(self, module: nn.Module) -> None:
        """Apply the base composite's canonizers and the wrapped rules to ``module``.

        On error the model is left unchanged and the error is raised.
        """
        self.remove()
        self.reset()
        state = ModuleState(module)  # set after super().register, which calls self.remove()
        try:
            super().register(module)
            self.module_state = state
            self.check_registered(module)
        except BaseException:
            self.module_state = state
            self.remove()
            raise

    def remove(self) -> None:
        """Remove hooks and canonizers and restore the model's parameter and buffer objects."""
        super().remove()
        if self.module_state is not None:
            self.module_state.restore()
            self.module_state = None


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a module's arguments or output (a tensor, or a tuple/list of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [item for item in value if isinstance(item, torch.Tensor)]
    return []


class BatchCheck:
    """Hooks on a root module: an empty or non-finite batch, or a non-finite output, raises.

    A forward pre-hook checks every tensor argument of the model (a batch of at least one
    sample, finite values); a forward hook checks the model's output, so that no relevance is
    computed from NaN or ±inf. Composites call :meth:`register` and :meth:`remove` from their
    own, which keeps them usable in ``with Gradient(model, composite)``.

    Parameters
    ----------
    owner : str
        Name of the method in the messages (e.g. ``'PLRPLambda'``).
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.handles: list[RemovableHandle] = []

    def register(self, module: nn.Module) -> None:
        """Hook ``module`` (the model the composite is registered to)."""
        self.remove()
        self.handles = [
            module.register_forward_pre_hook(self.check_inputs),
            module.register_forward_hook(self.check_output),
        ]

    def remove(self) -> None:
        """Remove the hooks (does nothing if none are registered)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def check_inputs(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook: ValueError on an empty batch or a non-finite input."""
        for position, tensor in enumerate(_tensors(args)):
            if tensor.ndim > 0 and tensor.shape[0] == 0:
                raise ValueError(
                    f"{self.owner}: the input batch is empty (input {position} has shape "
                    f"{tuple(tensor.shape)}); expected at least one sample"
                )
            check_finite(f"{self.owner}: input {position} of the model", tensor)

    def check_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Forward hook: ValueError on a non-finite model output."""
        for position, tensor in enumerate(_tensors(output)):
            check_finite(
                f"{self.owner}: output {position} of the model (for finite inputs)", tensor
            )
