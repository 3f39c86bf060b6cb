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

The parts: :mod:`.layout` (the files and how they are read), :mod:`.acquire` (archives, Google
Drive, the Hugging Face mirror), :mod:`.stand_in` (drawn faces in the same layout); this module
loads the splits and registers the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...core import compat
from ...core.params import Param
from ...core.runtime import data_root, display_path
from ..base import DataRequest, DatasetSpec, DataUnavailableError
from ..images import (
    IMAGE_SIZE_OPTION,
    REAL_IMAGE_SIZE,
    STAND_IN_IMAGE_SIZE,
    STAND_IN_OPTION,
    STAND_IN_VALIDATION_OPTION,
    VERIFY_OPTION,
    ImagePipeline,
    ImageSplits,
    check_stand_in_options,
    image_name_parts,
    image_splits,
    loader_workers,
    shuffled,
)
from ..standins import is_stand_in
from . import layout
from .acquire import (
    MIRROR,
    SOURCE_FILE,
    download_celeba,
    download_celeba_mirror,
    prepare_celeba,
    write_official_layout,
)
from .layout import (
    ATTRIBUTES,
    DEFAULT_BIAS,
    DEFAULT_TARGET,
    HOW_TO_GET,
    OFFICIAL_COUNTS,
    PARTITIONS,
    check_attribute,
    find_celeba_folder,
    read_attributes,
    read_partition,
    verify_official_files,
)
from .stand_in import (
    BALANCED_COUNTS,
    DRAWN,
    ORACLE_PARTITION,
    STAND_IN_COUNTS,
    write_celeba_stand_in,
)

__all__ = [
    "ATTRIBUTES",
    "BALANCED_COUNTS",
    "DEFAULT_BIAS",
    "DEFAULT_TARGET",
    "HOW_TO_GET",
    "IMAGES",
    "MIRROR",
    "OFFICIAL_COUNTS",
    "ORACLE_PARTITION",
    "PARTITIONS",
    "SPEC",
    "STAND_IN_COUNTS",
    "DataUnavailableError",
    "build",
    "check_attribute",
    "download_celeba",
    "download_celeba_mirror",
    "find_celeba_folder",
    "load_celeba",
    "prepare_celeba",
    "read_attributes",
    "read_partition",
    "verify_official_files",
    "write_celeba_stand_in",
    "write_official_layout",
]


def _centre_crop_and_resize(size: int):
    T = compat.import_torchvision().transforms
    return T.Compose([T.CenterCrop(178), T.Resize(size)])


#: LfF's and JTT's preprocessing: the centre 178 x 178 of the 178 x 218 aligned face, resized;
#: training adds a horizontal flip.
IMAGES = ImagePipeline("celeba", resize=_centre_crop_and_resize)


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
    validation: str = "oracle",
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
        validation: the stand-in's validation split (:data:`~pgd.datasets.images
            .STAND_IN_VALIDATIONS`): ``oracle``, blond men raised to 5%, or ``real``, the
            training proportions. Real data has its official partition, whatever this says.

    Raises:
        DataUnavailableError: files missing or incomplete (says how many, and how to get them).
        ValueError: unknown attribute name (lists the valid ones), target == bias, or
            ``validation`` is not one of the stand-in's validation splits.
    """
    validation = STAND_IN_VALIDATION_OPTION.validate(validation)
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
    real = not is_stand_in(folder)
    oracle = validation == "oracle" and not real
    if oracle and not (folder / ORACLE_PARTITION).is_file():
        raise DataUnavailableError(
            f"the CelebA stand-in in {folder} has no {ORACLE_PARTITION}: an earlier version of "
            "pgd wrote it. Delete the folder and run again (--stand-in writes it anew), or read "
            "its one validation split with validation='real'."
        )
    partition = read_partition(folder, ORACLE_PARTITION if oracle else None)
    missing_rows = partition.index.difference(attributes.index)
    if len(missing_rows):
        raise DataUnavailableError(
            f"{len(missing_rows)} images of list_eval_partition have no row in the attribute "
            f"file of {folder} (e.g. {missing_rows[0]}): the two files do not belong together. "
            + HOW_TO_GET.format(folder=folder)
        )
    image_dir = layout.image_dir(folder)
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
        official = all(counts[s] == layout.OFFICIAL_COUNTS[s] for s in counts)
        description = (
            f"CelebA, target {target}, bias {bias}, official partition "
            f"({counts['train']:,} / {counts['valid']:,} / {counts['test']:,} images"
            + (
                ""
                if official
                else f"; NOT the official {layout.OFFICIAL_COUNTS['all']:,}-image release"
            )
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
            + ("" if oracle else "; validation split in the training proportions")
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
        official=real and all(counts[s] == layout.OFFICIAL_COUNTS[s] for s in counts),
        official_counts={s: layout.OFFICIAL_COUNTS[s] for s in ("train", "valid", "test")},
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
        validation=options["stand_in_validation"],
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
        STAND_IN_VALIDATION_OPTION,
        Param("target_attr", DEFAULT_TARGET, "CelebA target attribute"),
        Param("bias_attr", DEFAULT_BIAS, "CelebA bias attribute"),
        IMAGE_SIZE_OPTION,
        VERIFY_OPTION,
    ),
    name_parts=lambda ratio, options, source: image_name_parts(
        "celeba", f"{options['target_attr']}-{options['bias_attr']}", options
    ),
    profile_epochs={"quick": 2, "full": 10},
    check_params=check_stand_in_options,
)
