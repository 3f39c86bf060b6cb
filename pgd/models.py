"""The networks of the Colored MNIST experiments.

Every model exposes ``features(x) -> (B, D)`` and ``classifier``, its last ``nn.Linear`` mapping
``D`` features to class logits: PGD's score is the gradient norm of that layer.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """The MLP of LfF and DFA for Colored MNIST: three hidden layers of 100 units with ReLU.

    Input ``(B, 3, 28, 28)`` (flattened to 2,352), output ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 3 * 28 * 28,
        hidden: int = 100,
        depth: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
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


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": SmallCNN}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model by name (``mlp`` or ``cnn``).

    Raises:
        ValueError: unknown model name.
    """
    key = name.strip().lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key](num_classes=num_classes)


def resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised (``weights=None``), with ``num_classes``
    outputs. Input ``(B, 3, H, W)`` (any size from 32x32), output ``(B, num_classes)`` logits."""
    import torchvision  # after `import pgd`, which makes it importable on CPU-only torch

    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def last_linear(model: nn.Module) -> nn.Linear:
    """The layer PGD scores: ``model.classifier`` if it is a Linear, else the last Linear."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to score")
    return linears[-1]
