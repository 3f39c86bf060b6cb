"""How each network of the book is trained: optimiser, learning rate, batch size, schedule, and
what each training stage changes (the biased model's GCE loss, the last-epoch selection).

``cnn`` follows the official PGD code (SGD, lr 0.02, momentum 0.9, weight decay 1e-3, batch 128,
learning rate x0.1 every 40% of the epochs: every 40 of 100). ``mlp`` follows LfF and DFA (Adam,
lr 1e-3, batch 256, no decay). ``resnet18`` follows DFA on BFFHQ (Adam, lr 1e-4, batch 64, no
decay), with mixed precision and channels-last memory on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .loop import TrainConfig


def _cnn(epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=128,
        optimizer="sgd",
        lr=0.02,
        momentum=0.9,
        weight_decay=1e-3,
        lr_step=max(1, round(0.4 * epochs)),
        lr_gamma=0.1,
    )


def _resnet18(epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=64,
        optimizer="adam",
        lr=1e-4,
        weight_decay=0.0,
        lr_step=None,
        amp=True,
        channels_last=True,
    )


def _mlp(epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, batch_size=256, optimizer="adam", lr=1e-3, weight_decay=0.0, lr_step=None
    )


#: Model name -> its training hyper-parameters for a number of epochs.
SCHEDULES: dict[str, Callable[[int], TrainConfig]] = {
    "cnn": _cnn,
    "resnet18": _resnet18,
    "mlp": _mlp,
}

#: Training stage -> what it changes in its model's schedule. ``biased``: PGD's biased model
#: (GCE with q = 0.7, last epoch kept, as the official code does); ``identify``: JTT's
#: identification model (ERM, last epoch kept); the others keep the epoch of lowest validation
#: loss.
STAGES: dict[str, dict[str, Any]] = {
    "vanilla": {},
    "debiased": {},
    "biased": {"loss": "gce", "gce_q": 0.7, "selection": "last"},
    "identify": {"selection": "last"},
}


def stage_config(model: str, stage: str, epochs: int) -> TrainConfig:
    """Hyper-parameters of a training ``stage`` (see :data:`STAGES`) of ``model`` (see
    :data:`SCHEDULES`) for ``epochs`` epochs.

    Raises:
        ValueError: unknown stage or model.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if model not in SCHEDULES:
        raise ValueError(f"no schedule for model {model!r}; choose one of {', '.join(SCHEDULES)}")
    base = SCHEDULES[model](epochs)
    changes = STAGES[stage]
    return TrainConfig(**{**asdict(base), **changes}) if changes else base
