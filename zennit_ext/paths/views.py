"""Activation-based views of path units: deconvolution, block reconstruction, activation maps.

After Bhati et al., "Neural Network Interpretability With Layer-Wise Relevance Propagation:
Novel Techniques for Neuron Selection and Visualization" (arXiv:2412.05686), §IV D and
Figs. 5 and 7, which build on Zeiler & Fergus, "Visualizing and Understanding Convolutional
Networks" (arXiv:1311.2901):

- :func:`deconvolution`: the paper's Algorithm 3, the reconstruction of a layer's selected
  feature maps in pixel space (Captum's ``NeuronDeconvolution``);
- :func:`block_reconstruction`: the paper's Algorithm 2, one block only: max-pool the block's
  output with its switches, zero every map but the selected ones, unpool, and apply the
  transposed convolution with the block's convolution weights (no bias, no rectification),
  which gives the block's *input* feature maps (not pixels);
- :func:`activation_heatmap`: the activation-based k-path heatmap (Fig. 7; our definition):
  each path unit's activation map, brought to the input's size and divided by the largest
  absolute activation of its layer, summed over the path's layers and over the paths.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from zennit.types import Activation

from zennit_ext._checks import check_finite

__all__ = ["RECTIFIERS", "deconvolution", "block_reconstruction", "activation_heatmap"]

RECTIFIERS = (nn.ReLU, nn.ReLU6)


def check_rectifiers(rectifiers: Sequence[type[nn.Module]]) -> tuple[type[nn.Module], ...]:
    """``rectifiers`` as a non-empty tuple of classes from :data:`RECTIFIERS` (ValueError)."""
    chosen = tuple(rectifiers)
    if not chosen or not all(r in RECTIFIERS for r in chosen):
        raise ValueError(f"rectifiers must be a subset of {RECTIFIERS}, got {chosen!r}")
    return chosen


def deconvolution(
    model: nn.Module,
    module: nn.Module,
    x: torch.Tensor,
    units: torch.Tensor,
    rectifiers: Sequence[type[nn.Module]] = (nn.ReLU,),
) -> torch.Tensor:
    """Zeiler & Fergus' deconvolution of the given channels of ``module``'s output, like ``x``.

    Captum's ``NeuronDeconvolution`` on ``module`` with the selector ``½ Σ a²`` over the
    channels ``units``: its gradient is the activation map itself on those channels and 0
    elsewhere, so the backward pass is the paper's Algorithm 3 (zero the other maps, unpool
    with the max switches, rectify, transposed convolutions without bias).

    Parameters
    ----------
    model, module : torch.nn.Module
        The network and the layer whose maps are reconstructed.
    x : torch.Tensor
        (batch, ...) inputs.
    units : torch.Tensor
        (batch, m) long: channels of ``module``'s output kept per sample (repeats allowed).
    rectifiers : sequence of module classes
        The rectifier modules of the model, a subset of :data:`RECTIFIERS`.

    Raises
    ------
    TypeError
        If an activation module other than ``rectifiers`` runs before ``module``.
    """
    from captum.attr import NeuronDeconvolution

    check_finite("x", x)
    rectifiers = check_rectifiers(rectifiers)
    attribution = NeuronDeconvolution(model, module)
    attribution.deconv = _deconvolution_class()(model, rectifiers)

    def selector(output: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(output.shape[:2], dtype=output.dtype, device=output.device)
        mask = mask.scatter(1, units.to(output.device), 1.0)
        mask = mask.view(*mask.shape, *[1] * (output.dim() - 2))
        return 0.5 * (output * mask).square().flatten(1).sum(1)

    with _only_rectifiers_below(model, module, rectifiers), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
        return attribution.attribute(x, selector)


def block_reconstruction(
    model: nn.Module,
    module: nn.Module,
    x: torch.Tensor,
    keep: torch.Tensor,
    rectifiers: Sequence[type[nn.Module]] = (nn.ReLU,),
) -> torch.Tensor:
    """The paper's Algorithm 2: the input of one convolution block rebuilt from kept channels.

    The block is ``module`` (a ``Conv2d``), the rectifiers that follow it and, if the next
    module is a ``MaxPool2d``, that pool (else pooling is the identity). With ``a`` the
    block's output before pooling: ``pooled, switches = MaxPool(a)``; every channel of
    ``pooled`` not in ``keep`` is set to 0; ``MaxUnpool(pooled, switches)``; then the
    transposed convolution with ``module``'s weights (no bias). One forward pass, no hooks
    left behind.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    module : torch.nn.Conv2d
        The block's convolution.
    x : torch.Tensor
        (batch, ...) inputs.
    keep : torch.Tensor
        Bool (batch, C_out): the channels kept per sample (e.g. the units of the top paths,
        or a graph's kept units).
    rectifiers : sequence of module classes
        Modules (a subset of :data:`RECTIFIERS`) that may follow the convolution in the block.

    Returns
    -------
    torch.Tensor
        (batch, C_in, H_in, W_in): like ``module``'s input, in its dtype and device.

    Raises
    ------
    TypeError
        If ``module`` is not an ``nn.Conv2d`` with zero padding mode and numeric padding.
    ValueError
        If ``keep`` is not a bool (batch, C_out) tensor, or the pool is dilated.
    """
    rectifiers = check_rectifiers(rectifiers)
    if not isinstance(module, nn.Conv2d) or isinstance(module.padding, str):
        raise TypeError(f"module must be an nn.Conv2d with numeric padding, got {module!r}")
    if module.padding_mode != "zeros":
        raise TypeError(f"module must pad with zeros, got padding_mode={module.padding_mode!r}")
    check_finite("x", x)
    expected = (len(x), module.out_channels)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.shape != expected:
        shown = (keep.dtype, tuple(keep.shape)) if isinstance(keep, torch.Tensor) else keep
        raise ValueError(f"keep must be a bool tensor of shape {expected}, got {shown!r}")
    block = _block_after(model, module, x, rectifiers)
    conv_input, output, pool = block["input"], block["output"], block["pool"]
    mask = keep.to(device=output.device, dtype=output.dtype)[:, :, None, None]
    if pool is None:
        unpooled = output * mask
    else:
        if pool.dilation not in (1, (1, 1)):
            raise ValueError(f"the block's pool must not be dilated, got {pool!r}")
        pooled, switches = F.max_pool2d(
            output, pool.kernel_size, pool.stride, pool.padding, 1, pool.ceil_mode, True
        )
        unpooled = F.max_unpool2d(
            pooled * mask, switches, pool.kernel_size, pool.stride, pool.padding, output.shape[-2:]
        )
    sizes = [
        (n - 1) * s - 2 * p + d * (k - 1) + 1
        for n, s, p, d, k in zip(
            unpooled.shape[-2:],
            module.stride,
            module.padding,
            module.dilation,
            module.kernel_size,
            strict=True,
        )
    ]
    extra = tuple(want - got for want, got in zip(conv_input.shape[-2:], sizes, strict=True))
    return F.conv_transpose2d(
        unpooled,
        module.weight.detach(),
        None,
        module.stride,
        module.padding,
        extra,
        module.groups,
        module.dilation,
    )


def activation_heatmap(
    outputs: Mapping[str, torch.Tensor], units: torch.Tensor, size: Sequence[int]
) -> torch.Tensor:
    """Activation-based k-path heatmap (the paper's Fig. 7; our definition), ``(batch, *size)``.

    For path ``p`` and layer ``l`` (bottom → top), the activation map ``a_l[u_pl]`` of its
    unit, resized bilinearly to ``size`` (a dense unit's value fills the map), is divided by
    ``max |a_l|`` over all units and positions of that layer (per sample; 1 where 0), so
    layers are comparable and a strongly active unit outweighs a weak one of its layer. The
    heatmap is the sum over the L layers and the k paths.

    Parameters
    ----------
    outputs : mapping of str to torch.Tensor
        The L layers' outputs, bottom → top, each (batch, C, h, w) or (batch, n).
    units : torch.Tensor
        (batch, k, L) long: the paths' units (:attr:`~zennit_ext.paths.Paths.units`).
    size : sequence of int
        (H, W) of the heatmap (the input's spatial size).

    Returns
    -------
    torch.Tensor
        (batch, H, W) in the outputs' dtype and device.
    """
    heat = None
    for depth, output in enumerate(outputs.values()):
        index = units[:, :, depth].to(output.device)
        scale = output.abs().flatten(1).amax(1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        if output.dim() == 4:
            maps = output.gather(1, index[:, :, None, None].expand(-1, -1, *output.shape[2:]))
            maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
        elif output.dim() == 2:
            maps = output.gather(1, index)[:, :, None, None].expand(-1, -1, *size)
        else:
            raise ValueError(
                f"layer outputs must be (batch, C, h, w) or (batch, n), got {output.shape}"
            )
        layer = maps.sum(1) / scale[:, None, None]
        heat = layer if heat is None else heat + layer
    if heat is None:
        raise ValueError("outputs must hold at least one layer")
    return heat


def layer_outputs(model: nn.Module, modules: Mapping[str, nn.Module], x: torch.Tensor) -> dict:
    """``{name: output}`` of ``modules`` (detached copies) from one forward pass without grad."""
    check_finite("x", x)
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            captured[name] = output.detach().clone()

        return hook

    handles = [module.register_forward_hook(capture(n)) for n, module in modules.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: captured[name] for name in modules}


def _block_after(
    model: nn.Module, module: nn.Module, x: torch.Tensor, rectifiers: tuple[type[nn.Module], ...]
) -> dict[str, Any]:
    """The convolution's input, the block's output before pooling, and the pool (or None).

    The block's output is the input of the first leaf module after ``module`` that is not one
    of ``rectifiers`` (so a functional rectifier inside a ``forward`` counts too), or the last
    rectifier's output if no module follows.
    """
    found: dict[str, Any] = {"pool": None}

    def before(child: nn.Module, args: Any) -> None:
        if child is module and "input" not in found:
            found["input"] = args[0].detach()
        elif "current" in found and "output" not in found and not isinstance(child, rectifiers):
            same = isinstance(args[0], torch.Tensor) and args[0].shape == found["current"].shape
            found["output"] = args[0].detach().clone() if same else found["current"]
            if isinstance(child, nn.MaxPool2d) and same:
                found["pool"] = child

    def after(child: nn.Module, args: Any, output: Any) -> None:
        if (child is module or "current" in found) and "output" not in found:
            found["current"] = output.detach().clone()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_pre_hook(before) for m in leaves]
    followers = [m for m in leaves if m is module or isinstance(m, rectifiers)]
    handles += [m.register_forward_hook(after) for m in followers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if "input" not in found:
        raise ValueError(f"module {module!r} did not run in the forward pass")
    found.setdefault("output", found["current"])
    return found


@functools.cache
def _deconvolution_class() -> type:
    """Captum's ``Deconvolution`` rectifying the backward pass of every given rectifier class
    (Captum's own hooks ``nn.ReLU`` modules only)."""
    from captum._utils.common import _register_backward_hook
    from captum.attr import Deconvolution

    class RectifierDeconvolution(Deconvolution):
        def __init__(self, model: nn.Module, rectifiers: tuple[type[nn.Module], ...]) -> None:
            super().__init__(model)
            self.rectifiers = rectifiers

        def _register_hooks(self, module: nn.Module) -> None:
            if isinstance(module, self.rectifiers):
                self.backward_hooks.extend(
                    _register_backward_hook(module, self._backward_hook, self)
                )

    return RectifierDeconvolution


@contextlib.contextmanager
def _only_rectifiers_below(
    model: nn.Module, layer: nn.Module, rectifiers: tuple[type[nn.Module], ...]
) -> Iterator[None]:
    """Raise TypeError when an activation module other than ``rectifiers`` runs before
    ``layer`` in a forward pass inside the context (deconvolution cannot pass it)."""
    reached: list[bool] = []

    def check(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if not reached:
                raise TypeError(
                    f"module {name!r} is a {type(module).__name__} below the explained layer, "
                    f"not one of the rectifiers {[r.__name__ for r in rectifiers]}; pass "
                    f"rectifiers=(nn.ReLU, nn.{type(module).__name__}) if it is a rectifier"
                )

        return hook

    handles = [layer.register_forward_hook(lambda *args: reached.append(True))]
    try:
        for name, module in model.named_modules():
            if isinstance(module, Activation) and not isinstance(module, rectifiers):
                handles.append(module.register_forward_pre_hook(check(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()
