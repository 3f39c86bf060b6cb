"""One forward and one backward pass: the backward is led only as far as the first layers, and each
unit's norms are computed the moment its output gradients have arrived, its activations released."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import torch_internals as internals
from .closed_forms import CLOSED_FORMS, ConvMode, Single
from .fallback import functional_sq_norms, graph_ready, total_norms
from .plan import Unit, plan_units
from .trace import LOOP, Call, LossFn, trace_forward


def one_pass_norms(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    selected: list[tuple[str, nn.Module]],
    loss_fn: LossFn,
    conv: ConvMode,
    per_module: bool,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """:func:`grad_norms`' one forward and one backward pass."""
    # Whatever the caller's autograd mode, this needs a graph: inference tensors are copied.
    with torch.inference_mode(False), torch.enable_grad():
        x, y = graph_ready(inputs, labels)
        units, clone = None, set()
        for _attempt in range(3):
            units, redo = _one_pass(model, x, y, selected, loss_fn, conv, clone, exhaustive=False)
            if redo:  # a module overwrote its own input: keep copies of its inputs
                clone |= redo
                continue
            if any(u.pending for u in units):  # the pass led to the first layers missed some
                units, _ = _one_pass(model, x, y, selected, loss_fn, conv, clone, exhaustive=True)
            break
    squared = {u.name: u.result.clamp_min(0) for u in units}
    if not squared:  # no chosen parameter took part in the forward pass
        param = next(p for _, m in selected for p in m.parameters(recurse=False))
        return torch.zeros(len(labels), dtype=param.dtype, device=param.device)
    return total_norms(squared, per_module)


def _one_pass(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    selected: list[tuple[str, nn.Module]],
    loss_fn: LossFn,
    conv: ConvMode,
    clone: set[int],
    *,
    exhaustive: bool,
) -> tuple[list[Unit], set[int]]:
    """One forward and one backward pass; each unit's squared norms are computed (and its
    activations released) as soon as the gradients of all its calls' outputs have arrived.
    Returns the units and the modules (by id) whose inputs must be copied on a new pass (they
    overwrite their own input: empty when none does)."""
    batch = len(labels)
    params = {id(p): p for _, m in selected for p in m.parameters(recurse=False)}
    trace, losses = trace_forward(model, inputs, labels, params, loss_fn, clone)
    if losses is None or losses.shape != (batch,):
        got = None if losses is None else tuple(losses.shape)
        raise ValueError(
            f"loss_fn must return one loss per sample, shape ({batch},); got {got} "
            "(use reduction='none')"
        )
    units, unused = plan_units(model, selected, trace)
    redo = {
        id(u.module)
        for u in units
        if u.kind == "fallback" and any(c.mutated_own_input for c in u.calls)
    }
    if redo - clone:
        return units, redo - clone
    live = [(u, c, i) for u in units for c in u.calls for i, e in enumerate(c.edges) if e]
    for unit in units:
        for call in unit.calls:
            call.grads = [None] * len(call.edges)
    # The backward pass is led to the "root" calls, those whose input needs no gradient (the
    # first layers, embeddings): every output gradient above them is computed on the way, but no
    # other parameter gradient, and no gradient of the input batch.
    roots: list[Tensor] = []
    for unit in units:
        for call in unit.calls:
            if call.root and any(call.edges):  # its bias is the cheapest way to reach it
                bias = unit.params.get("bias") if unit.kind != "fallback" else None
                roots += [bias] if bias is not None else list(unit.params.values())
    # Without a root among the units (a subset above unchosen layers), or on the second try, ask
    # autograd for the units' output gradients themselves (kept until the end).
    exhaustive = exhaustive or not roots
    if exhaustive:
        targets = [call.edges[i] for _, call, i in live] + unused
    else:
        targets = roots + unused
        for unit in units:
            unit.pending = sum(1 for c in unit.calls for e in c.edges if e is not None)
        for unit, call, i in live:
            call.edges[i].node.register_prehook(_arrival(unit, call, i, batch, conv))
    grads: tuple = ()
    if targets and losses.requires_grad:
        # The gradient of the summed loss w.r.t. a module's output is, row by row, the gradient
        # of each sample's own loss: the hooks on the recorded graph edges see exactly that, even
        # when a later in-place operation (ReLU(inplace=True), `out += identity`) overwrote the
        # output tensor.
        try:
            grads = torch.autograd.grad(losses.sum(), targets, allow_unused=True)
        except RuntimeError as error:
            if _reentrant_checkpoint_in(losses):
                raise ValueError(
                    "the model uses torch.utils.checkpoint with use_reentrant=True: that "
                    "recomputes the checkpointed part inside its own backward pass, out of reach "
                    "of the hooks that follow each module's output gradient (and torch refuses "
                    "it with torch.autograd.grad). Pass use_reentrant=False to checkpoint (exact "
                    "here, and torch's recommended setting), or use "
                    f"{LOOP}."
                ) from error
            raise
    if exhaustive:
        for (_, call, i), grad in zip(live, grads, strict=False):
            call.grads[i] = None if grad is None else grad.detach()
    unused_grads = grads[len(grads) - len(unused) :] if grads else [None] * len(unused)
    if any(g is not None and bool(g.ne(0).any()) for g in unused_grads):
        raise ValueError(
            "a chosen parameter receives a gradient although no operation pgd can follow used "
            "it during the forward pass (a custom C++ operator, or a tensor derived from it "
            f"outside the model): its per-sample gradient cannot be assigned. Use {LOOP}."
        )
    for unit in units:
        if exhaustive or (unit.result is None and not unit.pending):
            unit.pending = 0
            with torch.no_grad():
                _finish(unit, batch, conv)
    return units, set()


def _reentrant_checkpoint_in(output: Tensor) -> bool:
    """Whether the graph behind ``output`` holds a reentrant checkpoint's node."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "CheckpointFunctionBackward":
            return True
        stack += [next_node for next_node, _ in node.next_functions]
    return False


def _arrival(unit: Unit, call: Call, index: int, batch: int, conv: ConvMode) -> Callable:
    """Backward pre-hook of the node that produced output ``index`` of ``call``: keep the output
    gradient; when the unit's last output gradient has arrived, compute its norms."""
    edge = call.edges[index]
    assert edge is not None

    def hook(grad_outputs: tuple) -> None:
        grad = grad_outputs[edge.output_nr]
        call.grads[index] = None if grad is None else grad.detach()
        unit.pending -= 1
        if unit.pending == 0:
            with torch.no_grad():
                _finish(unit, batch, conv)

    return hook


def _finish(unit: Unit, batch: int, conv: ConvMode) -> None:
    for call in unit.calls:
        if any(internals.version(t) != v for t, v in call.versions):
            raise ValueError(
                f"an input of module {unit.name!r} ({type(unit.module).__name__}) was modified "
                "in place after the module read it (e.g. by a ReLU(inplace=True) or `x += ...` "
                "further on): its per-sample gradient would be computed from the changed values. "
                "Make that later operation out of place (inplace=False)."
            )
    unit.result = _unit_sq_norms(unit, batch, conv)
    for call in unit.calls:  # release the activations and gradients at once
        call.args, call.kwargs, call.grads, call.versions = (), {}, [], []


def _unit_sq_norms(unit: Unit, batch: int, conv: ConvMode) -> Tensor:
    ref = next(iter(unit.params.values()))
    calls = [c for c in unit.calls if any(g is not None for g in c.grads)]
    if not calls:  # the unit did not influence the loss (or ran under torch.no_grad())
        return torch.zeros(batch, device=ref.device, dtype=ref.dtype)
    if unit.kind == "fallback":
        return functional_sq_norms(unit, calls, batch)
    module, include = unit.module, unit.include
    single = [Single(c.first, c.grads[0], c.named) for c in calls]
    return CLOSED_FORMS[unit.kind](module, single, include, conv, batch)
