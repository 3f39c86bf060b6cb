"""Getting CelebA's files: extracting an archive found in the data folder (official or Kaggle,
safely), torchvision's Google Drive download, and the Hugging Face mirror written into the official
layout; :func:`prepare_celeba` tries them in that order."""

from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm

from ...core import compat
from ...core.runtime import data_root, progress_enabled
from ...core.storage import staged_folder
from ..archives import DownloadError, diagnose_download, safe_extract
from ..base import DataUnavailableError
from . import layout
from .layout import (
    ATTRIBUTES,
    HOW_TO_GET,
    KAGGLE_ARCHIVES,
    PARTITIONS,
    SOURCE_FILE,
    find_celeba_folder,
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
    official = {split: layout.OFFICIAL_COUNTS[split] for split in sizes}
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
        layout.image_dir(folder).is_dir() or not (folder / "img_align_celeba.zip").is_file()
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
        f"{', '.join(str(c) for c in layout.candidate_folders(root))}). "
        + HOW_TO_GET.format(folder=root / "celeba")
    )
