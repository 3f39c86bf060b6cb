"""Synthetic *stand-in* images, written in a real dataset's exact file layout when the real data
is not on the machine: the pipeline then runs end to end, and every result says it came from a
stand-in. A marker file in the folder records that it is one, and with which settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..core.storage import staged_folder

#: File that marks a folder as written by a stand-in generator, never real data.
STAND_IN_MARKER = "PGD_STAND_IN.txt"


def is_stand_in(folder: Path) -> bool:
    """Whether ``folder`` was written by a stand-in generator (it holds the marker file)."""
    return (folder / STAND_IN_MARKER).is_file()


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

    Processes that ask for the same folder at once (two grid workers, two notebooks) take turns
    through a lock file beside it (``.<name>.lock``): the first writes, the others wait and then
    reuse what it wrote.

    Raises:
        FileExistsError: ``folder`` exists, is not empty and is not a stand-in (real data is
            never overwritten).
    """
    folder = Path(folder)
    if _written_with(folder, settings):  # the common case needs no lock
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{folder.name}.lock"):
        if _written_with(folder, settings):  # another process wrote it while this one waited
            return folder
        if folder.exists() and not is_stand_in(folder) and any(folder.iterdir()):
            raise FileExistsError(
                f"{folder} holds files but is not a stand-in written by pgd; refusing to "
                "overwrite it. Choose another folder."
            )
        with staged_folder(folder) as staging:
            write(staging)
            (staging / STAND_IN_MARKER).write_text(
                f"Synthetic stand-in for {settings.get('dataset')} written by pgd: not real data.\n"
                + json.dumps(settings)
            )
    return folder


def _written_with(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` is a stand-in whose marker records exactly ``settings``."""
    marker = folder / STAND_IN_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text().split("\n", 1)[1]) == settings
    except (IndexError, json.JSONDecodeError):
        return False


def proportional_counts(
    counts: dict[tuple[int, int], int], total: int
) -> dict[tuple[int, int], int]:
    """``total`` samples split over the groups of ``counts`` in their proportions (largest
    remainders; ties go to the group listed first): the composition of a split drawn like the
    one ``counts`` describes, at another size."""
    whole = sum(counts.values())
    if whole <= 0 or total < 0 or min(counts.values()) < 0:
        raise ValueError(
            f"need counts >= 0 with some samples and a total >= 0, got {counts} and {total}"
        )
    shares = {group: divmod(n * total, whole) for group, n in counts.items()}  # exact integers
    out = {group: whole_part for group, (whole_part, _) in shares.items()}
    left = total - sum(out.values())
    for group in sorted(shares, key=lambda g: -shares[g][1])[:left]:  # stable: ties go first
        out[group] += 1
    return out
