"""CelebA's stand-in: drawn faces (:mod:`pgd.datasets.faces`) written in CelebA's official layout
and file formats, for machines without the real files; and the group-balanced control."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..faces import render_face
from ..standins import proportional_counts, stand_in_folder, stand_in_groups
from .layout import ATTRIBUTES, DEFAULT_BIAS, DEFAULT_TARGET, PARTITIONS, check_attribute

_STAND_IN_VERSION = 3

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
#: has 51 faces; test keeps the proportions of the common groups and raises the blond men to 5%,
#: so that their accuracy is measured on 100 faces. ``valid`` is the *oracle* validation split,
#: drawn like test (50 blond men); the stand-in also writes a validation split with the real
#: composition, CelebA's official validation partition having the training proportions (see
#: :func:`write_celeba_stand_in`).
STAND_IN_COUNTS = {
    "train": {(0, 0): 2_640, (0, 1): 2_460, (1, 0): 849, (1, 1): 51},
    "valid": {(0, 0): 440, (0, 1): 410, (1, 0): 100, (1, 1): 50},
    "test": {(0, 0): 880, (0, 1): 820, (1, 0): 200, (1, 1): 100},
}
#: The stand-in's partition file with the oracle validation split (the official file name holds
#: the real one).
ORACLE_PARTITION = "list_eval_partition_oracle.txt"
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

    Two validation splits: ``list_eval_partition.txt`` holds the *real* one, ``counts["valid"]``'s
    number of faces in the training split's proportions (as in CelebA's official partition);
    ``list_eval_partition_oracle.txt`` (:data:`ORACLE_PARTITION`) holds the same training and
    test faces and the *oracle* one, ``counts["valid"]``. The faces are drawn in a fixed order
    (training, oracle validation, test, real validation), so that the training, test and oracle
    validation faces are those of the stand-in's earlier versions, which had the oracle split
    only.

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
        "real_valid": "training proportions",
    }
    real_valid = proportional_counts(counts["train"], sum(counts["valid"].values()))

    def write(out: Path) -> None:
        rng = np.random.default_rng(seed)
        images = out / "img_align_celeba"
        images.mkdir(parents=True)
        attr_lines, number = [], 0
        part_lines: dict[str, list[str]] = {"real": [], "oracle": []}
        draws = [(split, counts[split], code) for split, code in PARTITIONS.items()]
        for split, groups, code in [*draws, ("real valid", real_valid, PARTITIONS["valid"])]:
            # the partition files that list this split: each validation split is in one
            readers = {"valid": ("oracle",), "real valid": ("real",)}.get(split, ("real", "oracle"))
            for t, b in stand_in_groups(groups, rng):
                number += 1
                name = f"{number:06d}.jpg"
                blond, male, old = traits[(t, b)]
                face = render_face(178, blond=blond, male=male, old=old, rng=rng, height=218)
                face.save(images / name, quality=90)
                values = rng.choice([-1, 1], size=len(ATTRIBUTES))
                for attribute, shown in DRAWN.items():
                    values[ATTRIBUTES.index(attribute)] = 1 if shown(blond, male, old) else -1
                attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
                for reader in readers:
                    part_lines[reader].append(f"{name} {code}")
        header = f"{number}\n" + " ".join(ATTRIBUTES) + " \n"
        (out / "list_attr_celeba.txt").write_text(header + "\n".join(attr_lines) + "\n")
        for reader, file in (("real", "list_eval_partition.txt"), ("oracle", ORACLE_PARTITION)):
            (out / file).write_text("\n".join(part_lines[reader]) + "\n")

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
