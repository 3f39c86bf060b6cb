"""How each network of the book is trained: optimiser, learning rate, batch size, schedule, and
what each training stage changes (the biased model's GCE loss, the last-epoch selection).

``cnn`` follows the official PGD code (SGD, lr 0.02, momentum 0.9, weight decay 1e-3, batch 128,
learning rate x0.1 every 40% of the epochs: every 40 of 100). ``mlp`` follows LfF and DFA (Adam,
lr 1e-3, batch 256, no decay). ``resnet18`` follows DFA on BFFHQ (Adam, lr 1e-4, batch 64, no
decay), with mixed precision and channels-last memory on CUDA. ``dfa_mlp`` is DFA's own Colored
MNIST protocol (its 16-unit encoder; Adam, lr 0.01, batch 256, the rate halved in steps after its
curriculum step).
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


def _dfa_mlp(epochs: int) -> TrainConfig:
    """DFA on Colored MNIST (``scripts/run_cmnist_ours.sh``): Adam, lr 0.01, batch 256, the rate
    halved every 10,000 of its 50,000 steps counted from its curriculum step 10,000 (first at
    20,000): as fractions of the schedule, every 20 % from 20 % on."""
    fifth = max(1, round(0.2 * epochs))
    return TrainConfig(
        epochs=epochs,
        batch_size=256,
        optimizer="adam",
        lr=0.01,
        weight_decay=0.0,
        lr_step=fifth,
        lr_gamma=0.5,
        lr_delay=fifth,
    )


def _dfa_resnet18(epochs: int) -> TrainConfig:
    """DFA on BFFHQ (``scripts/run_bffhq_ours.sh``): the ResNet-18 schedule, with the rate x0.1
    (the script leaves ``lr_gamma`` at its default) every fifth of training from two fifths on."""
    fifth = max(1, round(0.2 * epochs))
    return TrainConfig(**{**asdict(_resnet18(epochs)), "lr_step": fifth, "lr_delay": fifth})


#: Model name -> its training hyper-parameters for a number of epochs.
SCHEDULES: dict[str, Callable[[int], TrainConfig]] = {
    "cnn": _cnn,
    "resnet18": _resnet18,
    "mlp": _mlp,
    "dfa_mlp": _dfa_mlp,
    "dfa_resnet18": _dfa_resnet18,
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
