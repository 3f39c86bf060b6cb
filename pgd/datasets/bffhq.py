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

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core import compat
from ..core.runtime import data_root, display_path
from ..core.storage import link_or_copy, staged_folder
from .archives import safe_extract
from .base import DataRequest, DatasetSpec, DataUnavailableError
from .faces import render_face
from .images import (
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
from .standins import is_stand_in, proportional_counts, stand_in_folder, stand_in_groups


def _resize(size: int):
    return compat.import_torchvision().transforms.Resize((size, size))


#: DFA's preprocessing: resized to a square; training adds a random crop with 4-pixel padding
#: (at 224 pixels, scaled with the size) and a horizontal flip.
IMAGES = ImagePipeline(
    "bffhq", resize=_resize, crop_padding=lambda size: max(1, round(4 * size / REAL_IMAGE_SIZE))
)

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
_STAND_IN_VERSION = 3


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
        target, bias = int(parts[-2]), int(parts[-1])
    except ValueError:
        raise ValueError(
            f"{path}: a BFFHQ file name must be <id>_<target>_<bias>.png (e.g. 00012_0_1.png); "
            "this folder is not laid out as the BFFHQ distributed with DFA. " + HOW_TO_GET
        ) from None
    if not {target, bias} <= {0, 1}:
        raise ValueError(
            f"{path}: BFFHQ's labels are 0 or 1 (age young/old, gender), but this name says "
            f"target {target}, bias {bias}. Rename or remove the file."
        )
    return target, bias


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


DERIVED_MARKER = "DERIVED.json"


def derive_rarer_ratio(
    folder: str | os.PathLike, ratio: float, *, source: float = 0.005, seed: int = 0
) -> Path:
    """Write (once) the training folder of a rarer bias-conflicting ``ratio`` from the folder of
    ``source``: every aligned image, and a seeded random subset of the conflicting images of each
    class, as many as make ``ratio`` of the training set. Files are hard links (copies where the
    file system has none), so nothing is decoded or duplicated; the folder is written beside the
    others (``bffhq/0.25pct``) through a staging folder and carries a ``DERIVED.json`` marker.

    The distributed BFFHQ has one training folder, ``0.5pct``; this makes the rarer ones a
    scarcity study needs from the same faces.

    Raises:
        ValueError: ``ratio`` is not below the source's ratio (subsampling cannot make
            conflicting images more common), or the subset would hold no image of a class.
        DataUnavailableError: the source folder is missing.
    """
    folder = Path(folder)
    if not 0 < ratio < source:
        raise ValueError(
            f"a derived ratio must lie between 0 and the source's {source:g}, got {ratio:g}: "
            "subsampling can only make the bias-conflicting images rarer"
        )
    src, out = folder / ratio_folder(source), folder / ratio_folder(ratio)
    settings = {"source": src.name, "ratio": ratio, "seed": seed}
    marker = out / DERIVED_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return out
    if out.exists() and not marker.is_file():
        raise FileExistsError(f"{out} exists and was not derived by pgd; refusing to overwrite it")
    if not src.is_dir():
        raise DataUnavailableError(f"no {src.name} folder in {folder} to derive {out.name} from")
    aligned = {c.name: _images(c) for c in sorted((src / "align").iterdir()) if c.is_dir()}
    conflicting = {c.name: _images(c) for c in sorted((src / "conflict").iterdir()) if c.is_dir()}
    n_aligned = sum(len(v) for v in aligned.values())
    n_conflicting = sum(len(v) for v in conflicting.values())
    keep_total = round(ratio / (1 - ratio) * n_aligned)
    rng = np.random.default_rng(seed)
    keep = {}
    for name, files in conflicting.items():
        n = round(keep_total * len(files) / n_conflicting)
        if n < 1:
            raise ValueError(
                f"ratio {ratio:g} keeps no conflicting image of class {name} "
                f"({len(files)} of {n_conflicting} in {src.name}): choose a larger ratio"
            )
        keep[name] = [files[i] for i in sorted(rng.choice(len(files), n, replace=False))]
    with staged_folder(out) as staging:
        for kind, classes in (("align", aligned), ("conflict", keep)):
            for name, files in classes.items():
                (staging / kind / name).mkdir(parents=True)
                for path in files:
                    link_or_copy(path, staging / kind / name / path.name)
        (staging / DERIVED_MARKER).write_text(json.dumps(settings))
    return out


def load_bffhq(
    root: str | os.PathLike | None = None,
    *,
    ratio: float = 0.005,
    image_size: int | None = None,
    stand_in: bool = False,
    workers: int = 0,
    order_seed: int = 0,
    verify: str = "quick",
    keep_in_memory: bool | None = None,
    validation: str = "oracle",
) -> ImageSplits:
    """BFFHQ as :class:`~pgd.datasets.images.ImageSplits`: train = align + conflict of the ``ratio``
    folder (``0.5pct``), valid, test; target age, bias gender (both 0/1, as in the file names).

    Args:
        root: data root (default ``$PGD_DATA``), holding ``bffhq/`` or a ``bffhq`` archive.
        ratio: the bias-conflicting ratio whose training folder to use (distributed: 0.005).
        image_size: side of the model's input (default 224; 48 for the stand-in).
        stand_in: use (and write if needed) the synthetic stand-in in ``<root>/stand-in/bffhq``.
        workers: DataLoader worker processes for these datasets.
        order_seed: seed of the one fixed shuffle of every split.
        verify: check every image before training (see :func:`pgd.datasets.images.image_splits`).
        keep_in_memory: decode every image once and keep it (None: when they fit in
            :data:`~pgd.datasets.images.IMAGE_CACHE_BYTES`; False: decode per item, as for the
            full-size real data, which is what a loading measurement should see).
        validation: the stand-in's validation split (:data:`~pgd.datasets.images
            .STAND_IN_VALIDATIONS`): ``oracle``, group-balanced, or ``real``, the training
            proportions of the 0.5pct folder (at every ratio, as the release has one
            ``valid/``). Real data has one validation split, ``valid/``, whatever this says.

    Raises:
        DataUnavailableError: folder or archive missing, or incomplete (says what was found and
            what is expected), or files not named ``<id>_<target>_<bias>``.
        ValueError: ``validation`` is not one of the stand-in's validation splits.
    """
    validation = STAND_IN_VALIDATION_OPTION.validate(validation)
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
    oracle = validation == "oracle" and not real
    if oracle and not (folder / ORACLE_VALID_FOLDER).is_dir():
        raise DataUnavailableError(
            f"the BFFHQ stand-in in {folder} has no {ORACLE_VALID_FOLDER}/ folder: an earlier "
            "version of pgd wrote it. Delete the folder and run again (--stand-in writes it "
            "anew), or read its one validation split with validation='real'."
        )
    for split in ("valid", "test"):
        where = ORACLE_VALID_FOLDER if split == "valid" and oracle else split
        parts[split] = _read_flat(folder / where, root)
        found[split] = len(parts[split][0])
    if real and pct.name == "0.5pct" and found != OFFICIAL_COUNTS:
        warnings.warn(
            f"BFFHQ in {folder} has {found} files; the distributed dataset has "
            f"{OFFICIAL_COUNTS}. Results will not be comparable with published ones; if files "
            "are missing, extract the archive again.",
            stacklevel=2,
        )
    size = image_size or (REAL_IMAGE_SIZE if real else STAND_IN_IMAGE_SIZE)
    ordered = {
        split: shuffled(paths, torch.tensor(t), torch.tensor(b), seed=order_seed)
        for split, (paths, t, b) in parts.items()
    }
    splits = image_splits(
        ordered,
        IMAGES,
        size,
        workers=workers,
        root=root,
        verify=verify,
        keep_in_memory=keep_in_memory,
    )
    n = {s: len(d) for s, d in splits.items()}
    what = "BFFHQ" if real else "BFFHQ STAND-IN (drawn faces in BFFHQ's file layout)"
    official = real and pct.name == "0.5pct" and found == OFFICIAL_COUNTS
    release = "" if official or not real or pct.name != "0.5pct" else "; NOT the release's counts"
    description = (
        f"{what}, target age, bias gender, {pct.name} ({n['train']:,} / {n['valid']:,} / "
        f"{n['test']:,} images, {found['conflict']} bias-conflicting in training{release}), "
        f"{size}x{size} pixels"
        + (f", from {display_path(folder)}" if real else "")
        + ("" if real or oracle else "; validation split in the 0.5pct training proportions")
    )
    return ImageSplits(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        dataset="bffhq",
        label="BFFHQ",
        source="real" if real else "stand-in",
        description=description,
        target="age",
        bias="gender",
        class_names=("age 0", "age 1"),
        bias_names=("gender 0", "gender 1"),
        folder=folder,
        image_size=size,
        seed=order_seed,
        official=official,
        official_counts=(
            {
                "train": OFFICIAL_COUNTS["align"] + OFFICIAL_COUNTS["conflict"],
                "valid": OFFICIAL_COUNTS["valid"],
                "test": OFFICIAL_COUNTS["test"],
            }
            if pct.name == "0.5pct"
            else None
        ),
    )


#: Stand-in faces: the bias-aligned training faces (young women and old men; target age 0/1,
#: bias gender 0/1, as in BFFHQ's file names), the bias-conflicting ones of each ratio folder
#: (old women and young men; the 1pct and 2pct folders add faces to those of 0.5pct, so that
#: rarer is a subset of less rare), a group-balanced test split, so that every group's accuracy
#: is measured on 250 faces, and two validation splits: ``valid/``, the real composition (the
#: proportions of the first ratio folder's training faces, as in the released folder, whose one
#: ``valid/`` serves its one ratio folder, 0.5pct) at :data:`STAND_IN_REAL_VALID` faces, and
#: ``valid-oracle/``, group-balanced (100 faces per group), read with ``validation="oracle"``.
STAND_IN_ALIGNED = {(0, 0): 4_975, (1, 1): 4_975}
STAND_IN_CONFLICTING = {"0.5pct": 25, "1pct": 50, "2pct": 100}  # per conflicting group
STAND_IN_EVAL = {"valid": 100, "test": 250}  # per group; "valid": the oracle validation split
#: The real-composition validation split: 800 faces, so that the 0.5% of them that conflict are
#: a whole number (2 old women, 2 young men); the release's has 1,000 for 19,200 training faces.
STAND_IN_REAL_VALID = 800
#: The stand-in's folder of the group-balanced (oracle) validation split.
ORACLE_VALID_FOLDER = "valid-oracle"
#: The control: group-balanced training faces, the same total as the 0.5pct folder.
BALANCED_TRAIN = 2_500


def write_bffhq_stand_in(
    folder: str | os.PathLike,
    *,
    size: int = 96,
    seed: int = 0,
    balanced: bool = False,
    aligned: dict[tuple[int, int], int] | None = None,
    conflicting: dict[str, int] | None = None,
    evaluation: dict[str, int] | None = None,
    balanced_train: int = BALANCED_TRAIN,
    real_valid: int = STAND_IN_REAL_VALID,
) -> Path:
    """Write (once) a synthetic stand-in for BFFHQ in its distributed layout: ``size`` x
    ``size`` PNG faces (:func:`pgd.datasets.faces.render_face`: age drawn as grey hair and
    wrinkles, gender as hair length, beard and lips) named ``<id>_<age>_<gender>.png`` in
    ``<r>pct/{align,conflict}/<age>/`` for the ratios of :data:`STAND_IN_CONFLICTING`,
    ``test/``, ``valid/`` (``real_valid`` faces in the training proportions of the first ratio
    folder) and ``valid-oracle/`` (group-balanced). ``balanced``: one training folder,
    ``0.5pct``, with ``balanced_train`` faces per group (the control run). A marker file says it
    is a stand-in; a folder already written with the same settings is reused. ``aligned``,
    ``conflicting`` and ``evaluation`` replace :data:`STAND_IN_ALIGNED`,
    :data:`STAND_IN_CONFLICTING` and :data:`STAND_IN_EVAL` (smaller stand-ins for tests).

    The faces are drawn in a fixed order (training, the oracle validation split, test, the real
    validation split), so that the training, test and oracle validation faces are those of the
    stand-in's earlier versions, which had the oracle split only, in ``valid/``."""
    folder = Path(folder)
    aligned_counts = aligned or STAND_IN_ALIGNED
    conflicting_counts = conflicting or STAND_IN_CONFLICTING
    eval_counts = evaluation or STAND_IN_EVAL
    groups4 = ((0, 0), (1, 1), (0, 1), (1, 0))
    settings = {
        "version": _STAND_IN_VERSION,
        "dataset": "bffhq",
        "size": size,
        "seed": seed,
        "balanced": balanced_train if balanced else None,
        "aligned": {f"{t}{b}": n for (t, b), n in aligned_counts.items()},
        "conflicting": conflicting_counts,
        "eval": eval_counts,
        "real_valid": real_valid,
    }

    def write(out: Path) -> None:
        rng = np.random.default_rng(seed)
        number = 0

        def face(where: Path, t: int, b: int) -> Path:
            nonlocal number
            number += 1
            where.mkdir(parents=True, exist_ok=True)
            path = where / f"{number:05d}_{t}_{b}.png"
            blond = rng.random() < 0.3  # hair colour varies at any age: lightness is not age
            render_face(size, blond=blond, male=bool(b), old=bool(t), rng=rng).save(path)
            return path

        if balanced:
            for t, b in stand_in_groups(dict.fromkeys(groups4, balanced_train), rng):
                face(out / "0.5pct" / ("align" if t == b else "conflict") / str(t), t, b)
        else:
            first = next(iter(conflicting_counts))
            common = [
                face(out / first / "align" / str(t), t, b)
                for t, b in stand_in_groups(aligned_counts, rng)
            ]
            rare: list[Path] = []
            for pct, per_group in conflicting_counts.items():
                more = dict.fromkeys(((0, 1), (1, 0)), per_group - len(rare) // 2)
                rare += [
                    face(out / pct / "conflict" / str(t), t, b)
                    for t, b in stand_in_groups(more, rng)
                ]
                for path in common + rare:  # earlier faces: the same files, linked
                    target = out / pct / path.parent.parent.name / path.parent.name / path.name
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        link_or_copy(path, target)
        for split, per_group in eval_counts.items():
            where = out / (ORACLE_VALID_FOLDER if split == "valid" else split)
            for t, b in stand_in_groups(dict.fromkeys(groups4, per_group), rng):
                face(where, t, b)
        if balanced:
            trained = dict.fromkeys(groups4, balanced_train)
        else:
            per_conflicting = conflicting_counts[next(iter(conflicting_counts))]
            trained = {**aligned_counts, **dict.fromkeys(((0, 1), (1, 0)), per_conflicting)}
        for t, b in stand_in_groups(proportional_counts(trained, real_valid), rng):
            face(out / "valid", t, b)

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
        verify=options["verify"],
        validation=options["stand_in_validation"],
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
    options=(STAND_IN_OPTION, STAND_IN_VALIDATION_OPTION, IMAGE_SIZE_OPTION, VERIFY_OPTION),
    name_parts=lambda ratio, options, source: image_name_parts("bffhq", f"ratio{ratio:g}", options),
    profile_epochs={"quick": 5, "full": 30},
    check_params=check_stand_in_options,
)
