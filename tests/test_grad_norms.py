"""Whole-network per-sample gradient norms, checked against torch.func vmap(grad), small inputs."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

from pgd.gradients import grad_norms as gn
from pgd.gradients.grad_norms import describe_plan, grad_norms, select_modules
from pgd.gradients.scores import closed_form_grad_norms, per_sample_grad_norms
from pgd.models import build_model

DTYPES = [torch.float32, torch.float64]


def _randomise_norm_layers(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so every formula is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def _check(model, x, y, *, rtol=1e-4, params=None, **kwargs):
    """Our norms, in the model's dtype, equal vmap(grad) to ``rtol`` (relative).

    The reference runs in float64 on a copy of the model: in float32 it is itself off by up to
    1e-4 on a ResNet-18 with random BatchNorm statistics (ours: 2e-7), so a float32 reference
    would test the reference's rounding rather than our formulas.
    """
    x64 = x.double() if x.is_floating_point() else x
    reference = per_sample_grad_norms(copy.deepcopy(model).double(), x64, y, params=params)
    ours = grad_norms(model, x, y, **kwargs)
    assert ours.dtype == (x.dtype if x.is_floating_point() else next(model.parameters()).dtype)
    assert ours.shape == reference.shape
    assert torch.all(reference > 0)
    torch.testing.assert_close(ours.double(), reference, rtol=rtol, atol=0)
    return ours, reference


def _data(shape, classes=10, batch=6, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g, dtype=dtype), torch.randint(
        0, classes, (batch,), generator=g
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_whole_network_norms_equal_vmap_grad_for_the_book_models(name, dtype):
    torch.manual_seed(0)
    model = _randomise_norm_layers(build_model(name)).to(dtype).eval()
    x, y = _data((3, 28, 28), dtype=dtype)
    _check(model, x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_network_norms_equal_vmap_grad_for_resnet18(dtype):
    """BatchNorm in eval mode, in-place ReLU, residual `out += identity`, strided 1x1 convs."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    model = _randomise_norm_layers(model).to(dtype).eval()
    x, y = _data((3, 32, 32), classes=5, batch=3, dtype=dtype)
    _check(model, x, y)


CONVS = {
    "stride2-pad3": lambda: nn.Conv2d(3, 6, 5, stride=2, padding=3),
    "dilation2-groups3": lambda: nn.Conv2d(6, 9, 3, dilation=2, groups=3, padding=1),
    "depthwise-nobias": lambda: nn.Conv2d(6, 6, 3, groups=6, bias=False),
    "same-reflect": lambda: nn.Conv2d(6, 4, (3, 4), padding="same", padding_mode="reflect"),
    "circular-rect-stride": lambda: nn.Conv2d(
        6, 4, (2, 3), stride=(2, 1), padding=(1, 2), padding_mode="circular"
    ),
    "valid-1x1": lambda: nn.Conv2d(6, 8, 1, padding="valid"),
}


@pytest.mark.parametrize("mode", ["gram", "materialise"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv", list(CONVS))
def test_unusual_conv2d_settings_in_both_exact_forms(conv, dtype, mode):
    torch.manual_seed(0)
    layer = CONVS[conv]()
    first = nn.Conv2d(3, layer.in_channels, 3, padding=1) if conv != "stride2-pad3" else None
    body = [first, nn.Tanh()] if first is not None else []
    model = nn.Sequential(*body, layer, nn.Tanh(), nn.Flatten(), nn.LazyLinear(4))
    x, y = _data((3, 9, 10), classes=4, dtype=dtype)
    model(x.float())  # materialise the lazy layer
    model = model.to(dtype).eval()
    _check(model, x, y, conv=mode)


@pytest.mark.parametrize("mode", ["gram", "materialise"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_and_conv3d(dtype, mode):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, stride=2, padding=2, dilation=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    x, y = _data((2, 11), classes=3, dtype=dtype)
    model(x.float())
    _check(model.to(dtype), x, y, conv=mode)

    model3 = nn.Sequential(
        nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=1), nn.Flatten(), nn.LazyLinear(3)
    )
    x3, y3 = _data((2, 4, 5, 3), classes=3, dtype=dtype)
    model3(x3.float())
    _check(model3.to(dtype), x3, y3, conv=mode)


def test_auto_picks_materialise_for_big_maps_and_gram_for_small_maps():
    conv = nn.Conv2d(3, 8, 4)
    assert gn.conv_mode(conv, 625) == "materialise"  # first layer of the small CNN
    deep = nn.Conv2d(32, 64, 4)
    assert gn.conv_mode(deep, 1) == "gram"  # last layer of the small CNN: 1x1 output
    plan = {
        row["module"]: row["method"]
        for row in describe_plan(build_model("cnn").eval(), torch.zeros(1, 3, 28, 28))
    }
    assert plan["features.0.0"].startswith("materialise")
    assert plan["features.2.0"].startswith("gram")
    assert plan["classifier"].startswith("outer product")


class _Sequence(nn.Module):
    """Embedding, LayerNorm, a Linear over a sequence, RMSNorm, GroupNorm on channels."""

    def __init__(self, width: int, vocab: int = 7, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.norm = nn.LayerNorm(width)
        self.mix = nn.Linear(width, width)
        self.rms = nn.RMSNorm(width)
        self.group = nn.GroupNorm(2, width)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        h = torch.tanh(self.mix(self.norm(self.embed(tokens))))  # (B, T, W)
        h = self.rms(h)
        h = self.group(h.transpose(1, 2)).mean(2)  # GroupNorm over (B, W, T)
        return self.head(h)


@pytest.mark.parametrize("width", [4, 24])  # Gram form (T large vs W) and materialised form
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_layernorm_rmsnorm_groupnorm_and_sequence_linear(width, dtype):
    torch.manual_seed(0)
    model = _Sequence(width).to(dtype)
    with torch.no_grad():
        for m in (model.norm, model.group, model.rms):
            m.weight.uniform_(0.5, 1.5)
        for m in (model.norm, model.group):
            m.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 7, (5, 9), generator=g)  # repeated tokens and padding (0)
    tokens[0, :3] = 0
    y = torch.randint(0, 3, (5,), generator=g)
    _check(model, tokens, y)


def test_batchnorm1d_in_eval_mode_on_flat_features():
    torch.manual_seed(0)
    model = _randomise_norm_layers(
        nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    ).eval()
    x, y = _data((5,), classes=3)
    _check(model, x, y)


def test_a_module_called_twice_counts_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.conv = nn.Conv2d(1, 2, 2)
            self.head = nn.Linear(4 + 2 * 9, 3)

        def forward(self, x):
            flat = x.flatten(1)
            h = self.shared(torch.tanh(self.shared(flat[:, :4])))
            c = self.conv(
                torch.tanh(self.conv(x) - 0.5)
                .mean(1, keepdim=True)
                .repeat(1, 1, 2, 2)[:, :, :4, :4]
            )
            return self.head(torch.cat([h, c.flatten(1)], 1))

    torch.manual_seed(0)
    x, y = _data((1, 4, 4), classes=3)
    for mode in ("gram", "materialise"):
        _check(Twice(), x, y, conv=mode)


class _Scale(nn.Module):
    """A module with a parameter of its own and no closed form: the torch.func fallback."""

    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return x * self.gain + self.gain.pow(2)


def test_modules_without_a_closed_form_fall_back_to_torch_func_with_one_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), _Scale(4), nn.Tanh(), _Scale(4), nn.Linear(4, 3))
    x, y = _data((5,), classes=3)
    gn._WARNED.discard("_Scale")
    with pytest.warns(UserWarning, match=r"no closed form for _Scale \(module '[13]'\)"):
        _check(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: silent
        grad_norms(model, x, y)


def test_last_layer_selection_equals_the_closed_form_with_bias():
    torch.manual_seed(0)
    model = _randomise_norm_layers(build_model("cnn")).eval()
    x, y = _data((3, 28, 28))
    ours = grad_norms(model, x, y, modules=["classifier"])
    with torch.no_grad():
        features = model.features(x)
        closed = closed_form_grad_norms(features, model.classifier(features), y, include_bias=True)
    torch.testing.assert_close(ours, closed, rtol=1e-5, atol=0)


def test_a_chosen_subtree_counts_exactly_its_parameters_and_parts_add_up():
    torch.manual_seed(0)
    model = _randomise_norm_layers(build_model("cnn")).eval()
    x, y = _data((3, 28, 28))
    names = [n for n, _ in model.named_parameters() if n.startswith("features.1.")]
    _check(model, x, y, params=names, modules=[model.features[1]])
    total, parts = grad_norms(model, x, y, per_module=True)
    assert set(parts) == {name for name, _ in select_modules(model)}
    torch.testing.assert_close(torch.stack(list(parts.values())).sum(0), total.pow(2))


def test_frozen_parameters_are_left_out():
    torch.manual_seed(0)
    model = build_model("mlp").eval()
    model.features[1].requires_grad_(False)
    x, y = _data((3, 28, 28))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    _check(model, x, y, params=trainable)


def test_batchnorm_in_training_mode_is_refused_with_the_fix():
    model = build_model("cnn").train()
    x, y = _data((3, 28, 28))
    with pytest.raises(ValueError, match=r"features\.0\.1.*training mode.*model\.eval\(\)"):
        grad_norms(model, x, y)


def test_bad_selections_get_clear_errors():
    model = build_model("mlp").eval()
    x, y = _data((3, 28, 28))
    with pytest.raises(ValueError, match=r"no module named 'head'.*classifier"):
        grad_norms(model, x, y, modules=["head"])
    with pytest.raises(ValueError, match="not part of the model"):
        grad_norms(model, x, y, modules=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="no trainable parameters"):
        grad_norms(model, x, y, modules=[model.features[0]])  # nn.Flatten
    with pytest.raises(ValueError, match="one loss per sample"):
        grad_norms(model, x, y, loss_fn=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="conv must be"):
        grad_norms(model, x, y, conv="fast")


def test_tied_weights_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    x, y = _data((4,), classes=4)
    with pytest.raises(ValueError, match="shared by modules '0' and '2'"):
        grad_norms(model, x, y)


def test_weights_used_outside_their_module_are_refused():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0].mean(1))

    x, y = _data((3, 4), classes=2)
    with pytest.raises(ValueError, match=r"out_proj.*never called"):
        grad_norms(Attention(), x, y, modules=["attn.out_proj"])


def test_inputs_that_are_not_batch_first_are_refused():
    class Folded(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.head = nn.Linear(12, 2)

        def forward(self, x):  # (B, 3, 4) -> (B*3, 4): the batch is not first any more
            return self.head(self.proj(x.reshape(-1, 4)).reshape(len(x), 12))

    x, y = _data((3, 4), classes=2)
    with pytest.raises(ValueError, match=r"'proj'.*batch as the first dimension"):
        grad_norms(Folded(), x, y)


def test_a_chosen_module_out_of_reach_of_the_first_layers_is_still_counted():
    """`side` reads a learned function of a constant (an unchosen layer), not the batch, so the
    backward pass led to the first layer never reaches it: the second, exhaustive pass must."""

    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(4, 3)
            self.source = nn.Linear(2, 4)
            self.side = nn.Linear(4, 3)

        def forward(self, x):
            constant = torch.ones(len(x), 2, dtype=x.dtype)
            return self.first(x) * self.side(torch.tanh(self.source(constant)))

    torch.manual_seed(0)
    x, y = _data((4,), classes=3)
    model = TwoBranch()
    names = [n for n, _ in model.named_parameters() if n.split(".")[0] in ("first", "side")]
    _check(model, x, y, params=names, modules=["first", "side"])
