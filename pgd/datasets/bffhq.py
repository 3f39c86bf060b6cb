"""BFFHQ, Biased FFHQ (Kim et al., BiaSwap, ICCV 2021; distributed with the DFA code of Lee et
al., NeurIPS 2021): classify age with gender as the bias.

The prebuilt folder, as DFA distributes it (a Google Drive link in the README of
kakaoenterprise/Learning-Debiased-Disentangled), is::

    bffhq/0.5pct/align/<target>/<id>_<target>_<bias>.png      bias-aligned training faces
    bffhq/0.5pct/conflict/<target>/<id>_<target>_<bias>.png   bias-conflicting ones (0.5%)
    bffhq/valid/<id>_<target>_<bias>.png
    bffhq/test/<id>_<target>_<bias>.png

Labels are in the file names. Training uses ``align`` + ``conflict``. DFA and its successors
report accuracy on the bias-conflicting test images; this module keeps the whole test folder, so
that average, aligned and worst-group accuracy can be reported beside it.

Which value of the target means young and which means old is not written anywhere in the files:
the labels are called ``age 0`` and ``age 1`` here, and the chapter shows images of each so that
a reader can see for themselves.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.runtime import data_root
from .archives import safe_extract
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

ARCHIVES = ("bffhq.zip", "bffhq.tar", "bffhq.tar.gz", "bffhq.tgz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: File counts of the distributed 0.5pct folder (compared, with a warning, never enforced).
OFFICIAL_COUNTS = {"align": 19_104, "conflict": 96, "valid": 1_000, "test": 1_000}
HOW_TO_GET = (
    "How to get BFFHQ: download the prebuilt 'bffhq' folder from the Google Drive link in the "
    "README of github.com/kakaoenterprise/Learning-Debiased-Disentangled (DFA), and put the "
    "archive (bffhq.zip or bffhq.tar[.gz]) or the extracted 'bffhq' folder into {root}. On "
    "Colab, keep it on your Google Drive and point the data folder there. Expected layout: "
    "bffhq/<pct>/align/<0|1>/*.png, bffhq/<pct>/conflict/<0|1>/*.png, bffhq/valid/*.png, "
    "bffhq/test/*.png, with file names <id>_<target>_<bias>.png."
)
_STAND_IN_VERSION = 1


def ratio_folder(ratio: float) -> str:
    """The folder of a bias-conflicting ratio: 0.005 -> ``0.5pct``."""
    return f"{100 * ratio:g}pct"


def parse_labels(path: str | os.PathLike) -> tuple[int, int]:
    """``(target, bias)`` from a file name ``<id>_<target>_<bias>.<ext>``.

    Raises:
        ValueError: the name does not end in two integer fields (names the file).
    """
    parts = Path(path).stem.split("_")
    try:
        if len(parts) < 3:
            raise ValueError
        return int(parts[-2]), int(parts[-1])
    except ValueError:
        raise ValueError(
            f"{path}: a BFFHQ file name must be <id>_<target>_<bias>.png (e.g. 00012_0_1.png); "
            "this folder is not laid out as the BFFHQ distributed with DFA. " + HOW_TO_GET
        ) from None


def _is_bffhq(folder: Path) -> bool:
    return (folder / "valid").is_dir() and any(folder.glob("*pct"))


def find_bffhq_folder(root: str | os.PathLike | None = None) -> Path | None:
    """The ``bffhq`` folder under ``root`` (or ``root`` itself), else None."""
    root = data_root(root)
    for folder in (root / "bffhq", root, root / "bffhq" / "bffhq", root / "data" / "bffhq"):
        if _is_bffhq(folder):
            return folder
    return None


def prepare_bffhq(root: str | os.PathLike | None = None) -> Path:
    """The BFFHQ folder under ``root``, extracting a ``bffhq`` zip or tar archive found there
    (safely) if the folder is not. Raises DataUnavailableError saying how to get it."""
    root = data_root(root)
    folder = find_bffhq_folder(root)
    if folder is not None:
        return folder
    for name in ARCHIVES:
        if (root / name).is_file():
            safe_extract(root / name, root)
            folder = find_bffhq_folder(root)
            if folder is None:
                raise DataUnavailableError(
                    f"{root / name} was extracted but holds no BFFHQ folder. "
                    + HOW_TO_GET.format(root=root)
                )
            return folder
    raise DataUnavailableError(
        f"BFFHQ is not in {root}: no 'bffhq' folder with valid/ and <pct>/ inside, and no "
        f"archive ({', '.join(ARCHIVES)}). " + HOW_TO_GET.format(root=root)
    )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_train(pct: Path, root: Path) -> tuple[list[str], list[int], list[int], dict[str, int]]:
    files: list[str] = []
    targets: list[int] = []
    biases: list[int] = []
    found: dict[str, int] = {}
    for kind in ("align", "conflict"):
        kind_dir = pct / kind
        classes = sorted(p for p in kind_dir.iterdir() if p.is_dir()) if kind_dir.is_dir() else []
        if not classes:
            raise DataUnavailableError(
                f"BFFHQ in {pct.parent} is incomplete: {kind_dir} is missing or has no class "
                f"folders (expected {kind_dir}/0 and {kind_dir}/1 of .png files). "
                + HOW_TO_GET.format(root=root)
            )
        found[kind] = 0
        for class_dir in classes:
            images = _images(class_dir)
            if not images:
                raise DataUnavailableError(
                    f"BFFHQ in {pct.parent} is incomplete: {class_dir} holds no images. "
                    + HOW_TO_GET.format(root=root)
                )
            for path in images:
                t, b = parse_labels(path)
                if str(t) != class_dir.name or (t == b) != (kind == "align"):
                    raise DataUnavailableError(
                        f"{path} is in {kind}/{class_dir.name} but its name says target {t}, "
                        f"bias {b}: this is not BFFHQ's layout (align holds target == bias, "
                        "conflict target != bias, each in the folder of its target). "
                        + HOW_TO_GET.format(root=root)
                    )
                files.append(str(path))
                targets.append(t)
                biases.append(b)
            found[kind] += len(images)
    return files, targets, biases, found


def _read_flat(folder: Path, root: Path) -> tuple[list[str], list[int], list[int]]:
    if not folder.is_dir():
        raise DataUnavailableError(
            f"BFFHQ in {folder.parent} is incomplete: {folder} is missing. "
            + HOW_TO_GET.format(root=root)
        )
    images = _images(folder)
    if not images:
        raise DataUnavailableError(
            f"BFFHQ in {folder.parent} is incomplete: {folder} holds no images. "
            + HOW_TO_GET.format(root=root)
        )
    labels = [parse_labels(p) for p in images]
    return [str(p) for p in images], [t for t, _ in labels], [b for _, b in labels]


def load_bffhq(
    root: str | os.PathLike | None = None,
    *,
    ratio: float = 0.005,
    image_size: int | None = None,
    stand_in: bool = False,
    workers: int = 0,
    order_seed: int = 0,
) -> ImageSplits:
    """BFFHQ as :class:`~pgd.datasets.images.ImageSplits`: train = align + conflict of the ``ratio``
    folder (``0.5pct``), valid, test; target age, bias gender (both 0/1, as in the file names).

    Args:
        root: data root (default ``$PGD_DATA``), holding ``bffhq/`` or a ``bffhq`` archive.
        ratio: the bias-conflicting ratio whose training folder to use (distributed: 0.005).
        image_size: side of the model's input (default 224; 64 for the stand-in).
        stand_in: use (and write if needed) the synthetic stand-in in ``<root>/stand-in/bffhq``.
        workers: DataLoader worker processes for these datasets.
        order_seed: seed of the one fixed shuffle of every split.

    Raises:
        DataUnavailableError: folder or archive missing, or incomplete (says what was found and
            what is expected), or files not named ``<id>_<target>_<bias>``.
    """
    root = data_root(root)
    folder = write_bffhq_stand_in(root / "stand-in" / "bffhq") if stand_in else prepare_bffhq(root)
    pct = folder / ratio_folder(ratio)
    if not pct.is_dir():
        have = sorted(p.name for p in folder.glob("*pct")) or ["none"]
        raise DataUnavailableError(
            f"BFFHQ in {folder} has no {pct.name} folder for ratio {ratio:g} (found: "
            f"{', '.join(have)}); the distributed BFFHQ has 0.5pct (ratio 0.005)."
        )
    real = not is_stand_in(folder)
    files, targets, biases, found = _read_train(pct, root)
    parts = {"train": (files, targets, biases)}
    for split in ("valid", "test"):
        parts[split] = _read_flat(folder / split, root)
        found[split] = len(parts[split][0])
    if real and pct.name == "0.5pct" and found != OFFICIAL_COUNTS:
        warnings.warn(
            f"BFFHQ in {folder} has {found} files; the distributed dataset has "
            f"{OFFICIAL_COUNTS}. Results will not be comparable with published ones; if files "
            "are missing, extract the archive again.",
            stacklevel=2,
        )
    size = image_size or (REAL_IMAGE_SIZE if real else STAND_IN_IMAGE_SIZE)
    train_tf = image_transforms("bffhq", size, train=True)
    eval_tf = image_transforms("bffhq", size, train=False)
    splits = {}
    for split, (paths, t, b) in parts.items():
        paths, labels, bias = shuffled(paths, torch.tensor(t), torch.tensor(b), seed=order_seed)
        splits[split] = ImageFileDataset(
            paths,
            labels,
            bias,
            split,
            train_tf if split == "train" else eval_tf,
            eval_tf,
            num_classes=int(max(max(p[1]) for p in parts.values())) + 1,
            loader_workers=workers,
        )
    n = {s: len(d) for s, d in splits.items()}
    what = "BFFHQ" if real else "BFFHQ STAND-IN (synthetic shapes in BFFHQ's file layout)"
    description = (
        f"{what}, target age, bias gender, {pct.name} ({n['train']:,} / {n['valid']:,} / "
        f"{n['test']:,} images, {found['conflict']} bias-conflicting in training), "
        f"{size}x{size} pixels" + (f", from {folder}" if real else "")
    )
    return ImageSplits(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        dataset="bffhq",
        source="real" if real else "stand-in",
        description=description,
        target="age",
        bias="gender",
        class_names=("age 0", "age 1"),
        bias_names=("gender 0", "gender 1"),
        folder=folder,
        image_size=size,
        seed=order_seed,
        official=real and pct.name == "0.5pct" and found == OFFICIAL_COUNTS,
    )


#: Stand-in files per split and (target, bias) group: training keeps BFFHQ's 0.5% of
#: bias-conflicting images; validation and test are group-balanced so that every group's
#: accuracy can be measured.
STAND_IN_COUNTS = {
    "train": {(0, 0): 995, (1, 1): 995, (0, 1): 5, (1, 0): 5},
    "valid": {(0, 0): 100, (1, 1): 100, (0, 1): 100, (1, 0): 100},
    "test": {(0, 0): 200, (1, 1): 200, (0, 1): 200, (1, 0): 200},
}


def write_bffhq_stand_in(
    folder: str | os.PathLike,
    *,
    counts: dict[str, dict[tuple[int, int], int]] | None = None,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write (once) a synthetic stand-in for BFFHQ in its distributed layout: ``size`` x
    ``size`` PNG files named ``<id>_<target>_<bias>.png`` in ``0.5pct/{align,conflict}/<t>/``,
    ``valid/`` and ``test/``; the target is drawn as a shape, the bias as the background colour
    (:func:`pgd.datasets.standins.render_stand_in`). A marker file says it is a stand-in; a
    folder already written with the same settings is reused."""
    folder = Path(folder)
    counts = counts or STAND_IN_COUNTS
    settings = {
        "version": _STAND_IN_VERSION,
        "dataset": "bffhq",
        "size": size,
        "seed": seed,
        "counts": {s: {f"{t}{b}": n for (t, b), n in c.items()} for s, c in counts.items()},
    }

    def write(out: Path) -> None:
        rng = np.random.default_rng(seed)
        number = 0
        for split, groups in counts.items():
            for t, b in stand_in_groups(groups, rng):
                number += 1
                if split == "train":
                    where = out / "0.5pct" / ("align" if t == b else "conflict") / str(t)
                else:
                    where = out / split
                where.mkdir(parents=True, exist_ok=True)
                render_stand_in(t, b, size, size, rng).save(where / f"{number:05d}_{t}_{b}.png")

    return stand_in_folder(folder, settings, write)


def build(request: DataRequest) -> ImageSplits:
    """The registry's builder: BFFHQ's folder for ``request.ratio`` (or its stand-in). The order
    of every split is fixed (seed 0), whatever the request's seed."""
    options = request.options
    return load_bffhq(
        request.root,
        ratio=request.ratio,
        image_size=options["image_size"],
        stand_in=options["stand_in"],
        workers=loader_workers(request),
    )


SPEC = DatasetSpec(
    name="bffhq",
    label="BFFHQ",
    title="BFFHQ (target age, bias gender; DFA's release)",
    build=build,
    sources=("DFA's bffhq folder or archive under the data root (downloaded by hand)",),
    stand_in=True,
    default_model="resnet18",
    default_ratio=0.005,
    options=(STAND_IN_OPTION, IMAGE_SIZE_OPTION),
    name_parts=lambda ratio, options, source: image_name_parts("bffhq", f"ratio{ratio:g}", options),
)
