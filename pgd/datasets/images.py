"""What the image-file datasets (CelebA, BFFHQ) share: a dataset of image files with a target and
a bias label, their splits, the transforms of the baselines, and how fast files load.

Every item is ``(image (3, S, S) float, label, bias_label, index)``, exactly like Colored MNIST,
so the same training loop, scores and metrics apply. The list of files is read once, when the
dataset is built; epochs decode the files (with PIL) but never search the disk again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..core import compat
from ..core.errors import PgdError
from ..core.params import Param
from ..core.runtime import data_root, notice, print_wrapped, progress_enabled
from ..core.storage import CorruptFileError, cached
from .base import DataRequest, SplitsDefaults, batch_loader

#: ImageNet statistics, the normalisation of every ResNet-18 baseline (LfF, DFA, JTT).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
#: Side of the square images the ResNet-18 sees on the real data, as in the baselines.
REAL_IMAGE_SIZE = 224
#: Side used with the synthetic stand-in unless asked otherwise: a CPU can train on it in minutes.
STAND_IN_IMAGE_SIZE = 48
WORKERS_ENV = "PGD_WORKERS"


class CorruptImageError(PgdError):
    """An image file cannot be decoded; the message names the file."""


def default_workers(device: torch.device | str | None = None) -> int:
    """DataLoader worker processes for image files: ``$PGD_WORKERS`` if set; else on CUDA up to 8
    (one per CPU core), on CPU none (the model already uses every core)."""
    if os.environ.get(WORKERS_ENV):
        value = os.environ[WORKERS_ENV]
        if not value.strip().isdigit():
            raise ValueError(f"${WORKERS_ENV} must be a whole number of processes, got {value!r}")
        return int(value)
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return min(8, os.cpu_count() or 1)
    return 0


def loader_workers(request: DataRequest) -> int:
    """The request's worker processes, else :func:`default_workers` for its device."""
    return request.workers if request.workers is not None else default_workers(request.device)


def _check_image_size(value: int | None) -> int | None:
    if value is None:
        return None
    if not 16 <= int(value) <= 1024:
        raise ValueError(f"image_size must lie in 16..1024 pixels, got {value}")
    return int(value)


#: The settings every image-file dataset declares.
STAND_IN_OPTION = Param(
    "stand_in",
    False,
    "use synthetic stand-in images in the real file layout (written into <data root>/stand-in/ "
    "on first use); for trying the pipeline, says nothing about the data",
    flag=True,
)
IMAGE_SIZE_OPTION = Param(
    "image_size",
    None,
    "side of the images fed to the model (celeba, bffhq: default 224, 48 with --stand-in; "
    "folder: 32)",
    parse=int,
    check=_check_image_size,
)


#: The validation splits of the face stand-ins (CelebA, BFFHQ), one per value of
#: :data:`STAND_IN_VALIDATION_OPTION`: ``oracle``, rich in bias-conflicting faces (BFFHQ's
#: group-balanced, CelebA's with blond men raised to 5%); ``real``, as poor in them as the real
#: dataset's (CelebA's training proportions; those of BFFHQ's released 0.5% folder).
STAND_IN_VALIDATIONS = ("oracle", "real")
STAND_IN_VALIDATION_OPTION = Param(
    "stand_in_validation",
    "oracle",
    "the face stand-ins' validation split: oracle (rich in bias-conflicting faces) or real (the "
    "real dataset's composition: CelebA's training proportions, those of BFFHQ's 0.5pct folder); "
    "needs --stand-in",
    choices=STAND_IN_VALIDATIONS,
    identity_at_default=False,  # the runs made before it existed read the oracle split
)


def check_stand_in_options(options: dict[str, Any]) -> dict[str, Any]:
    """Refuse a stand-in validation split asked for without the stand-in (real data has one)."""
    if options.get("stand_in_validation", "oracle") != "oracle" and not options["stand_in"]:
        raise ValueError(
            "stand_in_validation chooses between the stand-in's validation splits; real data "
            "has its own. Add --stand-in (stand_in=True), or leave the setting out."
        )
    return options


def image_name_parts(name: str, middle: str, options: Mapping[str, Any]) -> list[str]:
    """The run name's data part for an image-file dataset: ``name`` (``-standin`` for the
    stand-in), ``middle`` (what sets its bias), the image size if one was asked for, and
    ``realvalid`` for a stand-in read with its real-composition validation split."""
    parts = [name + ("-standin" if options["stand_in"] else ""), middle]
    if options["image_size"] is not None:
        parts.append(f"{options['image_size']}px")
    if options["stand_in"] and options.get("stand_in_validation") == "real":
        parts.append("realvalid")
    return parts


#: Decoded images are kept in memory (and cached on disk) when every split together fits in
#: this many bytes: the stand-ins and small real folders; full-size CelebA is decoded per epoch.
IMAGE_CACHE_BYTES = 2 * 2**30


@dataclass(frozen=True)
class ImagePipeline:
    """How one dataset's image files become training tensors, declared by the dataset's own
    module (nothing here knows a dataset by name).

    Attributes:
        name: names the decoded-image cache (with the size); change it when ``resize`` changes.
        resize: ``resize(size)``, the deterministic PIL steps that bring a file to ``size`` x
            ``size`` pixels (e.g. a centre crop, then a resize).
        crop_padding: ``crop_padding(size)``, the zero padding of the training random crop at
            that size (0: no random crop).
        flip: training adds a random horizontal flip.
    """

    name: str
    resize: Callable[[int], Any]
    crop_padding: Callable[[int], int] = lambda size: 0
    flip: bool = True

    def transforms(self, size: int, train: bool):
        """PIL image in, normalised ``(3, size, size)`` float tensor out (ImageNet statistics);
        with the training augmentation where ``train``."""
        T = compat.import_torchvision().transforms
        steps = [self.resize(size)]
        padding = self.crop_padding(size)
        if train and padding:
            steps.append(T.RandomCrop(size, padding=padding))
        if train and self.flip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def tensor_augmentation(self, size: int) -> TensorAugmentation:
        """The same training augmentation for images already decoded to uint8 tensors."""
        return TensorAugmentation(padding=self.crop_padding(size), flip=self.flip)


@dataclass(frozen=True)
class TensorAugmentation:
    """The baselines' training augmentation on a decoded ``(3, S, S)`` uint8 image: an optional
    random crop after zero padding, then (``flip``) a random horizontal flip (as torchvision's
    ``RandomCrop(S, padding)`` and ``RandomHorizontalFlip`` on the PIL image)."""

    padding: int = 0
    flip: bool = True

    def __call__(self, image: Tensor) -> Tensor:
        if self.padding:
            p, side = self.padding, image.shape[-1]
            padded = torch.nn.functional.pad(image, (p, p, p, p))
            i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
            image = padded[:, i : i + side, j : j + side]
        if not self.flip:
            return image
        return image.flip(-1) if torch.rand(1) < 0.5 else image


def decode_files(
    files: Sequence[str],
    pipeline: ImagePipeline,
    size: int,
    root: Path | None = None,
    desc: str = "decoding",
) -> Tensor:
    """``(N, 3, S, S)`` uint8: every file decoded (a damaged one stops here, named) and resized
    by ``pipeline.resize(size)``; cached under the data root, keyed by the files (names, sizes,
    modification times), the pipeline's name and the size."""
    digest = hashlib.sha256(f"{pipeline.name}|{size}".encode())
    for name in files:
        stat = os.stat(name)
        digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    cache = data_root(root) / "image-cache" / f"{digest.hexdigest()[:16]}.pt"

    def decode() -> Tensor:
        steps = pipeline.resize(size)
        pixels = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
        show = progress_enabled()
        for i, name in enumerate(
            tqdm(files, desc=desc, unit="image", disable=not show, leave=False)
        ):
            image = np.asarray(steps(read_image(name)), dtype=np.uint8)
            pixels[i] = torch.from_numpy(image.copy()).permute(2, 0, 1)
        return pixels

    def read(pixels: Any) -> Tensor:
        if not (isinstance(pixels, Tensor) and pixels.shape == (len(files), 3, size, size)):
            raise CorruptFileError(f"{cache} does not hold {len(files)} images of {size} pixels")
        return pixels

    return cached(cache, decode, read)


#: The end marker of each format whose files can be checked for truncation without decoding
#: them: JPEG's EOI marker, PNG's IEND chunk. Found within the last :data:`TAIL_BYTES` bytes (a
#: camera may append bytes after the marker).
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
TAIL_BYTES = 1024


def _check_header_and_end(name: str) -> None:
    """Open ``name``'s header (PIL's ``verify``) and, for JPEG and PNG, look for the format's end
    marker in the file's last bytes: a file cut off mid-way has a valid header and no end."""
    with open(name, "rb") as handle:
        with Image.open(handle) as image:
            kind = image.format
            image.verify()
        marker = END_MARKERS.get(kind or "")
        if marker is None:
            return
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(size - TAIL_BYTES, 0))
        if marker not in handle.read():
            raise OSError(f"the {kind} end marker is missing: the file is cut off")


def verify_files(files: Sequence[str], full: bool = False, desc: str = "checking images") -> None:
    """Check every image file before any training, so that a damaged file stops the run at once,
    named: ``full=False`` (quick) opens its header and, for JPEG and PNG, checks that the file
    ends with the format's end marker (a truncated copy has a valid header); ``full=True``
    decodes it.

    Raises:
        CorruptImageError: the first damaged file.
    """
    show = progress_enabled()
    for name in tqdm(files, desc=desc, unit="image", disable=not show, leave=False):
        if full:
            read_image(name)
            continue
        try:
            _check_header_and_end(name)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise CorruptImageError(
                f"cannot decode image {name} ({type(error).__name__}: {error}). The file is "
                "damaged or incomplete: delete it and copy or download it again (or delete the "
                "dataset folder and fetch the whole dataset)."
            ) from error


VERIFY_CHOICES = ("quick", "full", "off")
VERIFY_OPTION = Param(
    "verify",
    "quick",
    "check every image file before training, so that a damaged one stops the run at once: "
    "quick (headers, and the end marker of JPEG and PNG files), full (decode every file), "
    "off. Images small enough to be kept in memory "
    "are always decoded in full",
    choices=VERIFY_CHOICES,
)


def image_splits(
    parts: Mapping[str, tuple[list[str], Tensor, Tensor]],
    pipeline: ImagePipeline,
    size: int,
    *,
    num_classes: int = 2,
    workers: int = 0,
    root: Path | None = None,
    verify: str = "quick",
    keep_in_memory: bool | None = None,
) -> dict[str, ImageFileDataset]:
    """One :class:`ImageFileDataset` per split from ``(files, labels, bias labels)``, with the
    transforms of ``pipeline`` at ``size``. When every split fits in
    :data:`IMAGE_CACHE_BYTES` (or ``keep_in_memory`` is True), the images are decoded once
    (every file in full: the check) and kept; else (or when it is False) each file is checked
    (``verify``) before any training and decoded per item."""
    if verify not in VERIFY_CHOICES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_CHOICES)}, got {verify!r}")
    total = sum(len(files) for files, _, _ in parts.values()) * 3 * size * size
    keep = total <= IMAGE_CACHE_BYTES if keep_in_memory is None else keep_in_memory
    if not keep and verify != "off":
        every = [name for files, _, _ in parts.values() for name in files]
        verify_files(every, full=verify == "full")
    train_tf = pipeline.transforms(size, train=True)
    eval_tf = pipeline.transforms(size, train=False)
    out = {}
    for split, (files, labels, bias) in parts.items():
        pixels = (
            decode_files(files, pipeline, size, root, desc=f"decoding {split}") if keep else None
        )
        out[split] = ImageFileDataset(
            files,
            labels,
            bias,
            split,
            train_tf if split == "train" else eval_tf,
            eval_tf,
            num_classes=num_classes,
            loader_workers=workers,
            pixels=pixels,
            augment=pipeline.tensor_augmentation(size) if split == "train" else None,
        )
    return out


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` as an RGB PIL image.

    Raises:
        CorruptImageError: the file is missing, truncated or not an image (the message names it).
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() loads every pixel: truncation shows here
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise CorruptImageError(
            f"cannot decode image {path} ({type(error).__name__}: {error}). The file is damaged "
            "or incomplete: delete it and copy or download it again (or delete the dataset "
            "folder and fetch the whole dataset)."
        ) from error


class ImageFileDataset(Dataset):
    """Image files with a target label and a bias label.

    Attributes:
        files: the image paths (read once, when the dataset is built).
        labels, bias_labels: ``(N,)`` int64.
        split: ``train``, ``valid`` or ``test``.
        num_classes: number of target classes.
        transform: applied to each decoded PIL image.
        eval_transform: the same without augmentation (see :meth:`without_augmentation`).
        pixels: ``(N, 3, S, S)`` uint8 images decoded once (None: files are decoded per item
            with ``transform``); then ``augment`` is the training augmentation on them.
        loader_workers: DataLoader worker processes that
            :func:`pgd.datasets.base.batch_loader` uses.
    """

    batch_indexing = False
    eval_batch_size = 256  # large enough for a GPU, small enough for 224 x 224 activations

    def __init__(
        self,
        files: Sequence[str],
        labels: torch.Tensor,
        bias_labels: torch.Tensor,
        split: str,
        transform,
        eval_transform=None,
        num_classes: int = 2,
        loader_workers: int = 0,
        pixels: Tensor | None = None,
        augment: TensorAugmentation | None = None,
    ) -> None:
        if not len(files) == len(labels) == len(bias_labels):
            raise ValueError("files, labels and bias labels must have the same length")
        self.files = list(files)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.bias_labels = torch.as_tensor(bias_labels, dtype=torch.long)
        self.split = split
        self.transform = transform
        self.eval_transform = eval_transform if eval_transform is not None else transform
        self.num_classes = num_classes
        self.loader_workers = loader_workers
        self.pixels, self.augment = pixels, augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        if self.pixels is None:
            image = self.transform(read_image(self.files[index]))
        else:
            pixels = self.pixels[index]
            if self.augment is not None:
                pixels = self.augment(pixels)
            image = (pixels.float() / 255 - _MEAN) / _STD
        return image, self.labels[index], self.bias_labels[index], index

    @property
    def is_conflicting(self) -> torch.Tensor:
        """``(N,)`` bool: the bias label differs from the target label."""
        return self.labels != self.bias_labels

    def _copy(self, **changes) -> ImageFileDataset:
        fields = {
            "files": self.files,
            "labels": self.labels,
            "bias_labels": self.bias_labels,
            "split": self.split,
            "transform": self.transform,
            "eval_transform": self.eval_transform,
            "num_classes": self.num_classes,
            "loader_workers": self.loader_workers,
            "pixels": self.pixels,
            "augment": self.augment,
            **changes,
        }
        return ImageFileDataset(**fields)

    def head(self, n: int | None) -> ImageFileDataset:
        """The first ``n`` samples (all if ``n`` is None); the order is already random."""
        if n is None or n >= len(self):
            return self
        return self._copy(
            files=self.files[:n],
            labels=self.labels[:n],
            bias_labels=self.bias_labels[:n],
            pixels=self.pixels[:n] if self.pixels is not None else None,
        )

    def without_augmentation(self) -> ImageFileDataset:
        """The same samples with the evaluation transform (PGD scores the un-augmented images)."""
        return self._copy(transform=self.eval_transform, augment=None)


@dataclass
class ImageSplits(SplitsDefaults):
    """Train, validation and test splits of a real-world dataset, with how they were made.

    Attributes:
        train, valid, test: the splits.
        dataset: ``celeba`` or ``bffhq``.
        label: the dataset's name as the text spells it (``CelebA``).
        source: ``real`` or ``stand-in``.
        description: one line for provenance cells and result files.
        target, bias: names of the target and bias attributes.
        class_names, bias_names: names of their values 0 and 1 (neutral where the files do not
            say which is which).
        folder: where the files are.
        image_size: side of the square images fed to the model.
        official: real data with the file counts of the release (see :attr:`is_full`).
        official_counts: each split's size in the release (None: no release to compare with).
    """

    train: ImageFileDataset
    valid: ImageFileDataset
    test: ImageFileDataset
    dataset: str
    label: str
    source: str
    description: str
    target: str
    bias: str
    class_names: tuple[str, ...]
    bias_names: tuple[str, ...]
    folder: Path
    image_size: int
    seed: int = 0
    official: bool = False  # real data with the released file counts
    official_counts: dict[str, int] | None = None  # split -> its size in the release

    @property
    def is_full(self) -> bool:
        """The real dataset as released (a subset or a stand-in is not)."""
        return self.is_real and self.official

    @property
    def is_real(self) -> bool:
        return self.source == "real"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def ratio(self) -> float:
        """Share of bias-conflicting samples in the training split."""
        return float(self.train.is_conflicting.float().mean()) if len(self.train) else 0.0

    def summary(self) -> pd.DataFrame:
        """Samples per split and (target, bias) group, with the conflicting share per split."""
        rows = []
        for split in (self.train, self.valid, self.test):
            row: dict[str, object] = {"split": split.split, "samples": len(split)}
            for t, t_name in enumerate(self.class_names):
                for b, b_name in enumerate(self.bias_names):
                    mask = (split.labels == t) & (split.bias_labels == b)
                    row[f"{t_name} / {b_name}"] = int(mask.sum())
            row["conflicting share"] = float(split.is_conflicting.float().mean())
            rows.append(row)
        return pd.DataFrame(rows).set_index("split")

    def announce(self) -> None:
        """Print what the data is; a notice (once per process and dataset) when it is the
        stand-in."""
        if self.is_real:
            print_wrapped(f"data: {self.description}")
        else:
            name = self.label
            notice(
                f"Stand-in data, not {name}",
                f"{self.description}. Synthetic images in the real file layout, so that the "
                f"pipeline runs end to end; no number from them says anything about {name} "
                "itself.",
                key=f"stand-in: {self.dataset}",
            )

    def limit(self, max_train: int | None, max_eval: int | None) -> ImageSplits:
        """A copy keeping at most ``max_train`` training and ``max_eval`` other samples."""
        return replace(
            self,
            train=self.train.head(max_train),
            valid=self.valid.head(max_eval),
            test=self.test.head(max_eval),
        )


def shuffled(
    files: list[str], labels: torch.Tensor, bias: torch.Tensor, seed: int = 0
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The samples in one fixed random order, so that a prefix (``head``) keeps every group.

    The order is part of the dataset, not of an experiment: it depends on ``seed`` only.
    """
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))
    return [files[i] for i in order.tolist()], labels[order], bias[order]


def measure_loading(dataset: Dataset, batch_size: int = 64, batches: int = 4) -> float:
    """Images per second the input pipeline delivers (read, decode, transform; with the
    dataset's ``loader_workers``), over ``batches`` batches of random samples after one untimed
    batch. Compare with the model's throughput to see which one limits training."""
    sampler = torch.utils.data.RandomSampler(
        dataset, num_samples=(batches + 1) * batch_size, generator=torch.Generator().manual_seed(0)
    )
    loader = iter(batch_loader(dataset, batch_size, sampler))
    next(loader)
    began, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch[1])
    return seen / (time.perf_counter() - began)
