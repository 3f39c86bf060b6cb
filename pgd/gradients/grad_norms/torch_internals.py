"""Every private torch internal that :mod:`pgd.gradients.grad_norms` relies on, in one place, each
with what happens where it is missing.

Colab readers get whatever torch Colab ships, not the pinned one; a renamed internal must not
break scoring, nor change a number. So each internal is looked up once, here:

* needed for the one-pass computation at all (:func:`missing`): switching off the
  operation tracer inside its own bookkeeping (``torch._C.DisableTorchFunction``), a tensor's
  in-place version counter (``Tensor._version``), and torch's pytree helpers
  (``torch.utils._pytree``, or a public ``torch.utils.pytree`` where only that exists). Where
  one is missing, :func:`pgd.gradients.grad_norms.grad_norms` computes every norm with
  ``torch.func`` (``vmap(grad)`` of each sample's loss: exact, slower) and says so once;
* needed by one closed form only: the global forward hooks (``torch.nn.modules.module``'s
  ``_global_forward_hooks``: where they cannot be read, no module can be proven hook-free, so
  every module is computed with ``torch.func``) and ``torch.ops.aten.convolution_backward``
  (without it, convolutions are computed with ``torch.func``).

:func:`self_check` also runs the one-pass computation once per process on a small network and
compares it with ``torch.func``: an internal that exists but behaves differently is caught there,
and the ``torch.func`` path is used instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

# -- found once, at import ----------------------------------------------------------------------

_disable = getattr(getattr(torch, "_C", None), "DisableTorchFunction", None)

try:  # the private module; a later torch may offer it as public torch.utils.pytree only
    from torch.utils import _pytree as _pytree

    tree_flatten: Callable | None = _pytree.tree_flatten
    tree_unflatten: Callable | None = _pytree.tree_unflatten
except (ImportError, AttributeError):
    try:
        from torch.utils import pytree as _pytree  # type: ignore[attr-defined,no-redef]

        tree_flatten, tree_unflatten = _pytree.tree_flatten, _pytree.tree_unflatten
    except (ImportError, AttributeError):
        tree_flatten = tree_unflatten = None


def _has_version_counter() -> bool:
    try:
        return isinstance(torch.zeros(1)._version, int)
    except AttributeError:
        return False


_VERSIONS = _has_version_counter()
_module_globals = nn.modules.module
_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks")
_convolution_backward = getattr(getattr(torch.ops, "aten", None), "convolution_backward", None)


# -- what the one-pass computation uses ----------------------------------------------------------


def disable_torch_function() -> contextlib.AbstractContextManager:
    """A context in which operations are not traced by a ``TorchFunctionMode``."""
    return _disable() if _disable is not None else contextlib.nullcontext()


def version(tensor: Tensor) -> int:
    """``tensor``'s in-place version counter (it grows with every in-place write)."""
    return tensor._version


def global_forward_hooks_present() -> bool:
    """Whether any global forward (pre-)hook is registered; True where this cannot be read (no
    module can then be proven free of hooks)."""
    found = [getattr(_module_globals, name, None) for name in _HOOK_DICTS]
    return any(d is None or bool(d) for d in found)


def convolution_backward_available() -> bool:
    """Whether ``torch.ops.aten.convolution_backward`` exists (the materialised conv form)."""
    return _convolution_backward is not None


def convolution_backward(*args: Any) -> Any:
    """``torch.ops.aten.convolution_backward(*args)``."""
    assert _convolution_backward is not None
    return _convolution_backward(*args)


def missing() -> list[str]:
    """The internals needed for the one-pass computation that this torch lacks (empty: all
    there)."""
    needs = {
        "torch._C.DisableTorchFunction": _disable is not None,
        "Tensor._version": _VERSIONS,
        "torch.utils.pytree (or _pytree)": tree_flatten is not None,
    }
    return [name for name, present in needs.items() if not present]


_CHECKED: dict[str, str | None] = {}


def self_check(one_pass: Callable, reference: Callable) -> str | None:
    """Run ``one_pass`` (the one-pass norms) and ``reference`` (``torch.func``) once per process
    on a small network with a convolution, a normalisation and a linear layer; return why the
    one-pass computation cannot be trusted with this torch (an internal missing, an error, or a
    different number), or None when it agrees."""
    if "result" in _CHECKED:
        return _CHECKED["result"]
    absent = missing()
    if absent:
        why: str | None = f"this torch ({torch.__version__}) lacks {', '.join(absent)}"
    else:
        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            why = _compare_on_a_test_network(one_pass, reference)
    _CHECKED["result"] = why
    return why


def _compare_on_a_test_network(one_pass: Callable, reference: Callable) -> str | None:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.GroupNorm(1, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 4),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    inputs = torch.randn(6, 2, 5, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (6,), generator=generator)
    try:
        got, want = one_pass(model, inputs, labels), reference(model, inputs, labels)
    except Exception as error:  # any failure of an internal: use the reference instead
        return f"the one-pass computation failed on a test network ({type(error).__name__})"
    if not torch.allclose(got, want, rtol=1e-9, atol=1e-12):
        return "its per-sample norms differ from torch.func's on a test network"
    return None
