"""The forward pass, recorded: every module call (its inputs, its outputs' graph edges) and, for
every scored parameter, the modules whose calls enclose each of its uses; and what is refused
before it (samples that interact through BatchNorm in training mode)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from . import torch_internals as internals

LossFn = Callable[[Tensor, Tensor], Tensor]
#: The way out named by every refusal: the plain per-sample loop.
LOOP = "pgd.gradients.scores.per_sample_grad_norms_loop(..., all_parameters=True)"


def default_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy, ``(B, C), (B,) -> (B,)``: PGD's loss."""
    return F.cross_entropy(logits, labels, reduction="none")


def check_no_batch_mixing(model: nn.Module) -> None:
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


@dataclass
class Call:
    """One call of a module during the forward pass: its inputs, its outputs' graph edges, and
    later their gradients."""

    args: tuple
    kwargs: dict
    versions: list[tuple[Tensor, int]]  # tensor inputs and their version counters
    root: bool  # no input requires a gradient: the backward pass must be led here
    batch_first: bool  # the first input has the batch as its first dimension
    edges: list[GradientEdge | None] = field(default_factory=list)
    shapes: list[tuple[torch.Size, torch.dtype]] = field(default_factory=list)
    grads: list[Tensor | None] = field(default_factory=list)
    outputs_ok: bool = True  # tensors (or None), each with the batch first
    mutated_own_input: bool = False


def _tensors(*items: object) -> list[Tensor]:
    """The tensors among ``items``, looking one level into tuples, lists and dicts (how module
    inputs and operator arguments come): cheap enough to run on every operation."""
    found = []
    for item in items:
        if isinstance(item, Tensor):
            found.append(item)
        elif isinstance(item, tuple | list):
            found += [t for t in item if isinstance(t, Tensor)]
        elif isinstance(item, dict):
            found += [t for t in item.values() if isinstance(t, Tensor)]
    return found


def _map_tensors(fn: Callable[[Tensor], Tensor], item: Any) -> Any:
    """``item`` with ``fn`` applied to its tensors, one level into tuples, lists and dicts."""
    if isinstance(item, Tensor):
        return fn(item)
    if isinstance(item, tuple | list):
        return type(item)(fn(t) if isinstance(t, Tensor) else t for t in item)
    if isinstance(item, dict):
        return {k: fn(t) if isinstance(t, Tensor) else t for k, t in item.items()}
    return item


class Trace(TorchFunctionMode):
    """Records, during one forward pass, every module call (inputs, output edges) and, for every
    watched parameter, the modules whose calls enclose each of its uses."""

    def __init__(self, params: dict[int, Tensor], batch: int, clone: set[int]) -> None:
        super().__init__()
        self.params, self.batch, self.clone = params, batch, clone
        self.stack: list[tuple[nn.Module, Call]] = []
        self.calls: dict[int, list[Call]] = {}
        self.common: dict[int, list[int]] = {}  # param -> modules on the stack at every use
        self.outside: set[int] = set()  # params used outside every module call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for tensor in _tensors(*args, *kwargs.values()):
            if id(tensor) in self.params:
                self._use(id(tensor))
        return func(*args, **kwargs)

    def _use(self, key: int) -> None:
        on_stack = [id(m) for m, _ in self.stack]
        if not on_stack:
            self.outside.add(key)
            return
        before = self.common.get(key)
        if before is None:
            self.common[key] = on_stack
        else:
            present = set(on_stack)
            self.common[key] = [m for m in before if m in present]

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        with internals.disable_torch_function():  # this bookkeeping is not the model's
            self._push(module, args, kwargs)

    def _push(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = _tensors(*args, *kwargs.values())
        copy = (lambda t: t.detach().clone()) if id(module) in self.clone else Tensor.detach
        args, kwargs = _map_tensors(copy, args), _map_tensors(copy, kwargs)
        first = args[0] if args and isinstance(args[0], Tensor) else None
        call = Call(
            args=args,
            kwargs=kwargs,
            versions=[(t, internals.version(t)) for t in inputs],
            root=not any(t.requires_grad for t in inputs),
            batch_first=first is not None and first.dim() > 0 and first.shape[0] == self.batch,
        )
        self.stack.append((module, call))

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        with internals.disable_torch_function():
            self._pop(module, output)

    def _pop(self, module: nn.Module, output: object) -> None:
        top, call = self.stack.pop()
        assert top is module, "module calls did not nest"
        outputs = output if isinstance(output, tuple | list) else (output,)
        for out in outputs:
            if isinstance(out, Tensor):
                call.edges.append(get_gradient_edge(out) if out.requires_grad else None)
                call.shapes.append((out.shape, out.dtype))
                call.outputs_ok &= out.dim() > 0 and out.shape[0] == self.batch
            elif out is not None:
                call.outputs_ok = False
        call.mutated_own_input = any(internals.version(t) != v for t, v in call.versions)
        call.versions = [(t, internals.version(t)) for t, _ in call.versions]
        self.calls.setdefault(id(module), []).append(call)


def trace_forward(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor | None,
    params: dict[int, Tensor],
    loss_fn: LossFn,
    clone: set[int],
) -> tuple[Trace, Tensor | None]:
    """One forward pass (and the loss, if ``labels``) with every module call recorded."""
    trace = Trace(params, len(inputs), clone)
    handles = []
    try:
        for module in model.modules():
            handles.append(
                module.register_forward_pre_hook(trace.pre_hook, prepend=True, with_kwargs=True)
            )
            handles.append(module.register_forward_hook(trace.post_hook, with_kwargs=True))
        with trace:
            outputs = model(inputs)
            losses = loss_fn(outputs, labels) if labels is not None else None
    finally:
        for handle in handles:
            handle.remove()
    return trace, losses
