"""The networks as two parts, for methods that use an encoder and a classifier separately."""

from __future__ import annotations

import pytest
import torch

from pgd.models import TinyViT, build_model, network_parts


@pytest.mark.parametrize(
    ("name", "shape"), [("mlp", (3, 28, 28)), ("cnn", (3, 28, 28)), ("resnet18", (3, 32, 32))]
)
def test_a_network_is_its_classifier_applied_to_its_encoder(name, shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, input_shape=shape).eval()
    parts = network_parts(model)
    x = torch.randn(5, *shape)
    with torch.no_grad():
        torch.testing.assert_close(parts.classifier(parts.encoder(x)), model(x))
    owned = {id(p) for p in model.parameters()}
    shared = {id(p) for part in (parts.encoder, parts.classifier) for p in part.parameters()}
    assert shared == owned  # the parts are the network's own modules, not copies


def test_a_network_that_cannot_be_split_is_refused():
    with pytest.raises(ValueError, match="cannot split TinyViT"):
        network_parts(TinyViT(num_classes=3))
