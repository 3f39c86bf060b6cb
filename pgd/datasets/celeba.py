"""CelebA (Liu et al., 2015) as a biased classification task: a target attribute (default
``Blond_Hair``) that correlates with a bias attribute (default ``Male``) in the official
train / valid / test partition.

Where the files come from does not matter, only their layout. Two layouts are read:

* the official one, which torchvision's download also writes (``<root>/celeba/``)::

      img_align_celeba/000001.jpg ...       178 x 218 aligned faces, JPEG
      list_attr_celeba.txt                  line 1: count; line 2: the 40 attribute names;
                                            then "<file> -1  1 ..." (1 = present, -1 = absent)
      list_eval_partition.txt               "<file> <0|1|2>" (train, valid, test)

* Kaggle's (``jessicali9530/celeba-dataset``): ``img_align_celeba/img_align_celeba/*.jpg``,
  ``list_attr_celeba.csv`` (header ``image_id,5_o_Clock_Shadow,...``) and
  ``list_eval_partition.csv`` (header ``image_id,partition``).

:func:`prepare_celeba` finds the folder, extracts ``img_align_celeba.zip`` or a Kaggle archive
if that is what is there (safely), or downloads with torchvision, and explains what to do when
Google Drive answers with its quota page instead of the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core import compat
from ..core.params import Param
from ..core.runtime import data_root
from .archives import DownloadError, diagnose_download, safe_extract
from .base import DataRequest, DatasetSpec, DataUnavailableError
from .images import (
    IMAGE_SIZE_OPTION,
    REAL_IMAGE_SIZE,
    STAND_IN_IMAGE_SIZE,
    STAND_IN_OPTION,
    ImageFileDataset,
    ImageSplits,
    image_name_parts,
    image_transforms,
    loader_workers,
    shuffled,
)
from .standins import is_stand_in, render_stand_in, stand_in_folder, stand_in_groups

DEFAULT_TARGET = "Blond_Hair"
DEFAULT_BIAS = "Male"
#: Images and partition sizes of the official release.
OFFICIAL_COUNTS = {"all": 202_599, "train": 162_770, "valid": 19_867, "test": 19_962}
PARTITIONS = {"train": 0, "valid": 1, "test": 2}
KAGGLE_ARCHIVES = ("celeba-dataset.zip", "archive.zip")
HOW_TO_GET = (
    "How to get CelebA: (1) prepare_celeba(download=True) (command line: add --download) tries "
    "torchvision's Google Drive download, which often hits Google's daily quota; (2) download "
    "it from Kaggle (kaggle datasets download -d jessicali9530/celeba-dataset, or the website) "
    "and put the zip or its extracted content in {folder}; (3) on Colab, copy the files to your "
    "Google Drive once and point the data folder there. The folder needs img_align_celeba/ "
    "(the .jpg faces), list_attr_celeba.txt (or .csv) and list_eval_partition.txt (or .csv)."
)
_STAND_IN_VERSION = 1


def _candidates(root: Path) -> list[Path]:
    return [root / "celeba", root, root / "celeba-dataset"]


def find_celeba_folder(root: str | os.PathLike | None = None) -> Path | None:
    """The folder holding CelebA's attribute file under ``root`` (official or Kaggle), or None."""
    root = data_root(root)
    for folder in _candidates(root):
        if (folder / "list_attr_celeba.txt").is_file() or (
            folder / "list_attr_celeba.csv"
        ).is_file():
            return folder
    return None


def _image_dir(folder: Path) -> Path:
    nested = folder / "img_align_celeba" / "img_align_celeba"  # Kaggle
    return nested if nested.is_dir() else folder / "img_align_celeba"


def read_attributes(folder: str | os.PathLike) -> pd.DataFrame:
    """The attribute table: one row per image file name, one 0/1 column per attribute.

    Raises:
        DataUnavailableError: the file is missing or not in either known format.
    """
    folder = Path(folder)
    txt, csv = folder / "list_attr_celeba.txt", folder / "list_attr_celeba.csv"
    try:
        if txt.is_file():
            with open(txt) as file:
                file.readline()  # the number of images
                names = file.readline().split()
            table = pd.read_csv(txt, sep=r"\s+", skiprows=2, header=None, index_col=0)
            if table.shape[1] != len(names):
                raise ValueError(f"{table.shape[1]} value columns but {len(names)} attribute names")
            table.columns = names
        elif csv.is_file():
            table = pd.read_csv(csv, index_col=0)
        else:
            raise FileNotFoundError(f"neither {txt.name} nor {csv.name} is in {folder}")
        values = table.to_numpy()
        if not np.isin(values, (-1, 1)).all():
            raise ValueError("attribute values must be 1 or -1")
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DataUnavailableError(
            f"the CelebA attribute file in {folder} cannot be read ({error}). "
            + HOW_TO_GET.format(folder=folder)
        ) from error
    table.index = table.index.astype(str)
    return (table == 1).astype(np.int64)


def read_partition(folder: str | os.PathLike) -> pd.Series:
    """The official split of every image: 0 train, 1 valid, 2 test, indexed by file name."""
    folder = Path(folder)
    txt, csv = folder / "list_eval_partition.txt", folder / "list_eval_partition.csv"
    try:
        if txt.is_file():
            part = pd.read_csv(txt, sep=r"\s+", header=None, index_col=0).iloc[:, 0]
        elif csv.is_file():
            part = pd.read_csv(csv, index_col=0).iloc[:, 0]
        else:
            raise FileNotFoundError(f"neither {txt.name} nor {csv.name} is in {folder}")
        if not part.isin((0, 1, 2)).all():
            raise ValueError("partition values must be 0, 1 or 2")
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DataUnavailableError(
            f"the CelebA partition file in {folder} cannot be read ({error}). "
            + HOW_TO_GET.format(folder=folder)
        ) from error
    part.index = part.index.astype(str)
    return part.astype(np.int64)


def verify_official_files(folder: str | os.PathLike) -> list[str]:
    """Compare the official text files in ``folder`` with torchvision's MD5 checksums when they
    claim to be the full release (202,599 images); warn about each mismatch and return the names
    of the files that differ. Other folders (Kaggle's CSV files, subsets, the stand-in) are not
    checked."""
    folder = Path(folder)
    attributes = folder / "list_attr_celeba.txt"
    if not attributes.is_file():
        return []
    with open(attributes) as file:
        first = file.readline().strip()
    if first != str(OFFICIAL_COUNTS["all"]):
        return []
    datasets = compat.import_torchvision().datasets
    differ = []
    for _file_id, md5, name in datasets.CelebA.file_list:
        path = folder / name
        if name.endswith(".txt") and path.is_file():
            if not datasets.utils.check_integrity(str(path), md5):
                differ.append(name)
    if differ:
        warnings.warn(
            f"{', '.join(differ)} in {folder} differ from the official release (MD5 checksum): "
            "the files may be damaged or edited. Download them again if results look wrong.",
            stacklevel=2,
        )
    return differ


def check_attribute(name: str, available: list[str], role: str) -> str:
    """``name`` if it is a CelebA attribute, else a ValueError listing the valid ones."""
    if name in available:
        return name
    lowered = {a.lower(): a for a in available}
    hint = f" (did you mean {lowered[name.lower()]!r}?)" if name.lower() in lowered else ""
    raise ValueError(
        f"unknown CelebA {role} attribute {name!r}{hint}; choose one of: {', '.join(available)}"
    )


def download_celeba(root: str | os.PathLike | None = None) -> Path:
    """Download CelebA with torchvision (Google Drive; checksums verified by torchvision) into
    ``<root>/celeba`` and return that folder.

    Raises:
        DownloadError: the download failed; the message says why (Google Drive's quota page
            saved instead of the zip, a truncated zip, no connection) and what to do next.
    """
    root = data_root(root)
    datasets = compat.import_torchvision().datasets
    try:
        datasets.CelebA(str(root), split="all", target_type="attr", download=True)
    except Exception as error:  # torchvision raises RuntimeError, OSError, BadZipFile, URLError
        archive = root / "celeba" / "img_align_celeba.zip"
        problem = diagnose_download(archive) if archive.exists() else None
        detail = problem or f"{type(error).__name__}: {error}"
        raise DownloadError(
            f"CelebA could not be downloaded: {detail}\n"
            + HOW_TO_GET.format(folder=root / "celeba")
        ) from error
    return root / "celeba"


def _extract_archives(root: Path) -> Path | None:
    """Extract a CelebA archive found under ``root``; return the folder it gave, if any."""
    official = root / "celeba" / "img_align_celeba.zip"
    if official.is_file() and (
        (root / "celeba" / "list_attr_celeba.txt").is_file()
        and not (root / "celeba" / "img_align_celeba").is_dir()
    ):
        safe_extract(official, root / "celeba")
        return root / "celeba"
    for name in KAGGLE_ARCHIVES:
        for folder in (root, root / "celeba"):
            if (folder / name).is_file():
                safe_extract(folder / name, root / "celeba")
                return find_celeba_folder(root)
    return None


def prepare_celeba(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The CelebA folder under ``root``: found, extracted from an archive there, or (with
    ``download``) downloaded. Raises DataUnavailableError or DownloadError saying what to do."""
    root = data_root(root)
    folder = find_celeba_folder(root)
    if folder is not None and (
        _image_dir(folder).is_dir() or not (folder / "img_align_celeba.zip").is_file()
    ):
        return folder
    extracted = _extract_archives(root)
    if extracted is not None:
        return extracted
    if download:
        return download_celeba(root)
    raise DataUnavailableError(
        f"CelebA is not in {root} (looked for list_attr_celeba.txt or .csv in "
        f"{', '.join(str(c) for c in _candidates(root))}). "
        + HOW_TO_GET.format(folder=root / "celeba")
    )


def load_celeba(
    root: str | os.PathLike | None = None,
    *,
    target: str = DEFAULT_TARGET,
    bias: str = DEFAULT_BIAS,
    image_size: int | None = None,
    stand_in: bool = False,
    download: bool = False,
    workers: int = 0,
    order_seed: int = 0,
) -> ImageSplits:
    """CelebA's official partition as :class:`~pgd.datasets.images.ImageSplits` of (image,
    target, bias).

    The bias label is oriented so that a sample is bias-aligned when its bias label equals its
    target label: if the two attributes are negatively correlated in the training split (blond
    hair and male are), the bias label is 1 - attribute, and ``bias_names`` say so. CelebA's
    usual metrics, average and worst-group accuracy, do not depend on this orientation.

    Args:
        root: data root (default ``$PGD_DATA`` or ``~/.cache/pgd``).
        target, bias: attribute names (``list_attr_celeba`` header).
        image_size: side of the model's input (default 224; 64 for the stand-in).
        stand_in: use (and write if needed) the synthetic stand-in in ``<root>/stand-in/celeba``.
        download: try torchvision's download when the files are not there.
        workers: DataLoader worker processes for these datasets.
        order_seed: seed of the one fixed shuffle of every split (so prefixes keep every group).

    Raises:
        DataUnavailableError: files missing or incomplete (says how many, and how to get them).
        ValueError: unknown attribute name (lists the valid ones), or target == bias.
    """
    root = data_root(root)
    if stand_in:
        folder = write_celeba_stand_in(root / "stand-in" / "celeba", target=target, bias=bias)
    else:
        folder = prepare_celeba(root, download=download)
    if not stand_in:
        verify_official_files(folder)
    attributes = read_attributes(folder)
    names = list(attributes.columns)
    target = check_attribute(target, names, "target")
    bias = check_attribute(bias, names, "bias")
    if target == bias:
        raise ValueError(f"the target and bias attributes must differ, both are {target!r}")
    partition = read_partition(folder)
    missing_rows = partition.index.difference(attributes.index)
    if len(missing_rows):
        raise DataUnavailableError(
            f"{len(missing_rows)} images of list_eval_partition have no row in the attribute "
            f"file of {folder} (e.g. {missing_rows[0]}): the two files do not belong together. "
            + HOW_TO_GET.format(folder=folder)
        )
    image_dir = _image_dir(folder)
    if not image_dir.is_dir():
        raise DataUnavailableError(
            f"the image folder {image_dir} is missing (expected {len(partition):,} .jpg files). "
            + HOW_TO_GET.format(folder=folder)
        )
    with os.scandir(image_dir) as entries:  # the one listing of the folder
        present = {entry.name for entry in entries}
    missing = partition.index.difference(pd.Index(sorted(present)))
    if len(missing):
        raise DataUnavailableError(
            f"CelebA in {image_dir} is incomplete: {len(partition) - len(missing):,} of the "
            f"{len(partition):,} images listed in list_eval_partition are there, "
            f"{len(missing):,} are missing (e.g. {missing[0]}). An extraction was probably "
            "interrupted: extract the archive again. " + HOW_TO_GET.format(folder=folder)
        )
    real = not is_stand_in(folder)
    size = image_size or (REAL_IMAGE_SIZE if real else STAND_IN_IMAGE_SIZE)
    train_tf = image_transforms("celeba", size, train=True)
    eval_tf = image_transforms("celeba", size, train=False)
    # Orient the bias label so that "aligned" means label == bias label, as everywhere in the
    # book: bias value v is the one that goes with class v in training (positive correlation).
    in_train = partition.index[partition.to_numpy() == PARTITIONS["train"]]
    t_train = attributes.loc[in_train, target].to_numpy()
    b_train = attributes.loc[in_train, bias].to_numpy()
    flip = len(in_train) > 1 and float(np.corrcoef(t_train, b_train)[0, 1]) < 0
    splits = {}
    for split, code in PARTITIONS.items():
        names_in = partition.index[partition.to_numpy() == code]
        files = [str(image_dir / name) for name in names_in]
        labels = torch.from_numpy(attributes.loc[names_in, target].to_numpy().copy())
        raw_bias = torch.from_numpy(attributes.loc[names_in, bias].to_numpy().copy())
        bias_labels = 1 - raw_bias if flip else raw_bias
        files, labels, bias_labels = shuffled(files, labels, bias_labels, seed=order_seed)
        splits[split] = ImageFileDataset(
            files,
            labels,
            bias_labels,
            split,
            train_tf if split == "train" else eval_tf,
            eval_tf,
            num_classes=2,
            loader_workers=workers,
        )
    counts = {s: len(d) for s, d in splits.items()}
    if real:
        official = all(counts[s] == OFFICIAL_COUNTS[s] for s in counts)
        description = (
            f"CelebA, target {target}, bias {bias}, official partition "
            f"({counts['train']:,} / {counts['valid']:,} / {counts['test']:,} images"
            + ("" if official else f"; NOT the official {OFFICIAL_COUNTS['all']:,}-image release")
            + f"), {size}x{size} pixels, from {folder}"
        )
    else:
        description = (
            f"CelebA STAND-IN (synthetic shapes in CelebA's file layout; target {target}, bias "
            f"{bias}; {counts['train']:,} / {counts['valid']:,} / {counts['test']:,} images), "
            f"{size}x{size} pixels"
        )
    return ImageSplits(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        dataset="celeba",
        source="real" if real else "stand-in",
        description=description,
        target=target,
        bias=bias,
        class_names=(f"not {target}", target),
        bias_names=(bias, f"not {bias}") if flip else (f"not {bias}", bias),
        folder=folder,
        image_size=size,
        seed=order_seed,
        official=real and all(counts[s] == OFFICIAL_COUNTS[s] for s in counts),
    )


# ---------------------------------------------------------------------------------------------
# Stand-in

#: All 40 attribute names of CelebA, in the order of list_attr_celeba.txt (for the stand-in).
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()

#: Stand-in samples per split and (target, bias) group. Training follows the shares of
#: (Blond_Hair, Male) in CelebA's training split (44% / 41% / 14% / 0.85%); validation and test
#: raise the rarest group to 8% so that its accuracy can be measured on a few hundred images.
STAND_IN_COUNTS = {
    "train": {(0, 0): 880, (0, 1): 820, (1, 0): 283, (1, 1): 17},
    "valid": {(0, 0): 160, (0, 1): 148, (1, 0): 60, (1, 1): 32},
    "test": {(0, 0): 320, (0, 1): 296, (1, 0): 120, (1, 1): 64},
}


def write_celeba_stand_in(
    folder: str | os.PathLike,
    *,
    target: str = DEFAULT_TARGET,
    bias: str = DEFAULT_BIAS,
    counts: dict[str, dict[tuple[int, int], int]] | None = None,
    seed: int = 0,
) -> Path:
    """Write (once) a synthetic stand-in for CelebA in its official layout and file formats.

    178 x 218 JPEG images named ``000001.jpg`` ..., ``list_attr_celeba.txt`` with all 40
    attributes (``target`` drawn as a shape, ``bias`` as the background colour, see
    :func:`pgd.datasets.standins.render_stand_in`; the other 38 random and not drawn) and
    ``list_eval_partition.txt``. A marker file says it is a stand-in; a folder already written
    with the same settings is reused.
    """
    folder = Path(folder)
    counts = counts or STAND_IN_COUNTS
    for name, role in ((target, "target"), (bias, "bias")):
        check_attribute(name, list(ATTRIBUTES), role)
    settings = {
        "version": _STAND_IN_VERSION,
        "dataset": "celeba",
        "target": target,
        "bias": bias,
        "seed": seed,
        "counts": {s: {f"{t}{b}": n for (t, b), n in c.items()} for s, c in counts.items()},
    }
    t_col, b_col = ATTRIBUTES.index(target), ATTRIBUTES.index(bias)

    def write(out: Path) -> None:
        rng = np.random.default_rng(seed)
        images = out / "img_align_celeba"
        images.mkdir(parents=True)
        attr_lines, part_lines, number = [], [], 0
        for split, code in PARTITIONS.items():
            for t, b in stand_in_groups(counts[split], rng):
                number += 1
                name = f"{number:06d}.jpg"
                render_stand_in(t, b, 218, 178, rng).save(images / name, quality=90)
                values = rng.choice([-1, 1], size=len(ATTRIBUTES))
                values[t_col], values[b_col] = (1 if t else -1), (1 if b else -1)
                attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
                part_lines.append(f"{name} {code}")
        header = f"{number}\n" + " ".join(ATTRIBUTES) + " \n"
        (out / "list_attr_celeba.txt").write_text(header + "\n".join(attr_lines) + "\n")
        (out / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")

    return stand_in_folder(folder, settings, write)


def build(request: DataRequest) -> ImageSplits:
    """The registry's builder: CelebA's official partition (or its stand-in) with the request's
    target and bias attributes. The order of every split is fixed (seed 0), whatever the
    request's seed."""
    options = request.options
    return load_celeba(
        request.root,
        target=options["target_attr"],
        bias=options["bias_attr"],
        image_size=options["image_size"],
        stand_in=options["stand_in"],
        download=request.download,
        workers=loader_workers(request),
    )


SPEC = DatasetSpec(
    name="celeba",
    label="CelebA",
    title="CelebA (target and bias: any two of its 40 attributes; Blond_Hair / Male)",
    build=build,
    sources=(
        "files in the official or Kaggle layout under the data root",
        "torchvision's Google Drive download (--download)",
    ),
    stand_in=True,
    default_model="resnet18",
    default_ratio=None,
    options=(
        STAND_IN_OPTION,
        Param("target_attr", DEFAULT_TARGET, "CelebA target attribute"),
        Param("bias_attr", DEFAULT_BIAS, "CelebA bias attribute"),
        IMAGE_SIZE_OPTION,
    ),
    name_parts=lambda ratio, options, source: image_name_parts(
        "celeba", f"{options['target_attr']}-{options['bias_attr']}", options
    ),
)
