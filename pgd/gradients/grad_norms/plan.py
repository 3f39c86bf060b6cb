"""Units: which module's calls give which parameters' per-sample gradients (a closed form on the
module that owns them, or ``torch.func`` on the innermost module whose calls enclose every use),
and :func:`describe_plan`, which says what is computed how."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .closed_forms import closed_form, conv_mode, linear_mode, padded_pixels, why_not_closed
from .trace import LOOP, Call, Trace, check_no_batch_mixing, default_loss, trace_forward


def _owns_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


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


@dataclass
class Unit:
    """Parameters whose per-sample gradients come from the calls of one module: in closed form
    (``kind``: see :func:`closed_form`) or with ``torch.func`` (``kind == "fallback"``)."""

    name: str
    module: nn.Module
    kind: str
    params: dict[str, Tensor]  # parameter name within ``module`` -> parameter
    reason: str = ""
    calls: list[Call] = field(default_factory=list)
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


def plan_units(
    model: nn.Module, selected: list[tuple[str, nn.Module]], trace: Trace
) -> tuple[list[Unit], list[Tensor]]:
    """The units for ``selected``'s trainable parameters, and the parameters no tracked
    operation used (their gradient must turn out to be zero)."""
    module_names = {id(m): n for n, m in model.named_modules()}
    modules = {id(m): m for m in model.modules()}
    holders: dict[int, list[int]] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                holders.setdefault(id(param), []).append(id(module))
    parametrizing = {
        id(m)
        for plist in model.modules()
        if isinstance(plist, parametrize.ParametrizationList)
        for m in plist.modules()
    }
    units: dict[tuple[int, str], Unit] = {}
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
                    f"{LOOP}."
                )
            common = trace.common.get(id(param))
            if common is None:
                unused.append(param)
                continue
            where = _enclosing(common, parametrizing)
            shared = [module_names[m] for m in holders[id(param)] if m != id(holder)]
            kind = closed_form(holder) if where == id(holder) and not shared else None
            if kind is not None:
                key, owner = (id(holder), kind), holder
                reason = ""
            else:
                key, owner = (where, "fallback"), modules[where]
                if isinstance(holder, parametrize.ParametrizationList):
                    originals = ", ".join(n for n in _param_names(holder).values())
                    reason = (
                        f"{module_names[where]!r} reads a parametrized tensor "
                        f"({', '.join(type(p).__name__ for p in holder)}): the gradients of its "
                        f"originals ({originals}) go through the parametrization"
                    )
                elif shared:
                    reason = f"{label} is tied with {', '.join(map(repr, shared))}"
                elif where != id(holder):
                    reason = f"parameters of {holder_name!r} are also used outside its own calls"
                else:
                    reason = why_not_closed(holder)
            unit = units.get(key)
            if unit is None:
                unit = units[key] = Unit(
                    module_names[key[0]], owner, key[1], {}, calls=trace.calls.get(key[0], [])
                )
            unit.params[_param_names(owner)[id(param)]] = param
            if reason and reason not in unit.reason:
                unit.reason = f"{unit.reason}; {reason}" if unit.reason else reason
    for (module_id, kind), unit in list(units.items()):
        fallback = units.get((module_id, "fallback"))
        if kind != "fallback" and fallback is not None:
            # one module, two units (a parametrized weight beside a plain bias): its calls are
            # read once, by torch.func, for all of its parameters
            fallback.params.update(unit.params)
            del units[(module_id, kind)]
    for unit in units.values():
        _check_unit(unit)
    return list(units.values()), unused


def _enclosing(common: list[int], parametrizing: set[int]) -> int:
    """The innermost module whose calls enclose every use of a parameter, passing over
    parametrizations (``weight_norm``'s ``_WeightNorm`` and the ``ParametrizationList`` that holds
    the original parameters): those are called on the weight, not on the batch, and the layer that
    reads the parametrized weight is the module whose calls give the originals' per-sample
    gradients."""
    for key in reversed(common):
        if key not in parametrizing:
            return key
    return common[-1]


def _check_unit(unit: Unit) -> None:
    what = f"module {unit.name or 'the model'!r} ({type(unit.module).__name__})"
    for call in unit.calls:
        if unit.kind == "embedding_bag" and call.outputs_ok:
            continue  # its input may be one flat list of tokens with offsets
        if call.first is None and call.outputs_ok:
            raise ValueError(
                f"{what} is called without a tensor as its first input (positional or by "
                "keyword), so the batch cannot be found in its inputs. Pass the batch as the "
                f"first argument, or use {LOOP}."
            )
        if not call.batch_first or not call.outputs_ok:
            raise ValueError(
                f"{what} is called with inputs or returns outputs whose first dimension is not "
                "the batch: per-sample norms need the batch as the first dimension of every "
                "scored module's input and output (and outputs that are tensors). Use "
                f"{LOOP} for such models."
            )


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
    check_no_batch_mixing(model)
    selected = select_modules(model)
    params = {id(p): p for _, m in selected for p in m.parameters(recurse=False)}
    # With gradients enabled, as in grad_norms: some modules (nn.MultiheadAttention) take a
    # fused path without them, which reads their children's weights directly.
    with torch.inference_mode(False), torch.enable_grad():
        trace, _ = trace_forward(model, inputs, None, params, default_loss, set())
    units, _ = plan_units(model, selected, trace)
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
            pixels = padded_pixels(module, calls[0].first.shape) if len(calls) == 1 else None
            method = f"{conv_mode(module, positions, pixels)} ({positions} positions)"
        elif unit.kind in ("batchnorm", "norm"):
            method = "closed form (normalised input)"
        elif unit.kind == "embedding":
            method = "sum per token"
        elif unit.kind == "embedding_bag":
            method = f"sum per token and bag ({module.mode})"
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
