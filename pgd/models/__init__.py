"""Layer 2, models: the networks of the book (:mod:`~pgd.models.networks`: LfF/DFA's MLP, the
official PGD code's small CNN, torchvision's ResNet-18, a small ViT) and the registry ``MODELS``
of those a run can train. Imports
only :mod:`pgd.core`; the names below are re-exported for ``from pgd.models import ...``."""

from .networks import (
    MLP,
    MODELS,
    LocalCNN,
    NetworkParts,
    SmallCNN,
    TinyViT,
    build_model,
    last_linear,
    network_parts,
    resnet18,
)

__all__ = [
    "MLP",
    "MODELS",
    "LocalCNN",
    "NetworkParts",
    "SmallCNN",
    "TinyViT",
    "build_model",
    "last_linear",
    "network_parts",
    "resnet18",
]
