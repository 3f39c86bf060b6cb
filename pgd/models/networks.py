"""The networks of the book: the MLP and small CNN of the Colored MNIST experiments,
torchvision's ResNet-18 for CelebA and BFFHQ, and a small Vision Transformer for chapter 3.

Every model ends in an ``nn.Linear`` mapping features to class logits (``classifier`` for the MLP
and the CNN, ``fc`` for ResNet-18; :func:`last_linear` finds it): PGD's score is the gradient norm
of that layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core import compat
from ..core.errors import PgdError
from ..core.params import lookup


class MLP(nn.Module):
    """The MLP of LfF for Colored MNIST: three hidden layers of 100 units with ReLU (``widths``
    gives other hidden layers: DFA's encoder is 100, 100, 16).

    Input ``(B, 3, 28, 28)`` (flattened to 2,352), output ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 3 * 28 * 28,
        hidden: int = 100,
        depth: int = 3,
        widths: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for out in widths if widths is not None else (hidden,) * depth:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _conv_block(c_in: int, c_out: int, relu_first: bool, pool: nn.Module) -> nn.Sequential:
    norm_act = (
        [nn.ReLU(), nn.BatchNorm2d(c_out)] if relu_first else [nn.BatchNorm2d(c_out), nn.ReLU()]
    )
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=4), *norm_act, nn.Dropout(0.5), pool)


class SmallCNN(nn.Module):
    """The small CNN of the official PGD code for Colored MNIST.

    Three 4x4 convolutions (8, 32, 64 channels), each followed by BatchNorm, ReLU and dropout
    0.5; average pooling 2x2 after the first two, global average pooling after the third (where,
    as in the official code, ReLU comes before BatchNorm); a linear layer 64 -> ``num_classes``.
    Input ``(B, 3, 28, 28)``, features ``(B, 64)``, output ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, 8, relu_first=False, pool=nn.AvgPool2d(2)),
            _conv_block(8, 32, relu_first=False, pool=nn.AvgPool2d(2)),
            _conv_block(32, 64, relu_first=True, pool=nn.AdaptiveAvgPool2d(1)),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class LocalCNN(nn.Module):
    """A network that sees only small patches, for ReBias's bias-capturing model: four
    convolution blocks (16, 32, 64, 128 channels, each with BatchNorm and ReLU) at full
    resolution, of which only the first has a kernel larger than 1 x 1, then global average
    pooling and a linear layer. Its receptive field is the first kernel, ``kernel_size`` pixels:
    with 1 (ReBias's Colored MNIST model, ``SimpleConvNet(kernel_size=1)``) it sees colour and no
    shape; with a few pixels, local texture (the role of ReBias's BagNet on images).

    Input ``(B, C, H, W)``, features ``(B, 128)``, output ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, kernel_size: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate((16, 32, 64, 128)):
            k = kernel_size if i == 0 else 1
            layers += [nn.Conv2d(channels, width, k, padding=k // 2), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU())
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def resnet18(num_classes: int = 10, pretrained: bool = False) -> nn.Module:
    """torchvision's ResNet-18 with ``num_classes`` outputs: randomly initialised (``weights=None``,
    the default, as DFA and LfF train it), or from torchvision's ImageNet weights
    (``IMAGENET1K_V1``, downloaded once into torch's cache) with a fresh final layer.

    Input ``(B, 3, H, W)`` (any size from 32x32; 224x224 on CelebA and BFFHQ), output
    ``(B, num_classes)`` logits.

    Raises:
        RuntimeError: ImageNet weights were asked for but cannot be downloaded (says what to do).
    """
    import torchvision  # after `import pgd`, which makes it importable on CPU-only torch

    if not pretrained:
        return torchvision.models.resnet18(weights=None, num_classes=num_classes)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    try:
        model = torchvision.models.resnet18(weights=weights)
    except Exception as error:  # URLError, HTTPError, OSError, a damaged download
        raise PgdError(
            f"the ImageNet weights of ResNet-18 ({weights.url}) could not be downloaded "
            f"({type(error).__name__}: {error}). Connect to the internet, or copy the file into "
            f"{torch.hub.get_dir()}/checkpoints/, or train from scratch (leave out --pretrained)."
        ) from error
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


class PositionEmbedding(nn.Module):
    """A learned embedding added to every token: ``(B, T, D) -> (B, T, D)``."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.weight


class TinyViT(nn.Module):
    """A small Vision Transformer, to show per-sample gradient norms on attention (chapter 3 and
    ``benchmarks/``; not one of the training options of :data:`MODELS`).

    ``patch`` x ``patch`` patches embedded by a strided convolution, a learned position
    embedding, ``depth`` pre-norm ``nn.TransformerEncoderLayer`` blocks (batch first, no
    dropout), a final LayerNorm, mean pooling over the tokens and a linear head. Input
    ``(B, 3, image_size, image_size)``, output ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, patch, stride=patch)
        self.position = PositionEmbedding((image_size // patch) ** 2, dim)
        self.blocks = nn.Sequential(
            *(
                nn.TransformerEncoderLayer(
                    dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
                )
                for _ in range(depth)
            )
        )
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)  # (B, T, dim)
        return self.classifier(self.norm(self.blocks(self.position(tokens))).mean(1))


def dfa_mlp(num_classes: int = 10, in_features: int = 3 * 28 * 28) -> MLP:
    """DFA's Colored MNIST encoder (``MLP_DISENTANGLE``: hidden layers of 100, 100 and 16 units
    with ReLU) with a linear classifier; DFA's heads read two such 16-unit codes."""
    return MLP(num_classes=num_classes, in_features=in_features, widths=(100, 100, 16))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet18": resnet18,
    "dfa_mlp": dfa_mlp,
    "dfa_resnet18": resnet18,  # DFA's BFFHQ network, under its own schedule
}


def build_model(
    name: str,
    num_classes: int = 10,
    pretrained: bool = False,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """A freshly initialised model by name (:data:`MODELS`); ``pretrained``
    (ResNet-18 only) starts from ImageNet weights; ``input_shape`` ``(C, H, W)`` sizes the MLP's
    first layer (default 3 x 28 x 28; the convolutional networks take any size).

    Raises:
        ValueError: unknown model name, or ``pretrained`` for a model that has no such weights.
    """
    lookup(MODELS, name, "model")
    key = name.strip().lower()
    if key in ("resnet18", "dfa_resnet18"):
        return resnet18(num_classes=num_classes, pretrained=pretrained)
    if pretrained:
        raise ValueError(f"only resnet18 has pretrained weights, not {name!r}")
    if key in ("mlp", "dfa_mlp") and input_shape is not None:
        features = int(torch.Size(input_shape).numel())
        return MODELS[key](num_classes=num_classes, in_features=features)
    return MODELS[key](num_classes=num_classes)


def last_linear(model: nn.Module) -> nn.Linear:
    """The layer PGD scores: ``model.classifier`` if it is a Linear, else the last Linear."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to score")
    return linears[-1]


@dataclass(frozen=True)
class NetworkParts:
    """A network as an encoder (images -> ``(B, D)`` features) and a classifier (``(B, D)``
    features -> ``(B, num_classes)`` logits) that share its modules and parameters:
    ``classifier(encoder(x))`` is ``model(x)``, and training a part trains the network. For
    methods that use the two separately (a bias-only head on shared features, features swapped
    between samples)."""

    encoder: nn.Module
    classifier: nn.Linear


def network_parts(model: nn.Module) -> NetworkParts:
    """The encoder and classifier of a network of the book (``features`` and ``classifier`` of
    the MLP and the small CNN; everything before ``fc`` of torchvision's ResNets).

    Raises:
        ValueError: a network whose parts this cannot prove (say how to build it in two parts).
    """
    features, head = getattr(model, "features", None), getattr(model, "classifier", None)
    if isinstance(features, nn.Module) and isinstance(head, nn.Linear):
        forward = type(model).forward
        if forward in (MLP.forward, SmallCNN.forward, LocalCNN.forward):
            return NetworkParts(features, head)
    torchvision = compat.import_torchvision()
    if isinstance(model, torchvision.models.ResNet) and type(model).forward is (
        torchvision.models.ResNet.forward
    ):
        encoder = nn.Sequential(
            model.conv1, model.bn1, model.relu, model.maxpool,
            model.layer1, model.layer2, model.layer3, model.layer4,
            model.avgpool, nn.Flatten(1),
        )  # fmt: skip
        return NetworkParts(encoder, model.fc)
    raise ValueError(
        f"cannot split {type(model).__name__} into an encoder and a classifier: give it a "
        "`features` module and a `classifier` Linear layer, with forward = classifier(features(x))"
    )
