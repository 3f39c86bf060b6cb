"""The forward pass, recorded: every module call (its inputs, its outputs' graph edges) and, for
every scored parameter, the modules whose calls enclose each of its uses; and what is refused
before it (samples that interact through BatchNorm in training mode)."""

from __future__ import annotations

import inspect
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
        if type(module).__name__ == "_SpectralNorm" and module.training:
            layer = name.rsplit(".parametrizations.", 1)[0]
            raise ValueError(
                f"layer {layer!r} has spectral_norm in training mode: every call runs a step of "
                "power iteration that updates the norm's estimate in place, so the weight "
                "differs from one call to the next and a per-sample gradient depends on how "
                "many samples were seen before. Call model.eval() before computing per-sample "
                "gradient norms."
            )
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
    first: Tensor | None = None  # the first input, passed by position or by keyword
    named: dict[str, Any] = field(default_factory=dict)  # every argument by name (EmbeddingBag)
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


_FIRST_NAMES: dict[type, str | None] = {}


def _first_parameter(module: nn.Module) -> str | None:
    """The name of the first parameter of ``module``'s forward (``input`` for torch's layers),
    found once per class."""
    kind = type(module)
    if kind not in _FIRST_NAMES:
        try:
            names = list(inspect.signature(module.forward).parameters)
        except (TypeError, ValueError):
            names = []
        _FIRST_NAMES[kind] = names[0] if names else None
    return _FIRST_NAMES[kind]


def _arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by name, defaults included (empty where they cannot be bound)."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    return dict(bound.arguments)


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

    def __init__(
        self,
        params: dict[int, Tensor],
        batch: int,
        clone: set[int],
        holders: set[int] = frozenset(),
    ) -> None:
        super().__init__()
        self.params, self.batch, self.clone = params, batch, clone
        self.holders = holders  # modules with a watched parameter among theirs or their children's
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
        if args:
            first = args[0]
        else:  # a keyword call, fc(input=x): the same layer, its input named
            first = kwargs.get(_first_parameter(module) or "", None)
        first = first if isinstance(first, Tensor) else None
        call = Call(
            args=args,
            kwargs=kwargs,
            versions=[(t, internals.version(t)) for t in inputs],
            root=not any(t.requires_grad for t in inputs),
            batch_first=first is not None and first.dim() > 0 and first.shape[0] == self.batch,
            first=first,
            named=_arguments(module, args, kwargs) if isinstance(module, nn.EmbeddingBag) else {},
        )
        self.stack.append((module, call))

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        with internals.disable_torch_function():
            return self._pop(module, output)

    def _pop(self, module: nn.Module, output: object) -> object:
        """Record the call's outputs; return them as the model will see them (see
        :func:`_separate_outputs`), or None to keep them as they are."""
        top, call = self.stack.pop()
        assert top is module, "module calls did not nest"
        replaced = False
        if id(module) in self.holders:
            output, replaced = _separate_outputs(output, call)
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
        return output if replaced else None


def _separate_outputs(output: object, call: Call) -> tuple[object, bool]:
    """A module's outputs, each given a graph node of its own where that is needed for the
    gradient arriving there to be the gradient from outside the module only.

    The gradient that reaches an output's graph node is the sum over everything that uses the
    output. When a module returns several outputs and one is computed from another
    (``nn.LSTMCell``: ``h = o * tanh(c)``), or returns one of its own inputs, part of that sum
    comes from inside the module itself, and a vector-Jacobian product of the module with it
    would count that path twice. An identity (``clone``) after each such output gives the model
    the same values and receives exactly the gradient from outside. Single outputs that are not
    inputs need nothing: everything that uses them runs after the module."""
    if isinstance(output, Tensor):
        if output.requires_grad and any(output is t for t, _ in call.versions):
            return output.clone(), True
        return output, False
    if not isinstance(output, tuple | list):
        return output, False
    grads = [t for t in output if isinstance(t, Tensor) and t.requires_grad]
    if len(grads) < 2:
        return output, False
    cloned = [t.clone() if isinstance(t, Tensor) and t.requires_grad else t for t in output]
    if type(output) is tuple or type(output) is list:
        return type(output)(cloned), True
    try:  # a named tuple
        return type(output)(*cloned), True
    except TypeError:
        return output, False


def trace_forward(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor | None,
    params: dict[int, Tensor],
    loss_fn: LossFn,
    clone: set[int],
) -> tuple[Trace, Tensor | None]:
    """One forward pass (and the loss, if ``labels``) with every module call recorded."""
    holders = {id(m) for m in model.modules() if any(id(p) in params for p in m.parameters())}
    trace = Trace(params, len(inputs), clone, holders)
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
