"""Synthetic *stand-in* images, written in a real dataset's exact file layout when the real data
is not on the machine: the pipeline then runs end to end, and every result says it came from a
stand-in. A marker file in the folder records that it is one, and with which settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.storage import staged_folder

#: File that marks a folder as written by a stand-in generator, never real data.
STAND_IN_MARKER = "PGD_STAND_IN.txt"


def is_stand_in(folder: Path) -> bool:
    """Whether ``folder`` was written by a stand-in generator (it holds the marker file)."""
    return (folder / STAND_IN_MARKER).is_file()


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
    with staged_folder(folder) as staging:
        write(staging)
        (staging / STAND_IN_MARKER).write_text(
            f"Synthetic stand-in for {settings.get('dataset')} written by pgd: not real data.\n"
            + json.dumps(settings)
        )
    return folder
