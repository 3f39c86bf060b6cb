"""Group upsampling: batches drawn so that every (label, bias) group is equally likely. Reads the
training bias labels: an oracle, showing what knowing the bias is worth."""

from __future__ import annotations

from .base import MethodOutcome, MethodSpec, Trainer
from .sampling import group_balanced_weights


def run(trainer: Trainer) -> MethodOutcome:
    train = trainer.data.train
    weights = group_balanced_weights(
        train.labels, train.bias_labels, int(train.bias_labels.max()) + 1
    )
    result = trainer.train_resampled("upsample", weights, desc="group upsampling (oracle)")
    return MethodOutcome(
        result.model, {"upsample": result.history}, sampling_weights=weights, final=result
    )


SPEC = MethodSpec(
    name="upsample",
    label="Upsampling (oracle)",
    run=run,
    reads_bias_labels=True,
    changes="batches drawn so that every (label, bias) group is equally likely",
    source="Idrissi et al., CLeaR 2022",
)
