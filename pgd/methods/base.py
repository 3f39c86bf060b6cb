"""What every method is: a runner that trains with a :class:`Trainer` and returns a
:class:`MethodOutcome`, described by a :class:`MethodSpec` (its settings, whether it reads bias
labels) that :mod:`pgd.methods.registry` lists.

The :class:`Trainer` is the one interface between a method and the experiment around it: the
data, which network to build and how to seed it, the method's own checked settings, and one
:meth:`Trainer.train_stage` that trains a stage with the model's schedule, its checkpoint file
and resume. A method never reads the experiment's configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from ..core.params import Param
from ..core.runtime import seed_everything
from ..datasets.base import Splits
from ..models import build_model
from ..training.loop import TrainResult, train
from ..training.objectives import Objective
from ..training.schedules import stage_config
from .sampling import importance_sampler


def format_setting(value: Any) -> str:
    """A setting's value as run names and result tables write it: numbers in their shortest form
    (``0.01``, ``50``), None (left to the schedule) as ``default``, anything else as text."""
    if value is None:
        return "default"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def _no_identity(stage: str) -> str:
    return ""


@dataclass
class Trainer:
    """Everything a method trains with.

    Attributes:
        data: the splits.
        model: network name (:data:`pgd.models.MODELS`).
        seed: seeds weight initialisation, batch order and dropout.
        epochs: epochs of every training stage (a stage may ask for fewer).
        params: the method's own settings, checked (its :class:`MethodSpec` ``params``).
        device: where to train.
        pretrained: networks start from pretrained weights (ResNet-18: ImageNet).
        folder: where stage checkpoints ``<stage>.pt`` go (None: none are written).
        resume: continue stages from their checkpoints.
        progress: progress bars (see :func:`pgd.training.loop.train`).
        identity: ``stage -> identity`` of each stage's checkpoint (what the run is; see
            :func:`pgd.experiments.pipeline.stage_identity`).
        score_batch_size: batch size of per-sample gradient passes over the training set.
    """

    data: Splits
    model: str
    seed: int
    epochs: int
    params: Mapping[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    pretrained: bool = False
    folder: Path | None = None
    resume: bool = False
    progress: bool | None = None
    identity: Callable[[str], str] = _no_identity
    score_batch_size: int = 512

    @property
    def num_classes(self) -> int:
        return self.data.train.num_classes

    def build_model(self, pretrained: bool | None = None) -> nn.Module:
        """A network for this data (its classes and input shape), as the generators stand."""
        return build_model(
            self.model,
            num_classes=self.num_classes,
            pretrained=self.pretrained if pretrained is None else pretrained,
            input_shape=self.data.input_shape,
        )

    def fresh_model(self) -> nn.Module:
        """A newly initialised network, after seeding every generator with the run's seed."""
        seed_everything(self.seed)
        return self.build_model()

    def generator(self) -> torch.Generator:
        """A random generator seeded with the run's seed (for samplers)."""
        return torch.Generator().manual_seed(self.seed)

    def train_stage(
        self,
        stage: str,
        model: nn.Module,
        *,
        desc: str,
        sampler: Sampler | None = None,
        objective: Objective | None = None,
        epochs: int | None = None,
        kind: str | None = None,
        changes: Mapping[str, Any] | None = None,
    ) -> TrainResult:
        """Train ``model`` as stage ``stage`` with its checkpoint ``<stage>.pt``; ``kind``
        (default: ``stage``) picks the schedule of :func:`pgd.training.schedules.stage_config`;
        ``epochs`` (default: the trainer's) the stage's length; ``changes`` replace fields of
        that schedule (GroupDRO's strong weight decay)."""
        config = stage_config(self.model, kind or stage, epochs or self.epochs)
        return train(
            model,
            self.data.train,
            self.data.valid,
            replace(config, **changes) if changes else config,
            seed=self.seed,
            sampler=sampler,
            device=self.device,
            checkpoint=self.folder / f"{stage}.pt" if self.folder is not None else None,
            resume=self.resume,
            fingerprint=self.identity(stage),
            desc=desc,
            progress=self.progress,
            objective=objective,
        )

    def train_resampled(self, stage: str, weights: Tensor, *, desc: str) -> TrainResult:
        """ERM from scratch on batches drawn with probability proportional to ``weights``."""
        return self.train_stage(
            stage,
            self.fresh_model(),
            desc=desc,
            sampler=importance_sampler(weights, generator=self.generator()),
            kind="vanilla",
        )


@dataclass
class MethodOutcome:
    """What a method's runner returns.

    Attributes:
        model: the final model (selected weights).
        histories: one training history per stage (stage name -> table, last stage last).
        sampling_weights: ``(N,)`` weights its final stage drew training batches in proportion
            to (None: uniform batches).
        scores: PGD's ``(N,)`` per-sample gradient norms (None for the other methods).
        extras: method-specific diagnostics (JTT: its error set).
        final: the final stage's :class:`~pgd.training.loop.TrainResult`, whose
            ``selected_states`` hold the weights every selection rule chose for ``model``.
    """

    model: nn.Module
    histories: dict[str, pd.DataFrame]
    sampling_weights: Tensor | None = None
    scores: Tensor | None = None
    extras: dict[str, float] = field(default_factory=dict)
    final: TrainResult | None = None


@dataclass(frozen=True)
class Protocol:
    """How a method's paper trains it on one dataset, where that differs from the comparison
    grid's shared protocol (the dataset's default network and schedule).

    Attributes:
        fields: configuration fields that change (``{"model": "mlp"}``: LfF's MLP, which
            :mod:`pgd.training.schedules` trains with Adam, lr 1e-3, batch 256).
        source: where the protocol comes from.
    """

    fields: Mapping[str, Any]
    source: str


@dataclass(frozen=True)
class GridEntry:
    """One entry of the comparison grid for a method that runs there in several variants
    (PGD with its last-layer and whole-network scores).

    Attributes:
        name: the entry's name (``--methods NAME``; a table row).
        label: how tables and figures call it.
        settings: the method's settings this entry fixes.
    """

    name: str
    label: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the registry key (``--method NAME``).
        label: how tables and figures call it.
        run: ``run(trainer) -> MethodOutcome``.
        reads_bias_labels: it reads the training set's bias labels: an *oracle*, not a
            competitor of methods that never see them.
        changes: what it changes compared with ERM, in a few words.
        source: the paper it follows.
        params: its own settings (validated by :meth:`check`).
        check_params: validates the settings together, after each was checked alone.
        name_parts: its part of a run's name (default: ``<tag><value>`` for every tagged
            setting).
        grid_entries: its entries in the comparison grid (default: one, named and labelled
            as the method); methods with several run after the others that read no bias labels.
        tuning: ``{setting: candidates}`` searched on the validation split in the grid.
        grid_settings: settings fixed in the grid (JTT's identification epochs).
        protocols: ``{dataset: Protocol}``, how its paper trains it on those datasets (the
            grid's ``own`` protocol; a dataset missing here runs under the shared one only).
        dataset_settings: ``{dataset: {setting: value}}``, its paper's values of its own
            settings on those datasets: the defaults there, under every protocol (DFA's loss
            weights on BFFHQ).
        bias_prior: what it is told about the bias instead of bias labels (ReBias: the
            family of a network that can see only the bias); empty for methods told nothing.
        stages: how many training stages of the schedule's length it trains one after the
            other (PGD: 2, its biased and its debiased model); the grid's ``total`` budget gives
            a method of fewer stages as many epochs in all.
    """

    name: str
    label: str
    run: Callable[[Trainer], MethodOutcome]
    reads_bias_labels: bool
    changes: str
    source: str
    params: tuple[Param, ...] = ()
    check_params: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    name_parts: Callable[[Mapping[str, Any]], list[str]] | None = None
    grid_entries: tuple[GridEntry, ...] = ()
    tuning: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    grid_settings: Mapping[str, Any] = field(default_factory=dict)
    protocols: Mapping[str, Protocol] = field(default_factory=dict)
    dataset_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bias_prior: str = ""
    stages: int = 1

    def __post_init__(self) -> None:
        declared = {p.name for p in self.params}
        for dataset, settings in self.dataset_settings.items():
            unknown = sorted(set(settings) - declared)
            if unknown:
                raise ValueError(
                    f"method {self.name}: dataset_settings[{dataset!r}] names "
                    f"{', '.join(unknown)}, which it does not declare (its settings: "
                    f"{', '.join(sorted(declared)) or 'none'})"
                )

    def defaults(self, dataset: str | None = None) -> dict[str, Any]:
        """Its settings' defaults: the declared ones, with its paper's values on ``dataset``
        (:attr:`dataset_settings`) where it has them."""
        return {p.name: p.default for p in self.params} | dict(
            self.dataset_settings.get(dataset or "", {})
        )

    def entries(self) -> tuple[GridEntry, ...]:
        """Its grid entries (one named after it where it declares none)."""
        return self.grid_entries or (GridEntry(self.name, self.label),)

    @property
    def oracle(self) -> bool:
        return self.reads_bias_labels

    def hparams(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Its tagged hyper-parameters, ``{tag: value}`` (e.g. JTT's ``T`` and ``lambda``)."""
        return {p.tag: params[p.name] for p in self.params if p.tag}

    def run_name_parts(self, params: Mapping[str, Any]) -> list[str]:
        """Its part of a run's name."""
        if self.name_parts is not None:
            return self.name_parts(params)
        return [
            f"{tag}{format_setting(value)}"
            for tag, value in self.hparams(params).items()
            if value is not None  # a setting left to the schedule names nothing
        ]
