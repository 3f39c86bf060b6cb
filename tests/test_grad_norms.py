"""Whole-network per-sample gradient norms, checked against torch.func vmap(grad), small inputs."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pgd.gradients import grad_norms as gn
from pgd.gradients.grad_norms import (
    closed_forms,
    describe_plan,
    fallback,
    grad_norms,
    select_modules,
    torch_internals,
)
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
    fallback.WARNED.clear()
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


def _loop64(model, x, y, *, params=None, loss_fn=None):
    """Reference: a float64 copy of the model, one sample at a time, one backward each."""
    model = copy.deepcopy(model).double()
    named = dict(model.named_parameters())
    chosen = [named[n] for n in (params or [n for n, q in named.items() if q.requires_grad])]
    x = x.double() if x.is_floating_point() else x
    loss_fn = loss_fn or (lambda out, t: F.cross_entropy(out, t, reduction="none"))
    norms = []
    for b in range(len(x)):
        loss = loss_fn(model(x[b : b + 1]), y[b : b + 1]).sum()
        grads = torch.autograd.grad(loss, chosen, allow_unused=True)
        flat = [g.flatten() for g in grads if g is not None]
        norms.append(torch.cat(flat).norm() if flat else torch.zeros((), dtype=torch.float64))
    return torch.stack(norms)


def _exact(model, x, y, *, params=None, rtol=1e-6, **kwargs):
    """float64: ours equals the per-sample loop to ``rtol`` (relative)."""
    model = model.double()
    x64 = x.double() if x.is_floating_point() else x
    reference = _loop64(model, x64, y, params=params, loss_fn=kwargs.get("loss_fn"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torch.func fallback says it is used
        ours = grad_norms(model, x64, y, **kwargs)
    assert torch.all(reference > 0)
    torch.testing.assert_close(ours, reference, rtol=rtol, atol=0)
    return ours


class _ScaledLinear(nn.Linear):
    """A Linear subclass with its own forward (a scaled weight): no closed form applies."""

    def forward(self, x):
        return F.linear(x, 2.5 * self.weight, self.bias)


class _StdConv2d(nn.Conv2d):
    """timm's StdConv2d: the weight is standardised per output channel in the forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_linear_and_conv_subclasses_with_their_own_forward_are_exact():
    torch.manual_seed(0)
    model = nn.Sequential(_StdConv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), _ScaledLinear(4 * 6 * 6, 5))
    x, y = _data((3, 8, 8), classes=5)
    _exact(model, x, y)
    methods = [row["method"] for row in describe_plan(model, x.double())]
    assert all(m.startswith("torch.func fallback: a subclass of") for m in methods), methods


class _HeadReadByParent(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.head(h) + F.linear(h * h, self.head.weight)


class _TiedLanguageModel(nn.Module):
    """GPT-2 style: the output layer is F.linear with the embedding's weight."""

    def __init__(self, vocab=7, width=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)

    def forward(self, tokens):
        h = torch.tanh(self.mix(self.emb(tokens))).mean(1)
        return F.linear(h, self.emb.weight)


def _tokens(batch=5, length=4, vocab=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g), torch.randint(
        0, vocab, (batch,), generator=g
    )


def test_a_weight_also_read_by_the_parent_is_exact():
    torch.manual_seed(0)
    x, y = _data((4,), classes=3)
    _exact(_HeadReadByParent(), x, y)
    _exact(_HeadReadByParent(), x, y, params=["head.weight", "head.bias"], modules=["head"])
    rows = {r["module"]: r["method"] for r in describe_plan(_HeadReadByParent(), x)}
    assert rows["head"].startswith("outer product")  # its bias: used in its own call only
    assert "also used outside its own calls" in rows["(the model)"]


def test_gpt2_style_tying_is_exact():
    torch.manual_seed(0)
    tokens, y = _tokens()
    _exact(_TiedLanguageModel(), tokens, y)


class _Tied(nn.Module):
    def __init__(self, vocab=7, width=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.emb(tokens)).mean(1))


@pytest.mark.parametrize("chosen", [None, ["out"], ["emb"], ["emb", "out"]])
def test_tied_weights_are_exact_whichever_side_is_chosen(chosen):
    torch.manual_seed(0)
    tokens, y = _tokens()
    _exact(_Tied(), tokens, y, modules=chosen, params=["emb.weight"])


def test_a_module_that_never_calls_a_child_whose_weight_it_reads_is_exact():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0].mean(1))

    torch.manual_seed(0)
    x, y = _data((3, 4), classes=2)
    params = ["attn.out_proj.weight", "attn.out_proj.bias"]
    _exact(Attention(), x, y, modules=["attn.out_proj"], params=params)


class _Teacher(nn.Module):
    """A trainable module used only under torch.no_grad() inside forward (frozen in use)."""

    def __init__(self):
        super().__init__()
        self.teacher = nn.Linear(4, 4)
        self.student = nn.Linear(4, 3)

    def forward(self, x):
        with torch.no_grad():
            hint = self.teacher(x)
        return self.student(x + hint)


def test_a_trainable_module_called_under_no_grad_counts_zero():
    torch.manual_seed(0)
    x, y = _data((4,), classes=3)
    ours = _exact(_Teacher(), x, y)
    _, parts = grad_norms(_Teacher().double(), x.double(), y, per_module=True)
    assert torch.equal(parts["teacher"], torch.zeros(len(x), dtype=torch.float64))
    assert torch.all(ours > 0)


class _Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.temperature = nn.Parameter(torch.tensor(1.7))

    def forward(self, x):
        return self.body(x) / self.temperature


class _LayerScale(nn.Module):
    """timm's LayerScale with inplace=True: ``x.mul_(gamma)``."""

    def __init__(self, width):
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x):
        return x.mul_(self.gamma)


def test_a_zero_dim_parameter_and_an_in_place_parameter_use_are_exact():
    torch.manual_seed(0)
    x, y = _data((4,), classes=3)
    _exact(_Temperature(), x, y)
    scaled = nn.Sequential(nn.Linear(4, 5), _LayerScale(5), nn.Tanh(), nn.Linear(5, 3))
    _exact(scaled, x, y)


def test_the_result_does_not_depend_on_the_callers_autograd_mode():
    torch.manual_seed(0)
    model = _randomise_norm_layers(build_model("cnn")).eval()
    x, y = _data((3, 28, 28))
    plain = grad_norms(model, x, y)
    with torch.no_grad():
        under_no_grad = grad_norms(model, x, y)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()  # inference tensors, as a scoring loop would make them
        under_inference = grad_norms(model, xi, yi)
    assert torch.all(plain > 0)
    torch.testing.assert_close(under_no_grad, plain, rtol=0, atol=0)
    torch.testing.assert_close(under_inference, plain, rtol=0, atol=0)


class _Encoder(nn.Module):
    """A batch-first attention block and a Transformer encoder layer, eval mode."""

    def __init__(self, width=8, heads=2, classes=3):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=16, dropout=0.1, batch_first=True
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(self.layer(h).mean(1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_multihead_attention_and_transformer_encoder_layer_are_exact(dtype):
    torch.manual_seed(0)
    model = _Encoder().to(dtype).eval()
    x, y = _data((5, 8), classes=3, dtype=dtype)
    if dtype == torch.float64:
        _exact(model, x, y)
    else:  # float32 against the float64 loop: as close as a float32 loop is
        reference = _loop64(model, x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = grad_norms(model, x, y)
        torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=0)
    rows = {r["module"]: r["method"] for r in describe_plan(model, x)}
    assert rows["attn"].startswith("torch.func fallback")
    assert rows["layer.self_attn"].startswith("torch.func fallback")
    assert rows["layer.linear1"].startswith(("gram", "materialise"))
    assert rows["layer.norm1"] == "closed form (normalised input)"
    assert rows["head"].startswith("outer product")


def test_describe_plan_counts_every_call_of_a_linear():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(4, 4)

        def forward(self, x):
            return self.shared(torch.tanh(self.shared(x)))

    rows = describe_plan(Twice(), torch.zeros(3, 4))
    assert rows == [
        {
            "module": "shared",
            "type": "Linear",
            "params": 20,
            "method": "gram (2 positions, 2 calls)",
        }
    ]


def test_float32_is_as_accurate_as_a_float32_loop_on_badly_conditioned_inputs():
    """Twelve positions whose contributions to the first weight's gradient cancel but for a small
    remainder (alternating inputs +-base + noise, the same output gradient at every position):
    the Gram form adds terms 10^8 times larger than its result. Ours must stay as close to the
    float64 truth as a plain float32 per-sample loop, and never be negative or NaN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32, bias=False), nn.Flatten(), nn.Linear(32 * 12, 3))
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(3, 32).repeat(1, 12))  # same gradient per position
    g = torch.Generator().manual_seed(0)
    signs = torch.tensor([(-1.0) ** t for t in range(12)]).view(1, 12, 1)
    x = (
        signs * torch.randn(4, 1, 32, generator=g) * 100
        + torch.randn(4, 12, 32, generator=g) * 1e-2
    )
    y = torch.randint(0, 3, (4,), generator=g)
    truth = _loop64(model, x, y, params=["0.weight"])
    loop32 = torch.stack(
        [
            torch.autograd.grad(
                F.cross_entropy(model(x[b : b + 1]), y[b : b + 1]), model[0].weight
            )[0].norm()
            for b in range(len(x))
        ]
    )
    ours = grad_norms(model, x, y, modules=["0"])
    err_loop = float(((loop32.double() - truth).abs() / truth).max())
    err_ours = float(((ours.double() - truth).abs() / truth).max())
    assert torch.isfinite(ours).all() and (ours >= 0).all()
    assert err_ours <= 10 * err_loop + 1e-7, (err_ours, err_loop)
    assert gn.linear_mode(model[0], 12) == "gram"  # the form that had to be caught


def test_batchnorm_with_a_large_mean_is_as_accurate_as_a_float32_loop():
    """Inputs near 10,000 normalised by a running mean of 10,000, with given output gradients
    (a loss linear in the output): the two sums of the fast form cancel to a few digits, the
    batch-norm backward (centred first) does not; ours must be as accurate as the latter."""
    torch.manual_seed(0)
    layer = nn.BatchNorm1d(6, affine=True).eval()
    with torch.no_grad():
        layer.running_mean.fill_(10_000.0)
    layer.bias.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = 10_000 + torch.randn(5, 6, 7, generator=g)
    grads = torch.randn(5, 6, 7, generator=g)

    def loss_fn(out, index):  # per-sample loss sum(out * grads): output gradient = grads
        return (out * grads[index]).flatten(1).sum(1)

    index = torch.arange(5)
    invstd = (layer.running_var.double() + layer.eps).rsqrt()
    truth = (grads.double() * (x.double() - 10_000) * invstd[:, None]).sum(2).norm(dim=1)
    loop32 = torch.stack(
        [
            torch.autograd.grad(loss_fn(layer(x[b : b + 1]), index[b : b + 1]).sum(), layer.weight)[
                0
            ].norm()
            for b in range(len(x))
        ]
    )
    ours = grad_norms(layer, x, index, loss_fn=loss_fn)
    err_loop = float(((loop32.double() - truth).abs() / truth).max())
    err_ours = float(((ours.double() - truth).abs() / truth).max())
    assert err_ours <= 10 * err_loop + 1e-7, (err_ours, err_loop)


def test_parameters_used_outside_every_module_call_are_refused():
    model = nn.Sequential(nn.Linear(4, 3))
    scale = model[0].weight

    def loss_fn(out, y):  # reads a weight outside the model's forward
        return F.cross_entropy(out * scale.sum(), y, reduction="none")

    x, y = _data((4,), classes=3)
    with pytest.raises(ValueError, match=r"'0.weight' is used outside every module call"):
        grad_norms(model, x, y, loss_fn=loss_fn)


def test_an_input_overwritten_after_a_module_read_it_is_refused():
    class Overwrite(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.second = nn.Linear(4, 3)

        def forward(self, x):
            h = torch.tanh(self.first(x))
            out = self.second(h)
            h.mul_(2)  # the input 'second' read is changed afterwards
            return out + h[:, :3]

    x, y = _data((4,), classes=3)
    with pytest.raises(ValueError, match=r"input of module 'second'.*modified in place"):
        grad_norms(Overwrite(), x, y)


def test_a_module_whose_samples_interact_is_refused():
    class Centre(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return (x - x.mean(0)) * self.gain  # every sample's output depends on the batch

    model = nn.Sequential(nn.Linear(4, 4), Centre(), nn.Linear(4, 3))
    x, y = _data((4,), classes=3)
    with pytest.raises(ValueError, match=r"'1' \(Centre\).*samples interact"):
        grad_norms(model, x, y)


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


# -- private torch internals: one module, and a fallback where one is missing or differs ---------


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.LayerNorm([4, 6, 6]),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    ).double()


@pytest.fixture
def fresh_internals(monkeypatch):
    """Each test sees the self-check run again, and its warnings again."""
    monkeypatch.setattr(torch_internals, "_CHECKED", {})  # the self-check runs again
    monkeypatch.setattr(fallback, "WARNED", set())
    return torch_internals


def _reference(model, x, y):
    return per_sample_grad_norms(model, x, y)


def test_a_missing_internal_makes_every_norm_come_from_torch_func(fresh_internals, monkeypatch):
    monkeypatch.setattr(fresh_internals, "missing", lambda: ["Tensor._version"])
    model, x = _small_net(), torch.randn(7, 3, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    with pytest.warns(UserWarning, match=r"lacks Tensor\._version.*computed with torch\.func"):
        norms, parts = grad_norms(model, x, y, per_module=True)
    torch.testing.assert_close(norms, _reference(model, x, y), rtol=1e-10, atol=0)
    assert set(parts) == {"0", "1", "4"}  # the modules that own the parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every batch
        grad_norms(model, x, y)


def test_an_internal_that_behaves_differently_is_caught_and_replaced(fresh_internals, monkeypatch):
    real = fresh_internals.convolution_backward

    def wrong(*args):
        out = list(real(*args))
        out[1] = out[1] * 1.5  # a changed convention of the private operator
        return tuple(out)

    monkeypatch.setattr(fresh_internals, "convolution_backward", wrong)
    # the path that uses it
    monkeypatch.setattr(closed_forms, "conv_mode", lambda *a, **k: "materialise")
    model, x = _small_net(), torch.randn(7, 3, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    with pytest.warns(UserWarning, match="differ from torch.func's on a test network"):
        norms = grad_norms(model, x, y)
    torch.testing.assert_close(norms, _reference(model, x, y), rtol=1e-10, atol=0)


@pytest.mark.parametrize("internal", ["global hooks unreadable", "no convolution_backward"])
def test_a_missing_closed_form_internal_moves_only_its_layers_to_torch_func(
    fresh_internals, monkeypatch, internal
):
    if internal == "global hooks unreadable":
        monkeypatch.setattr(fresh_internals, "global_forward_hooks_present", lambda: True)
        moved = {"Conv2d", "LayerNorm", "Linear"}  # no module can be proven hook-free
    else:
        monkeypatch.setattr(fresh_internals, "convolution_backward_available", lambda: False)
        moved = {"Conv2d"}
    model, x = _small_net(), torch.randn(7, 3, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        norms = grad_norms(model, x, y)
    torch.testing.assert_close(norms, _reference(model, x, y), rtol=1e-10, atol=0)
    said = " ".join(str(w.message) for w in caught)
    assert all(f"module '{i}'" in said for i, m in enumerate(model) if type(m).__name__ in moved)
    assert "Linear" in moved or "module '4'" not in said


def test_the_self_check_leaves_the_callers_random_state_alone(fresh_internals):
    model, x, y = _small_net(), torch.randn(3, 3, 6, 6, dtype=torch.float64), torch.arange(3)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    grad_norms(model, x, y)  # the first call runs the self-check, which builds a network
    assert torch.equal(torch.rand(4), expected)


def test_no_module_but_torch_internals_touches_a_private_torch_name():
    """The private names grad_norms needs are looked up in one module only."""
    from pathlib import Path

    parts = sorted(Path(gn.__file__).parent.glob("*.py"))
    names = {p.name for p in parts}
    assert {"__init__.py", "trace.py", "one_pass.py", "torch_internals.py"} <= names
    for part in parts:
        if part.name == "torch_internals.py":
            continue
        source = part.read_text()
        for private in ("torch._C", "._version", "_pytree", "_global_forward", "aten.convolution"):
            assert private not in source, (part.name, private)
