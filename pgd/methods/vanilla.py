"""Vanilla ERM: cross-entropy, uniform shuffled batches, selection on the validation loss."""

from __future__ import annotations

from .base import MethodOutcome, MethodSpec, Protocol, Trainer
from .lff import LFF_MLP


def run(trainer: Trainer) -> MethodOutcome:
    result = trainer.train_stage("vanilla", trainer.fresh_model(), desc="vanilla")
    return MethodOutcome(result.model, {"vanilla": result.history}, final=result)


SPEC = MethodSpec(
    name="vanilla",
    label="Vanilla (ERM)",
    run=run,
    reads_bias_labels=False,
    changes="nothing (ERM, uniform batches)",
    source="",
    # Under PGD's protocol vanilla is the shared run; its own is the baseline of LfF's paper.
    protocols={"cmnist": Protocol({"model": "mlp"}, "the vanilla baseline of " + LFF_MLP)},
)
