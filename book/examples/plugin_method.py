"""A method as a plugin: loss-proportional resampling, in one file.

Like PGD it trains a model that leans on the shortcut (generalized cross-entropy, uniform
batches), then trains a second model from scratch on batches drawn in proportion to each training
image's importance. PGD's importance is the norm of the image's gradient; this method's is its
cross-entropy loss under the biased model, raised to ``--loss-power`` (chapter 2's exercise
compares the two). It reads no bias labels.

Use it without changing the package:

    python -m pgd --plugin book/examples/plugin_method.py list
    python -m pgd --plugin book/examples/plugin_method.py run --method lossweight --profile smoke
    python -m pgd --plugin book/examples/plugin_method.py compare \\
        --methods vanilla,pgd,lossweight --seeds 1 --profile smoke --out results
    PGD_PLUGINS=book/examples/plugin_method.py python -m pgd run --method lossweight

or, in Python, ``import`` this file (``pgd.core.plugins.load_plugin(path)``) before building an
``ExperimentConfig(method="lossweight")``.
"""

from __future__ import annotations

from pgd.core.params import Param
from pgd.datasets.base import without_augmentation
from pgd.methods.base import MethodOutcome, MethodSpec, Trainer
from pgd.methods.registry import register_method
from pgd.training.metrics import predict


def _check_power(value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"--loss-power must be positive, got {value}")
    return value


def run(trainer: Trainer) -> MethodOutcome:
    """Step 1: the biased model (the schedule of PGD's, stage ``biased``); step 2: every
    training image's loss under it, to the power ``loss_power``; step 3: ERM from scratch on
    batches drawn in proportion to those weights (the schedule of vanilla training)."""
    biased = trainer.train_stage("biased", trainer.fresh_model(), desc="lossweight 1/2 biased")
    images = without_augmentation(trainer.data.train)  # the images, not random crops of them
    losses = predict(biased.model, images).losses.double()
    weights = losses.clamp_min(1e-12) ** trainer.params["loss_power"]
    final = trainer.train_resampled("resampled", weights, desc="lossweight 2/2 resampled")
    histories = {"biased": biased.history, "resampled": final.history}
    return MethodOutcome(final.model, histories, sampling_weights=weights, final=final)


SPEC = register_method(
    MethodSpec(
        name="lossweight",
        label="Loss-proportional resampling",
        run=run,
        reads_bias_labels=False,
        changes="batches drawn in proportion to a biased model's per-sample loss (power p)",
        source="an example plugin of the PGD book",
        params=(
            Param(
                "loss_power",
                1.0,
                "importance = loss under the biased model to this power",
                parse=float,
                check=_check_power,
                tag="p",
            ),
        ),
        tuning={"loss_power": (0.5, 1.0, 2.0)},  # searched on the validation split by compare
    )
)
