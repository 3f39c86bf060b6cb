"""Vanilla ERM: cross-entropy, uniform shuffled batches, selection on the validation loss."""

from __future__ import annotations

from .base import MethodOutcome, MethodSpec, Trainer


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
)
