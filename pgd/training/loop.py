"""One training loop for every model of the book: ERM, the GCE-trained biased model, PGD's
debiased model and the baselines of :mod:`pgd.methods` differ only in their loss (an
*objective*) and in how batches are sampled.

The loop selects its model on the validation split only (never the test split), writes an atomic
checkpoint after every epoch, and resumes a killed run exactly: model, optimiser, learning-rate
schedule, the sampler's random generator and torch's global random state are all restored, so on
CPU a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, RandomSampler, Sampler

from ..core.runtime import StageBar, progress_enabled
from ..core.storage import CorruptFileError
from ..datasets.base import batch_loader
from .checkpoints import StageCheckpoint, global_rng_state, set_global_rng_state
from .metrics import group_mean_accuracy, predict
from .objectives import LOSSES, Objective
from .selection import SELECTIONS, SelectionTracker

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training stage.

    Attributes:
        epochs: passes over the data (for importance sampling: N draws each).
        batch_size: samples per step.
        optimizer: ``sgd`` (with ``momentum``) or ``adam``.
        lr, momentum, weight_decay: optimiser settings.
        lr_step: multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs (None: never).
        lr_delay: count those ``lr_step`` epochs only from epoch ``lr_delay`` on (DFA steps its
            scheduler only from its curriculum step on, so its first decay comes at
            ``lr_delay + lr_step``); None: from the start.
        loss: ``ce`` (cross-entropy) or ``gce`` (generalized cross-entropy, the biased model's).
        gce_q: the GCE exponent q.
        selection: which epoch's weights to keep: lowest validation loss, highest validation
            accuracy, the last epoch, or highest validation group-mean accuracy (an oracle
            rule: see :data:`SELECTIONS`). :func:`train` also keeps the weights every other rule
            would choose.
        amp: mixed precision (float16 autocast with a gradient scaler) on CUDA; ignored on CPU.
        channels_last: channels-last memory format for model and images on CUDA (faster
            convolutions on tensor cores); ignored on CPU.
    """

    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-3
    lr_step: int | None = 40
    lr_gamma: float = 0.1
    loss: str = "ce"
    gce_q: float = 0.7
    selection: str = "valid_loss"
    amp: bool = False
    channels_last: bool = False
    lr_delay: int | None = None

    #: Fields added after checkpoints were written: they enter a stage's identity only where
    #: they differ from their default, so that every checkpoint written before stays valid.
    OPTIONAL_IN_IDENTITY: ClassVar[tuple[str, ...]] = ("lr_delay",)

    def identity(self) -> dict[str, Any]:
        """The fields a stage checkpoint is matched on (see :attr:`OPTIONAL_IN_IDENTITY`)."""
        fields = asdict(self)
        for name in self.OPTIONAL_IN_IDENTITY:
            if fields[name] is None:
                del fields[name]
        return fields

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.optimizer, OPTIMIZERS, "optimizer"),
            (self.loss, LOSSES, "loss"),
            (self.selection, SELECTIONS, "selection"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model, holding the selected epoch's weights.
        history: one row per epoch: train loss and accuracy, validation loss and accuracy,
            learning rate, seconds; ``history.attrs["best_epoch"]`` repeats ``best_epoch``.
        best_epoch: the selected epoch (0-based).
        resumed_from: the epoch a resumed run continued after, else None.
        selected: every tracked selection rule -> the epoch it chose (0-based); a rule is
            missing when it cannot be applied exactly (a checkpoint of an older version of the
            code, written before the rule was tracked).
        selected_states: rule -> the weights of that epoch (CPU tensors, shared between rules
            that chose the same epoch).
    """

    model: nn.Module
    history: pd.DataFrame
    best_epoch: int
    resumed_from: int | None = None
    selected: dict[str, int] = field(default_factory=dict)
    selected_states: dict[str, dict[str, Tensor]] = field(default_factory=dict)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over ``model``'s parameters."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """``config``'s learning-rate schedule, stepped once per epoch: ``lr_gamma`` every
    ``lr_step`` epochs (never, where ``lr_step`` is None), counted from epoch ``lr_delay``."""
    step = config.lr_step if config.lr_step else config.epochs + 1
    if config.lr_delay is None:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=config.lr_gamma)
    delay, gamma = config.lr_delay, config.lr_gamma
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: gamma ** (max(0, epoch - delay) // step)
    )


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _resume_note(resumed_from: int | None, epochs: int) -> str:
    if resumed_from is None:
        return ""
    if resumed_from >= epochs:
        return "; read back from its finished checkpoint"
    return f"; resumed after epoch {resumed_from}"


def to_device(
    images: Tensor, device: torch.device, memory_format: torch.memory_format | None
) -> Tensor:
    """``images`` on ``device`` (without waiting), in ``memory_format`` if they are a batch of
    images (4-D)."""
    images = images.to(device, non_blocking=True)
    if memory_format is not None and images.dim() == 4:
        images = images.contiguous(memory_format=memory_format)
    return images


def train(
    model: nn.Module,
    train_set: Dataset,
    valid_set: Dataset,
    config: TrainConfig,
    *,
    seed: int = 0,
    sampler: Sampler | None = None,
    device: torch.device | str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: str = "",
    desc: str = "training",
    progress: bool | None = None,
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_set``, selecting weights on ``valid_set``.

    Args:
        model: the network; its current weights are the starting point.
        train_set, valid_set: datasets of ``(image, label, bias_label, index)`` items.
        config: hyper-parameters.
        seed: seeds the sampler's generator (uniform shuffling when ``sampler`` is None).
        sampler: how training indices are drawn each epoch (default: a uniform shuffle). Give
            it its own ``torch.Generator`` to make epochs reproducible; its state is then
            checkpointed with the rest.
        device: where to train.
        checkpoint: file written atomically after every epoch (None: no checkpoints).
        resume: continue from ``checkpoint`` if it exists and was written for the same
            ``fingerprint``; a finished checkpoint returns at once.
        fingerprint: identifies the experiment (what the run is; see
            :func:`pgd.experiments.pipeline.stage_identity`) in the checkpoint.
        desc: label of the progress bar.
        progress: True: a progress bar over epochs, replaced by one summary line when the stage
            ends (:class:`pgd.core.runtime.StageBar`: a saved notebook keeps the line, not the
            bar); False: silent; None (default): as True, or only the line where
            ``$PGD_PROGRESS`` is 0 (what the committed notebooks show).
        objective: the per-batch loss (default: ``config.loss`` on ``model(images)``); its state
            is checkpointed and restored with the model's.

    Returns:
        A :class:`TrainResult` whose model holds the selected weights.

    Raises:
        FloatingPointError: the training loss became NaN or infinite (names epoch and batch).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if config.channels_last and cuda else None
    model.to(device)
    if memory_format is not None:
        model.to(memory_format=memory_format)
    use_amp = config.amp and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    if sampler is None:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(seed))
    generator: torch.Generator | None = getattr(sampler, "generator", None)
    if objective is None:
        objective = Objective(config.loss, config.gce_q)
    loader = batch_loader(train_set, config.batch_size, sampler, pin_memory=cuda)
    identity = {"fingerprint": fingerprint, "config": config.identity()}
    store = StageCheckpoint(checkpoint, identity) if checkpoint is not None else None
    tracker = SelectionTracker(config.selection)
    start, history, resumed_from = 0, [], None
    state = store.load() if resume and store is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if generator is not None:
            generator.set_state(state["generator"])
        set_global_rng_state(state["rng"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        objective.load_state_dict(state.get("objective") or {})
        history = state["history"]
        tracker.load_state_dict(state)
        start = resumed_from = state["epoch"] + 1

    show = progress_enabled(progress)
    bar = StageBar(
        range(start, config.epochs),
        show=show,
        desc=desc,
        initial=start,
        total=config.epochs,
        unit="epoch",
        dynamic_ncols=True,
    )
    for epoch in bar:
        model.train()
        began = time.perf_counter()
        loss_sum, correct, seen = 0.0, torch.zeros((), device=device, dtype=torch.long), 0
        for batch, (images, labels, bias, index) in enumerate(loader):
            images = to_device(images, device, memory_format)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                loss, logits = objective(model, images, labels, bias.to(device), index)
            loss_value = loss.item()  # the one host-device synchronisation per batch
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"{desc}: the training loss became {loss_value} at epoch {epoch + 1}, batch "
                    f"{batch + 1}. Lower the learning rate (now {scheduler.get_last_lr()[0]:g}) "
                    "or check the inputs for NaN values."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss_value * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        valid = predict(model, valid_set, device=device, amp=use_amp)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": int(correct) / max(seen, 1),
            "valid_loss": float(valid.losses.mean()),
            "valid_accuracy": float(valid.correct.float().mean()),
            "lr": lr,
            "seconds": time.perf_counter() - began,
        }
        row["valid_group_accuracy"] = group_mean_accuracy(
            valid.correct, valid.labels, valid.bias_labels
        )
        history.append(row)
        current = _cpu_state(model)  # a fresh copy, never modified: safe to keep as the best
        tracker.update(row, epoch, current)
        bar.set_postfix(
            train_acc=f"{row['train_accuracy']:.3f}",
            valid_acc=f"{row['valid_accuracy']:.3f}",
            valid_loss=f"{row['valid_loss']:.3f}",
        )
        if store is not None:
            store.save(
                {
                    "epoch": epoch,
                    "finished": epoch == config.epochs - 1,
                    "model": current,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state() if generator is not None else None,
                    "rng": global_rng_state(),
                    "scaler": scaler.state_dict() if use_amp else None,
                    "objective": objective.state_dict(),
                    "history": history,
                    **tracker.state_dict(),
                }
            )
    if tracker.best_state is None:
        bar.finish(None)
        raise CorruptFileError(f"{checkpoint} holds no selected weights; delete it and rerun")
    model.load_state_dict(tracker.best_state)
    best_epoch = tracker.best_epoch
    line = None
    if progress is not False:  # one line per stage, in place of its bar
        kept = history[best_epoch]
        seconds = sum(row["seconds"] for row in history)
        line = (
            f"{desc}: {config.epochs} epochs, {seconds:.0f} s of training; kept epoch "
            f"{best_epoch + 1} (valid loss {kept['valid_loss']:.3f}, valid accuracy "
            f"{100 * kept['valid_accuracy']:.1f}%)" + _resume_note(resumed_from, config.epochs)
        )
    bar.finish(line)
    frame = pd.DataFrame(history)
    frame.attrs["best_epoch"] = best_epoch
    return TrainResult(
        model, frame, best_epoch, resumed_from, tracker.selected(), tracker.selected_states()
    )
