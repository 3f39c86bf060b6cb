"""``torch.func`` where no closed form applies: on one unit's calls (:func:`functional_sq_norms`,
checked sample by sample against the batched output), or over the whole selection
(:func:`torch_func_norms`, no private torch internal, used when one is missing)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from . import torch_internals as internals
from .closed_forms import sq
from .plan import Unit
from .trace import LOOP, Call, LossFn, default_loss

WARNED: set[str] = set()


def warn_once(message: str) -> None:
    if message not in WARNED:
        WARNED.add(message)
        warnings.warn(message, stacklevel=3)


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
        x, y = graph_ready(inputs, labels)
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    squared: dict[str, Tensor] = {}
    for full, g in grads.items():
        part = sq(g.detach())
        squared[owner[full]] = squared[owner[full]] + part if owner[full] in squared else part
    return total_norms(squared, per_module)


def graph_ready(inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Copies of inference tensors (they cannot enter a graph); the others as they are, inputs
    detached. Call inside ``inference_mode(False)``."""
    x = inputs.clone() if inputs.is_inference() else inputs.detach()
    y = labels.clone() if labels.is_inference() else labels
    return x, y


def total_norms(
    squared: dict[str, Tensor], per_module: bool
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """The ``(B,)`` norms from each unit's squared norms (and those, if ``per_module``)."""
    total = torch.stack(list(squared.values())).sum(0).sqrt()
    return (total, squared) if per_module else total


def functional_sq_norms(unit: Unit, calls: list[Call], batch: int) -> Tensor:
    """Per-sample gradients of the unit's parameters by ``vmap`` of a vector-Jacobian product of
    each call, one sample at a time; refused unless the outputs computed sample by sample equal
    the batched ones (samples that interact, or an input that is not batch-first, would make the
    per-sample gradients wrong)."""
    module, label = unit.module, f"{unit.name or 'the model'!r} ({type(unit.module).__name__})"
    key = f"{type(module).__name__}: {unit.reason}"
    if key not in WARNED:  # once per kind of module and reason
        WARNED.add(key)
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

        rows = [leaves[i] for i in batched]
        try:
            with warnings.catch_warnings():  # torch's note that an operator has no batching rule
                warnings.filterwarnings("ignore", message="There is a performance drop")
                outs, grads = vmap(one_sample)(cotangents, *rows)
        except (RuntimeError, NotImplementedError) as error:
            # vmap cannot batch this forward (an RNN cell that creates its own initial state,
            # a layer with sparse gradients): the same products, one sample at a time
            outs, grads = _one_at_a_time(one_sample, cotangents, rows, batch, label, error)
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
                    f"gradients cannot be computed from its calls; use {LOOP}."
                )
        total = grads if total is None else {k: total[k] + grads[k] for k in grads}
    assert total is not None
    return sum(sq(g) for g in total.values())


def _one_at_a_time(
    one_sample: Callable,
    cotangents: tuple,
    rows: list[Tensor],
    batch: int,
    label: str,
    why: Exception,
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """``vmap(one_sample)`` as a loop over the samples (sparse gradients made dense); refused
    when the module cannot be called on one sample (its inputs are not batch-first)."""
    outs: list[tuple] = []
    grads: list[dict[str, Tensor]] = []
    for b in range(batch):
        try:
            out, grad_b = one_sample(tuple(c[b] for c in cotangents), *(r[b] for r in rows))
        except Exception as error:
            raise ValueError(
                f"module {label} cannot be called on one sample at a time "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]}; torch.func's "
                f"vmap failed first with {type(why).__name__}): its inputs are probably not "
                "all batch-first (a flat list of tokens with offsets, a state shared by the "
                f"batch). Per-sample gradients cannot be computed from its calls; use {LOOP}."
            ) from error
        outs.append(tuple(t.squeeze(0) for t in out))
        grads.append({k: g.to_dense() if g.is_sparse else g for k, g in grad_b.items()})
    stacked_outs = tuple(torch.stack(parts) for parts in zip(*outs, strict=True))
    return stacked_outs, {k: torch.stack([g[k] for g in grads]) for k in grads[0]}


def _device_of(call: Call) -> torch.device:
    """The device of ``call``'s first tensor input."""
    return next(
        t for t in internals.tree_flatten((call.args, call.kwargs))[0] if isinstance(t, Tensor)
    ).device
