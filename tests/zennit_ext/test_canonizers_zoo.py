"""Canonizers of torchvision's CNN families: outputs, restoration, conservation, NRM.

One model per family, the smallest variant, float64, random weights and random BatchNorm
statistics and affine parameters, a batch of one at 32² (AlexNet 64², Inception v3 75²), on
one thread. AlexNet and VGG have a 64-wide classifier (same layer types; the 4096-wide layers
would dominate every pass); EfficientNetV2 is torchvision's ``EfficientNet`` with the
FusedMBConv and MBConv stages of ``efficientnet_v2_s`` at reduced depth (the full model takes
~10 s per pass here). RegNet X, ResNeXt and Wide ResNet use the blocks of RegNet Y and ResNet.

For each family: (a) the canonized output equals the original; (b) removal restores the model
exactly, also after an error during registration; (c) LRP (``EpsilonPlusFlat``, the gate held
constant) conserves relevance on a bias-free copy, up to the relevance z⁺ cannot pass on;
(d) NRM with its default arguments (``'auto'`` canonizers) conserves relevance. With the
residual canonizer left out, NRM's error names the block and the canonizer.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig
from zennit.attribution import Gradient
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat
from zennit.core import Composite

from zennit_ext import NRM
from zennit_ext.canonizers import (
    AutoCanonizer,
    CanonizerGroup,
    DenseNetCanonizer,
    auto_canonizers,
    unsupported_modules,
)
from zennit_ext.layers import Multiply
from zennit_ext.nrm.engine import ConservationError
from zennit_ext.rules import ProductRule

INCEPTION = {"aux_logits": False, "init_weights": False, "transform_input": True}


def _efficientnet_v2_small() -> nn.Module:
    """torchvision's EfficientNet with FusedMBConv and MBConv stages as in efficientnet_v2_s."""
    setting = [
        FusedMBConvConfig(1, 3, 1, 24, 24, 2),
        FusedMBConvConfig(4, 3, 2, 24, 48, 2),
        MBConvConfig(4, 3, 2, 48, 64, 2, width_mult=1.0, depth_mult=1.0),
        MBConvConfig(6, 3, 1, 64, 64, 1, width_mult=1.0, depth_mult=1.0),
    ]
    return EfficientNet(setting, dropout=0.2, last_channel=256)


def _tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return partial(torchvision.models.get_model, name, weights=None, **kwargs)


def _small_head(name: str) -> nn.Module:
    """AlexNet or VGG with its classifier's layers 64 wide: the same layer types, without
    the 60–120 M parameters of the 4096-wide layers (built on the meta device, never filled)."""
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    inputs = model.classifier[1 if name == "alexnet" else 0].in_features
    model.classifier = nn.Sequential(
        nn.Dropout(),
        nn.Linear(inputs, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(64, 64),
        nn.ReLU(inplace=True),
        nn.Linear(64, 10),
    )
    return model


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]
    size: int
    layers: tuple[str, str]  # NRM: a layer in the middle, one near the top
    canonizer: str | None  # the family canonizer 'auto' must choose
    relu_only: bool = True  # no signed activation reaches a z⁺ layer with all-negative terms


FAMILIES = {
    "alexnet": Family(partial(_small_head, "alexnet"), 64, ("features.5", "features.12"), None),
    "vgg11_bn": Family(
        partial(_small_head, "vgg11_bn"), 32, ("features.10", "features.27"), "VGGCanonizer"
    ),
    "resnet18": Family(_tv("resnet18"), 32, ("layer2", "layer4"), "ResNetCanonizer"),
    "squeezenet1_1": Family(_tv("squeezenet1_1"), 32, ("features.6", "features.12"), None),
    "densenet121": Family(
        _tv("densenet121"),
        32,
        ("features.transition2", "features.denseblock4"),
        "DenseNetCanonizer",
    ),
    "googlenet": Family(
        _tv("googlenet", **INCEPTION), 32, ("inception4a", "inception5b"), "GoogLeNetCanonizer"
    ),
    "inception_v3": Family(
        _tv("inception_v3", **INCEPTION), 75, ("Mixed_6b", "Mixed_7c"), "InceptionCanonizer"
    ),
    "mobilenet_v2": Family(
        _tv("mobilenet_v2"),
        32,
        ("features.8", "features.16"),
        "MobileNetV2Canonizer",
        False,
    ),
    "mobilenet_v3_small": Family(
        _tv("mobilenet_v3_small"),
        32,
        ("features.6", "features.11"),
        "MobileNetV3Canonizer",
        False,
    ),
    "mnasnet0_5": Family(
        _tv("mnasnet0_5"),
        32,
        ("layers.10", "layers.14"),
        "MNASNetCanonizer",
        False,
    ),
    "efficientnet_b0": Family(
        _tv("efficientnet_b0"), 32, ("features.4", "features.7"), "EfficientNetCanonizer", False
    ),
    "efficientnet_v2": Family(
        _efficientnet_v2_small, 32, ("features.2", "features.4"), "EfficientNetCanonizer", False
    ),
    "regnet_y_400mf": Family(
        _tv("regnet_y_400mf"),
        32,
        ("trunk_output.block2", "trunk_output.block4"),
        "RegNetCanonizer",
        False,
    ),
    "shufflenet_v2_x0_5": Family(
        _tv("shufflenet_v2_x0_5"), 32, ("stage3", "stage4"), "ShuffleNetV2Canonizer", False
    ),
}

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _randomized(model: nn.Module, seed: int, size: int) -> nn.Module:
    """``model`` in float64 eval mode with random BatchNorms: statistics estimated on random
    inputs (so activations keep their scale through the depth), then means shifted by up to
    ±0.2 standard deviations, variances scaled by 0.75–1.25, affine weights in [0.5, 1.5] and
    shifts in [-0.2, 0.2]."""
    generator = torch.Generator().manual_seed(seed)

    def draw(count: int, low: float, high: float) -> torch.Tensor:
        values = torch.rand(count, generator=generator, dtype=torch.float64)
        return values * (high - low) + low

    model = model.double()
    norms = [module for module in model.modules() if isinstance(module, _BatchNorm)]
    if norms:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # the batch's own statistics
        x = torch.randn(4, 3, size, size, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            model.train()(x)
    with torch.no_grad():
        for norm in norms:
            count = norm.num_features
            norm.running_mean.add_(draw(count, -0.2, 0.2) * norm.running_var.sqrt())
            norm.running_var.mul_(draw(count, 0.75, 1.25))
            norm.weight.copy_(draw(count, 0.5, 1.5))
            norm.bias.copy_(draw(count, -0.2, 0.2))
    return model.eval()


def bias_free(model: nn.Module) -> nn.Module:
    """A copy with every bias, BatchNorm mean and BatchNorm shift 0."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in copied.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                parameter.zero_()
        for module in copied.modules():
            if isinstance(module, _BatchNorm):
                module.running_mean.zero_()
    return copied


@dataclass
class Zoo:
    name: str
    family: Family
    model: nn.Module
    x: torch.Tensor
    output: torch.Tensor

    @functools.cached_property
    def free(self) -> nn.Module:
        """The bias-free copy."""
        return bias_free(self.model)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these small float64 passes are 2–3× faster on a shared 2-core
    machine without OpenMP's synchronization between two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(FAMILIES))
def zoo(request) -> Zoo:
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    model = _randomized(family.build(), seed=1, size=family.size)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, family.size, family.size, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        output = model(x)
    return Zoo(request.param, family, model, x, output)


def _canonized(canonizers: list[Canonizer]) -> Composite:
    """A composite that only applies ``canonizers``."""
    return Composite(module_map=lambda ctx, name, module: None, canonizers=canonizers)


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "objects": [
            (name, module, dict(module._parameters), dict(module._buffers))
            for name, module in model.named_modules()
        ],
        "attributes": [sorted(vars(module)) for module in model.modules()],
        "values": [
            {k: v for k, v in vars(module).items() if isinstance(v, int | float | bool)}
            for module in model.modules()
        ],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    }


def _assert_restored(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert len(after["objects"]) == len(before["objects"])
    for (name, module, params, buffers), (name2, module2, params2, buffers2) in zip(
        before["objects"], after["objects"], strict=True
    ):
        assert name == name2 and module is module2, name
        assert params.keys() == params2.keys() and buffers.keys() == buffers2.keys(), name
        assert all(params[k] is params2[k] for k in params), name
        assert all(buffers[k] is buffers2[k] for k in buffers), name
    for key in ("attributes", "values", "hooks"):
        assert after[key] == before[key], key


# ---------------------------------------------------------------- (a) outputs unchanged


def test_auto_chooses_the_family_canonizer(zoo):
    names = [type(c).__name__ for c in auto_canonizers(zoo.model)]
    assert names == ([zoo.family.canonizer] if zoo.family.canonizer else [])
    assert unsupported_modules(zoo.model) == []


def test_canonized_output_equals_the_original(zoo):
    composite = _canonized(auto_canonizers(zoo.model))
    composite.register(zoo.model)
    try:
        with torch.no_grad():
            canonized = zoo.model(zoo.x)
    finally:
        composite.remove()
    scale = zoo.output.abs().max()
    assert (canonized - zoo.output).abs().max() <= 1e-6 * scale


# ---------------------------------------------------------------- (b) restored


class _Failing(Canonizer):
    """Fails when applied (after the canonizers before it changed the model)."""

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        raise RuntimeError("injected failure")

    def register(self) -> None:
        pass

    def remove(self) -> None:
        pass


def test_removal_and_failed_registration_restore_the_model(zoo):
    model = zoo.model
    before = _snapshot(model)
    composite = _canonized(auto_canonizers(model))
    composite.register(model)
    if zoo.family.canonizer:
        during = _snapshot(model)
        assert during["attributes"] != before["attributes"] or any(
            not torch.equal(during["state"][k], v) for k, v in before["state"].items()
        )
    composite.remove()
    _assert_restored(model, before)
    # a group is all or nothing: the model is unchanged right after the error
    group = _canonized([CanonizerGroup([*auto_canonizers(model), _Failing()])])
    with pytest.raises(RuntimeError, match="injected failure"):
        group.register(model)
    _assert_restored(model, before)
    # separate canonizers: Zennit keeps those applied before the error; remove() undoes them
    separate = _canonized([*auto_canonizers(model), _Failing()])
    with pytest.raises(RuntimeError, match="injected failure"):
        separate.register(model)
    separate.remove()
    _assert_restored(model, before)
    # a BatchNorm in training mode cannot be merged: nothing is changed
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if zoo.family.canonizer and norms:
        norms[0].train()
        try:
            with pytest.raises(ValueError, match="is in training mode"):
                _canonized([AutoCanonizer()]).register(model)
        finally:
            norms[0].eval()
        _assert_restored(model, before)
    with torch.no_grad():
        assert torch.equal(model(zoo.x), zoo.output)


# ---------------------------------------------------------------- (c) conservation


@dataclass
class LRPMass:
    """Relevance of one LRP pass on a bias-free copy (sums over the batch of one)."""

    output: float  # at the target logit
    input: float  # of the heatmap
    absorbed: float  # by z⁺'s stabilizer: all of it where z⁺ = 0 (every term negative)


STABILIZER = 1e-12


def _absorbed(module: nn.Conv2d, input: torch.Tensor, output: torch.Tensor) -> float:
    """Relevance that z⁺ at ``module`` does not pass on: ``R ε / (z⁺ + ε)`` per output neuron,
    with ``z⁺ = Σ x⁺w⁺ + x⁻w⁻`` (all of ``R`` where z⁺ = 0)."""
    weight = module.weight.detach()

    def conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(
            x, w, None, module.stride, module.padding, module.dilation, module.groups
        )

    zplus = conv(input.clamp(min=0), weight.clamp(min=0)) + conv(
        input.clamp(max=0), weight.clamp(max=0)
    )
    if output.grad is None:
        return 0.0
    return float((output.grad * STABILIZER / (zplus + STABILIZER)).sum())


def _lrp(model: nn.Module, x: torch.Tensor) -> LRPMass:
    """EpsilonPlusFlat with the gate held constant and the model's 'auto' canonizers; the
    target logit's value as the output relevance."""
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1, keepdim=True)
    relevance = torch.zeros_like(logits).scatter(1, target, logits.gather(1, target))
    layer_map = [(Multiply, ProductRule((1, 0), epsilon=STABILIZER))]
    # random initializations shrink activations with depth (GoogLeNet's logits are ~1e-5 on the
    # bias-free copy): stabilizers of 1e-9 would absorb 2e-4 of the relevance there
    composite = EpsilonPlusFlat(
        epsilon=STABILIZER,
        stabilizer=STABILIZER,
        layer_map=layer_map,
        canonizers=auto_canonizers(model),
    )
    records: list[tuple[nn.Conv2d, torch.Tensor, torch.Tensor]] = []

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        records.append((module, args[0].detach(), output))

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1:]  # the first is flat
    with Gradient(model, composite) as attributor:
        handles = [conv.register_forward_hook(record) for conv in convs]
        try:
            _, heatmap = attributor(x, relevance)
        finally:
            for handle in handles:
                handle.remove()
        absorbed = sum(_absorbed(*record) for record in records)
    return LRPMass(float(relevance.sum()), float(heatmap.sum()), absorbed)


def test_lrp_conserves_relevance_on_the_bias_free_copy(zoo):
    """z⁺ passes on all relevance except at neurons whose every contribution is negative
    (z⁺ = 0, or z⁺ below its stabilizer), where it stops; signed activations (linear
    bottlenecks, depthwise convolutions without activation, SiLU/Hardswish) make such
    neurons. The heatmap plus that relevance is the output relevance, and it is 0 where every
    convolution reads ReLU outputs and feeds a ReLU."""
    mass = _lrp(zoo.free, zoo.x)
    assert mass.input + mass.absorbed == pytest.approx(mass.output, rel=1e-4)
    if zoo.family.relu_only:
        assert mass.absorbed <= 1e-6 * mass.output


# ---------------------------------------------------------------- (d) NRM


def test_nrm_conserves_relevance_with_its_default_arguments(zoo):
    """NRM(model, layers): γ = 0.25 and the 'auto' canonizers. On the bias-free copy no
    column sum is negative (each is 1 or 0); with random BatchNorm shifts γ breaks eq. 15."""
    before = _snapshot(zoo.free)
    nrm = NRM(zoo.free, list(zoo.family.layers))
    assert isinstance(nrm.composite.base.canonizers[0], AutoCanonizer)
    with nrm.explain(zoo.x, zoo.output.argmax(1)) as explanation:
        total = explanation.reached + sum(explanation.stopped.values())
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-9)
    _assert_restored(zoo.free, before)


# ---------------------------------------------------------------- (e) the error names the block


def test_nrm_without_the_residual_canonizer_names_the_block_and_its_canonizer():
    """Zennit's BatchNorm merge alone (a common choice) leaves MobileNetV2's skips functional."""
    torch.manual_seed(0)
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s: blocks 3 and 5 skip
    model = torchvision.models.MobileNetV2(width_mult=0.5, inverted_residual_setting=setting)
    model = bias_free(_randomized(model, seed=1, size=32))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)).double()
    nrm = NRM(model, ["features.2", "features.6"], canonizers=[SequentialMergeBatchNorm()])
    with pytest.raises(ConservationError) as error:
        nrm.explain(x, 0)
    message = str(error.value)
    assert "in module 'features.5' (InvertedResidual)" in message
    assert "zennit_ext.canonizers.MobileNetV2Canonizer" in message


# ---------------------------------------------------------------- unit checks


def test_densenet_merges_the_batch_norms_after_a_convolution_and_keeps_the_others():
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16)
    model = _randomized(model, seed=1, size=32)
    instances = DenseNetCanonizer().apply(model)
    try:
        merged = [i.batch_norm for i in instances if hasattr(i, "linears")]
        kept = [i.batch_norm for i in instances if type(i).__name__ == "KeepBatchNorm"]
        norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        # merged: conv0-norm0 and conv1-norm2 of 4 layers; kept: 4 norm1, 1 transition, norm5
        assert len(merged) == 1 + 4 and len(kept) == 4 + 1 + 1
        assert {id(n) for n in merged + kept} == {id(n) for n in norms}
    finally:
        for instance in instances:
            instance.remove()


def test_unsupported_modules_lists_layer_norm_not_canonized_attention():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2)
            self.norm = nn.LayerNorm(8)

    found = [(name, reason.split(";")[0]) for name, _, reason in unsupported_modules(Block())]
    assert [name for name, _ in found] == ["norm"]  # MultiheadAttention has a canonizer
    assert "no LRP rule" in found[0][1]
