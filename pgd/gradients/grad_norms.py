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

A closed form is used only where it provably applies: the module is an instance of one of the
classes above with that class's own ``forward`` (not a subclass that overrides it), it has no
forward hooks, and every use of its parameters during the forward pass happens inside its own
calls (a ``TorchFunctionMode`` watches every operation that reads a scored parameter, and which
module calls are running at that moment). Where a parameter is also read elsewhere (a parent that
reads a child's weight, tied weights, ``nn.MultiheadAttention``, which reads ``out_proj.weight``
itself), its per-sample gradients come from ``torch.func`` on the innermost module whose calls
enclose every use, checked sample by sample against the batched output. The result never depends
on the caller's autograd mode, and a Gram sum that lost digits to cancellation is recomputed from
the materialised gradient, so float32 results are as accurate as a per-sample backward pass.

BatchNorm in training mode normalises with the statistics of the batch, so every sample's output
depends on every other sample: per-sample gradients are then not defined, and we refuse; so for
inputs that are not batch-first, parameters used outside every module call (in the loss), and
inputs overwritten in place after a module read them.

The plain reference these formulas are tested against is
:func:`pgd.gradients.scores.per_sample_grad_norms` (``vmap(grad(...))`` over the whole model).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call, grad, vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode

from . import torch_internals as internals

ConvMode = Literal["auto", "gram", "materialise"]
LossFn = Callable[[Tensor, Tensor], Tensor]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WARNED: set[str] = set()
#: A Gram (ghost-norm) sum whose terms are, in absolute value, this many times larger than the
#: result has lost digits to cancellation; its samples are recomputed from the materialised
#: gradient, whose rounding error is that of a plain per-sample backward pass.
GRAM_CONDITION = 100.0
_LOOP = "pgd.gradients.scores.per_sample_grad_norms_loop(..., all_parameters=True)"


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
    return None


def _why_not_closed(module: nn.Module) -> str:
    if _has_hooks(module):
        return "it has forward hooks, which may change its inputs or outputs"
    if isinstance(module, _CONVS) and not internals.convolution_backward_available():
        return "this torch lacks the convolution_backward operator"
    for base in (nn.Linear, *_CONVS, _BatchNorm, *_NORMS, nn.Embedding):
        if isinstance(module, base):
            if isinstance(module, nn.Embedding) and module.scale_grad_by_freq:
                return "scale_grad_by_freq has no closed form"
            return f"a subclass of {base.__name__} with a forward of its own"
    return f"no closed form for {type(module).__name__}"


def select_modules(
    model: nn.Module, modules: Iterable[nn.Module | str] | None = None
) -> list[tuple[str, nn.Module]]:
    """The modules whose own trainable parameters are scored, as ``(name, module)`` pairs.

    ``None`` means every module of ``model``; a chosen module (object or dotted name) stands for
    itself and all its descendants. Only modules that own trainable parameters are returned. A
    parameter shared by several modules (tied weights) is scored once, whichever of them is
    chosen, with every use counted.

    Raises:
        ValueError: an unknown name, a module that is not part of ``model``, or a selection with
            no trainable parameters.
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
    return list(chosen.values())


# --- The forward pass: module calls and parameter uses -------------------------------------------


@dataclass
class _Call:
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


class _Trace(TorchFunctionMode):
    """Records, during one forward pass, every module call (inputs, output edges) and, for every
    watched parameter, the modules whose calls enclose each of its uses."""

    def __init__(self, params: dict[int, Tensor], batch: int, clone: set[int]) -> None:
        super().__init__()
        self.params, self.batch, self.clone = params, batch, clone
        self.stack: list[tuple[nn.Module, _Call]] = []
        self.calls: dict[int, list[_Call]] = {}
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
        call = _Call(
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


def _trace(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor | None,
    params: dict[int, Tensor],
    loss_fn: LossFn,
    clone: set[int],
) -> tuple[_Trace, Tensor | None]:
    """One forward pass (and the loss, if ``labels``) with every module call recorded."""
    trace = _Trace(params, len(inputs), clone)
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


# --- Units: which module's calls give which parameters' per-sample gradients ---------------------


@dataclass
class _Unit:
    """Parameters whose per-sample gradients come from the calls of one module: in closed form
    (``kind``: see :func:`closed_form`) or with ``torch.func`` (``kind == "fallback"``)."""

    name: str
    module: nn.Module
    kind: str
    params: dict[str, Tensor]  # parameter name within ``module`` -> parameter
    reason: str = ""
    calls: list[_Call] = field(default_factory=list)
    pending: int = 0  # output gradients not arrived yet
    result: Tensor | None = None  # (B,) squared norms, once known

    @property
    def include(self) -> set[int]:
        return {id(p) for p in self.params.values()}


def _param_names(module: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    return names


def _plan(
    model: nn.Module, selected: list[tuple[str, nn.Module]], trace: _Trace
) -> tuple[list[_Unit], list[Tensor]]:
    """The units for ``selected``'s trainable parameters, and the parameters no tracked
    operation used (their gradient must turn out to be zero)."""
    module_names = {id(m): n for n, m in model.named_modules()}
    modules = {id(m): m for m in model.modules()}
    holders: dict[int, list[int]] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                holders.setdefault(id(param), []).append(id(module))
    units: dict[tuple[int, str], _Unit] = {}
    unused: list[Tensor] = []
    seen: set[int] = set()
    for holder_name, holder in selected:
        own = _param_names(holder)
        for param in holder.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            label = f"{holder_name + '.' if holder_name else ''}{own[id(param)]}"
            if id(param) in trace.outside:
                raise ValueError(
                    f"parameter {label!r} is used outside every module call (in loss_fn, or by "
                    "code that is not a module's forward): per-sample norms follow gradients "
                    "through module calls only. Move that computation into a module, or use "
                    f"{_LOOP}."
                )
            common = trace.common.get(id(param))
            if common is None:
                unused.append(param)
                continue
            where = common[-1]  # the innermost module whose calls enclose every use
            shared = [module_names[m] for m in holders[id(param)] if m != id(holder)]
            kind = closed_form(holder) if where == id(holder) and not shared else None
            if kind is not None:
                key, owner = (id(holder), kind), holder
                reason = ""
            else:
                key, owner = (where, "fallback"), modules[where]
                if shared:
                    reason = f"{label} is tied with {', '.join(map(repr, shared))}"
                elif where != id(holder):
                    reason = f"parameters of {holder_name!r} are also used outside its own calls"
                else:
                    reason = _why_not_closed(holder)
            unit = units.get(key)
            if unit is None:
                unit = units[key] = _Unit(
                    module_names[key[0]], owner, key[1], {}, calls=trace.calls.get(key[0], [])
                )
            unit.params[_param_names(owner)[id(param)]] = param
            if reason and reason not in unit.reason:
                unit.reason = f"{unit.reason}; {reason}" if unit.reason else reason
    for unit in units.values():
        _check_unit(unit)
    return list(units.values()), unused


def _check_unit(unit: _Unit) -> None:
    what = f"module {unit.name or 'the model'!r} ({type(unit.module).__name__})"
    for call in unit.calls:
        if not call.batch_first or not call.outputs_ok:
            raise ValueError(
                f"{what} is called with inputs or returns outputs whose first dimension is not "
                "the batch: per-sample norms need the batch as the first dimension of every "
                "scored module's input and output (and outputs that are tensors). Use "
                f"{_LOOP} for such models."
            )


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
    if it has BatchNorm (required) or dropout (advisable: otherwise the norms are random). The
    result does not depend on the caller's autograd mode (``torch.no_grad()``,
    ``torch.inference_mode()``).

    Exact or refused: a closed form is used only where it provably applies (the module's class
    is one of the covered ones with its own ``forward`` unchanged, no forward hooks, and its
    parameters are used only inside its own calls). Elsewhere the per-sample gradients of the
    parameters concerned come from ``torch.func`` on the innermost module whose calls enclose
    every use of them (a parent that reads a child's weight, a model with tied weights, an
    ``nn.MultiheadAttention``), checked sample by sample against the batched output; what cannot
    be handled so is refused with a ``ValueError`` that names the module and the way out.

    Args:
        model: any network whose samples do not interact (no BatchNorm in training mode).
        inputs: ``(B, ...)`` batch, batch dimension first.
        labels: ``(B,)`` targets for ``loss_fn``.
        modules: modules (objects or dotted names) whose parameters count, each with its
            descendants; default: the whole model.
        loss_fn: per-sample loss, ``(outputs, labels) -> (B,)``; default cross-entropy.
        conv: ``"gram"`` or ``"materialise"`` for every convolution, or ``"auto"`` (default) to
            pick the cheaper one per layer (:func:`conv_mode`).
        per_module: also return the ``(B,)`` squared norms of each unit (a module, or the module
            whose calls enclose the uses of some parameters), keyed by its name.

    Returns:
        ``(B,)`` norms (and the per-unit squared norms if asked); detached, dtype of the
        computation.

    Raises:
        ValueError: BatchNorm in training mode, a module fed a tensor whose first dimension is not
            the batch, samples that interact, a parameter used outside every module call, a loss
            that does not return one value per sample, or a bad selection.
    """
    if conv not in ("auto", "gram", "materialise"):
        raise ValueError(f"conv must be 'auto', 'gram' or 'materialise', got {conv!r}")
    _check_no_batch_mixing(model)
    selected = select_modules(model, modules)
    why = internals.self_check(_checked_one_pass, _checked_reference)
    if why is not None:
        _warn_once(
            f"pgd: {why}, so per-sample gradient norms are computed with torch.func instead "
            "(exact, but slower and B x the parameters in memory)"
        )
        return torch_func_norms(model, inputs, labels, selected, loss_fn, per_module)
    return _one_pass_norms(model, inputs, labels, selected, loss_fn, conv, per_module)


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def _checked_one_pass(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    selected = select_modules(model)
    return _one_pass_norms(model, inputs, labels, selected, default_loss, "auto", False)


def _checked_reference(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    return torch_func_norms(model, inputs, labels, select_modules(model), default_loss, False)


def torch_func_norms(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    selected: list[tuple[str, nn.Module]],
    loss_fn: LossFn = default_loss,
    per_module: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """The same norms as :func:`grad_norms` from ``torch.func`` alone (``vmap`` of ``grad`` of
    each sample's loss over the parameters of ``selected``, :func:`select_modules`' pairs): no
    private torch internal, ``B x`` the parameters in memory. The per-module squared norms are
    keyed by the name of the module that owns each parameter (a tied one counts once)."""
    owner: dict[str, str] = {}
    params: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, module in selected:
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{name}.{pname}" if name else pname
            params[full], owner[full] = param.detach(), name

    def sample_loss(weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, weights, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0)).sum()

    with torch.inference_mode(False), torch.enable_grad():
        x, y = _graph_ready(inputs, labels)
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    squared: dict[str, Tensor] = {}
    for full, g in grads.items():
        part = _sq(g.detach())
        squared[owner[full]] = squared[owner[full]] + part if owner[full] in squared else part
    return _total(squared, per_module)


def _graph_ready(inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Copies of inference tensors (they cannot enter a graph); the others as they are, inputs
    detached. Call inside ``inference_mode(False)``."""
    x = inputs.clone() if inputs.is_inference() else inputs.detach()
    y = labels.clone() if labels.is_inference() else labels
    return x, y


def _total(
    squared: dict[str, Tensor], per_module: bool
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """The ``(B,)`` norms from each unit's squared norms (and those, if ``per_module``)."""
    total = torch.stack(list(squared.values())).sum(0).sqrt()
    return (total, squared) if per_module else total


def _one_pass_norms(
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
        x, y = _graph_ready(inputs, labels)
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
    return _total(squared, per_module)


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
) -> tuple[list[_Unit], set[int]]:
    """One forward and one backward pass; each unit's squared norms are computed (and its
    activations released) as soon as the gradients of all its calls' outputs have arrived.
    Returns the units and the modules (by id) whose inputs must be copied on a new pass (they
    overwrite their own input: empty when none does)."""
    batch = len(labels)
    params = {id(p): p for _, m in selected for p in m.parameters(recurse=False)}
    trace, losses = _trace(model, inputs, labels, params, loss_fn, clone)
    if losses is None or losses.shape != (batch,):
        got = None if losses is None else tuple(losses.shape)
        raise ValueError(
            f"loss_fn must return one loss per sample, shape ({batch},); got {got} "
            "(use reduction='none')"
        )
    units, unused = _plan(model, selected, trace)
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
        grads = torch.autograd.grad(losses.sum(), targets, allow_unused=True)
    if exhaustive:
        for (_, call, i), grad in zip(live, grads, strict=False):
            call.grads[i] = None if grad is None else grad.detach()
    unused_grads = grads[len(grads) - len(unused) :] if grads else [None] * len(unused)
    if any(g is not None and bool(g.ne(0).any()) for g in unused_grads):
        raise ValueError(
            "a chosen parameter receives a gradient although no operation pgd can follow used "
            "it during the forward pass (a custom C++ operator, or a tensor derived from it "
            f"outside the model): its per-sample gradient cannot be assigned. Use {_LOOP}."
        )
    for unit in units:
        if exhaustive or (unit.result is None and not unit.pending):
            unit.pending = 0
            with torch.no_grad():
                _finish(unit, batch, conv)
    return units, set()


def _arrival(unit: _Unit, call: _Call, index: int, batch: int, conv: ConvMode) -> Callable:
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


def _finish(unit: _Unit, batch: int, conv: ConvMode) -> None:
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


def _unit_sq_norms(unit: _Unit, batch: int, conv: ConvMode) -> Tensor:
    ref = next(iter(unit.params.values()))
    calls = [c for c in unit.calls if any(g is not None for g in c.grads)]
    if not calls:  # the unit did not influence the loss (or ran under torch.no_grad())
        return torch.zeros(batch, device=ref.device, dtype=ref.dtype)
    if unit.kind == "fallback":
        return _functional_sq_norms(unit, calls, batch)
    module, include = unit.module, unit.include
    single = [_Single(c.args[0], c.grads[0]) for c in calls]
    return CLOSED_FORMS[unit.kind](module, single, include, conv, batch)


def _joined(parts: list[Tensor], dim: int) -> Tensor:
    """``torch.cat`` that does not copy a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _sq(t: Tensor) -> Tensor:
    """Per-sample squared Euclidean norm: ``(B, ...) -> (B,)`` (``(B,)`` too: a 0-dim
    parameter's per-sample gradients), without a squared copy."""
    return torch.linalg.vector_norm(t.reshape(len(t), -1), dim=1).square()


@dataclass
class _Single:
    """What a closed form reads of one call: the input and the output gradient."""

    x: Tensor
    grad: Tensor


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
    module: nn.Linear, calls: list[_Single], include: set[int], conv: ConvMode, batch: int
) -> Tensor:
    # Every call and every extra dimension is one more "position" t of the same weight.
    a = _joined([c.x.reshape(len(c.x), -1, module.in_features) for c in calls], 1)
    g = _joined([c.grad.reshape(len(c.grad), -1, module.out_features) for c in calls], 1)
    total = torch.zeros(len(g), device=g.device, dtype=g.dtype)
    if id(module.weight) in include:
        mode = linear_mode(module, a.shape[1])
        if mode == "outer":
            total = _sq(a) * _sq(g)
        elif mode == "gram":
            total, lost = _ghost(a @ a.transpose(1, 2), g @ g.transpose(1, 2), (1, 2))
            if lost.any():  # those samples from their materialised gradients
                total[lost] = _sq(g[lost].transpose(1, 2) @ a[lost])
        else:
            total = _sq(g.transpose(1, 2) @ a)
    if module.bias is not None and id(module.bias) in include:
        total = total + _sq(g.sum(1))
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


def _conv_sq_norms(
    module: _ConvNd, calls: list[_Single], include: set[int], conv: ConvMode, batch: int
) -> Tensor:
    grad = calls[0].grad
    total = torch.zeros(len(grad), device=grad.device, dtype=grad.dtype)
    if id(module.weight) in include:
        positions = sum(int(torch.tensor(c.grad.shape[2:]).prod()) for c in calls)
        pixels = _padded_pixels(module, calls[0].x.shape) if len(calls) == 1 else None
        mode = conv_mode(module, positions, pixels) if conv == "auto" else conv
        if isinstance(module, nn.Conv3d):
            mode = "materialise"
        lost = None
        if mode == "gram" and len(calls) == 1:
            total, lost = _conv_pixel_gram(module, calls[0])
        elif mode == "gram":
            total, lost = _conv_gram(module, calls)
        else:
            total = _sq(sum(_conv_weight_grads(module, c.x, c.grad) for c in calls))
        if lost is not None and lost.any():  # those samples from their materialised gradients
            total[lost] = _sq(
                sum(_conv_weight_grads(module, c.x[lost], c.grad[lost]) for c in calls)
            )
    if module.bias is not None and id(module.bias) in include:
        total = total + _sq(sum(c.grad.flatten(2).sum(2) for c in calls))
    return total


def _conv_pixel_gram(module: _ConvNd, call: _Single) -> tuple[Tensor, Tensor]:
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


def _conv_gram(module: _ConvNd, calls: list[_Single]) -> tuple[Tensor, Tensor]:
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
        total = total + _sq(xhat_grads)
    if bias is not None and id(bias) in include:
        total = total + _sq(grads)
    return total


def _batchnorm_sq_norms(
    module: _BatchNorm, calls: list[_Single], include: set[int], conv: ConvMode, batch: int
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
    module: nn.Module, calls: list[_Single], include: set[int], conv: ConvMode, batch: int
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
    module: nn.Embedding, calls: list[_Single], include: set[int], conv: ConvMode, batch: int
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


#: Closed form -> ``(module, calls, included parameter ids, conv mode, batch) -> (B,)``
#: squared norms.
CLOSED_FORMS: dict[str, Callable[..., Tensor]] = {
    "linear": _linear_sq_norms,
    "conv": _conv_sq_norms,
    "batchnorm": _batchnorm_sq_norms,
    "norm": _norm_sq_norms,
    "embedding": _embedding_sq_norms,
}


# --- Anything else: torch.func on the unit's calls ----------------------------------------------


def _functional_sq_norms(unit: _Unit, calls: list[_Call], batch: int) -> Tensor:
    """Per-sample gradients of the unit's parameters by ``vmap`` of a vector-Jacobian product of
    each call, one sample at a time; refused unless the outputs computed sample by sample equal
    the batched ones (samples that interact, or an input that is not batch-first, would make the
    per-sample gradients wrong)."""
    module, label = unit.module, f"{unit.name or 'the model'!r} ({type(unit.module).__name__})"
    key = f"{type(module).__name__}: {unit.reason}"
    if key not in _WARNED:  # once per kind of module and reason
        _WARNED.add(key)
        warnings.warn(
            f"{unit.reason} (module {unit.name or 'the model'!r}): the per-sample gradients of "
            f"{', '.join(unit.params)} are materialised with torch.func (exact, but slower and "
            "B x their size in memory)",
            stacklevel=5,
        )
    params = {name: p.detach() for name, p in unit.params.items()}
    total: dict[str, Tensor] | None = None
    for call in calls:
        leaves, spec = internals.tree_flatten((call.args, call.kwargs))
        batched = [
            i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.dim() and len(t) == batch
        ]
        cotangents = tuple(
            g if g is not None else torch.zeros(shape, dtype=dtype, device=_device_of(call))
            for g, (shape, dtype) in zip(call.grads, call.shapes, strict=True)
        )

        def run(weights: dict[str, Tensor], rows: tuple, leaves=leaves, spec=spec, batched=batched):
            filled = list(leaves)
            for i, row in zip(batched, rows, strict=True):
                filled[i] = row
            args, kwargs = internals.tree_unflatten(filled, spec)
            out = functional_call(module, weights, tuple(args), kwargs)
            return tuple(
                t for t in (out if isinstance(out, tuple | list) else (out,)) if t is not None
            )

        def one_sample(cots: tuple, *rows: Tensor, run=run) -> tuple:
            # Copies made inside the transformed function, so that a module that writes into its
            # input (timm's LayerScale with inplace=True) writes into a tensor of its own.
            rows = tuple(r.unsqueeze(0) for r in rows)
            out, pullback = vjp(lambda w: run(w, tuple(r.clone() for r in rows)), params)
            return out, pullback(tuple(c.unsqueeze(0) for c in cots))[0]

        with warnings.catch_warnings():  # torch's note that some operator has no batching rule
            warnings.filterwarnings("ignore", message="There is a performance drop")
            outs, grads = vmap(one_sample)(cotangents, *(leaves[i] for i in batched))
        expected = run(params, tuple(leaves[i].clone() for i in batched))
        for got, want in zip(outs, expected, strict=True):
            got = got.reshape(want.shape)
            if not torch.allclose(
                got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-12
            ):
                raise ValueError(
                    f"module {label}: its output computed one sample at a time differs from its "
                    "output on the batch, so its samples interact (batch statistics, attention "
                    "across the batch) or one of its inputs is not batch-first. Per-sample "
                    f"gradients cannot be computed from its calls; use {_LOOP}."
                )
        total = grads if total is None else {k: total[k] + grads[k] for k in grads}
    assert total is not None
    return sum(_sq(g) for g in total.values())


def _device_of(call: _Call) -> torch.device:
    """The device of ``call``'s first tensor input."""
    return next(
        t for t in internals.tree_flatten((call.args, call.kwargs))[0] if isinstance(t, Tensor)
    ).device


# --- What is computed how -------------------------------------------------------------------------


def describe_plan(model: nn.Module, inputs: Tensor) -> list[dict]:
    """Per unit of :func:`grad_norms`: the module, its type, its number of scored parameters and
    how their per-sample norms are computed (a closed form, with the form chosen for this input
    size, or ``torch.func`` and why).

    One forward pass (no backward) of ``inputs`` (a few samples are enough: the batch size only
    has to be recognisable) finds each module's calls and where every parameter is used.

    Raises:
        ValueError: what :func:`grad_norms` would refuse before its backward pass.
    """
    _check_no_batch_mixing(model)
    selected = select_modules(model)
    params = {id(p): p for _, m in selected for p in m.parameters(recurse=False)}
    # With gradients enabled, as in grad_norms: some modules (nn.MultiheadAttention) take a
    # fused path without them, which reads their children's weights directly.
    with torch.inference_mode(False), torch.enable_grad():
        trace, _ = _trace(model, inputs, None, params, default_loss, set())
    units, _ = _plan(model, selected, trace)
    rows = []
    for unit in units:
        count = sum(p.numel() for p in unit.params.values())
        module, calls = unit.module, unit.calls
        per_call = [
            (c.shapes[0][0][1:].numel() // c.shapes[0][0][-1] if len(c.shapes[0][0]) > 1 else 1)
            for c in calls
            if c.shapes
        ]
        if unit.kind == "linear":
            positions = sum(per_call)
            mode = linear_mode(module, positions)
            calls_text = f", {len(calls)} calls" if len(calls) > 1 else ""
            method = (
                "outer product |a| |g|"
                if mode == "outer"
                else f"{mode} ({positions} positions{calls_text})"
            )
        elif unit.kind == "conv":
            positions = sum(c.shapes[0][0][2:].numel() for c in calls)
            pixels = _padded_pixels(module, calls[0].args[0].shape) if len(calls) == 1 else None
            method = f"{conv_mode(module, positions, pixels)} ({positions} positions)"
        elif unit.kind in ("batchnorm", "norm"):
            method = "closed form (normalised input)"
        elif unit.kind == "embedding":
            method = "sum per token"
        else:
            method = f"torch.func fallback: {unit.reason}"
        rows.append(
            {
                "module": unit.name or "(the model)",
                "type": type(module).__name__,
                "params": count,
                "method": method,
            }
        )
    return rows
