"""PGD's importance score: the per-sample gradient norm of the cross-entropy loss.

For the last linear layer, with input features ``h`` and logits ``z = W h + b``, the gradient of
the cross-entropy with true label ``y`` is the outer product
``dL/dW = (softmax(z) - onehot(y)) h^T``, and ``dL/db = softmax(z) - onehot(y)``. The entrywise
p-norm of an outer product factorises, so

    ||dL/dW||_p = ||softmax(z) - onehot(y)||_p * ||h||_p
    ||(dL/dW, dL/db)||_p = ||softmax(z) - onehot(y)||_p * (||h||_p^p + 1)^(1/p)

and one forward pass gives every score exactly, with no backward pass at all. The official code
obtains the same numbers with one backward pass per sample; :func:`per_sample_grad_norms` below
is the plain torch.func computation the closed form is tested against.

Scores over every parameter of the network (``layers="all"`` in :func:`grad_norm_scores`) come
from :mod:`pgd.gradients.grad_norms`: exact too, at the price of one backward pass per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..core.runtime import progress_enabled
from ..datasets.base import batch_loader
from ..models import last_linear
from .grad_norms import grad_norms, spot_check

#: Samples of the first batch whose scores :func:`grad_norm_scores` recomputes the plain way.
SPOT_CHECK = 2


def _check_p(p: float) -> float:
    p = float(p)
    if not (p > 0 or math.isinf(p)) or math.isnan(p):
        raise ValueError(f"the norm order p must be positive (or inf), got {p}")
    return p


def closed_form_grad_norms(
    features: Tensor, logits: Tensor, labels: Tensor, p: float = 2.0, include_bias: bool = False
) -> Tensor:
    """Exact per-sample p-norm of the cross-entropy gradient w.r.t. a last linear layer.

    Args:
        features: ``(B, D)`` inputs of the layer.
        logits: ``(B, C)`` its outputs.
        labels: ``(B,)`` true class indices.
        p: entrywise norm order (> 0 or ``inf``); the official code's flag defaults to 0.7.
        include_bias: include the bias gradient (the official code scores the weight only).

    Returns:
        ``(B,)`` gradient norms.
    """
    p = _check_p(p)
    residual = logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    g_norm = torch.linalg.vector_norm(residual, ord=p, dim=1)
    h_norm = torch.linalg.vector_norm(features.flatten(1), ord=p, dim=1)
    if include_bias:
        h_norm = h_norm.clamp(min=1.0) if math.isinf(p) else (h_norm.pow(p) + 1.0).pow(1.0 / p)
    return g_norm * h_norm


SCORE_LAYERS = ("last", "all")


def check_score_options(layers: str, p: float, include_bias: bool) -> tuple[str, float]:
    """Validated ``(layers, p)`` of a PGD score.

    Raises:
        ValueError: unknown ``layers``; a norm order that is not positive; ``p != 2`` or
            ``include_bias`` with whole-network scores (Euclidean, every bias already included).
    """
    layers = str(layers).strip().lower()
    if layers not in SCORE_LAYERS:
        raise ValueError(
            f"unknown score layers {layers!r}; choose one of {', '.join(SCORE_LAYERS)}"
        )
    p = _check_p(p)
    if layers == "all" and (p != 2.0 or include_bias):
        raise ValueError(
            "whole-network scores are Euclidean norms (p = 2) over every parameter, biases "
            "included: score_p and score_bias apply to last-layer scores only"
        )
    return layers, p


def batch_last_layer_grad_norms(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    p: float = 2.0,
    include_bias: bool = False,
    layer: nn.Linear | None = None,
) -> Tensor:
    """Closed-form last-layer gradient norms of one batch: one forward pass, no backward.

    The model is used as it is (call ``model.eval()`` first, as PGD does).

    Args:
        images: ``(B, ...)`` inputs. labels: ``(B,)`` class indices.
        p, include_bias: see :func:`closed_form_grad_norms`.
        layer: the linear layer to score (default :func:`pgd.models.last_linear`); its output
            must be the model's output.

    Returns:
        ``(B,)`` norms.
    """
    layer = layer if layer is not None else last_linear(model)
    captured: list[tuple[Tensor, Tensor]] = []
    hook = layer.register_forward_hook(lambda _m, inputs, out: captured.append((inputs[0], out)))
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        hook.remove()
    features, layer_out = captured[-1]
    if layer_out is not logits:
        raise ValueError(
            f"the scored layer ({layer}) does not produce the model's output, so the "
            "closed form does not apply: pass the layer whose output are the logits"
        )
    return closed_form_grad_norms(features, logits.float(), labels, p=p, include_bias=include_bias)


def grad_norm_scores(
    model: nn.Module,
    data: Dataset | Iterable,
    *,
    layers: str = "last",
    p: float = 2.0,
    include_bias: bool = False,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    progress: bool | None = False,
    desc: str = "scoring",
    check: int = SPOT_CHECK,
) -> Tensor:
    """PGD's scores for every sample of ``data``: per-sample gradient norms of the loss.

    The model is put in eval mode for the pass (BatchNorm uses running statistics, dropout is
    off, as in the official code) and restored afterwards.

    Args:
        model: the (biased) model.
        data: a dataset of ``(image, label, bias_label, index)`` items, or an iterable of such
            batches.
        layers: ``last``: the last linear layer's weight, in closed form (the official code's
            choice; no backward pass); ``all``: every parameter of the network, exactly, with
            :func:`pgd.gradients.grad_norms.grad_norms` (one forward and one backward pass per
            batch; Euclidean norm only, biases included).
        p, include_bias: norm order and bias of the last-layer score (see
            :func:`closed_form_grad_norms`).
        batch_size: batch size when ``data`` is a dataset.
        device: where to compute (default: where the model is).
        progress: a progress bar over the batches (None: unless ``$PGD_PROGRESS`` is 0).
        desc: its label.
        check: on the first batch, recompute this many samples' scores with a forward and
            backward pass of their own and raise if one differs
            (:func:`pgd.gradients.grad_norms.spot_check`; it draws with a generator of its own,
            so the scores and every later random draw are the same with or without it); 0: off.

    Returns:
        ``(N,)`` float32 CPU tensor; entry ``i`` belongs to the sample with index ``i``.
    """
    layers, p = check_score_options(layers, p, include_bias)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = batch_loader(data, batch_size) if isinstance(data, Dataset) else data
    was_training = model.training
    model.eval()
    indices, norms = [], []
    try:
        show = progress_enabled(progress)
        for images, labels, _bias, index in tqdm(loader, desc=desc, unit="batch", disable=not show):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device)
            first = not norms
            if layers == "last":
                batch = batch_last_layer_grad_norms(
                    model, images, labels, p=p, include_bias=include_bias
                )
                if first and check:
                    last = last_linear(model)
                    wrt = [last.weight] + (
                        [last.bias] if include_bias and last.bias is not None else []
                    )
                    # the closed form works in float32 whatever the model's dtype
                    tolerance = math.sqrt(torch.finfo(torch.float32).eps)
                    spot_check(model, images, labels, batch, wrt, check, p=p, tolerance=tolerance)
            else:
                batch = grad_norms(model, images, labels, check=check if first else 0)
            norms.append(batch.float().cpu())
            indices.append(torch.as_tensor(index).flatten().cpu())
    finally:
        model.train(was_training)
    if not norms:
        return torch.zeros(0)
    index, values = torch.cat(indices), torch.cat(norms)
    if not torch.equal(index.sort().values, torch.arange(len(index))):
        raise ValueError("the data's sample indices must be 0..N-1, each exactly once")
    scores = torch.empty_like(values)
    scores[index] = values
    return scores


def per_sample_grad_norms(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    params: Iterable[str] | None = None,
    p: float = 2.0,
) -> Tensor:
    """Reference: per-sample gradients with ``torch.func.vmap(grad(...))``, then their p-norm.

    Materialises every per-sample gradient (memory ``B x #params``): use it on small inputs, to
    check faster methods. The model is evaluated as it is (call ``model.eval()`` first if it has
    BatchNorm or dropout).

    Args:
        images: ``(B, ...)`` inputs. labels: ``(B,)`` class indices.
        params: names of the parameters to differentiate (default: all of them).
        p: entrywise norm order over the selected parameters taken together.

    Returns:
        ``(B,)`` norms.
    """
    p = _check_p(p)
    named = dict(model.named_parameters())
    chosen = list(named) if params is None else list(params)
    unknown = [name for name in chosen if name not in named]
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}; the model has {list(named)}")
    wrt = {name: named[name].detach() for name in chosen}
    frozen = {name: t.detach() for name, t in named.items() if name not in wrt}
    buffers = dict(model.named_buffers())

    def loss(weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        state = {**frozen, **weights, **buffers}
        logits = functional_call(model, state, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(wrt, images, labels)
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
    return torch.linalg.vector_norm(flat, ord=p, dim=1)


def per_sample_grad_norms_loop(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    layer: nn.Linear | None = None,
    all_parameters: bool = False,
    p: float = 2.0,
    limit: int | None = None,
) -> Tensor:
    """The official code's way: one forward pass of the batch, then one backward pass per sample
    through the whole network, and the p-norm of the gradient of ``layer``'s weight (default: the
    last linear layer) or, with ``all_parameters``, of every trainable parameter. Slow; kept to
    compare against.

    Args:
        limit: stop after this many samples (benchmarks time a few and extrapolate).

    Returns:
        ``(B,)`` norms (``(limit,)`` with ``limit``).
    """
    p = _check_p(p)
    if all_parameters:
        params = [q for q in model.parameters() if q.requires_grad]
    else:
        params = [(layer if layer is not None else last_linear(model)).weight]
    losses = F.cross_entropy(model(images), labels, reduction="none")
    norms = []
    for i in range(len(labels) if limit is None else min(limit, len(labels))):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True)
        flat = torch.cat([g.flatten() for g in grads])
        norms.append(torch.linalg.vector_norm(flat, ord=p))
    return torch.stack(norms).detach()
