"""grad_norms on what a practitioner's network may hold beyond plain layers: parametrized weights,
recurrent cells, modules whose outputs are computed from one another, sparse embeddings and
bags, keyword calls, checkpointing; and the spot check. Every case is exact against the float64
per-sample loop below, or refused with a message that names the cause and the way out."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations
from torch.utils.checkpoint import checkpoint

from pgd.gradients.grad_norms import describe_plan, grad_norms, spot_check
from pgd.gradients.scores import grad_norm_scores


def loop_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain computation, in float64: one sample at a time, one backward pass each, the
    gradients read from ``.grad`` (sparse ones densified)."""
    norms = []
    for b in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[b : b + 1]), y[b : b + 1]).backward()
        squares = [
            (q.grad.to_dense() if q.grad.is_sparse else q.grad).double().pow(2).sum()
            for q in model.parameters()
            if q.grad is not None
        ]
        norms.append(torch.stack(squares).sum().sqrt())
    model.zero_grad(set_to_none=True)
    return torch.stack(norms)


def assert_exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    want = loop_norms(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torch.func fallback says where it is used
        got = grad_norms(model, x, y)
    assert torch.all(want > 0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


def batch(*shape: int, classes: int = 3, size: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, *shape, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, classes, (size,), generator=generator)


class Head(nn.Module):
    def __init__(self, body: nn.Module, width: int) -> None:
        super().__init__()
        self.body, self.fc = body, nn.Linear(width, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.body(x)))


# -- parametrized layers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: parametrizations.weight_norm(nn.Linear(4, 5)), (4,)),
        (
            lambda: nn.Sequential(parametrizations.weight_norm(nn.Conv2d(2, 3, 3)), nn.Flatten()),
            (2, 5, 5),
        ),
        (lambda: parametrizations.orthogonal(nn.Linear(5, 5)), (5,)),
    ],
    ids=["weight_norm-linear", "weight_norm-conv2d", "orthogonal-linear"],
)
def test_parametrized_layers_are_exact(layer, shape):
    torch.manual_seed(0)
    body = layer()
    width = body(torch.zeros(1, *shape)).shape[1]
    assert_exact(Head(body, width), *batch(*shape))


def test_spectral_norm_in_eval_mode_is_exact_and_in_training_mode_refused():
    torch.manual_seed(0)
    model = Head(parametrizations.spectral_norm(nn.Linear(4, 5)), 5).double()
    x, y = batch(4)
    model(x)  # one power-iteration step, as in training
    with pytest.raises(ValueError, match=r"'body' has spectral_norm in training mode.*eval\(\)"):
        grad_norms(model, x, y)
    assert_exact(model.eval(), x, y)


def test_the_plan_says_a_parametrized_weight_goes_through_its_parametrization():
    model = Head(parametrizations.weight_norm(nn.Linear(4, 5)), 5)
    rows = {r["module"]: r["method"] for r in describe_plan(model, torch.zeros(2, 4))}
    assert "parametrized tensor (_WeightNorm)" in rows["body"]
    assert "original0, original1" in rows["body"]
    assert rows["fc"] == "outer product |a| |g|"


# -- recurrent cells and outputs computed from one another -------------------------------------


class Unrolled(nn.Module):
    def __init__(self, cell: str, steps: int, initial_state: bool) -> None:
        super().__init__()
        self.cell = getattr(nn, cell)(4, 5)
        self.steps, self.initial_state = steps, initial_state
        self.fc = nn.Linear(5, 3)

    def forward(self, x):  # x: (B, steps, 4)
        state = None
        if self.initial_state:
            zeros = x.new_zeros(len(x), 5)
            state = (zeros, zeros) if isinstance(self.cell, nn.LSTMCell) else zeros
        for t in range(self.steps):
            state = self.cell(x[:, t], state) if state is not None else self.cell(x[:, t])
        return self.fc(state[0] if isinstance(state, tuple) else state)


@pytest.mark.parametrize("initial_state", [False, True], ids=["no-state", "state"])
@pytest.mark.parametrize("steps", [1, 3], ids=["once", "unrolled"])
@pytest.mark.parametrize("cell", ["RNNCell", "GRUCell", "LSTMCell"])
def test_recurrent_cells_are_exact(cell, steps, initial_state):
    torch.manual_seed(0)
    assert_exact(Unrolled(cell, steps, initial_state), *batch(steps, 4))


class Twin(nn.Module):
    """Two outputs, the second computed from the first (as LSTMCell's h from c)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)

    def forward(self, x):
        u = torch.tanh(self.a(x))
        return u, u * u.sum(1, keepdim=True)


class PassThrough(nn.Module):
    """Returns its own input beside what it computes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return x, x @ self.w


class TwoOutputs(nn.Module):
    def __init__(self, inner: nn.Module, width: int) -> None:
        super().__init__()
        self.pre, self.inner, self.fc = nn.Linear(4, 4), inner, nn.Linear(width, 3)

    def forward(self, x):
        first, second = self.inner(self.pre(x))
        return self.fc(torch.cat([2 * first, second], 1))


@pytest.mark.parametrize("inner, width", [(Twin, 10), (PassThrough, 8)], ids=["twin", "pass"])
def test_a_module_whose_outputs_depend_on_one_another_or_on_its_input_is_exact(inner, width):
    torch.manual_seed(0)
    assert_exact(TwoOutputs(inner(), width), *batch(4))


# -- sparse embeddings and bags -------------------------------------------------------------------


class Bags(nn.Module):
    """An EmbeddingBag over each sample's tokens: as a (B, L) input, or as one flat list with
    offsets (bags of 0 to 3 tokens, set by the sample's first token)."""

    def __init__(
        self,
        mode="sum",
        *,
        offsets=True,
        sparse=True,
        padding_idx=None,
        last_offset=False,
        weighted=False,
        subclass=False,
    ) -> None:
        super().__init__()
        kind = _OwnForwardBag if subclass else nn.EmbeddingBag
        self.bag = kind(
            10,
            4,
            mode=mode,
            sparse=sparse,
            padding_idx=padding_idx,
            include_last_offset=last_offset,
        )
        self.offsets, self.last_offset, self.weighted = offsets, last_offset, weighted
        self.fc = nn.Linear(4, 3)

    def forward(self, tokens):
        if not self.offsets:
            weights = 0.5 + tokens.double() / 10 if self.weighted else None
            return self.fc(self.bag(tokens, per_sample_weights=weights))
        sizes = tokens[:, 0] % 4
        flat = torch.cat([row[1 : 1 + int(n)] for row, n in zip(tokens, sizes, strict=True)])
        offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        if self.last_offset:
            offsets = torch.cat([offsets, sizes.sum().reshape(1)])
        weights = 0.5 + flat.double() / 10 if self.weighted else None
        return self.fc(self.bag(flat, offsets, per_sample_weights=weights))


class _OwnForwardBag(nn.EmbeddingBag):
    def forward(self, *args, **kwargs):  # a forward of its own: no closed form can be proven
        return super().forward(*args, **kwargs)


def tokens(size: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 10, (size, 5), generator=generator)
    ids[:, 0] = torch.tensor([0, 1, 2, 3, 2, 3])[:size]  # bag sizes 0..3 (one empty bag)
    return ids


LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("last_offset", [False, True], ids=["offsets", "last-offset"])
@pytest.mark.parametrize("padding_idx", [None, 3], ids=["no-pad", "pad"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_sparse_embedding_bags_with_offsets_are_exact(mode, padding_idx, last_offset):
    torch.manual_seed(0)
    sparse = mode != "max"  # torch has no sparse gradient in max mode
    model = Bags(mode, sparse=sparse, padding_idx=padding_idx, last_offset=last_offset)
    assert_exact(model, tokens(), LABELS)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_sparse_embedding_bags_on_a_2d_input_are_exact(mode):
    torch.manual_seed(0)
    assert_exact(Bags(mode, offsets=False, sparse=mode != "max", padding_idx=3), tokens(), LABELS)


@pytest.mark.parametrize("offsets", [False, True], ids=["2d", "offsets"])
def test_per_sample_weights_of_a_bag_are_exact(offsets):
    torch.manual_seed(0)
    assert_exact(Bags("sum", offsets=offsets, weighted=True), tokens(), LABELS)


def test_a_bag_with_a_forward_of_its_own_and_sparse_gradients_is_exact():
    torch.manual_seed(0)
    assert_exact(Bags("mean", offsets=False, subclass=True), tokens(), LABELS)


def test_a_bag_with_a_forward_of_its_own_fed_flat_tokens_is_refused_naming_the_batch():
    """No closed form can be proven for it, and its flat input does not have the batch first,
    so torch.func cannot take it one sample at a time either."""
    model = Bags("mean", offsets=True, subclass=True).double()
    with pytest.raises(ValueError, match=r"'bag' \(_OwnForwardBag\).*first dimension is not"):
        grad_norms(model, tokens(), LABELS)


def test_a_sparse_embedding_is_exact():
    class Mean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc = nn.Embedding(10, 4, sparse=True, padding_idx=0), nn.Linear(4, 3)

        def forward(self, ids):
            return self.fc(self.emb(ids).mean(1))

    torch.manual_seed(0)
    assert_exact(Mean(), tokens(), LABELS)


def test_a_bag_that_cannot_be_called_on_one_sample_is_refused_naming_it():
    class OneTokenBags(nn.Module):  # B bags of one token each: B tokens and B offsets
        def __init__(self) -> None:
            super().__init__()
            self.bag, self.fc = _OwnForwardBag(10, 4, mode="sum"), nn.Linear(4, 3)

        def forward(self, ids):
            return self.fc(self.bag(ids, torch.arange(len(ids))))

    model = OneTokenBags().double()
    with pytest.raises(ValueError, match=r"'bag' \(_OwnForwardBag\) cannot be called on one"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grad_norms(model, tokens()[:, 1], LABELS)


def test_the_plan_names_the_bag_form():
    rows = {r["module"]: r["method"] for r in describe_plan(Bags("max", sparse=False), tokens())}
    assert rows["bag"] == "sum per token and bag (max)"


# -- keyword calls and checkpointing --------------------------------------------------------------


def test_layers_called_with_their_input_as_a_keyword_are_exact():
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(2, 3, 3), nn.LayerNorm(27)
            self.fc = nn.Linear(27, 3)

        def forward(self, x):
            h = self.norm(input=torch.tanh(self.conv(input=x)).flatten(1))
            return self.fc(input=h)

    torch.manual_seed(0)
    model = Keywords()
    rows = {r["module"]: r["method"] for r in describe_plan(model, torch.zeros(2, 2, 5, 5))}
    assert not any(m.startswith("torch.func") for m in rows.values())  # the closed forms
    assert_exact(model, *batch(2, 5, 5))


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.pre, self.mid, self.fc = nn.Linear(4, 4), nn.Linear(4, 5), nn.Linear(5, 3)
        self.reentrant = reentrant

    def forward(self, x):
        h = checkpoint(lambda z: torch.tanh(self.mid(z)), self.pre(x), use_reentrant=self.reentrant)
        return self.fc(h)


def test_non_reentrant_checkpointing_is_exact_and_reentrant_refused_naming_the_fix():
    torch.manual_seed(0)
    assert_exact(Checkpointed(reentrant=False), *batch(4))
    model = Checkpointed(reentrant=True).double()
    with pytest.raises(ValueError, match=r"use_reentrant=True.*Pass use_reentrant=False"):
        grad_norms(model, *batch(4))


# -- the spot check -------------------------------------------------------------------------------


class Reversed(nn.Module):
    """Reverses the batch between two layers, in code no module call sees: every rule passes,
    and each sample's norm mixes two samples' gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)).flip(0))


def test_the_spot_check_catches_a_model_that_reorders_its_batch():
    torch.manual_seed(0)
    model = Reversed().double()
    x, y = batch(4)
    wrong = grad_norms(model, x, y)  # no rule sees it
    assert not torch.allclose(wrong, loop_norms(model, x, y))
    with pytest.raises(ValueError, match=r"spot check failed: sample \d+ .*check=0"):
        grad_norms(model, x, y, check=3)


def test_the_spot_check_passes_an_exact_computation_and_leaves_the_random_state_alone():
    torch.manual_seed(0)
    model = Unrolled("LSTMCell", 3, False).double()
    x, y = batch(3, 4)
    before = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = grad_norms(model, x, y, check=6)
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(checked, loop_norms(model, x, y), rtol=1e-10, atol=0)


def test_the_spot_check_is_skipped_with_a_warning_under_active_dropout():
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)).double().train()
    x, y = batch(4)
    with pytest.warns(UserWarning, match="spot check skipped: dropout is in training mode"):
        spot_check(model, x, y, torch.ones(6, dtype=torch.float64), list(model.parameters()), 2)


def _scored(model, x, y, **kwargs):
    data = [(x, y, torch.zeros_like(y), torch.arange(len(y)))]
    return grad_norm_scores(model, data, **kwargs)


@pytest.mark.parametrize("layers", ["last", "all"])
def test_pgd_scores_check_their_first_batch_by_default(layers):
    torch.manual_seed(0)
    model = Reversed().double()
    x, y = batch(4)
    with pytest.raises(ValueError, match="spot check failed"):
        _scored(model, x, y, layers=layers)
    _scored(model, x, y, layers=layers, check=0)  # turned off, as the message says


def test_pgd_scores_are_the_same_with_and_without_the_check():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x, y = batch(4)
    for layers in ("last", "all"):
        torch.manual_seed(1)
        checked, after_checked = _scored(model, x, y, layers=layers), torch.rand(1)
        torch.manual_seed(1)
        unchecked, after_unchecked = _scored(model, x, y, layers=layers, check=0), torch.rand(1)
        assert torch.equal(checked, unchecked) and torch.equal(after_checked, after_unchecked)
