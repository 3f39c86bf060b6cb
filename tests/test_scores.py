from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pgd.gradients.scores import (
    batch_last_layer_grad_norms,
    closed_form_grad_norms,
    grad_norm_scores,
    per_sample_grad_norms,
    per_sample_grad_norms_loop,
)
from pgd.models import MLP, SmallCNN, build_model

P_VALUES = [2.0, 1.0, 0.7, 3.0, math.inf]


def _model(name: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name).to(dtype).eval()
    if name == "cnn":  # non-trivial running statistics, so eval-mode BatchNorm matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _closed_form(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    features = model.features(x)
    return closed_form_grad_norms(features, model.classifier(features), y, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("include_bias", [False, True])
def test_closed_form_equals_torch_func_per_sample_gradient_norm(dtype, name, p, include_bias):
    model = _model(name, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 28, 28, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (12,), generator=g)
    params = ["classifier.weight"] + (["classifier.bias"] if include_bias else [])
    reference = per_sample_grad_norms(model, x, y, params=params, p=p)
    with torch.no_grad():
        fast = _closed_form(model, x, y, p=p, include_bias=include_bias)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=0)


@pytest.mark.parametrize("p", [2.0, 0.7])
def test_closed_form_equals_the_official_per_sample_backward_loop(p):
    model = _model("cnn", torch.float64)
    x = torch.rand(6, 3, 28, 28, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    loop = per_sample_grad_norms_loop(model, x, y, p=p)
    with torch.no_grad():
        fast = _closed_form(model, x, y, p=p)
    torch.testing.assert_close(fast, loop, rtol=1e-10, atol=0)


def test_score_is_near_zero_for_confident_correct_and_large_for_confident_wrong():
    features = torch.ones(2, 4)
    logits = torch.tensor([[20.0, 0.0], [20.0, 0.0]])
    scores = closed_form_grad_norms(features, logits, torch.tensor([0, 1]))
    assert scores[0] < 1e-6
    assert scores[1] == pytest.approx(math.sqrt(2) * 2, rel=1e-6)  # ||(1,-1)|| * ||h||


def test_dataset_scores_follow_sample_indices_whatever_the_batch_order(cmnist):
    model = _model("cnn", torch.float32)
    subset = cmnist.train.head(300)
    sequential = grad_norm_scores(model, subset, batch_size=64, layers="last")
    assert sequential.shape == (300,)
    from pgd.datasets.base import batch_loader

    order = torch.randperm(300, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = grad_norm_scores(model, batch_loader(subset, 50, order), layers="last")
    torch.testing.assert_close(shuffled, sequential)
    x, y, _, _ = subset[[5, 17]]
    with torch.no_grad():
        direct = _closed_form(model, x, y)
    torch.testing.assert_close(sequential[[5, 17]], direct)


def test_scoring_uses_eval_mode_and_restores_training_mode(cmnist):
    model = _model("cnn", torch.float32).train()
    subset = cmnist.train.head(64)
    first = grad_norm_scores(model, subset, layers="last")
    second = grad_norm_scores(model, subset, layers="last")  # dropout would make these differ
    assert model.training
    torch.testing.assert_close(first, second)


def test_scores_work_for_any_model_with_a_last_linear_layer(cmnist):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 16), nn.ReLU(), nn.Linear(16, 10))
    subset = cmnist.train.head(20)
    scores = grad_norm_scores(model, subset, layers="last")
    x, y, _, _ = subset[list(range(20))]
    reference = per_sample_grad_norms(model, x, y, params=["3.weight"])
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=0)


@pytest.mark.parametrize("p", [0, -1, float("nan")])
def test_non_positive_norm_order_is_refused(p):
    with pytest.raises(ValueError, match="norm order p"):
        closed_form_grad_norms(torch.ones(1, 2), torch.ones(1, 3), torch.tensor([0]), p=p)


def test_reference_refuses_unknown_parameter_names():
    with pytest.raises(ValueError, match="unknown parameter names"):
        per_sample_grad_norms(
            MLP(), torch.rand(2, 3, 28, 28), torch.tensor([0, 1]), params=["fc.weight"]
        )


def test_models_expose_features_and_classifier_with_documented_shapes():
    x = torch.rand(5, 3, 28, 28)
    for model, width in ((MLP(), 100), (SmallCNN(), 64)):
        model.eval()
        assert model.features(x).shape == (5, width)
        assert model(x).shape == (5, 10)
        assert model.classifier.in_features == width


def test_scoring_a_layer_that_is_not_the_output_is_refused(cmnist):
    model = _model("mlp", torch.float32)
    x, y, _, _ = cmnist.train.head(8)[list(range(8))]
    with pytest.raises(ValueError, match="does not produce the model's output"):
        batch_last_layer_grad_norms(model, x, y, layer=model.features[1])


def test_whole_network_scores_of_a_dataset_equal_vmap_grad_in_eval_mode(cmnist):
    model = _model("cnn", torch.float32).train()
    subset = cmnist.train.head(40)
    scores = grad_norm_scores(model, subset, layers="all", batch_size=16)
    assert model.training  # restored
    x, y, _, _ = subset[list(range(40))]
    model.eval()
    reference = per_sample_grad_norms(model.double(), x.double(), y)
    torch.testing.assert_close(scores.double(), reference, rtol=1e-4, atol=0)


def test_whole_network_scores_refuse_last_layer_options(cmnist):
    model = _model("mlp", torch.float32)
    subset = cmnist.train.head(4)
    with pytest.raises(ValueError, match="p = 2"):
        grad_norm_scores(model, subset, layers="all", p=0.7)
    with pytest.raises(ValueError, match="score_bias apply to last-layer"):
        grad_norm_scores(model, subset, layers="all", include_bias=True)
    with pytest.raises(ValueError, match="unknown score layers 'first'"):
        grad_norm_scores(model, subset, layers="first")


def test_the_official_loop_over_all_parameters_equals_vmap_grad():
    model = _model("cnn", torch.float64)
    x = torch.rand(5, 3, 28, 28, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4])
    loop = per_sample_grad_norms_loop(model, x, y, all_parameters=True)
    torch.testing.assert_close(loop, per_sample_grad_norms(model, x, y), rtol=1e-10, atol=0)
    assert per_sample_grad_norms_loop(model, x, y, limit=2).shape == (2,)
