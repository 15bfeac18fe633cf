"""The two building blocks of this package's canonizers: a block method overload and a group.

- :class:`ForwardCanonizer` overloads one method of every instance of some block types (its
  ``forward``, or a helper such as ``_forward_impl``) with an equivalent one that routes an
  operation written as an expression (``x + f(x)``, ``x * gate``, ``x.mean((2, 3))``) through
  a module, so that a Zennit composite can give it a rule. Like Zennit's
  :class:`~zennit.canonizers.AttributeCanonizer`, whose ``register``/``remove`` it keeps, but
  ``apply`` undoes its own changes when one block fails, and a block whose method another
  canonizer already overloaded is left alone (so two canonizers never stack on one block).
- :class:`CanonizerGroup` applies several canonizers as one: all or nothing, and the returned
  instances are removed in the reverse order of their application (Zennit removes a
  composite's canonizer instances first to last).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn
from zennit.canonizers import AttributeCanonizer, Canonizer, CompositeCanonizer

__all__ = [
    "AtomicAttributeCanonizer",
    "ForwardCanonizer",
    "CanonizerGroup",
    "remove_all",
    "attached_names",
]


def remove_all(instances: Sequence[Canonizer]) -> None:
    """Remove applied canonizer instances, last applied first."""
    for instance in reversed(instances):
        instance.remove()


def attached_names(model: nn.Module, canonizers: Sequence[Canonizer]) -> set[str]:
    """Names of ``model``'s modules while ``canonizers`` are applied (those they attach too).

    The canonizers are applied and removed again (also on error): the model is unchanged.
    """
    instances: list[Canonizer] = []
    try:
        for canonizer in canonizers:
            instances.extend(canonizer.apply(model))
        return {name for name, _ in model.named_modules()}
    finally:
        remove_all(instances)


class AtomicAttributeCanonizer(AttributeCanonizer):
    """Zennit's :class:`~zennit.canonizers.AttributeCanonizer`, all or nothing: if registering
    one block fails, the blocks done so far are restored before the error propagates.
    Subclasses take no constructor arguments (``copy`` builds a fresh instance)."""

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Change every matching block; on error, undo the blocks done so far and raise.

        Parameters
        ----------
        root_module : torch.nn.Module
            The model.

        Returns
        -------
        list of Canonizer
            One applied instance per changed block (``remove`` restores it).
        """
        instances: list[Canonizer] = []
        try:
            for name, module in list(root_module.named_modules()):
                attributes = self.attribute_map(name, module)
                if attributes is not None:
                    instance = self.copy()
                    instance.register(module, attributes)
                    instances.append(instance)
        except BaseException:
            remove_all(instances)
            raise
        return instances

    def copy(self) -> AtomicAttributeCanonizer:
        """A fresh canonizer of the same class."""
        return type(self)()  # subclasses take no arguments


class ForwardCanonizer(AtomicAttributeCanonizer):
    """Overload ``method`` of every instance of ``block_types`` and attach modules to it.

    Subclasses set :attr:`block_types` (and :attr:`method`, default ``'forward'``), write the
    overloading method as the static method ``forward`` (its ``self`` is the block) and
    return the modules it uses from :meth:`modules`. The overloaded method is the block's
    own computation, operation for operation, in train and eval mode; only the expression
    an LRP rule needs to see is a module call.

    Attributes
    ----------
    block_types : tuple of type
        Blocks this canonizer changes (subclasses included, unless :meth:`applies` says no).
    method : str
        Name of the overloaded method.
    """

    block_types: ClassVar[tuple[type, ...]] = ()
    method: ClassVar[str] = "forward"

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def applies(cls, module: nn.Module) -> bool:
        """Whether ``module`` is a block this canonizer changes."""
        return isinstance(module, cls.block_types)

    @classmethod
    def modules(cls, module: nn.Module) -> dict[str, nn.Module]:
        """The modules to attach to ``module`` (names starting with ``canonizer_``)."""
        return {}

    @staticmethod
    def forward(self: Any, *args: Any) -> Any:
        """The overloading method; ``self`` is the block."""
        raise NotImplementedError

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict[str, Any] | None:
        if not cls.applies(module) or cls.method in vars(module):
            return None  # not ours, or already overloaded by another canonizer
        attached = cls.modules(module)
        taken = [key for key in attached if hasattr(module, key)]
        if taken:
            raise ValueError(
                f"{cls.__name__}: module {name!r} ({type(module).__name__}) already has the "
                f"attributes {taken}; expected a block that no other canonizer changed"
            )
        return {cls.method: cls.forward.__get__(module), **attached}


class CanonizerGroup(CompositeCanonizer):
    """Several canonizers applied as one, all or nothing.

    Parameters
    ----------
    canonizers : sequence of zennit.canonizers.Canonizer
        Applied in this order.
    """

    def __init__(self, canonizers: Sequence[Canonizer]) -> None:
        super().__init__(tuple(canonizers))

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Apply every canonizer; on error, undo those applied and raise.

        Returns
        -------
        list of Canonizer
            The applied instances, last applied first, so that Zennit (which removes them in
            list order) restores the model in the reverse order of the changes.
        """
        instances: list[Canonizer] = []
        try:
            for canonizer in self.canonizers:
                instances += canonizer.apply(root_module)
        except BaseException:
            remove_all(instances)
            raise
        return instances[::-1]

    def copy(self) -> CanonizerGroup:
        """A group of copies of the same canonizers (a subclass: a fresh instance of it)."""
        if type(self) is not CanonizerGroup:
            return type(self)()  # type: ignore[call-arg]  # the families take no arguments
        return CanonizerGroup([canonizer.copy() for canonizer in self.canonizers])
