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
from tqdm.auto import tqdm

from ..core import compat
from ..core.params import Param
from ..core.runtime import data_root, display_path, progress_enabled
from ..core.storage import staged_folder
from .archives import DownloadError, diagnose_download, safe_extract
from .base import DataRequest, DatasetSpec, DataUnavailableError
from .faces import render_face
from .images import (
    IMAGE_SIZE_OPTION,
    REAL_IMAGE_SIZE,
    STAND_IN_IMAGE_SIZE,
    STAND_IN_OPTION,
    VERIFY_OPTION,
    ImagePipeline,
    ImageSplits,
    image_name_parts,
    image_splits,
    loader_workers,
    shuffled,
)
from .standins import is_stand_in, stand_in_folder, stand_in_groups


def _centre_crop_and_resize(size: int):
    T = compat.import_torchvision().transforms
    return T.Compose([T.CenterCrop(178), T.Resize(size)])


#: LfF's and JTT's preprocessing: the centre 178 x 178 of the 178 x 218 aligned face, resized;
#: training adds a horizontal flip.
IMAGES = ImagePipeline("celeba", resize=_centre_crop_and_resize)

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
_STAND_IN_VERSION = 2


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


#: The Hugging Face mirror tried when Google Drive fails (or when asked for): a dataset with the
#: aligned JPEG faces, the 40 attributes as columns and the official partition as splits.
MIRROR = ("flwrlabs/celeba", "img_align+identity+attr")
_MIRROR_SPLITS = {"train": ("train",), "valid": ("valid", "validation"), "test": ("test",)}


def download_celeba_mirror(
    root: str | os.PathLike | None = None, source: str = MIRROR[0], config: str | None = MIRROR[1]
) -> Path:
    """Fetch CelebA from a Hugging Face dataset (``source``: a Hub name, or a local folder of
    parquet files named ``train-*``, ``valid-*``, ``test-*``) and write it into
    ``<root>/celeba`` in the official layout (``img_align_celeba/*.jpg`` with the mirror's own
    JPEG bytes, ``list_attr_celeba.txt``, ``list_eval_partition.txt``), checking the split sizes
    against the official partition.

    Raises:
        DataUnavailableError: the ``datasets`` package is missing (says how to install it), the
            mirror cannot be reached, or its splits or columns are not CelebA's.
    """
    try:
        import datasets
    except ImportError as error:
        raise DataUnavailableError(
            "the Hugging Face route to CelebA needs the datasets package: "
            "pip install 'pgd-book[mirror]' (or pip install datasets), then try again"
        ) from error
    root = data_root(root)
    try:
        if Path(source).is_dir():
            loaded = datasets.load_dataset(str(source), cache_dir=str(root / "hf-cache"))
        else:
            loaded = datasets.load_dataset(source, config, cache_dir=str(root / "hf-cache"))
    except Exception as error:  # no network, no such dataset, a broken cache
        raise DataUnavailableError(
            f"CelebA could not be fetched from the Hugging Face mirror {source!r} "
            f"({type(error).__name__}: {str(error)[:200]}). " + HOW_TO_GET.format(folder=root)
        ) from error
    splits = {}
    for split, names in _MIRROR_SPLITS.items():
        found = [name for name in names if name in loaded]
        if not found:
            raise DataUnavailableError(
                f"the mirror {source!r} has the splits {', '.join(loaded)}; CelebA's official "
                "partition needs train, valid and test"
            )
        splits[split] = loaded[found[0]]
    sizes = {split: len(rows) for split, rows in splits.items()}
    official = {split: OFFICIAL_COUNTS[split] for split in sizes}
    if sizes != official:
        raise DataUnavailableError(
            f"the mirror {source!r} has {sizes['train']:,} / {sizes['valid']:,} / "
            f"{sizes['test']:,} train / valid / test images, but CelebA's official partition has "
            f"{official['train']:,} / {official['valid']:,} / {official['test']:,}: it is not "
            "the official release, and its numbers would not be comparable. Use another source."
        )
    return write_official_layout(
        splits, root / "celeba", datasets.Image(decode=False), f"the Hugging Face dataset {source}"
    )


#: Marks a CelebA folder that pgd wrote from another source (its text files are pgd's own).
SOURCE_FILE = "PGD_SOURCE.txt"


def write_official_layout(splits, folder: Path, raw_images=None, source: str = "rows") -> Path:
    """Write rows of ``{image, <attribute>: value, ...}`` per split (train, valid, test, in this
    order) into ``folder`` in CelebA's official layout. Images are written as their stored JPEG
    bytes (re-encoded only if a row holds a decoded image). Attribute values may be booleans,
    0/1 or -1/1.

    Raises:
        DataUnavailableError: no image column, or fewer than two of CelebA's attributes.
    """
    first = next(iter(splits.values()))
    columns = list(first.column_names) if hasattr(first, "column_names") else list(first[0])
    attributes = [name for name in ATTRIBUTES if name in columns]
    image_column = next((c for c in ("image", "img") if c in columns), None)
    if image_column is None or len(attributes) < 2:
        raise DataUnavailableError(
            f"these rows have the columns {', '.join(columns)}: CelebA needs an image column and "
            "its attribute columns (Blond_Hair, Male, ...)"
        )
    with staged_folder(folder) as staging:
        (staging / "img_align_celeba").mkdir()
        attr_lines, part_lines, number = [], [], 0
        show = progress_enabled()
        for split, rows in splits.items():
            if raw_images is not None and hasattr(rows, "cast_column"):
                rows = rows.cast_column(image_column, raw_images)  # the stored bytes, not decoded
            for row in tqdm(rows, desc=f"writing {split}", unit="image", disable=not show):
                number += 1
                name = f"{number:06d}.jpg"
                image = row[image_column]
                target = staging / "img_align_celeba" / name
                if isinstance(image, dict) and image.get("bytes"):
                    target.write_bytes(image["bytes"])
                else:
                    image.convert("RGB").save(target, quality=95)
                values = [1 if row[a] in (True, 1) else -1 for a in attributes]
                attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
                part_lines.append(f"{name} {PARTITIONS[split]}")
        header = f"{number}\n" + " ".join(attributes) + " \n"
        (staging / "list_attr_celeba.txt").write_text(header + "\n".join(attr_lines) + "\n")
        (staging / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
        (staging / SOURCE_FILE).write_text(f"CelebA written by pgd from {source}\n")
    return folder


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


def prepare_celeba(root: str | os.PathLike | None = None, download: bool | str = False) -> Path:
    """The CelebA folder under ``root``: found, extracted from an archive there, or downloaded:
    ``download`` True or ``"auto"``: torchvision's Google Drive download, then, if it fails, the
    Hugging Face mirror (:data:`MIRROR`); ``"drive"`` or ``"mirror"``: that route only. Raises
    DataUnavailableError or DownloadError saying what to do."""
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
        route = "auto" if download is True else str(download)
        if route not in ("auto", "drive", "mirror"):
            raise ValueError(f"download must be auto, drive or mirror, got {download!r}")
        if route == "mirror":
            return download_celeba_mirror(root)
        try:
            return download_celeba(root)
        except DownloadError as drive_error:
            if route == "drive":
                raise
            try:
                return download_celeba_mirror(root)
            except DataUnavailableError as mirror_error:
                raise DownloadError(
                    f"{drive_error}\nThe Hugging Face mirror failed too: {mirror_error}"
                ) from mirror_error
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
    verify: str = "quick",
    keep_in_memory: bool | None = None,
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
        image_size: side of the model's input (default 224; 48 for the stand-in).
        stand_in: use (and write if needed) the synthetic stand-in in ``<root>/stand-in/celeba``.
        download: try torchvision's download when the files are not there.
        workers: DataLoader worker processes for these datasets.
        order_seed: seed of the one fixed shuffle of every split (so prefixes keep every group).
        verify: check every image before training (see :func:`pgd.datasets.images.image_splits`).
        keep_in_memory: decode every image once and keep it (None: when they fit in
            :data:`~pgd.datasets.images.IMAGE_CACHE_BYTES`; False: decode per item, as for the
            full-size real data, which is what a loading measurement should see).

    Raises:
        DataUnavailableError: files missing or incomplete (says how many, and how to get them).
        ValueError: unknown attribute name (lists the valid ones), or target == bias.
    """
    root = data_root(root)
    if stand_in:
        # One set of faces, written for the default pair; any pair is read from its attributes.
        folder = write_celeba_stand_in(root / "stand-in" / "celeba")
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
    # Orient the bias label so that "aligned" means label == bias label, as everywhere in the
    # book: bias value v is the one that goes with class v in training (positive correlation).
    in_train = partition.index[partition.to_numpy() == PARTITIONS["train"]]
    t_train = attributes.loc[in_train, target].to_numpy()
    b_train = attributes.loc[in_train, bias].to_numpy()
    _check_pair(t_train, b_train, target, bias, folder)
    flip = float(np.corrcoef(t_train, b_train)[0, 1]) < 0
    parts = {}
    for split, code in PARTITIONS.items():
        names_in = partition.index[partition.to_numpy() == code]
        files = [str(image_dir / name) for name in names_in]
        labels = torch.from_numpy(attributes.loc[names_in, target].to_numpy().copy())
        raw_bias = torch.from_numpy(attributes.loc[names_in, bias].to_numpy().copy())
        bias_labels = 1 - raw_bias if flip else raw_bias
        parts[split] = shuffled(files, labels, bias_labels, seed=order_seed)
    splits = image_splits(
        parts,
        IMAGES,
        size,
        workers=workers,
        root=root,
        verify=verify,
        keep_in_memory=keep_in_memory,
    )
    counts = {s: len(d) for s, d in splits.items()}
    if real:
        official = all(counts[s] == OFFICIAL_COUNTS[s] for s in counts)
        description = (
            f"CelebA, target {target}, bias {bias}, official partition "
            f"({counts['train']:,} / {counts['valid']:,} / {counts['test']:,} images"
            + ("" if official else f"; NOT the official {OFFICIAL_COUNTS['all']:,}-image release")
            + f"), {size}x{size} pixels, from {display_path(folder)}"
            + (
                " (written from the Hugging Face mirror)"
                if (folder / SOURCE_FILE).is_file()
                else ""
            )
        )
    else:
        description = (
            f"CelebA STAND-IN (drawn faces in CelebA's file layout; target {target}, bias "
            f"{bias}; {counts['train']:,} / {counts['valid']:,} / {counts['test']:,} images), "
            f"{size}x{size} pixels"
        )
    return ImageSplits(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        dataset="celeba",
        label="CelebA",
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


def _check_pair(t_train: np.ndarray, b_train: np.ndarray, target: str, bias: str, folder: Path):
    """Refuse a (target, bias) pair that forms no bias-conflicting training image."""
    hint = (
        f" The stand-in draws {', '.join(DRAWN)} on young faces only; choose another pair."
        if is_stand_in(folder)
        else " Choose another pair."
    )
    for name, values in ((target, t_train), (bias, b_train)):
        if len(np.unique(values)) < 2:
            raise ValueError(
                f"{name} takes the value {int(values[0])} on every training image of {folder}: "
                "it splits nothing into groups." + hint
            )
    if abs(float(np.corrcoef(t_train, b_train)[0, 1])) > 1 - 1e-9:
        raise ValueError(
            f"{target} and {bias} are perfectly correlated in the training split of {folder}: "
            "there is no bias-conflicting image to learn from or to measure." + hint
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

#: What the stand-in draws (see :mod:`pgd.datasets.faces`): each attribute of CelebA that a face
#: of the stand-in shows, as a function of its three drawn traits (blond, male, old). The other
#: attributes are random and not drawn.
DRAWN = {
    "Blond_Hair": lambda blond, male, old: blond and not old,
    "Male": lambda blond, male, old: male,
    "Young": lambda blond, male, old: not old,
    "Gray_Hair": lambda blond, male, old: old,
    "No_Beard": lambda blond, male, old: not male,
    "Mustache": lambda blond, male, old: male,
    "Wearing_Lipstick": lambda blond, male, old: not male,
}

#: Stand-in faces per split and (Blond_Hair, Male) group. Training follows the shares of CelebA's
#: training split (44% / 41% / 14% / 0.85%) at 6,000 faces, so that the rarest group, blond men,
#: has 51 faces; validation and test keep the proportions of the common groups and raise the
#: blond men to 5%, so that their accuracy is measured on 50 and 100 faces.
STAND_IN_COUNTS = {
    "train": {(0, 0): 2_640, (0, 1): 2_460, (1, 0): 849, (1, 1): 51},
    "valid": {(0, 0): 440, (0, 1): 410, (1, 0): 100, (1, 1): 50},
    "test": {(0, 0): 880, (0, 1): 820, (1, 0): 200, (1, 1): 100},
}
#: The same total in equal groups: the control run, which shows that the target can be learnt.
BALANCED_COUNTS = {
    split: dict.fromkeys(groups, sum(groups.values()) // 4)
    for split, groups in STAND_IN_COUNTS.items()
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

    178 x 218 JPEG faces named ``000001.jpg`` ... (drawn by :func:`pgd.datasets.faces
    .render_face`), ``list_attr_celeba.txt`` with all 40 attributes (those of :data:`DRAWN`
    true to the drawing, the others random) and ``list_eval_partition.txt``. ``counts`` gives the
    faces per split and (``target``, ``bias``) group; the target and the bias must be drawn
    attributes. A marker file says it is a stand-in; a folder already written with the same
    settings is reused.

    Raises:
        ValueError: ``target`` or ``bias`` is not drawn (the message lists those that are), or
            the two together cannot be drawn (Blond_Hair with Gray_Hair, for instance).
    """
    folder = Path(folder)
    counts = counts or STAND_IN_COUNTS
    for name, role in ((target, "target"), (bias, "bias")):
        check_attribute(name, list(ATTRIBUTES), role)
        if name not in DRAWN:
            raise ValueError(
                f"the stand-in does not draw {name!r} ({role}); it draws {', '.join(DRAWN)}"
            )
    traits = _traits_for(target, bias)
    settings = {
        "version": _STAND_IN_VERSION,
        "dataset": "celeba",
        "target": target,
        "bias": bias,
        "seed": seed,
        "counts": {s: {f"{t}{b}": n for (t, b), n in c.items()} for s, c in counts.items()},
    }

    def write(out: Path) -> None:
        rng = np.random.default_rng(seed)
        images = out / "img_align_celeba"
        images.mkdir(parents=True)
        attr_lines, part_lines, number = [], [], 0
        for split, code in PARTITIONS.items():
            for t, b in stand_in_groups(counts[split], rng):
                number += 1
                name = f"{number:06d}.jpg"
                blond, male, old = traits[(t, b)]
                face = render_face(178, blond=blond, male=male, old=old, rng=rng, height=218)
                face.save(images / name, quality=90)
                values = rng.choice([-1, 1], size=len(ATTRIBUTES))
                for attribute, shown in DRAWN.items():
                    values[ATTRIBUTES.index(attribute)] = 1 if shown(blond, male, old) else -1
                attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
                part_lines.append(f"{name} {code}")
        header = f"{number}\n" + " ".join(ATTRIBUTES) + " \n"
        (out / "list_attr_celeba.txt").write_text(header + "\n".join(attr_lines) + "\n")
        (out / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")

    return stand_in_folder(folder, settings, write)


def _traits_for(target: str, bias: str) -> dict[tuple[int, int], tuple[bool, bool, bool]]:
    """The drawn traits (blond, male, old) of a face in each (target, bias) group: the first
    combination that shows both values (young, dark-haired women where nothing else is asked)."""
    out = {}
    for t in (0, 1):
        for b in (0, 1):
            for blond, male, old in (
                (False, False, False),
                (False, True, False),
                (True, False, False),
                (True, True, False),
                (False, False, True),
                (False, True, True),
            ):
                if DRAWN[target](blond, male, old) == bool(t) and DRAWN[bias](
                    blond, male, old
                ) == bool(b):
                    out[(t, b)] = (blond, male, old)
                    break
            else:
                raise ValueError(
                    f"the stand-in cannot draw a face with {target}={t} and {bias}={b}: choose "
                    "two attributes that can be combined"
                )
    return out


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
        verify=options["verify"],
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
        VERIFY_OPTION,
    ),
    name_parts=lambda ratio, options, source: image_name_parts(
        "celeba", f"{options['target_attr']}-{options['bias_attr']}", options
    ),
    profile_epochs={"quick": 2, "full": 10},
)
