"""A spot check of any per-sample gradient norms against the plain computation: a few samples of
the batch, each with a forward and a backward pass of its own.

No rule about shapes or module classes can see every way a model can mix its samples or reorder
its batch internally; comparing a few samples with the plain computation is the cheapest guard
against what no rule covers."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from .trace import LOOP, LossFn, default_loss


def spot_check(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    norms: Tensor,
    params: Sequence[Tensor],
    k: int,
    *,
    loss_fn: LossFn = default_loss,
    p: float = 2.0,
    seed: int = 0,
    tolerance: float | None = None,
) -> None:
    """Recompute ``k`` of the batch's per-sample gradient norms one sample at a time and raise if
    any differs from ``norms`` beyond the dtype's tolerance.

    The samples are drawn with a generator of their own (``seed``), so the check never changes
    the caller's random state, and so a run that checks draws what a run that does not check
    draws. The tolerance is ``sqrt(eps)`` of the norms' dtype (3.5e-4 in float32, 1.5e-8 in
    float64), relative to the largest norm of the batch: far above the rounding of either
    computation, far below any real mistake.

    Args:
        model: the network, in the mode the norms were computed in.
        inputs: ``(B, ...)`` the batch. labels: ``(B,)`` its targets.
        norms: ``(B,)`` the per-sample gradient norms to check.
        params: the parameters the norms are taken over.
        k: how many samples to recompute (0: none; at most ``B``).
        loss_fn: per-sample loss ``(outputs, labels) -> (B,)``.
        p: the norm's order over ``params`` taken together.
        seed: which samples are drawn.
        tolerance: relative tolerance, where the norms were computed at a lower precision than
            their dtype says (default: ``sqrt(eps)`` of their dtype).

    Raises:
        ValueError: a recomputed norm differs, naming the sample and both values.
    """
    if k <= 0 or len(inputs) == 0:
        return
    if any(isinstance(m, _DropoutNd) and m.training and m.p > 0 for m in model.modules()):
        warnings.warn(
            "pgd: spot check skipped: dropout is in training mode, so every forward pass draws "
            "a new mask and no two computations of a norm agree (call model.eval())",
            stacklevel=3,
        )
        return
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(inputs), generator=generator)[: min(k, len(inputs))].tolist()
    got = norms.detach().reshape(-1)
    if not got.is_floating_point():
        raise TypeError(f"norms must be floating point, got {got.dtype}")
    if tolerance is None:
        tolerance = math.sqrt(torch.finfo(got.dtype).eps)
    scale = float(got.abs().max()) if len(got) else 0.0
    worst: tuple[float, int, float] | None = None
    with torch.inference_mode(False), torch.enable_grad():
        for i in chosen:
            x = inputs[i : i + 1].clone() if inputs.is_inference() else inputs[i : i + 1]
            y = labels[i : i + 1].clone() if labels.is_inference() else labels[i : i + 1]
            loss = loss_fn(model(x.detach()), y).sum()
            grads = torch.autograd.grad(loss, list(params), allow_unused=True)
            flat = [
                (g.coalesce().values() if g.is_sparse else g).reshape(-1).to(got.dtype)
                for g in grads
                if g is not None
            ]
            want = float(torch.linalg.vector_norm(torch.cat(flat), ord=p)) if flat else 0.0
            gap = abs(float(got[i]) - want)
            if worst is None or gap > worst[0]:
                worst = (gap, i, want)
    assert worst is not None
    gap, i, want = worst
    if gap > tolerance * max(scale, want, torch.finfo(got.dtype).tiny):
        raise ValueError(
            f"spot check failed: sample {i} of the batch has per-sample gradient norm "
            f"{float(got[i]):.6g} here but {want:.6g} from a forward and backward pass of that "
            f"sample alone (difference {gap:.3g}, tolerance {tolerance:.1e} x "
            f"{max(scale, want):.3g}). The model does something the one-pass computation "
            "cannot see (it mixes samples, or reorders its batch). Use "
            f"{LOOP} for it, and please report the model; check=0 turns the check off."
        )
