"""The closed forms: which module has one (:func:`closed_form`), and each form's per-sample squared
norms from a call's input and output gradient (Linear, convolutions, BatchNorm in eval mode,
LayerNorm / GroupNorm / RMSNorm, Embedding, EmbeddingBag)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from . import torch_internals as internals

ConvMode = Literal["auto", "gram", "materialise"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: A Gram (ghost-norm) sum whose terms are, in absolute value, this many times larger than the
#: result has lost digits to cancellation; its samples are recomputed from the materialised
#: gradient, whose rounding error is that of a plain per-sample backward pass.
GRAM_CONDITION = 100.0


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or internals.global_forward_hooks_present()
    )


def closed_form(module: nn.Module) -> str | None:
    """The closed form that applies to ``module`` (``linear``, ``conv``, ``batchnorm``,
    ``norm``, ``embedding``), or None where there is none or where this cannot be proven: a
    subclass with a forward of its own (timm's ``StdConv2d`` standardises its weight), forward
    hooks (they may change inputs or outputs), an ``Embedding`` that scales by frequency."""
    kind = type(module)
    if _has_hooks(module):
        return None
    if isinstance(module, _CONVS) and not internals.convolution_backward_available():
        return None
    if isinstance(module, nn.Linear) and kind.forward is nn.Linear.forward:
        return "linear"
    for base in _CONVS:
        if (
            isinstance(module, base)
            and kind.forward is base.forward
            and kind._conv_forward is base._conv_forward
        ):
            return "conv"
    if isinstance(module, _BatchNorm) and kind.forward is _BatchNorm.forward:
        return "batchnorm"
    for base in _NORMS:
        if isinstance(module, base) and kind.forward is base.forward:
            return "norm"
    if (
        isinstance(module, nn.Embedding)
        and kind.forward is nn.Embedding.forward
        and not module.scale_grad_by_freq
    ):
        return "embedding"
    if (
        isinstance(module, nn.EmbeddingBag)
        and kind.forward is nn.EmbeddingBag.forward
        and not module.scale_grad_by_freq
        and module.mode in ("sum", "mean", "max")
    ):
        return "embedding_bag"
    return None


def why_not_closed(module: nn.Module) -> str:
    if _has_hooks(module):
        return "it has forward hooks, which may change its inputs or outputs"
    if isinstance(module, _CONVS) and not internals.convolution_backward_available():
        return "this torch lacks the convolution_backward operator"
    for base in (nn.Linear, *_CONVS, _BatchNorm, *_NORMS, nn.Embedding, nn.EmbeddingBag):
        if isinstance(module, base):
            if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.scale_grad_by_freq:
                return "scale_grad_by_freq has no closed form"
            return f"a subclass of {base.__name__} with a forward of its own"
    return f"no closed form for {type(module).__name__}"


def _joined(parts: list[Tensor], dim: int) -> Tensor:
    """``torch.cat`` that does not copy a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def sq(t: Tensor) -> Tensor:
    """Per-sample squared Euclidean norm: ``(B, ...) -> (B,)`` (``(B,)`` too: a 0-dim
    parameter's per-sample gradients), without a squared copy."""
    return torch.linalg.vector_norm(t.reshape(len(t), -1), dim=1).square()


@dataclass
class Single:
    """What a closed form reads of one call: the input and the output gradient."""

    x: Tensor
    grad: Tensor
    named: dict[str, Any] = field(default_factory=dict)  # the call's arguments (EmbeddingBag)


def _ghost(gram_a: Tensor, gram_g: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``sum (gram_a * gram_g)`` over ``dims`` (the ghost norm), and which samples lost digits
    to cancellation (terms :data:`GRAM_CONDITION` times larger than the sum, or a negative sum)."""
    terms = gram_a * gram_g
    total = terms.sum(dims)
    return total, total * GRAM_CONDITION < terms.abs().sum(dims)


# --- Linear -------------------------------------------------------------------------------------


def linear_mode(module: nn.Linear, positions: int) -> Literal["outer", "gram", "materialise"]:
    """The exact form used for a Linear applied at ``positions`` positions per sample: the outer
    product of norms (one position), the Gram form when ``T (d_in + d_out) <= d_in d_out``, else
    the materialised per-sample weight gradient."""
    if positions == 1:
        return "outer"
    d_in, d_out = module.in_features, module.out_features
    return "gram" if positions * (d_in + d_out) <= d_in * d_out else "materialise"


def _linear_sq_norms(
    module: nn.Linear, calls: list[Single], include: set[int], conv: ConvMode, batch: int
) -> Tensor:
    # Every call and every extra dimension is one more "position" t of the same weight.
    a = _joined([c.x.reshape(len(c.x), -1, module.in_features) for c in calls], 1)
    g = _joined([c.grad.reshape(len(c.grad), -1, module.out_features) for c in calls], 1)
    total = torch.zeros(len(g), device=g.device, dtype=g.dtype)
    if id(module.weight) in include:
        mode = linear_mode(module, a.shape[1])
        if mode == "outer":
            total = sq(a) * sq(g)
        elif mode == "gram":
            total, lost = _ghost(a @ a.transpose(1, 2), g @ g.transpose(1, 2), (1, 2))
            if lost.any():  # those samples from their materialised gradients
                total[lost] = sq(g[lost].transpose(1, 2) @ a[lost])
        else:
            total = sq(g.transpose(1, 2) @ a)
    if module.bias is not None and id(module.bias) in include:
        total = total + sq(g.sum(1))
    return total


# --- Convolutions -------------------------------------------------------------------------------


def _conv_pads(module: _ConvNd) -> list[int]:
    """Explicit (left, right) padding per spatial dimension, in F.pad's last-dim-first order."""
    dims = len(module.kernel_size)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pairs = [(0, 0)] * dims
        else:  # "same": PyTorch puts the extra element on the right
            totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
            pairs = [(t // 2, t - t // 2) for t in totals]
    else:
        pairs = [(p, p) for p in module.padding]
    return [x for pair in reversed(pairs) for x in pair]


def padded_pixels(module: _ConvNd, input_shape: torch.Size) -> int:
    """Input positions per sample and channel after the convolution's padding."""
    pads = _conv_pads(module)
    sides = [n + pads[2 * i] + pads[2 * i + 1] for i, n in enumerate(reversed(input_shape[2:]))]
    return int(torch.tensor(sides).prod())


def _padded(module: _ConvNd, x: Tensor) -> Tensor:
    pads = _conv_pads(module)
    if not any(pads):
        return x
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, pads, mode=mode)


def conv_mode(
    module: _ConvNd, output_positions: int, input_positions: int | None = None
) -> Literal["gram", "materialise"]:
    """Which exact form is cheaper for a convolution, per sample and group.

    With ``L`` output positions, ``L_in`` (padded) input positions, ``C = C_in/groups`` input
    channels, ``k`` kernel taps, ``D_in = C k`` and ``D_out = C_out/groups``:

    * the materialised gradient (one grouped convolution) multiplies ``L D_in D_out`` numbers and
      writes ``D_in D_out``;
    * the Gram form needs the Gram matrix of the input patches. Patches overlap, so it is summed
      from the Gram matrix of the input *pixels* (``L_in^2 C`` multiplies, written once) read at
      ``k`` shifted diagonals, plus the output-gradient Gram (``L^2 D_out``), or, for a module
      called several times, from unfolded patches (``L^2 (D_in + D_out)``, ``L D_in`` written).

    Writing memory costs far more per number than a multiply-add inside a matrix product (about
    32 times, measured on the layers of the book's models), so each cost is ``multiply-adds +
    32 x numbers written``. Gram wins on the small maps of deep layers, the materialised gradient
    on the large maps of the first layers. Conv3d is always materialised.
    """
    if isinstance(module, nn.Conv3d):
        return "materialise"
    taps = int(torch.tensor(module.kernel_size).prod())
    channels = module.in_channels // module.groups
    d_in, d_out, out = channels * taps, module.out_channels // module.groups, output_positions
    if input_positions is None:  # unfolded patches
        gram = out * out * (d_in + d_out) + 32 * (out * d_in + 2 * out * out)
    else:
        pixels = input_positions
        gram = pixels * pixels * channels + out * out * (d_out + taps)
        gram += 32 * (pixels * pixels + 2 * out * out)
    materialise = out * d_in * d_out + 32 * d_in * d_out
    return "gram" if gram < materialise else "materialise"


def _as_2d(module: _ConvNd, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor, tuple, tuple, tuple]:
    """Padded input and output gradient of a Conv1d/Conv2d call as 2-D maps, with the kernel,
    dilation and stride (a Conv1d is a Conv2d of height 1)."""
    x = _padded(module, x)
    if isinstance(module, nn.Conv1d):
        return (
            x.unsqueeze(2),
            g.unsqueeze(2),
            (1, *module.kernel_size),
            (1, *module.dilation),
            (1, *module.stride),
        )
    return x, g, module.kernel_size, module.dilation, module.stride


def _conv_sq_norms(
    module: _ConvNd, calls: list[Single], include: set[int], conv: ConvMode, batch: int
) -> Tensor:
    grad = calls[0].grad
    total = torch.zeros(len(grad), device=grad.device, dtype=grad.dtype)
    if id(module.weight) in include:
        positions = sum(int(torch.tensor(c.grad.shape[2:]).prod()) for c in calls)
        pixels = padded_pixels(module, calls[0].x.shape) if len(calls) == 1 else None
        mode = conv_mode(module, positions, pixels) if conv == "auto" else conv
        if isinstance(module, nn.Conv3d):
            mode = "materialise"
        lost = None
        if mode == "gram" and len(calls) == 1:
            total, lost = _conv_pixel_gram(module, calls[0])
        elif mode == "gram":
            total, lost = _conv_gram(module, calls)
        else:
            total = sq(sum(_conv_weight_grads(module, c.x, c.grad) for c in calls))
        if lost is not None and lost.any():  # those samples from their materialised gradients
            total[lost] = sq(
                sum(_conv_weight_grads(module, c.x[lost], c.grad[lost]) for c in calls)
            )
    if module.bias is not None and id(module.bias) in include:
        total = total + sq(sum(c.grad.flatten(2).sum(2) for c in calls))
    return total


def _conv_pixel_gram(module: _ConvNd, call: Single) -> tuple[Tensor, Tensor]:
    """Ghost norm of one call, ``sum_{l,m} (a_l . a_m)(g_l . g_m)``, without unfolding.

    The patch at output position ``l`` holds the pixels ``s l + d k`` for the taps ``k``, so
    ``a_l . a_m = sum_k P[s l + d k, s m + d k]`` where ``P`` is the Gram matrix of the padded
    input's pixels (channels summed): a sum of ``k`` strided views of ``P``, no copy of patches.
    """
    x, g, kernel, dilation, stride = _as_2d(module, call.x, call.grad)
    batch, groups = x.shape[0], module.groups
    height, width = x.shape[2:]
    out_h, out_w = g.shape[2:]
    pixels = x.reshape(batch, groups, -1, height * width)
    gram_x = (pixels.transpose(2, 3) @ pixels).view(batch, groups, height, width, height, width)
    gram_a = 0
    for ki in range(kernel[0]):
        for kj in range(kernel[1]):
            i, j = ki * dilation[0], kj * dilation[1]
            rows = slice(i, i + stride[0] * (out_h - 1) + 1, stride[0])
            cols = slice(j, j + stride[1] * (out_w - 1) + 1, stride[1])
            gram_a = gram_a + gram_x[:, :, rows, cols, rows, cols]
    gram_a = gram_a.reshape(batch, groups, out_h * out_w, out_h * out_w)
    grads = g.reshape(batch, groups, -1, out_h * out_w)
    gram_g = grads.transpose(2, 3) @ grads
    return _ghost(gram_a, gram_g, (1, 2, 3))


def _conv_gram(module: _ConvNd, calls: list[Single]) -> tuple[Tensor, Tensor]:
    """Ghost norm over the output positions of several calls, from unfolded input patches."""
    groups = module.groups
    patches, grads = [], []
    for call in calls:
        x, g, kernel, dilation, stride = _as_2d(module, call.x, call.grad)
        a = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (B, C_in * k, L)
        batch, positions = a.shape[0], a.shape[2]
        patches.append(a.reshape(batch, groups, -1, positions))
        grads.append(g.reshape(batch, groups, module.out_channels // groups, positions))
    a, g = _joined(patches, 3), _joined(grads, 3)
    gram_a = a.transpose(2, 3) @ a  # (B, G, L, L)
    gram_g = g.transpose(2, 3) @ g
    return _ghost(gram_a, gram_g, (1, 2, 3))


def _conv_weight_grads(module: _ConvNd, x: Tensor, g: Tensor) -> Tensor:
    """Per-sample weight gradients ``(B, C_out, C_in/groups, *kernel)`` by one grouped conv.

    The batch is folded into the channels (``B * groups`` groups), so the weight gradient that the
    convolution's backward computes for that grouped layer is the stack of per-sample gradients.
    """
    batch = x.shape[0]
    x = _padded(module, x)
    folded_x = x.reshape(1, batch * x.shape[1], *x.shape[2:])
    folded_g = g.reshape(1, batch * g.shape[1], *g.shape[2:])
    weight_shape = (batch * module.out_channels, *module.weight.shape[1:])
    dims = len(module.kernel_size)
    weight = g.new_empty(1).expand(weight_shape)
    grad = internals.convolution_backward(
        folded_g,
        folded_x,
        weight,
        None,
        list(module.stride),
        [0] * dims,
        list(module.dilation),
        False,
        [0] * dims,
        batch * module.groups,
        (False, True, False),
    )[1]
    return grad.reshape(batch, *module.weight.shape)


# --- Normalisation layers -----------------------------------------------------------------------


def _affine_sq_norms(
    module: nn.Module, xhat_grads: Tensor, grads: Tensor, include: set[int]
) -> Tensor:
    total = torch.zeros(len(grads), device=grads.device, dtype=grads.dtype)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None and id(weight) in include:
        total = total + sq(xhat_grads)
    if bias is not None and id(bias) in include:
        total = total + sq(grads)
    return total


def _batchnorm_sq_norms(
    module: _BatchNorm, calls: list[Single], include: set[int], conv: ConvMode, batch: int
) -> Tensor:
    # Eval mode: x̂ = (x - running_mean) / sqrt(running_var + eps), per channel (dimension 1), so
    # dL/dγ_c = sum_s g_cs x̂_cs = (sum_s g_cs x_cs - mean_c sum_s g_cs) / sqrt(var_c + eps):
    # two reductions over the positions, no normalised copy of the input. Where the two terms
    # cancel (a mean far larger than the spread around it), the sample is summed centred, as the
    # batch-norm backward does.
    gamma, beta = 0, 0
    scale = torch.rsqrt(module.running_var + module.eps)
    mean = module.running_mean
    for call in calls:
        x, g = call.x, call.grad
        x3, g3 = x.reshape(len(x), x.shape[1], -1), g.reshape(len(g), g.shape[1], -1)
        g_sum = g3.sum(2)  # (B, C)
        shift = mean * g_sum
        gx = (g3.unsqueeze(2) @ x3.unsqueeze(3)).flatten(1) - shift  # (B, C), by batched dot
        lost = (shift.abs() > GRAM_CONDITION * gx.abs()).any(1)
        if lost.any():
            centred = x3[lost] - mean[:, None]
            gx[lost] = (g3[lost].unsqueeze(2) @ centred.unsqueeze(3)).flatten(1)
        gamma = gamma + gx * scale
        beta = beta + g_sum
    return _affine_sq_norms(module, gamma, beta, include)


def _norm_sq_norms(
    module: nn.Module, calls: list[Single], include: set[int], conv: ConvMode, batch: int
) -> Tensor:
    gamma, beta = 0, 0
    for call in calls:
        x, g = call.x, call.grad
        if isinstance(module, nn.GroupNorm):
            xhat = F.group_norm(x, module.num_groups, eps=module.eps)
            reduce = tuple(range(2, x.dim()))  # gamma, beta: (C,)
        else:  # LayerNorm, RMSNorm: parameters over the trailing normalized_shape
            dims = len(module.normalized_shape)
            if isinstance(module, nn.LayerNorm):
                xhat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
            else:
                xhat = F.rms_norm(x, module.normalized_shape, eps=module.eps)
            reduce = tuple(range(1, x.dim() - dims))
        gamma = gamma + ((g * xhat).sum(reduce) if reduce else g * xhat)
        beta = beta + (g.sum(reduce) if reduce else g)
    return _affine_sq_norms(module, gamma, beta, include)


# --- Embedding ----------------------------------------------------------------------------------


def _embedding_sq_norms(
    module: nn.Embedding, calls: list[Single], include: set[int], conv: ConvMode, batch: int
) -> Tensor:
    """Add up ``g_bt`` per (sample, token) with ``index_add``, then per-sample squared norms."""
    idx = torch.cat([c.x.reshape(batch, -1) for c in calls], 1)
    g = torch.cat([c.grad.reshape(batch, -1, module.embedding_dim) for c in calls], 1)
    if module.padding_idx is not None:  # that row never receives a gradient
        g = g * (idx != module.padding_idx).unsqueeze(-1).to(g.dtype)
    keys = (
        torch.arange(batch, device=idx.device).unsqueeze(1) * module.num_embeddings + idx
    ).flatten()
    unique, slot = torch.unique(keys, return_inverse=True)
    rows = g.new_zeros(len(unique), module.embedding_dim).index_add_(0, slot, g.flatten(0, 1))
    owner = torch.div(unique, module.num_embeddings, rounding_mode="floor")
    return g.new_zeros(batch).index_add_(0, owner, rows.pow(2).sum(1))


def _bags(module: nn.EmbeddingBag, call: Single, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every token of one ``EmbeddingBag`` call that enters a bag: ``(bag, token, weight)``, each
    ``(N,)``; ``weight`` is the factor of the token's row in its bag's output (its
    ``per_sample_weights`` entry in ``sum`` mode, ``1 / bag size`` in ``mean`` mode, 1 in
    ``max`` mode). Tokens equal to ``padding_idx`` are left out, as the layer leaves them out."""
    tokens, offsets = call.x, call.named.get("offsets")
    weights = call.named.get("per_sample_weights")
    if tokens.dim() == 2:  # (B, L): bag b holds row b
        bag = torch.arange(len(tokens), device=tokens.device).repeat_interleave(tokens.shape[1])
    else:  # flat tokens, bag b starts at offsets[b]
        starts = offsets[:-1] if module.include_last_offset else offsets
        positions = torch.arange(len(tokens), device=tokens.device)
        bag = torch.searchsorted(starts.contiguous(), positions, right=True) - 1
        if module.include_last_offset:  # tokens after the last offset belong to no bag
            bag = torch.where(positions < offsets[-1], bag, -1)
    tokens = tokens.flatten()
    factor = (
        weights.flatten().to(call.grad.dtype)
        if weights is not None
        else torch.ones(len(tokens), dtype=call.grad.dtype, device=tokens.device)
    )
    keep = bag >= 0
    if module.padding_idx is not None:
        keep &= tokens != module.padding_idx
    bag, tokens, factor = bag[keep], tokens[keep], factor[keep]
    if module.mode == "mean":
        size = torch.zeros(batch, dtype=factor.dtype, device=factor.device)
        size.index_add_(0, bag, torch.ones_like(factor))
        factor = factor / size[bag]
    return bag, tokens, factor


def _embedding_bag_sq_norms(
    module: nn.EmbeddingBag, calls: list[Single], include: set[int], conv: ConvMode, batch: int
) -> Tensor:
    """Per sample (bag), the weight's gradient has row ``v`` equal to the sum, over the bag's
    tokens ``v``, of the token's factor times the output gradient ``g_b`` (``sum`` and
    ``mean``), or, in ``max`` mode, ``g_bd`` in column ``d`` of the row that won the maximum in
    that column: added up per (sample, row) as for ``nn.Embedding``, over every call."""
    dim, rows_n = module.embedding_dim, module.num_embeddings
    width = 1 if module.mode == "max" else dim  # max: one entry per (sample, row, column)
    keys, values = [], []
    for call in calls:
        bag, tokens, factor = _bags(module, call, batch)
        g = call.grad.reshape(batch, dim)
        if module.mode != "max":
            keys.append(bag * rows_n + tokens)
            values.append(factor.unsqueeze(1) * g[bag])
            continue
        # max: the winning row of every (bag, column), from the weights the layer read
        rows = module.weight.detach()[tokens]  # (N, D)
        spread = bag.unsqueeze(1).expand(-1, dim)
        best = torch.full((batch, dim), -torch.inf, dtype=rows.dtype, device=rows.device)
        best.scatter_reduce_(0, spread, rows, reduce="amax")
        order = torch.arange(len(tokens), device=rows.device).unsqueeze(1).expand(-1, dim)
        first = torch.full((batch, dim), len(tokens), device=rows.device, dtype=torch.long)
        candidates = torch.where(rows == best[bag], order, len(tokens))
        first.scatter_reduce_(0, spread, candidates, reduce="amin")  # first winner counts
        present = first < len(tokens)  # an empty bag has no winner and no gradient
        winner = tokens[first.clamp_max(max(len(tokens) - 1, 0))]  # (B, D)
        sample = torch.arange(batch, device=rows.device).unsqueeze(1).expand(-1, dim)
        column = torch.arange(dim, device=rows.device).expand(batch, -1)
        keys.append(((sample * rows_n + winner) * dim + column)[present])
        values.append(g[present].unsqueeze(1))
    key, value = torch.cat(keys), torch.cat(values)
    unique, slot = torch.unique(key, return_inverse=True)
    summed = value.new_zeros(len(unique), width).index_add_(0, slot, value)
    owner = torch.div(unique, rows_n * (dim if width == 1 else 1), rounding_mode="floor")
    return value.new_zeros(batch).index_add_(0, owner, summed.pow(2).sum(1))


#: Closed form -> ``(module, calls, included parameter ids, conv mode, batch) -> (B,)``
#: squared norms.
CLOSED_FORMS: dict[str, Callable[..., Tensor]] = {
    "linear": _linear_sq_norms,
    "conv": _conv_sq_norms,
    "batchnorm": _batchnorm_sq_norms,
    "norm": _norm_sq_norms,
    "embedding": _embedding_sq_norms,
    "embedding_bag": _embedding_bag_sq_norms,
}
