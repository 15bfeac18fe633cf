"""Detect LXT's global patches (``lxt.efficient.monkey_patch_zennit``, ``monkey_patch``).

LXT 2.1 rewrites ``zennit.core.BasicHook.forward``/``backward`` in place to work in the
gradient × input frame, and ``monkey_patch(module)`` replaces ``forward`` of torch.nn classes
(LayerNorm, GELU, MultiheadAttention, …) for every model in the process. Any Zennit rule
built on ``BasicHook`` (ε, γ, ``Norm``, PLRP's pruned rules) then returns relevance divided
by its input, silently. Composites that rely on Zennit's frame call
:func:`check_no_lxt_patch` when registering.
"""

from __future__ import annotations

__all__ = [
    "lxt_patched_attributes",
    "lxt_patch_active",
    "basic_hook_backward_patched",
    "check_no_lxt_patch",
]


def _is_foreign(function: object) -> bool:
    return getattr(function, "__module__", "").startswith("lxt")


def lxt_patched_attributes() -> list[str]:
    """Dotted names of the Zennit and torch.nn attributes LXT has replaced, in sorted order.

    Returns
    -------
    list of str
        E.g. ``['torch.nn.LayerNorm.forward', 'zennit.core.BasicHook.backward', …]``;
        empty when nothing is patched.
    """
    import torch.nn
    from zennit.core import BasicHook

    found = [
        f"zennit.core.BasicHook.{name}"
        for name in ("forward", "backward")
        if _is_foreign(vars(BasicHook).get(name))
    ]
    for name, value in vars(torch.nn).items():
        if isinstance(value, type) and issubclass(value, torch.nn.Module):
            if _is_foreign(vars(value).get("forward")):
                found.append(f"torch.nn.{name}.forward")
    return sorted(found)


def basic_hook_backward_patched() -> bool:
    """Whether LXT has replaced ``zennit.core.BasicHook.backward`` (a cheap check per call)."""
    from zennit.core import BasicHook

    return _is_foreign(vars(BasicHook).get("backward"))


def lxt_patch_active() -> bool:
    """Whether LXT has patched Zennit's ``BasicHook`` or a torch.nn class's ``forward``."""
    return bool(lxt_patched_attributes())


def check_no_lxt_patch(owner: str) -> None:
    """Raise RuntimeError naming ``owner`` and the patched attributes if LXT's patch is active.

    Parameters
    ----------
    owner : str
        The method refusing to run (e.g. ``'PLRPLambda'``).

    Raises
    ------
    RuntimeError
        If :func:`lxt_patch_active`.
    """
    patched = lxt_patched_attributes()
    if patched:
        raise RuntimeError(
            f"{owner} computes relevance in Zennit's frame, but LXT has patched {patched} "
            "(lxt.efficient.monkey_patch_zennit / monkey_patch): the rules would be silently "
            "wrong. Restore the original attributes (or use a fresh process) first"
        )
