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
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import Dataset

from .data import batch_loader
from .models import last_linear


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


@torch.no_grad()
def last_layer_grad_norms(
    model: nn.Module,
    data: Dataset | Iterable,
    *,
    p: float = 2.0,
    include_bias: bool = False,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    layer: nn.Linear | None = None,
) -> Tensor:
    """PGD's scores for every sample of ``data``: closed-form last-layer gradient norms.

    The model is put in eval mode for the pass (BatchNorm uses running statistics, dropout is
    off, as in the official code) and restored afterwards.

    Args:
        model: the (biased) model.
        data: a dataset of ``(image, label, bias_label, index)`` items, or an iterable of such
            batches.
        p, include_bias: see :func:`closed_form_grad_norms`.
        batch_size: batch size when ``data`` is a dataset.
        device: where to compute (default: where the model is).
        layer: the linear layer to score (default :func:`pgd.models.last_linear`).

    Returns:
        ``(N,)`` float32 CPU tensor; entry ``i`` belongs to the sample with index ``i``.
    """
    layer = layer if layer is not None else last_linear(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = batch_loader(data, batch_size) if isinstance(data, Dataset) else data
    captured: list[tuple[Tensor, Tensor]] = []
    hook = layer.register_forward_hook(lambda _m, inputs, out: captured.append((inputs[0], out)))
    was_training = model.training
    model.eval()
    indices, norms = [], []
    try:
        for images, labels, _bias, index in loader:
            captured.clear()
            logits = model(images.to(device, non_blocking=True))
            features, layer_out = captured[-1]
            if layer_out is not logits:
                raise ValueError(
                    f"the scored layer ({layer}) does not produce the model's output, so the "
                    "closed form does not apply: pass the layer whose output are the logits"
                )
            norms.append(
                closed_form_grad_norms(
                    features, logits.float(), labels.to(device), p=p, include_bias=include_bias
                )
                .float()
                .cpu()
            )
            indices.append(torch.as_tensor(index).flatten().cpu())
    finally:
        hook.remove()
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
    p: float = 2.0,
) -> Tensor:
    """The official code's way: one backward pass per sample through the whole network, then the
    p-norm of the gradient of ``layer``'s weight (default: the last linear layer). Slow; kept to
    compare against.

    Returns:
        ``(B,)`` norms.
    """
    p = _check_p(p)
    layer = layer if layer is not None else last_linear(model)
    losses = F.cross_entropy(model(images), labels, reduction="none")
    norms = []
    for i in range(len(labels)):
        (weight_grad,) = torch.autograd.grad(losses[i], layer.weight, retain_graph=True)
        norms.append(torch.linalg.vector_norm(weight_grad, ord=p))
    return torch.stack(norms).detach()
