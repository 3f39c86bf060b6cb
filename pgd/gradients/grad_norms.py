"""Exact per-sample gradient norms over a whole network, in one forward and one backward pass.

For a batch of ``B`` samples with losses ``L_1 .. L_B``, we want ``||dL_b/dθ||_2`` for every
``b``, where ``θ`` is every parameter of the network (or of chosen modules). Materialising the
``B`` gradients (``torch.func.vmap(grad(...))``) costs ``B x #params`` memory; looping over the
samples costs ``B`` backward passes. Neither is needed. One backward pass of ``sum_b L_b`` gives,
at every module, its input activations ``a_b`` and the gradient of the loss with respect to its
output ``g_b`` (both per sample, because samples do not interact). Each module's per-sample
parameter gradient is a small function of ``(a_b, g_b)`` whose squared norm has a cheap exact form:

* ``nn.Linear``: ``dL_b/dW = g_b a_b^T``, so ``||dL_b/dW||^2 = ||g_b||^2 ||a_b||^2``. With extra
  (sequence) dimensions ``t``, ``dL_b/dW = sum_t g_bt a_bt^T`` and
  ``||dL_b/dW||^2 = sum_{t,s} (a_bt . a_bs)(g_bt . g_bs)``: the Gram-matrix ("ghost norm") form.
* ``nn.Conv1d/2d``: a convolution is a linear layer applied at every output position ``l`` to
  the input patch under the kernel, so the same Gram form holds over positions (the patch Gram
  matrix summed from the Gram matrix of the input's pixels, without unfolding), or the per-sample
  weight gradient is materialised (one grouped convolution) when that is cheaper for the layer's
  shape (:func:`conv_mode`); ``nn.Conv3d``: materialised.
* BatchNorm (eval mode), LayerNorm, GroupNorm, RMSNorm: ``dL_b/dγ = sum g_b * x̂_b`` and
  ``dL_b/dβ = sum g_b`` over the positions, with the normalised input ``x̂_b`` recomputed.
* ``nn.Embedding``: rows of the gradient are sums of ``g_bt`` over the positions holding the same
  token, added up per (sample, token) without forming the ``B x V x D`` gradient.
* any other module with parameters of its own: ``torch.func`` (vmap of a vector-Jacobian product)
  on that module alone, after a one-time warning that names it.

The backward pass is led only as far as the first layers (no parameter gradient, no input
gradient is computed), and a pre-hook on the graph edge of each module's output computes that
module's norms the moment its output gradient arrives and then releases its saved input, so time
and memory stay close to one training step (``benchmarks/per_sample_norms.py`` measures it).

BatchNorm in training mode normalises with the statistics of the batch, so every sample's output
depends on every other sample: per-sample gradients are then not defined, and we refuse. A
parameter must be used only inside its own module's forward (tied weights, or weights read
directly by a parent module, are refused where they can be detected).

The plain reference these formulas are tested against is
:func:`pgd.gradients.scores.per_sample_grad_norms` (``vmap(grad(...))`` over the whole model).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call, vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

ConvMode = Literal["auto", "gram", "materialise"]
LossFn = Callable[[Tensor, Tensor], Tensor]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_WARNED: set[str] = set()


@dataclass
class _Call:
    """One call of a module during the forward pass: its inputs, and later its output gradient."""

    args: tuple
    edge: GradientEdge | None
    root: bool = False  # no input requires a gradient: the backward pass must be led here
    grad: Tensor | None = None


@dataclass
class _Watched:
    name: str
    module: nn.Module
    calls: list[_Call] = field(default_factory=list)
    pending: int = 0  # calls whose output gradient has not arrived yet
    result: Tensor | None = None  # (B,) squared norms, once known


def default_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy, ``(B, C), (B,) -> (B,)``: PGD's loss."""
    return F.cross_entropy(logits, labels, reduction="none")


def _owns_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def _check_no_batch_mixing(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and (module.training or module.running_mean is None):
            why = (
                "is in training mode"
                if module.training
                else "keeps no running statistics (track_running_stats=False)"
            )
            raise ValueError(
                f"BatchNorm layer {name or type(module).__name__!r} {why}: it normalises with the "
                "statistics of the whole batch, so each sample's output depends on the other "
                "samples and per-sample gradients are not defined. Call model.eval() before "
                "computing per-sample gradient norms (PGD scores in eval mode, like the official "
                "code)."
            )


def select_modules(
    model: nn.Module, modules: Iterable[nn.Module | str] | None = None
) -> list[tuple[str, nn.Module]]:
    """The modules whose own trainable parameters are scored, as ``(name, module)`` pairs.

    ``None`` means every module of ``model``; a chosen module (object or dotted name) stands for
    itself and all its descendants. Only modules that own trainable parameters are returned.

    Raises:
        ValueError: an unknown name, a module that is not part of ``model``, a selection with no
            trainable parameters, or a parameter shared by two selected modules (its per-sample
            gradient would be the sum of both contributions, which this method does not form).
    """
    named = dict(model.named_modules())
    names_of = {id(m): n for n, m in named.items()}
    roots: list[nn.Module]
    if modules is None:
        roots = [model]
    else:
        roots = []
        for item in modules:
            if isinstance(item, str):
                if item not in named:
                    valid = [n for n, m in named.items() if n and _owns_trainable(m)]
                    raise ValueError(
                        f"the model has no module named {item!r}; modules with parameters: "
                        f"{', '.join(valid[:20])}{' ...' if len(valid) > 20 else ''}"
                    )
                roots.append(named[item])
            elif isinstance(item, nn.Module):
                if id(item) not in names_of:
                    raise ValueError(f"{type(item).__name__} module is not part of the model")
                roots.append(item)
            else:
                raise TypeError(f"modules must be nn.Module objects or names, got {item!r}")
    chosen: dict[int, tuple[str, nn.Module]] = {}
    for root in roots:
        for sub in root.modules():
            if _owns_trainable(sub):
                chosen.setdefault(id(sub), (names_of[id(sub)], sub))
    if not chosen:
        raise ValueError("the selected modules have no trainable parameters")
    owner: dict[int, str] = {}
    for name, module in chosen.values():
        for param in module.parameters(recurse=False):
            if param.requires_grad and id(param) in owner:
                raise ValueError(
                    f"a parameter is shared by modules {owner[id(param)]!r} and {name!r} (tied "
                    "weights); their per-sample gradients would have to be added before the norm, "
                    "which this method does not do. Use pgd.gradients.scores.per_sample_grad_norms."
                )
            owner[id(param)] = name
    return list(chosen.values())


def grad_norms(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    modules: Iterable[nn.Module | str] | None = None,
    loss_fn: LossFn = default_loss,
    conv: ConvMode = "auto",
    per_module: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Exact per-sample Euclidean norms of the loss gradient over all (or chosen) parameters.

    One forward and one backward pass of the batch; no per-sample gradient of a Linear or
    normalisation layer is ever formed. The model is used as it is: call ``model.eval()`` first
    if it has BatchNorm (required) or dropout (advisable: otherwise the norms are random).

    Args:
        model: any network whose samples do not interact (no BatchNorm in training mode).
        inputs: ``(B, ...)`` batch, batch dimension first.
        labels: ``(B,)`` targets for ``loss_fn``.
        modules: modules (objects or dotted names) whose parameters count, each with its
            descendants; default: the whole model.
        loss_fn: per-sample loss, ``(outputs, labels) -> (B,)``; default cross-entropy.
        conv: ``"gram"`` or ``"materialise"`` for every convolution, or ``"auto"`` (default) to
            pick the cheaper one per layer (:func:`conv_mode`).
        per_module: also return each module's ``(B,)`` squared norms, keyed by module name.

    Returns:
        ``(B,)`` norms (and the per-module squared norms if asked); detached, dtype of the
        computation.

    Raises:
        ValueError: BatchNorm in training mode, a module fed a tensor whose first dimension is not
            the batch, a loss that does not return one value per sample, or a bad selection.
    """
    if conv not in ("auto", "gram", "materialise"):
        raise ValueError(f"conv must be 'auto', 'gram' or 'materialise', got {conv!r}")
    _check_no_batch_mixing(model)
    selected = select_modules(model, modules)
    watched = _one_pass(model, inputs, labels, selected, loss_fn, conv, exhaustive=False)
    if any(w.pending for w in watched):  # the pass from the first layers missed some: ask for all
        watched = _one_pass(model, inputs, labels, selected, loss_fn, conv, exhaustive=True)
    squared = {w.name: w.result for w in watched}
    total = torch.stack(list(squared.values())).sum(0).sqrt()
    return (total, squared) if per_module else total


def _one_pass(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    selected: list[tuple[str, nn.Module]],
    loss_fn: LossFn,
    conv: ConvMode,
    *,
    exhaustive: bool,
) -> list[_Watched]:
    """One forward and one backward pass; each module's squared norms are computed (and its
    activations released) as soon as the gradients of all its calls have arrived."""
    batch = len(labels)
    watched = [_Watched(name, module) for name, module in selected]
    # The backward pass is led to the "root" calls, those whose input needs no gradient (the
    # first layers, embeddings): every output gradient above them is computed on the way, but no
    # other parameter gradient, and no gradient of the input batch.
    x = inputs.detach()
    handles = [w.module.register_forward_hook(_recorder(w, batch)) for w in watched]
    try:
        with torch.enable_grad():
            losses = loss_fn(model(x), labels)
    finally:
        for handle in handles:
            handle.remove()
    if losses.shape != (batch,):
        raise ValueError(
            f"loss_fn must return one loss per sample, shape ({batch},); got "
            f"{tuple(losses.shape)} (use reduction='none')"
        )
    live = [(w, c) for w in watched for c in w.calls if c.edge is not None]
    roots: list[Tensor] = []
    for w, call in live:
        if call.root:  # its bias gradient is the cheapest way to reach it
            bias = getattr(w.module, "bias", None)
            if isinstance(bias, Tensor) and bias.requires_grad:
                roots.append(bias)
            else:
                roots += [p for p in w.module.parameters(recurse=False) if p.requires_grad]
    # Without a root among the chosen modules (a subset above unchosen layers), or on the second
    # try, ask autograd for the chosen outputs' gradients themselves (kept until the end).
    exhaustive = exhaustive or not roots
    orphans = [
        p
        for w in watched
        if not w.calls  # never called: its weights must not have been used elsewhere either
        for p in w.module.parameters(recurse=False)
        if p.requires_grad
    ]
    if exhaustive:
        targets = [c.edge for _, c in live] + orphans
    else:
        targets = roots + orphans
        for w in watched:
            w.pending = sum(1 for c in w.calls if c.edge is not None)
        for w, call in live:
            call.edge.node.register_prehook(_arrival(w, call, batch, conv))
    grads: tuple = ()
    if targets and losses.requires_grad:
        # The gradient of the summed loss w.r.t. a module's output is, row by row, the gradient
        # of each sample's own loss: the hooks on the recorded graph edges see exactly that, even
        # when a later in-place operation (ReLU(inplace=True), `out += identity`) overwrote the
        # output tensor.
        grads = torch.autograd.grad(losses.sum(), targets, allow_unused=True)
    if exhaustive:
        for (_, call), grad in zip(live, grads, strict=False):
            call.grad = None if grad is None else grad.detach()
    orphan_grads = grads[len(grads) - len(orphans) :] if grads else [None] * len(orphans)
    used = {id(p) for p, g in zip(orphans, orphan_grads, strict=True) if g is not None}
    for w in watched:
        if not w.calls and any(id(p) in used for p in w.module.parameters(recurse=False)):
            raise ValueError(
                f"the parameters of module {w.name!r} ({type(w.module).__name__}) receive a "
                "gradient but the module itself is never called (its parent uses the weights "
                "directly, as nn.MultiheadAttention does with out_proj): select the parent module "
                "instead, or use pgd.gradients.scores.per_sample_grad_norms"
            )
        if exhaustive or not w.calls:
            w.pending = 0
            _finish(w, batch, conv)
    return watched


def _recorder(watched: _Watched, batch: int) -> Callable:
    def hook(module: nn.Module, args: tuple, output: object) -> None:
        if not isinstance(output, Tensor):
            raise ValueError(
                f"module {watched.name!r} returns {type(output).__name__}, not a tensor; "
                "per-sample norms support modules with one tensor output"
            )
        first = args[0] if args and isinstance(args[0], Tensor) else None
        if first is None or first.shape[:1] != (batch,) or output.shape[:1] != (batch,):
            got = None if first is None else tuple(first.shape)
            raise ValueError(
                f"module {watched.name!r} ({type(module).__name__}) received input of shape {got} "
                f"for a batch of {batch}: per-sample norms need the batch as the first dimension "
                "of every scored module's input and output (use "
                "pgd.gradients.scores.per_sample_grad_norms for such models)"
            )
        edge = get_gradient_edge(output) if output.requires_grad else None
        root = not any(isinstance(a, Tensor) and a.requires_grad for a in args)
        args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        watched.calls.append(_Call(args, edge, root))

    return hook


def _arrival(watched: _Watched, call: _Call, batch: int, conv: ConvMode) -> Callable:
    """Backward pre-hook of the node that produced ``call``'s output: keep the output gradient;
    when the module's last call has its gradient, compute the module's norms."""
    index = call.edge.output_nr

    def hook(grad_outputs: tuple) -> None:
        grad = grad_outputs[index]
        call.grad = None if grad is None else grad.detach()
        watched.pending -= 1
        if watched.pending == 0:
            with torch.no_grad():
                _finish(watched, batch, conv)

    return hook


def _finish(watched: _Watched, batch: int, conv: ConvMode) -> None:
    watched.result = _module_sq_norms(watched, batch, conv)
    for call in watched.calls:  # release the activations and gradients at once
        call.args, call.grad = (), None


def _module_sq_norms(watched: _Watched, batch: int, conv: ConvMode) -> Tensor:
    module = watched.module
    calls = [c for c in watched.calls if c.grad is not None]
    ref = next(p for p in module.parameters(recurse=False) if p.requires_grad)
    if not calls:  # the module did not influence the loss
        return torch.zeros(batch, device=ref.device, dtype=ref.dtype)
    if isinstance(module, nn.Linear):
        return _linear_sq_norms(module, calls)
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return _conv_sq_norms(module, calls, conv)
    if isinstance(module, _BatchNorm):
        return _batchnorm_sq_norms(module, calls)
    if isinstance(module, _NORMS):
        return _norm_sq_norms(module, calls)
    if isinstance(module, nn.Embedding) and not module.scale_grad_by_freq:
        return _embedding_sq_norms(module, calls, batch)
    return _functional_sq_norms(watched.name, module, calls)


def _joined(parts: list[Tensor], dim: int) -> Tensor:
    """``torch.cat`` that does not copy a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _sq(t: Tensor) -> Tensor:
    """Per-sample squared Euclidean norm: ``(B, ...) -> (B,)``, without a squared copy."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).square()


# --- Linear -------------------------------------------------------------------------------------


def linear_mode(module: nn.Linear, positions: int) -> Literal["outer", "gram", "materialise"]:
    """The exact form used for a Linear applied at ``positions`` positions per sample: the outer
    product of norms (one position), the Gram form when ``T (d_in + d_out) <= d_in d_out``, else
    the materialised per-sample weight gradient."""
    if positions == 1:
        return "outer"
    d_in, d_out = module.in_features, module.out_features
    return "gram" if positions * (d_in + d_out) <= d_in * d_out else "materialise"


def _linear_sq_norms(module: nn.Linear, calls: list[_Call]) -> Tensor:
    # Every call and every extra dimension is one more "position" t of the same weight.
    a = _joined([c.args[0].reshape(len(c.args[0]), -1, module.in_features) for c in calls], 1)
    g = _joined([c.grad.reshape(len(c.grad), -1, module.out_features) for c in calls], 1)
    mode = linear_mode(module, a.shape[1])
    if mode == "outer":
        weight = _sq(a) * _sq(g)
    elif mode == "gram":
        weight = (a @ a.transpose(1, 2) * (g @ g.transpose(1, 2))).sum((1, 2))
    else:
        weight = _sq(g.transpose(1, 2) @ a)
    if module.weight.requires_grad is False:
        weight = torch.zeros_like(weight)
    if module.bias is not None and module.bias.requires_grad:
        weight = weight + _sq(g.sum(1))
    return weight


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


def _padded_pixels(module: _ConvNd, input_shape: torch.Size) -> int:
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


def _conv_sq_norms(module: _ConvNd, calls: list[_Call], conv: ConvMode) -> Tensor:
    total = None
    if module.weight.requires_grad:
        positions = sum(int(torch.tensor(c.grad.shape[2:]).prod()) for c in calls)
        pixels = _padded_pixels(module, calls[0].args[0].shape) if len(calls) == 1 else None
        mode = conv_mode(module, positions, pixels) if conv == "auto" else conv
        if isinstance(module, nn.Conv3d):
            mode = "materialise"
        if mode == "gram" and len(calls) == 1:
            total = _conv_pixel_gram(module, calls[0])
        elif mode == "gram":
            total = _conv_gram(module, calls)
        else:
            per_sample = sum(_conv_weight_grads(module, c.args[0], c.grad) for c in calls)
            total = _sq(per_sample)
    if module.bias is not None and module.bias.requires_grad:
        bias = _sq(sum(c.grad.flatten(2).sum(2) for c in calls))
        total = bias if total is None else total + bias
    return total


def _conv_pixel_gram(module: _ConvNd, call: _Call) -> Tensor:
    """Ghost norm of one call, ``sum_{l,m} (a_l . a_m)(g_l . g_m)``, without unfolding.

    The patch at output position ``l`` holds the pixels ``s l + d k`` for the taps ``k``, so
    ``a_l . a_m = sum_k P[s l + d k, s m + d k]`` where ``P`` is the Gram matrix of the padded
    input's pixels (channels summed): a sum of ``k`` strided views of ``P``, no copy of patches.
    """
    x, g, kernel, dilation, stride = _as_2d(module, call.args[0], call.grad)
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
    return (gram_a * gram_g).sum((1, 2, 3))


def _conv_gram(module: _ConvNd, calls: list[_Call]) -> Tensor:
    """Ghost norm over the output positions of several calls, from unfolded input patches."""
    groups = module.groups
    patches, grads = [], []
    for call in calls:
        x, g, kernel, dilation, stride = _as_2d(module, call.args[0], call.grad)
        a = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (B, C_in * k, L)
        batch, positions = a.shape[0], a.shape[2]
        patches.append(a.reshape(batch, groups, -1, positions))
        grads.append(g.reshape(batch, groups, module.out_channels // groups, positions))
    a, g = _joined(patches, 3), _joined(grads, 3)
    gram_a = a.transpose(2, 3) @ a  # (B, G, L, L)
    gram_g = g.transpose(2, 3) @ g
    return (gram_a * gram_g).sum((1, 2, 3))


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
    grad = torch.ops.aten.convolution_backward(
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


def _affine_sq_norms(module: nn.Module, xhat_grads: Tensor, grads: Tensor) -> Tensor:
    total = torch.zeros(len(grads), device=grads.device, dtype=grads.dtype)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None and weight.requires_grad:
        total = total + _sq(xhat_grads)
    if bias is not None and bias.requires_grad:
        total = total + _sq(grads)
    return total


def _batchnorm_sq_norms(module: _BatchNorm, calls: list[_Call]) -> Tensor:
    # Eval mode: x̂ = (x - running_mean) / sqrt(running_var + eps), per channel (dimension 1), so
    # dL/dγ_c = sum_s g_cs x̂_cs = (sum_s g_cs x_cs - mean_c sum_s g_cs) / sqrt(var_c + eps):
    # two reductions over the positions, no normalised copy of the input.
    gamma, beta = 0, 0
    scale = torch.rsqrt(module.running_var + module.eps)
    for call in calls:
        x, g = call.args[0], call.grad
        x3, g3 = x.reshape(len(x), x.shape[1], -1), g.reshape(len(g), g.shape[1], -1)
        g_sum = g3.sum(2)  # (B, C)
        gx = (g3.unsqueeze(2) @ x3.unsqueeze(3)).flatten(1)  # (B, C): sum_s g x, by batched dot
        gamma = gamma + (gx - module.running_mean * g_sum) * scale
        beta = beta + g_sum
    return _affine_sq_norms(module, gamma, beta)


def _norm_sq_norms(module: nn.Module, calls: list[_Call]) -> Tensor:
    gamma, beta = 0, 0
    for call in calls:
        x, g = call.args[0], call.grad
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
    return _affine_sq_norms(module, gamma, beta)


# --- Embedding ----------------------------------------------------------------------------------


def _embedding_sq_norms(module: nn.Embedding, calls: list[_Call], batch: int) -> Tensor:
    """Add up ``g_bt`` per (sample, token) with ``index_add``, then per-sample squared norms."""
    idx = torch.cat([c.args[0].reshape(batch, -1) for c in calls], 1)
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


# --- Anything else: torch.func on the module alone ----------------------------------------------


def _functional_sq_norms(name: str, module: nn.Module, calls: list[_Call]) -> Tensor:
    kind = type(module).__name__
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(
            f"no closed form for {kind} (module {name!r}): its per-sample gradients are "
            "materialised with torch.func (exact, but slower and B x its parameters in memory)",
            stacklevel=4,
        )
    params = {n: p.detach() for n, p in module.named_parameters(recurse=False) if p.requires_grad}
    total: dict[str, Tensor] | None = None
    for call in calls:
        batch = len(call.grad)
        dims = tuple(
            0 if isinstance(a, Tensor) and a.dim() and a.shape[0] == batch else None
            for a in call.args
        )

        def one_sample(grad_out: Tensor, *args: object, dims: tuple = dims) -> dict[str, Tensor]:
            def forward(weights: dict[str, Tensor]) -> Tensor:
                batched = tuple(
                    a.unsqueeze(0) if d == 0 else a for a, d in zip(args, dims, strict=True)
                )
                return functional_call(module, weights, batched)

            _, pullback = vjp(forward, params)
            return pullback(grad_out.unsqueeze(0))[0]

        grads = vmap(one_sample, in_dims=(0, *dims))(call.grad, *call.args)
        total = grads if total is None else {k: total[k] + grads[k] for k in grads}
    assert total is not None
    return sum(_sq(g) for g in total.values())


def describe_plan(model: nn.Module, inputs: Tensor) -> list[dict]:
    """Per scored module: its name, type, number of parameters and the exact form used for it.

    One forward pass of the first sample of ``inputs`` finds each module's output size.
    """
    rows, sizes = [], {}
    selected = select_modules(model)

    def size_of(name: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            # positions per sample: sequence length for a Linear, output map size for a conv
            per_sample = out[0].numel()
            channels = out.shape[-1] if isinstance(module, nn.Linear) else out.shape[1]
            positions = per_sample // channels if out.dim() > 1 else 1
            conv = isinstance(module, nn.Conv1d | nn.Conv2d)
            pixels = _padded_pixels(module, args[0].shape) if conv else None
            sizes.setdefault(name, (positions, pixels))

        return hook

    handles = [m.register_forward_hook(size_of(name)) for name, m in selected]
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for h in handles:
            h.remove()
    for name, module in selected:
        count = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        positions, pixels = sizes.get(name, (1, None))
        if isinstance(module, nn.Linear):
            mode = linear_mode(module, positions)
            method = (
                "outer product: |a| |g|" if mode == "outer" else f"{mode} ({positions} positions)"
            )
        elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            method = f"{conv_mode(module, positions, pixels)} ({positions} positions)"
        elif isinstance(module, (_BatchNorm, *_NORMS)):
            method = "closed form (normalised input)"
        elif isinstance(module, nn.Embedding) and not module.scale_grad_by_freq:
            method = "sum per token"
        else:
            method = "torch.func fallback"
        rows.append(
            {"module": name, "type": type(module).__name__, "params": count, "method": method}
        )
    return rows
