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
  token, added up per (sample, token) without forming the ``B x V x D`` gradient;
  ``nn.EmbeddingBag`` (``sum``, ``mean``, ``max``; a ``(B, L)`` input or flat tokens with
  offsets; ``per_sample_weights``, ``padding_idx``): the same per (bag, token), each token
  weighted by its share of the bag's output. Sparse gradients (``sparse=True``) change nothing.
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

A parametrized layer (``torch.nn.utils.parametrize``: ``weight_norm``, ``spectral_norm`` in eval
mode, ``orthogonal``) reads a weight computed from its original parameters: those go to
``torch.func`` on the layer that reads the weight (the parametrization modules are called on the
weight, not on the batch, and are passed over). Recurrent cells
(``nn.RNNCell``, ``GRUCell``, ``LSTMCell``, once or unrolled, with or without an initial state)
go to ``torch.func``; where ``vmap`` cannot batch a module's forward, the same products are taken
one sample at a time. A module whose outputs are computed from one another (``LSTMCell``:
``h = o * tanh(c)``) or that returns one of its inputs gets an identity after each output, so
that the gradient arriving there is the gradient from outside the module only. Layers called with
their input as a keyword (``fc(input=x)``) are the same layers.

BatchNorm in training mode normalises with the statistics of the batch, so every sample's output
depends on every other sample: per-sample gradients are then not defined, and we refuse; so for
``spectral_norm`` in training mode (every call changes the weight), outputs that are not
batch-first, parameters used outside every module call (in the loss), inputs overwritten in place
after a module read them, and reentrant checkpointing (``use_reentrant=True`` recomputes its
part inside the backward pass, out of reach of the hooks: ``use_reentrant=False`` is exact).

No rule about classes and shapes sees every way a model can mix or reorder its samples inside
(a parameter-free ``x.flip(0)`` between two layers): ``check=k`` recomputes ``k`` samples with a
forward and backward pass of their own and raises if they disagree
(:func:`~pgd.gradients.grad_norms.spot_check.spot_check`); PGD's scoring does so on its first
batch.

The plain reference these formulas are tested against is
:func:`pgd.gradients.scores.per_sample_grad_norms` (``vmap(grad(...))`` over the whole model).

The parts, each importing only those before it: :mod:`.torch_internals` (every private torch name
used), :mod:`.trace` (the recorded forward pass), :mod:`.closed_forms`, :mod:`.plan` (which
parameters are computed how), :mod:`.fallback` (``torch.func``), :mod:`.one_pass` (the
backward pass that computes them) and :mod:`.spot_check` (a few samples recomputed the plain
way, ``check=k``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from . import torch_internals as internals
from .closed_forms import (
    CLOSED_FORMS,
    GRAM_CONDITION,
    ConvMode,
    closed_form,
    conv_mode,
    linear_mode,
)
from .fallback import torch_func_norms, warn_once
from .one_pass import one_pass_norms
from .plan import describe_plan, select_modules
from .spot_check import spot_check
from .trace import LossFn, check_no_batch_mixing, default_loss

__all__ = [
    "CLOSED_FORMS",
    "GRAM_CONDITION",
    "ConvMode",
    "LossFn",
    "closed_form",
    "conv_mode",
    "default_loss",
    "describe_plan",
    "grad_norms",
    "linear_mode",
    "select_modules",
    "spot_check",
    "torch_func_norms",
]


def grad_norms(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    modules: Iterable[nn.Module | str] | None = None,
    loss_fn: LossFn = default_loss,
    conv: ConvMode = "auto",
    per_module: bool = False,
    check: int = 0,
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
        check: recompute this many randomly drawn samples with a forward and backward pass of
            their own and raise if any differs (:func:`spot_check`); 0 (default): no check.

    Returns:
        ``(B,)`` norms (and the per-unit squared norms if asked); detached, dtype of the
        computation.

    Raises:
        ValueError: BatchNorm in training mode, a module fed a tensor whose first dimension is not
            the batch, samples that interact, a parameter used outside every module call, a loss
            that does not return one value per sample, a bad selection, or a failed spot
            check.
    """
    if conv not in ("auto", "gram", "materialise"):
        raise ValueError(f"conv must be 'auto', 'gram' or 'materialise', got {conv!r}")
    check_no_batch_mixing(model)
    selected = select_modules(model, modules)
    why = internals.self_check(_checked_one_pass, _checked_reference)
    if why is not None:
        warn_once(
            f"pgd: {why}, so per-sample gradient norms are computed with torch.func instead "
            "(exact, but slower and B x the parameters in memory)"
        )
        result = torch_func_norms(model, inputs, labels, selected, loss_fn, per_module)
    else:
        result = one_pass_norms(model, inputs, labels, selected, loss_fn, conv, per_module)
    if check:
        norms = result[0] if isinstance(result, tuple) else result
        params = list(
            {
                id(q): q
                for _, m in selected
                for q in m.parameters(recurse=False)
                if q.requires_grad
            }.values()
        )
        spot_check(model, inputs, labels, norms, params, check, loss_fn=loss_fn)
    return result


def _checked_one_pass(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    selected = select_modules(model)
    return one_pass_norms(model, inputs, labels, selected, default_loss, "auto", False)


def _checked_reference(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    return torch_func_norms(model, inputs, labels, select_modules(model), default_loss, False)
