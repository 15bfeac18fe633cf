"""Small reference architectures, one per experiment."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

__all__ = ["SynergyMLP", "VGGSmall", "ResNetSmall", "DNACNN", "MNISTMLP"]


def SynergyMLP(  # noqa: N802  (a constructor, named like the class it stands for)
    in_features: int = 16, hidden: Sequence[int] = (128, 64), logits: int = 1
) -> nn.Sequential:
    """SynXAI's MLP: Linear → BN → ReLU → Linear → BN → ReLU → Linear.

    The paper's sigmoid is applied outside (``p = torch.sigmoid(model(x))``) so that BCE can be
    computed stably from logits; ``logits=2`` gives the two-logit variant Quantus needs.

    Parameters
    ----------
    in_features : int
        Input features (16 in the paper).
    hidden : sequence of int
        Hidden widths (128, 64 in the paper).
    logits : int
        Output units: 1 (binary, sigmoid outside) or 2 (softmax classes).

    Notes
    -----
    Modules are named ``fc1, bn1, relu1, fc2, bn2, relu2, out``; SynXAI masks units at the
    ReLUs (``model.relu1``, ``model.relu2``). Input (N, in_features) → output (N, logits).
    A plain ``nn.Sequential`` is returned, so slicing (``model[:3]``) works.
    """
    if logits not in (1, 2):
        raise ValueError(f"logits must be 1 or 2, got {logits}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = in_features
    for i, units in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, units)
        layers[f"bn{i}"] = nn.BatchNorm1d(units)
        layers[f"relu{i}"] = nn.ReLU()
        width = units
    layers["out"] = nn.Linear(width, logits)
    return nn.Sequential(layers)


class VGGSmall(nn.Module):
    """A VGG-style CNN for 64-px images: 4 conv blocks with max-pooling, 2 dense layers.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_channels : int
        Image channels.
    widths : sequence of int
        Channels of the four conv blocks.
    batch_norm : bool
        Insert BatchNorm2d after each convolution.

    Notes
    -----
    ``features`` is an ``nn.Sequential`` (Conv3x3 → [BN] → ReLU → MaxPool2d(2)) and
    ``classifier`` an ``nn.Sequential`` (Flatten → Linear → ReLU → Linear), so layer names read
    like torchvision's VGG (``features.0``, ``classifier.3``). Input (N, C, 64, 64) → (N, K).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 64),
        batch_norm: bool = False,
        image_size: int = 64,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """ResNet's basic block: conv3x3 → BN → ReLU → conv3x3 → BN, + shortcut, → ReLU."""

    def __init__(self, channels: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels != width:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, width, 1, stride, bias=False), nn.BatchNorm2d(width)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A small ResNet for 64-px images: a stem and three residual stages of basic blocks.

    A ResNet-18 in miniature ("Deep Residual Learning for Image Recognition", He et al.,
    arXiv:1512.03385): stem conv3x3 → BN → ReLU at full size, then stages ``layer1`` …
    ``layer3`` (stride 2 each, so 64 → 8 px), global average pooling and one linear layer.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_channels : int
        Image channels.
    widths : sequence of int
        Channels of the three stages (the last is the number of top filters).
    blocks : int
        Basic blocks per stage.

    Notes
    -----
    Input (N, C, 64, 64) → (N, K). ``layer3``'s output (the last block's ``relu2``, after the
    residual sum) is (N, widths[-1], 8, 8); ``head`` (pool → flatten → fc) maps it to the
    logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        blocks: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        channels = widths[0]
        for i, width in enumerate(widths, start=1):
            stage = [
                _BasicBlock(channels if b == 0 else width, width, 2 if b == 0 else 1)
                for b in range(blocks)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            channels = width
        self.head = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(channels, num_classes),
            )
        )
        self.stages = len(widths)

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, self.stages + 1):
            x = self.get_submodule(f"layer{i}")(x)
        return self.head(x)


def DNACNN(  # noqa: N802
    filters: int = 4, length: int = 250, kernel_size: int = 19, pool: int | None = None
) -> nn.Sequential:
    """A one-conv genomics CNN: Conv1d(4 → filters) → ReLU → max-pool → dense → 2 logits.

    "Sparse Explanations of Neural Networks Using Pruned Layer-Wise Relevance Propagation"
    (PLRP) evaluates CNNs with 4 and 32 filters on synthetic DNA but does not give their
    architecture. Global max-pooling (``pool=None``), one hidden dense layer of 32
    units and kernel 19 (the longest planted motif) are our choices. With global max-pooling the
    dense layer sees one number per filter, so PLRP (which never prunes the first layer) can
    only drop whole filters, never positions; ``pool=k`` (local max-pooling over windows of
    ``k`` positions, stride ``k``) keeps positions in the dense layer's input, so pruning there
    drops (filter, window) pairs. It is our ablation of that choice.

    Parameters
    ----------
    filters : int
        Convolution filters (4 or 32 in the paper).
    length : int
        Sequence length; with global pooling only checked (the net is then length-free).
    kernel_size : int
        Filter width.
    pool : int, optional
        Local max-pooling window (and stride); None pools globally.

    Notes
    -----
    Input (N, 4, length) one-hot → output (N, 2). Modules: ``conv, relu, pool, flatten, fc1,
    relu_fc, out``; ``fc1`` has ``filters`` inputs (global pooling) or
    ``filters * ((length - kernel_size + 1) // pool)`` (local pooling).
    """
    if filters < 1:
        raise ValueError(f"filters must be >= 1, got {filters}")
    if length < kernel_size:
        raise ValueError(f"length must be >= kernel_size={kernel_size}, got {length}")
    positions = length - kernel_size + 1
    if pool is not None and not 1 <= pool <= positions:
        raise ValueError(f"pool must be None or in [1, {positions}] (length {length}), got {pool}")
    pooling = nn.AdaptiveMaxPool1d(1) if pool is None else nn.MaxPool1d(pool)
    width = filters if pool is None else filters * (positions // pool)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv1d(4, filters, kernel_size),
            relu=nn.ReLU(),
            pool=pooling,
            flatten=nn.Flatten(),
            fc1=nn.Linear(width, 32),
            relu_fc=nn.ReLU(),
            out=nn.Linear(32, 2),
        )
    )


def MNISTMLP(hidden: Sequence[int] = (256, 128, 64), bias: bool = True) -> nn.Sequential:  # noqa: N802
    """NRM's MLP for MNIST: Flatten → (Linear → ReLU) × 3 → Linear.

    Parameters
    ----------
    hidden : sequence of int
        The hidden widths (three by default; see :func:`NRMTable2MLP` for two).
    bias : bool
        Biases in every Linear (NRM's normalization makes them irrelevant to relevance).

    Notes
    -----
    Input (N, 1, 28, 28) → (N, 10). Modules: ``flatten, fc1, relu1, fc2, relu2, fc3, relu3,
    out``; NRM sets sit on ``relu1 … relu3``.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = 28 * 28
    for i, units in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, units, bias=bias)
        layers[f"relu{i}"] = nn.ReLU()
        width = units
    layers["out"] = nn.Linear(width, 10, bias=bias)
    return nn.Sequential(layers)


def NRMTable2MLP() -> nn.Sequential:  # noqa: N802
    """The MLP of the NRM paper's Table 2 as we read it: bias-free 784-256-128-10.

    Two hidden layers, so the paper's (relu1, relu2) neuron pairs sit next to the output
    logit. Modules: ``flatten, fc1, relu1, fc2, relu2, out``.
    """
    return MNISTMLP((256, 128), bias=False)
