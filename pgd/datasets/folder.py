"""Your own images as a dataset: a folder of class folders, and optionally what you know of a bias.

Layout (class names are the folder names, any text)::

    DIR/train/<class>/*.png|*.jpg|*.jpeg    required; any size, any mode (loaded as RGB)
    DIR/valid/<class>/*                     optional; else a seeded, stratified 10% of train
    DIR/test/<class>/*                      optional; needed to report test accuracy
    DIR/bias.csv                            optional; columns path,bias

``bias.csv`` names, for every image (``path`` relative to ``DIR``, e.g. ``train/cat/001.png``),
the value of an attribute you suspect the model may lean on (a background, a device, a site...).
It is used **only for evaluation**: group accuracies, the sampling mass on bias-conflicting images,
how well PGD's score finds them. Training and model selection never read it. Each bias value is
matched to the class it goes with most often in the training split; an image is
*bias-conflicting* when its class is another one (or when its bias value never occurs in
training).

The folder is listed once. Every image is decoded once (PIL, resized to ``image_size`` x
``image_size``), checked on the way (a damaged file stops the run at once, named), and kept in
memory as ``uint8``; the decoded tensors are cached under the data root, keyed by the listing
(names, sizes, modification times) and the size, so a second run starts at once.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..core.runtime import data_root, print_wrapped, progress_enabled
from ..core.storage import CorruptFileError, cached
from .base import DataRequest, DatasetSpec, DataUnavailableError, SplitsDefaults
from .images import IMAGE_SIZE_OPTION, IMAGENET_MEAN, IMAGENET_STD, read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "valid", "test")
#: Side of the images when no ``image_size`` is given.
DEFAULT_IMAGE_SIZE = 32
#: Share of each class moved from train to valid when there is no ``valid`` folder.
VALID_FRACTION = 0.1
BIAS_FILE = "bias.csv"
_CACHE_VERSION = 1


class FolderError(DataUnavailableError):
    """The image folder is not laid out as expected; the message says what to change."""


@dataclass(frozen=True)
class Listing:
    """What the folder holds: per split, ``(path relative to DIR, class index)`` pairs."""

    folder: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]

    def key(self, image_size: int) -> str:
        """A hash of the listing (names, sizes, modification times) and the image size."""
        digest = hashlib.sha256(f"{_CACHE_VERSION}|{image_size}|{self.classes}".encode())
        for split in SPLITS:
            for rel, label in self.files.get(split, []):
                stat = (self.folder / rel).stat()
                digest.update(f"{split}|{rel}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]


def _images_in(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if e.is_file()
            and e.name.lower().endswith(IMAGE_SUFFIXES)
            and not e.name.startswith(".")
        )


def scan_folder(folder: str | os.PathLike) -> Listing:
    """List ``folder``'s images (once), checking the layout.

    Raises:
        FolderError: no ``train`` folder, fewer than two classes, an empty class folder, or a
            class in ``valid``/``test`` that ``train`` does not have (each named).
    """
    folder = Path(folder).expanduser()
    train = folder / "train"
    if not train.is_dir():
        raise FolderError(
            f"{folder} has no train/ folder. Lay out your images as {folder}/train/<class>/*.png "
            "(one folder per class; optional valid/ and test/ alike, optional bias.csv)."
        )
    with os.scandir(train) as entries:
        classes = tuple(
            sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        )
    if len(classes) < 2:
        raise FolderError(
            f"{train} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}): a "
            "classifier needs at least two classes, one folder each."
        )
    files: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        where = folder / split
        if not where.is_dir():
            continue
        with os.scandir(where) as entries:
            present = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        unknown = [c for c in present if c not in classes]
        if unknown:
            raise FolderError(
                f"{where} has class folder(s) {', '.join(map(repr, unknown))} that train/ does "
                f"not have ({', '.join(map(repr, classes))}): give every split the same classes."
            )
        rows = []
        for label, name in enumerate(classes):
            if not (where / name).is_dir():
                continue
            images = _images_in(where / name)
            if not images and split == "train":
                raise FolderError(
                    f"class folder {where / name} holds no image ({', '.join(IMAGE_SUFFIXES)}): "
                    "add images or remove the folder."
                )
            rows += [(f"{split}/{name}/{image}", label) for image in images]
        files[split] = rows
    return Listing(folder, classes, files)


def read_bias_file(folder: Path, paths: set[str]) -> dict[str, str]:
    """``{path: bias value}`` from ``folder/bias.csv``, checked against the images listed.

    Raises:
        FolderError: missing columns, a duplicate path, a path that is not an image of the folder,
            or images without a row (each named, with how many).
    """
    path = folder / BIAS_FILE
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        if not {"path", "bias"} <= set(columns):
            raise FolderError(
                f"{path} must have the columns path,bias (found: {', '.join(columns) or 'none'}); "
                "one row per image, path relative to the folder, e.g. train/cat/001.png,indoor"
            )
        rows = [
            (row["path"].strip().replace("\\", "/"), (row["bias"] or "").strip()) for row in reader
        ]
    counts = Counter(p for p, _ in rows)
    duplicates = [p for p, n in counts.items() if n > 1]
    if duplicates:
        raise FolderError(
            f"{path} lists {len(duplicates)} path(s) more than once, e.g. {duplicates[0]!r}: "
            "give each image one row."
        )
    strangers = [p for p, _ in rows if p not in paths]
    if strangers:
        raise FolderError(
            f"{path} names {len(strangers)} path(s) that are not images of {folder}, e.g. "
            f"{strangers[0]!r}: paths are relative to the folder (train/<class>/<file>)."
        )
    values = dict(rows)
    missing = sorted(paths - set(values))
    if missing:
        raise FolderError(
            f"{path} has no row for {len(missing)} image(s), e.g. {missing[0]!r}: give every "
            "image its bias value (or remove bias.csv to run without one)."
        )
    return values


def _decode(folder: Path, rels: list[str], size: int, desc: str) -> Tensor:
    """``(N, 3, size, size)`` uint8: every image read (RGB), resized, checked."""
    out = torch.empty(len(rels), 3, size, size, dtype=torch.uint8)
    show = progress_enabled()
    for i, rel in enumerate(tqdm(rels, desc=desc, unit="image", disable=not show, leave=False)):
        image = read_image(folder / rel)  # CorruptImageError names the file
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def decode_images(listing: Listing, size: int, root: Path | None = None) -> dict[str, Tensor]:
    """Every split's images, decoded once and cached under the data root (checked on load)."""
    cache = data_root(root) / "folder-cache" / f"{listing.key(size)}.pt"

    def decode() -> dict[str, Tensor]:
        return {
            split: _decode(listing.folder, [rel for rel, _ in rows], size, f"decoding {split}")
            for split, rows in listing.files.items()
        }

    def read(blob: Any) -> dict[str, Tensor]:
        if set(blob) != set(listing.files):
            raise CorruptFileError(f"{cache} holds the splits {sorted(blob)}")
        return blob

    return cached(cache, decode, read)


class FolderImages(Dataset):
    """One split of an image folder, decoded: items ``(image (3, S, S) float, label,
    bias_label, index)``, normalised with ImageNet's statistics. Whole batches are fetched in one
    call (``batch_indexing``), as for Colored MNIST.

    Attributes:
        images: ``(N, 3, S, S)`` uint8. labels, bias_labels: ``(N,)`` int64. paths: relative to
        the folder. split: ``train``, ``valid`` or ``test``.
    """

    batch_indexing = True

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        bias_labels: Tensor,
        paths: list[str],
        split: str,
        num_classes: int,
    ) -> None:
        self.images, self.labels, self.bias_labels = images, labels, bias_labels
        self.paths, self.split, self.num_classes = list(paths), split, num_classes
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        idx = torch.as_tensor(index, dtype=torch.long)
        images = (self.images[idx].float() / 255 - self._mean) / self._std
        return images, self.labels[idx], self.bias_labels[idx], idx

    @property
    def is_conflicting(self) -> Tensor:
        """``(N,)`` bool: the image's bias value goes with another class."""
        return self.labels != self.bias_labels

    def head(self, n: int | None) -> FolderImages:
        """The first ``n`` images (all if None); the order is already random."""
        if n is None or n >= len(self):
            return self
        return FolderImages(
            self.images[:n],
            self.labels[:n],
            self.bias_labels[:n],
            self.paths[:n],
            self.split,
            self.num_classes,
        )


@dataclass
class FolderSplits(SplitsDefaults):
    """An image folder's train, validation and test splits, and what is known of its bias.

    Attributes:
        has_bias: ``bias.csv`` was there (else bias labels equal the labels: nothing is known).
        bias_values: the bias value behind each image, per split (None without ``bias.csv``).
        aligned_class: bias value -> the class it goes with most often in training.
        valid_note: how the validation split was made.
    """

    train: FolderImages
    valid: FolderImages
    test: FolderImages
    folder: Path
    class_names: tuple[str, ...]
    image_size: int
    has_bias: bool
    source: str
    description: str
    valid_note: str
    seed: int = 0
    bias_values: dict[str, list[str]] | None = None
    aligned_class: dict[str, int] | None = None

    dataset = "folder"
    is_full = True  # the user's whole folder

    @property
    def ratio(self) -> float:
        """Share of bias-conflicting training images (NaN without ``bias.csv``)."""
        if not self.has_bias:
            return float("nan")
        return float(self.train.is_conflicting.float().mean())

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def summary(self) -> pd.DataFrame:
        """Images per split and class (and bias-conflicting ones, with ``bias.csv``)."""
        rows = []
        for split in (self.train, self.valid, self.test):
            row: dict[str, object] = {"split": split.split, "images": len(split)}
            for label, name in enumerate(self.class_names):
                row[name] = int((split.labels == label).sum())
            if self.has_bias:
                row["bias-conflicting"] = int(split.is_conflicting.sum())
            rows.append(row)
        return pd.DataFrame(rows).set_index("split")

    def announce(self) -> None:
        print_wrapped(f"data: {self.description}")

    def limit(self, max_train: int | None, max_eval: int | None) -> FolderSplits:
        """A copy keeping at most ``max_train`` training and ``max_eval`` other images."""
        keep = {"train": max_train, "valid": max_eval, "test": max_eval}
        values = None
        if self.bias_values is not None:
            values = {split: v[: keep[split]] for split, v in self.bias_values.items()}
        return replace(
            self,
            train=self.train.head(max_train),
            valid=self.valid.head(max_eval),
            test=self.test.head(max_eval),
            bias_values=values,
        )


def _stratified_split(
    rows: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(train, valid)``: ``fraction`` of each class (at least one image where the class has
    two or more) moved to valid, chosen with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    keep, moved = [], []
    labels = sorted({label for _, label in rows})
    for label in labels:
        members = [r for r in rows if r[1] == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        n = round(fraction * len(members)) if len(members) > 1 else 0
        n = max(n, 1) if len(members) > 1 else 0
        moved += [members[i] for i in order[:n]]
        keep += [members[i] for i in order[n:]]
    return keep, moved


def load_folder(
    folder: str | os.PathLike,
    *,
    image_size: int | None = None,
    root: str | os.PathLike | None = None,
    order_seed: int = 0,
) -> FolderSplits:
    """The image folder ``folder`` as :class:`FolderSplits` (see the module docstring).

    Args:
        image_size: side the images are resized to (default :data:`DEFAULT_IMAGE_SIZE`).
        root: data root for the decoded-image cache (default ``$PGD_DATA``).
        order_seed: seed of the validation split (when there is no ``valid``) and of the one
            fixed shuffle of every split.

    Raises:
        FolderError: a layout problem (see :func:`scan_folder`, :func:`read_bias_file`).
        CorruptImageError: an image cannot be decoded (named).
    """
    listing = scan_folder(folder)
    size = image_size or DEFAULT_IMAGE_SIZE
    files = dict(listing.files)
    if files.get("valid"):
        valid_note = "valid/ folder"
    else:
        files["train"], files["valid"] = _stratified_split(
            files["train"], VALID_FRACTION, order_seed
        )
        valid_note = (
            f"no valid/ folder: {100 * VALID_FRACTION:g}% of each training class, chosen with "
            f"seed {order_seed}"
        )
    files.setdefault("test", [])
    listing = Listing(listing.folder, listing.classes, files)
    every = {rel for rows in files.values() for rel, _ in rows}
    has_bias = (listing.folder / BIAS_FILE).is_file()
    values = read_bias_file(listing.folder, every) if has_bias else {}
    aligned: dict[str, int] = {}
    if has_bias:
        pairs = Counter((values[rel], label) for rel, label in files["train"])
        for value in sorted({v for v, _ in pairs}):
            aligned[value] = max(
                (n, -label, label) for (v, label), n in pairs.items() if v == value
            )[2]
    decoded = decode_images(listing, size, Path(root) if root is not None else None)
    splits, bias_values = {}, {}
    for split in SPLITS:
        rows = files[split]
        labels = torch.tensor([label for _, label in rows], dtype=torch.long)
        if has_bias:
            raw = [values[rel] for rel, _ in rows]
            bias = torch.tensor([aligned.get(v, -1) for v in raw], dtype=torch.long)
        else:
            raw, bias = None, labels.clone()
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(order_seed))
        splits[split] = FolderImages(
            decoded[split][order],
            labels[order],
            bias[order],
            [rows[i][0] for i in order.tolist()],
            split,
            len(listing.classes),
        )
        if raw is not None:
            bias_values[split] = [raw[i] for i in order.tolist()]
    counts = {s: len(d) for s, d in splits.items()}
    name = listing.folder.resolve().name
    identity = hashlib.sha256(str(listing.folder.resolve()).encode()).hexdigest()[:6]
    bias_text = (
        f", bias.csv: {len(aligned)} bias values, "
        f"{int(splits['train'].is_conflicting.sum()):,} bias-conflicting training images"
        if has_bias
        else ", no bias.csv"
    )
    description = (
        f"image folder {name!r} ({len(listing.classes)} classes; {counts['train']:,} / "
        f"{counts['valid']:,} / {counts['test']:,} images; {valid_note}{bias_text}), "
        f"{size}x{size} pixels"
    )
    return FolderSplits(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        folder=listing.folder,
        class_names=listing.classes,
        image_size=size,
        has_bias=has_bias,
        source=f"{name}-{identity}",
        description=description,
        valid_note=valid_note,
        seed=order_seed,
        bias_values=bias_values or None,
        aligned_class=aligned or None,
    )


def build(request: DataRequest) -> FolderSplits:
    """The registry's builder: the folder given as the data root (``--data-root DIR``)."""
    if request.root is None:
        raise FolderError(
            "the folder dataset reads the folder given as the data root: pass it with "
            "--data-root DIR (Python: load_data(config, DIR)), DIR holding train/<class>/*"
        )
    return load_folder(request.root, image_size=request.options["image_size"])


def _name_parts(ratio: float | None, options: Mapping[str, Any], source: str | None) -> list[str]:
    size = options["image_size"] or DEFAULT_IMAGE_SIZE
    return ["folder", source or "unscanned", f"{size}px"]


SPEC = DatasetSpec(
    name="folder",
    label="the image folder",
    title="your own images: DIR/train/<class>/*, optional valid/, test/, bias.csv",
    build=build,
    sources=("the folder given with --data-root",),
    stand_in=False,
    default_model="cnn",
    default_ratio=None,
    options=(IMAGE_SIZE_OPTION,),
    name_parts=_name_parts,
)


def write_image_folder(
    out: str | os.PathLike,
    splits: Mapping[str, tuple[Tensor, Tensor]],
    class_names: tuple[str, ...],
    bias: Mapping[str, list[str]] | None = None,
) -> Path:
    """Write images as an image folder: ``splits`` maps ``train``/``valid``/``test`` to
    ``(images (N, C, H, W) uint8, labels (N,))``; ``bias`` (optional) maps each split to one
    bias value per image, written to ``bias.csv``. PNG files named ``<split>_<index>.png``.

    Raises:
        FileExistsError: ``out`` exists and is not empty (nothing is overwritten).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder (nothing was written)")
    rows = []
    for split, (images, labels) in splits.items():
        for name in class_names:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        pixels = images.permute(0, 2, 3, 1).numpy()
        for i, (image, label) in enumerate(zip(pixels, labels.tolist(), strict=True)):
            rel = f"{split}/{class_names[label]}/{split}_{i:05d}.png"
            Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(out / rel)
            if bias is not None:
                rows.append((rel, bias[split][i]))
    if bias is not None:
        with open(out / BIAS_FILE, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "bias"])
            writer.writerows(rows)
    return out
