"""PGD, Per-sample Gradient-based Debiasing (Ahn, Kim & Yun, ICLR 2023), in three steps:

1. :func:`train_biased` trains a model with uniform batch sampling and the generalized
   cross-entropy, which makes it lean on the easy, spurious attribute;
2. :func:`pgd_scores` gives every training sample the norm of its per-sample gradient under that
   model (cross-entropy with the true label; last linear layer, or every parameter) as its
   importance;
3. :func:`train_debiased` trains again, drawing batches with probability proportional to the
   importance, starting from the biased weights (as the official code does) or from scratch.

PGD never reads bias labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..core.params import Param
from ..core.runtime import seed_everything
from ..datasets.base import without_augmentation
from ..gradients.scores import SCORE_LAYERS, check_score_options, grad_norm_scores
from ..training.loop import TrainResult
from .base import GridEntry, MethodOutcome, MethodSpec, Protocol, Trainer
from .sampling import importance_sampler

DEBIASED_INITS = ("biased", "scratch")


def train_biased(trainer: Trainer) -> TrainResult:
    """Step 1: GCE (q = 0.7), uniform shuffled batches, the last epoch's weights."""
    return trainer.train_stage("biased", trainer.fresh_model(), desc="PGD 1/3 biased model")


def pgd_scores(biased: nn.Module, trainer: Trainer) -> Tensor:
    """Step 2: ``(N,)`` per-sample gradient norms of the biased model (eval mode) over the
    training images without augmentation, over its last layer or all its parameters."""
    params = trainer.params
    return grad_norm_scores(
        biased,
        without_augmentation(trainer.data.train),  # score the images, not random crops of them
        layers=params["score_layers"],
        p=params["score_p"],
        include_bias=params["score_bias"],
        batch_size=trainer.score_batch_size,
    )


def train_debiased(trainer: Trainer, biased: nn.Module, scores: Tensor) -> TrainResult:
    """Step 3: cross-entropy on importance-sampled batches (N draws with replacement per
    epoch, probability proportional to the score, no reweighting), selection on validation loss.
    """
    if trainer.params["debiased_init"] == "biased":
        model = trainer.build_model(pretrained=False)  # its weights are replaced below
        model.load_state_dict(biased.state_dict())
        seed_everything(trainer.seed)
    else:
        model = trainer.fresh_model()
    return trainer.train_stage(
        "debiased",
        model,
        desc="PGD 3/3 debiased model",
        sampler=importance_sampler(scores, generator=trainer.generator()),
    )


def run(trainer: Trainer) -> MethodOutcome:
    """The three steps, one after the other."""
    biased = train_biased(trainer)
    scores = pgd_scores(biased.model, trainer)
    debiased = train_debiased(trainer, biased.model, scores)
    histories = {"biased": biased.history, "debiased": debiased.history}
    return MethodOutcome(
        debiased.model, histories, sampling_weights=scores, scores=scores, final=debiased
    )


def _positive_order(value: float) -> float:
    value = float(value)
    if not (value > 0 or math.isinf(value)):
        raise ValueError(f"the norm order must be positive, got {value}")
    return value


def _check(params: dict[str, Any]) -> dict[str, Any]:
    layers, p = check_score_options(params["score_layers"], params["score_p"], params["score_bias"])
    return {**params, "score_layers": layers, "score_p": p}


def _name_parts(params: Mapping[str, Any]) -> list[str]:
    parts = []
    if params["score_layers"] != "last":
        parts.append(f"{params['score_layers']}layers")
    if params["score_p"] != 2.0:
        parts.append(f"p{params['score_p']:g}")
    if params["score_bias"]:
        parts.append("withbias")
    if params["debiased_init"] != "biased":
        parts.append(params["debiased_init"])
    return parts


SPEC = MethodSpec(
    name="pgd",
    label="PGD",
    run=run,
    reads_bias_labels=False,
    changes="batches drawn in proportion to the biased model's per-sample gradient norms",
    source="Ahn, Kim & Yun, ICLR 2023",
    params=(
        Param(
            "score_layers",
            "last",
            "PGD's score: gradient norm over the last layer (official) or over all parameters "
            "(exact, one backward pass per batch)",
            choices=SCORE_LAYERS,
        ),
        Param(
            "score_p",
            2.0,
            "norm order of the last-layer score (the official flag's default is 0.7)",
            parse=float,
            check=_positive_order,
        ),
        Param("score_bias", False, "include the last layer's bias in the score", flag=True),
        Param(
            "debiased_init",
            "biased",
            "the debiased model starts from the biased weights (official) or from scratch",
            choices=DEBIASED_INITS,
        ),
    ),
    check_params=_check,
    name_parts=_name_parts,
    grid_entries=(
        GridEntry("pgd", "PGD (last layer)", {"score_layers": "last"}),
        GridEntry("pgd_all", "PGD (all layers)", {"score_layers": "all"}),
    ),
    protocols={
        "cmnist": Protocol({}, "PGD's official code: the shared protocol (small CNN, SGD)"),
    },
    stages=2,  # the biased model, then the debiased one, each the schedule's length
)
