"""What the real-world datasets (CelebA, BFFHQ) share: a dataset of image files with a target and
a bias label, the transforms of the baselines, safe archive extraction, download diagnosis, and the
synthetic *stand-in* images used when the real data is not on the machine.

Every item is ``(image (3, S, S) float, label, bias_label, index)``, exactly like Colored MNIST,
so the same training loop, scores and metrics apply. The list of files is read once, when the
dataset is built; epochs decode the files (with PIL) but never search the disk again.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from . import _compat
from .runtime import loud_warning

#: ImageNet statistics, the normalisation of every ResNet-18 baseline (LfF, DFA, JTT).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Side of the square images the ResNet-18 sees on the real data, as in the baselines.
REAL_IMAGE_SIZE = 224
#: Side used with the synthetic stand-in unless asked otherwise: a CPU can train on it in minutes.
STAND_IN_IMAGE_SIZE = 64
#: File that marks a folder as written by a stand-in generator, never real data.
STAND_IN_MARKER = "PGD_STAND_IN.txt"
WORKERS_ENV = "PGD_WORKERS"


class CorruptImageError(RuntimeError):
    """An image file cannot be decoded; the message names the file."""


class UnsafeArchiveError(RuntimeError):
    """An archive holds a member that would land outside the extraction folder."""


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


def image_transforms(dataset: str, size: int, train: bool):
    """The baselines' preprocessing for ``dataset`` at ``size`` x ``size`` pixels.

    * ``celeba`` (LfF, JTT): centre crop 178 x 178 of the 178 x 218 aligned face, resize to
      ``size``; training adds a horizontal flip.
    * ``bffhq`` (DFA): resize to ``size`` x ``size``; training adds a random crop with 4-pixel
      padding (at 224, scaled with ``size``) and a horizontal flip.

    Both end with ``ToTensor`` and the ImageNet normalisation.
    """
    T = _compat.import_torchvision().transforms
    if dataset == "celeba":
        steps = [T.CenterCrop(178), T.Resize(size)]
        if train:
            steps.append(T.RandomHorizontalFlip())
    elif dataset == "bffhq":
        steps = [T.Resize((size, size))]
        if train:
            padding = max(1, round(4 * size / REAL_IMAGE_SIZE))
            steps += [T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip()]
    else:
        raise ValueError(f"no image transforms for dataset {dataset!r}")
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


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
        loader_workers: DataLoader worker processes that :func:`pgd.data.batch_loader` uses.
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

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = self.transform(read_image(self.files[index]))
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
            **changes,
        }
        return ImageFileDataset(**fields)

    def head(self, n: int | None) -> ImageFileDataset:
        """The first ``n`` samples (all if ``n`` is None); the order is already random."""
        if n is None or n >= len(self):
            return self
        return self._copy(
            files=self.files[:n], labels=self.labels[:n], bias_labels=self.bias_labels[:n]
        )

    def without_augmentation(self) -> ImageFileDataset:
        """The same samples with the evaluation transform (PGD scores the un-augmented images)."""
        return self._copy(transform=self.eval_transform)


def without_augmentation(dataset: Dataset) -> Dataset:
    """``dataset.without_augmentation()`` where the dataset has one, else ``dataset`` itself."""
    method = getattr(dataset, "without_augmentation", None)
    return method() if callable(method) else dataset


@dataclass
class ImageSplits:
    """Train, validation and test splits of a real-world dataset, with how they were made.

    Attributes:
        train, valid, test: the splits.
        dataset: ``celeba`` or ``bffhq``.
        source: ``real`` or ``stand-in``.
        description: one line for provenance cells and result files.
        target, bias: names of the target and bias attributes.
        class_names, bias_names: names of their values 0 and 1 (neutral where the files do not
            say which is which).
        folder: where the files are.
        image_size: side of the square images fed to the model.
    """

    train: ImageFileDataset
    valid: ImageFileDataset
    test: ImageFileDataset
    dataset: str
    source: str
    description: str
    target: str
    bias: str
    class_names: tuple[str, ...]
    bias_names: tuple[str, ...]
    folder: Path
    image_size: int
    seed: int = 0

    @property
    def is_real(self) -> bool:
        return self.source == "real"

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
        """Print what the data is; a banner when it is the stand-in."""
        if self.is_real:
            print(f"data: {self.description}")
        else:
            loud_warning(
                f"STAND-IN DATA, not {self.dataset}",
                f"data: {self.description}.",
                "Synthetic images in the real file layout, to run the pipeline end to end.",
                f"No number from it says anything about {self.dataset} itself.",
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


def is_stand_in(folder: Path) -> bool:
    """Whether ``folder`` was written by a stand-in generator (it holds the marker file)."""
    return (folder / STAND_IN_MARKER).is_file()


# ---------------------------------------------------------------------------------------------
# Archives and downloads


def _check_member(name: str, dest: Path) -> Path:
    target = (dest / name).resolve()
    if name.startswith(("/", "\\")) or ".." in Path(name).parts or not target.is_relative_to(dest):
        raise UnsafeArchiveError(
            f"archive member {name!r} would be written outside {dest}; refusing to extract it. "
            "The archive is not the one the dataset's authors distribute: download it again "
            "from the official link."
        )
    return target


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip or tar archive into ``dest``, refusing any member that would escape it
    (absolute paths, ``..``, links, devices). Members are extracted into a temporary folder
    beside ``dest`` first and moved into place at the end, so an interrupted extraction leaves
    nothing half-written in ``dest``.

    Raises:
        UnsafeArchiveError: a member's path escapes ``dest`` or is a link or device.
        DownloadError: the archive is damaged or not an archive (see :func:`diagnose_download`).
    """
    archive, dest = Path(archive), Path(dest).resolve()
    problem = diagnose_download(archive)
    if problem is not None:
        raise DownloadError(problem)
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _check_member(info.filename, staging.resolve())
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode == 0o120000:
                        raise UnsafeArchiveError(f"archive member {info.filename!r} is a link")
                z.extractall(staging)
        else:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for member in members:
                    _check_member(member.name, staging.resolve())
                    if not (member.isfile() or member.isdir()):
                        raise UnsafeArchiveError(
                            f"archive member {member.name!r} is a link or device; refusing it"
                        )
                t.extractall(staging, members=members)  # members checked above
        for item in staging.iterdir():
            target = dest / item.name
            if target.exists():
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            shutil.move(str(item), str(target))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        raise DownloadError(
            f"{archive} could not be extracted ({type(error).__name__}: {error}); it is damaged "
            "or incomplete: delete it and download it again."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


class DownloadError(RuntimeError):
    """A downloaded file is not what it should be; the message says what to do next."""


def diagnose_download(path: str | os.PathLike, expected_size: int | None = None) -> str | None:
    """What is wrong with a downloaded archive, in words, or None if it looks right.

    Recognises the Google Drive quota / warning page saved in place of the file (an HTML page),
    an empty or truncated zip or tar file, and a size different from ``expected_size``.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path} does not exist"
    size = path.stat().st_size
    if size == 0:
        return f"{path} is empty: the download did not start. Delete it and try again."
    with open(path, "rb") as file:
        head = file.read(2048).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:512]:
        quota = b"quota" in head or b"too many users" in head
        with open(path, "rb") as file:
            quota = quota or b"quota" in file.read(1 << 20).lower()
        why = (
            "Google Drive's 'download quota exceeded' page"
            if quota
            else "an HTML page (Google Drive's warning or sign-in page)"
        )
        return (
            f"{path} is {why}, not the archive. Google Drive limits how often a public file can "
            "be downloaded per day. Delete the file and either try again tomorrow, or download "
            "the archive in a browser (or from a mirror such as Kaggle) and put it, or the "
            "folder extracted from it, into the data folder."
        )
    if expected_size is not None and size != expected_size:
        return (
            f"{path} has {size:,} bytes, expected {expected_size:,}: the download is incomplete "
            "or a different file. Delete it and download it again."
        )
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                z.infolist()
        except zipfile.BadZipFile as error:
            return f"{path} is a damaged zip file ({error}). Delete it and download it again."
        return None
    if path.suffix == ".zip" or head.startswith(b"pk"):
        return (
            f"{path} is not a complete zip file (truncated download?). Delete it and download "
            "it again."
        )
    try:
        with tarfile.open(path) as t:
            t.getmembers()
    except (tarfile.TarError, EOFError, OSError) as error:
        return (
            f"{path} is neither a zip nor a complete tar archive ({error}). Delete it and "
            "download it again."
        )
    return None


# ---------------------------------------------------------------------------------------------
# Stand-in images

#: Background colours of the two bias values (warm, cool): the strong, easy, spurious cue.
_BIAS_COLOURS = np.array([[0.85, 0.55, 0.40], [0.40, 0.55, 0.85]])


def render_stand_in(
    target: int, bias: int, height: int, width: int, rng: np.random.Generator
) -> Image.Image:
    """One synthetic stand-in image.

    The bias attribute sets the background colour (warm or cool, jittered): large and easy.
    The target attribute sets the shape of a grey object in the middle (a disc for 0, a square
    for 1), with random size and position: smaller and harder. A network trained on aligned
    samples can therefore succeed by colour alone, as a biased face classifier succeeds by gender.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    colour = _BIAS_COLOURS[bias] + rng.uniform(-0.08, 0.08, 3)
    image = np.broadcast_to(colour, (height, width, 3)).copy()
    side = min(height, width)
    radius = side * rng.uniform(0.18, 0.26)
    cy = height / 2 + rng.uniform(-0.12, 0.12) * side
    cx = width / 2 + rng.uniform(-0.12, 0.12) * side
    if target == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    else:
        half = radius * 0.886  # same area as the disc
        mask = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    image[mask] = rng.uniform(0.55, 0.75)
    image += rng.normal(0.0, 0.05, image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def stand_in_groups(
    counts: dict[tuple[int, int], int], rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``(target, bias)`` pairs with the given count per group, in random order."""
    pairs = [group for group, n in counts.items() for _ in range(n)]
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


def stand_in_folder(folder: str | os.PathLike, settings: dict, write) -> Path:
    """Write a stand-in dataset into ``folder`` once: reuse it if its marker records the same
    ``settings``; else call ``write(staging_folder)`` on a fresh folder beside it, add the marker,
    and swap it into place (an interrupted generation never leaves a half-written stand-in).

    Raises:
        FileExistsError: ``folder`` exists, is not empty and is not a stand-in (real data is
            never overwritten).
    """
    folder = Path(folder)
    marker = folder / STAND_IN_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text().split("\n", 1)[1]) == settings:
                return folder
        except (IndexError, json.JSONDecodeError):
            pass
    if folder.exists() and not marker.is_file() and any(folder.iterdir()):
        raise FileExistsError(
            f"{folder} holds files but is not a stand-in written by pgd; refusing to overwrite "
            "it. Choose another folder."
        )
    staging = folder.parent / f".{folder.name}.writing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    (staging / STAND_IN_MARKER).write_text(
        f"Synthetic stand-in for {settings.get('dataset')} written by pgd: not real data.\n"
        + json.dumps(settings)
    )
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder


def measure_loading(dataset: Dataset, batch_size: int = 64, batches: int = 4) -> float:
    """Images per second the input pipeline delivers (read, decode, transform; with the
    dataset's ``loader_workers``), over ``batches`` batches of random samples after one untimed
    batch. Compare with the model's throughput to see which one limits training."""
    import time

    from .data import batch_loader

    sampler = torch.utils.data.RandomSampler(
        dataset, num_samples=(batches + 1) * batch_size, generator=torch.Generator().manual_seed(0)
    )
    loader = iter(batch_loader(dataset, batch_size, sampler))
    next(loader)
    began, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch[1])
    return seen / (time.perf_counter() - began)
