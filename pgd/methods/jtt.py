"""JTT, Just Train Twice (Liu et al., ICML 2021): ERM for a few epochs, then training from
scratch with the samples that model gets wrong (its error set) drawn ``1 + lambda`` times as often
(the official code adds ``lambda`` copies of each). Reads no bias labels (they only describe the
error set afterwards, for the reader).

Where the book departs from the official code: the error set is read from the identification
model after its ``T`` epochs, in evaluation mode and without augmentation; the official code takes
the predictions made during training epoch ``T`` (train mode, before each batch's step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.params import Param
from ..datasets.base import without_augmentation
from ..training.metrics import predict
from .base import MethodOutcome, MethodSpec, Trainer


def error_set_weights(correct: Tensor, upweight: float) -> Tensor:
    """JTT's sampling weights: ``1 + upweight`` for the samples the identification model gets
    wrong (its error set), 1 for the others: the official code adds ``upweight`` copies of every
    error to the training set. ``correct``: ``(N,)`` booleans."""
    if upweight < 0:
        raise ValueError(f"JTT's up-weighting factor lambda must be at least 0, got {upweight}")
    return torch.where(correct.bool(), 1.0, 1.0 + float(upweight)).double()


def jtt_error_set(trainer: Trainer) -> Tensor:
    """Step 1: ERM for ``jtt_epochs`` epochs; returns the ``(N,)`` boolean error set, the
    training samples it misclassifies."""
    identify = trainer.train_stage(
        "identify",
        trainer.fresh_model(),
        desc="JTT 1/2 identification model",
        epochs=trainer.params["jtt_epochs"],
    )
    train = without_augmentation(trainer.data.train)
    return ~predict(identify.model, train, device=trainer.device).correct


def run(trainer: Trainer) -> MethodOutcome:
    errors = jtt_error_set(trainer)
    weights = error_set_weights(~errors, trainer.params["jtt_upweight"])
    conflicting = trainer.data.train.is_conflicting  # described afterwards, never trained on
    extras = {
        "error_set_size": int(errors.sum()),
        "error_set_conflicting_share": float(conflicting[errors].float().mean())
        if errors.any()
        else float("nan"),
        "conflicting_in_error_set": float(errors[conflicting].float().mean())
        if conflicting.any()
        else float("nan"),
    }
    result = trainer.train_resampled("jtt", weights, desc="JTT 2/2 up-weighted model")
    return MethodOutcome(
        result.model,
        {"jtt": result.history},
        sampling_weights=weights,
        extras=extras,
        final=result,
    )


def _check_epochs(epochs: int) -> int:
    if int(epochs) < 1:
        raise ValueError(f"jtt_epochs must be at least 1, got {epochs}")
    return epochs


def _check_upweight(value: float) -> float:
    if float(value) < 0:
        raise ValueError(f"JTT's lambda must be at least 0, got {value}")
    return value


SPEC = MethodSpec(
    name="jtt",
    label="JTT",
    run=run,
    reads_bias_labels=False,
    changes="ERM for T epochs, then its error set drawn 1 + lambda times as often",
    source="Liu et al., ICML 2021",
    params=(
        Param(
            "jtt_epochs",
            2,
            "epochs of the identification model T",
            parse=int,
            check=_check_epochs,
            tag="T",
        ),
        Param(
            "jtt_upweight",
            50.0,
            "lambda: the error set is drawn 1 + lambda times as often as the rest",
            parse=float,
            check=_check_upweight,
            tag="lambda",
        ),
    ),
    # The grid searches both on the validation split, as JTT's paper does: T over its CelebA grid,
    # lambda over the official code's.
    tuning={"jtt_epochs": (1, 5, 10), "jtt_upweight": (20.0, 50.0, 100.0)},
)
