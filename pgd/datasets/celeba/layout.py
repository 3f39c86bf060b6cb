"""CelebA's files: the two layouts it comes in (official and Kaggle), reading and checking its
attribute and partition files, and what it takes to get them (:data:`HOW_TO_GET`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ...core import compat
from ...core.runtime import data_root
from ..base import DataUnavailableError

DEFAULT_TARGET = "Blond_Hair"
DEFAULT_BIAS = "Male"
#: Images and partition sizes of the official release.
OFFICIAL_COUNTS = {"all": 202_599, "train": 162_770, "valid": 19_867, "test": 19_962}
PARTITIONS = {"train": 0, "valid": 1, "test": 2}
KAGGLE_ARCHIVES = ("celeba-dataset.zip", "archive.zip")
HOW_TO_GET = (
    "How to get CelebA: (1) prepare_celeba(download=True) (command line: add --download) tries "
    "torchvision's Google Drive download, which often hits Google's daily quota, then the "
    "Hugging Face mirror flwrlabs/celeba (needs pip install datasets); (2) download "
    "it from Kaggle (kaggle datasets download -d jessicali9530/celeba-dataset, or the website) "
    "and put the zip or its extracted content in {folder}; (3) on Colab, copy the files to your "
    "Google Drive once and point the data folder there. The folder needs img_align_celeba/ "
    "(the .jpg faces), list_attr_celeba.txt (or .csv) and list_eval_partition.txt (or .csv)."
)


#: Marks a CelebA folder that pgd wrote from another source (its text files are pgd's own).
SOURCE_FILE = "PGD_SOURCE.txt"


#: All 40 attribute names of CelebA, in the order of list_attr_celeba.txt.
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()


def candidate_folders(root: Path) -> list[Path]:
    return [root / "celeba", root, root / "celeba-dataset"]


def find_celeba_folder(root: str | os.PathLike | None = None) -> Path | None:
    """The folder holding CelebA's attribute file under ``root`` (official or Kaggle), or None."""
    root = data_root(root)
    for folder in candidate_folders(root):
        if (folder / "list_attr_celeba.txt").is_file() or (
            folder / "list_attr_celeba.csv"
        ).is_file():
            return folder
    return None


def image_dir(folder: Path) -> Path:
    nested = folder / "img_align_celeba" / "img_align_celeba"  # Kaggle
    return nested if nested.is_dir() else folder / "img_align_celeba"


def _check_rows(lines, sep: str | None, values: int, path: Path, first_line: int) -> None:
    """Every row: a file name and ``values`` values; else ValueError naming the row's line."""
    for number, line in enumerate(lines, start=first_line):
        fields = line.strip().split(sep) if line.strip() else []
        if fields and len(fields) != values + 1:
            raise ValueError(
                f"{path.name}, line {number} ({fields[0]}): {len(fields) - 1} values where the "
                f"header names {values} attributes"
            )


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
                _check_rows(file, None, len(names), txt, first_line=3)
            table = pd.read_csv(txt, sep=r"\s+", skiprows=2, header=None, index_col=0)
            table.columns = names
        elif csv.is_file():
            with open(csv) as file:
                names = file.readline().strip().split(",")[1:]
                _check_rows(file, ",", len(names), csv, first_line=2)
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


def read_partition(folder: str | os.PathLike, file: str | None = None) -> pd.Series:
    """The official split of every image: 0 train, 1 valid, 2 test, indexed by file name
    (``file``: read this partition file of ``folder`` instead, as the stand-in's oracle one)."""
    folder = Path(folder)
    txt = folder / (file or "list_eval_partition.txt")
    csv = txt.with_suffix(".csv")
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
    checked, nor are the files written from the Hugging Face mirror (:data:`SOURCE_FILE`)."""
    folder = Path(folder)
    attributes = folder / "list_attr_celeba.txt"
    if not attributes.is_file() or (folder / SOURCE_FILE).is_file():
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
