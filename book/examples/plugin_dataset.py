"""A dataset as a plugin: bars on coloured backgrounds, with a planted shortcut, in one file.

The target is the orientation of a bar (horizontal, vertical, diagonal); the background colour
follows the class in all training images but a share ``--ratio`` of bias-conflicting ones, which
get another class's colour. In the validation and test images the colour is drawn at random, so a
model that reads colour instead of shape fails two thirds of them. The images are written once,
as an image folder with a ``bias.csv`` (the layout of ``--dataset folder``), under the data root
(``$PGD_DATA/toy-bars/ratio<R>``), and read back with the folder dataset's loader.

Use it without changing the package:

    python -m pgd --plugin book/examples/plugin_dataset.py list
    python -m pgd --plugin book/examples/plugin_dataset.py run --dataset toybars --profile smoke
    python -m pgd --plugin book/examples/plugin_dataset.py audit --dataset toybars --out report
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pgd.core.runtime import data_root
from pgd.datasets.base import DataRequest, DatasetSpec
from pgd.datasets.folder import FolderSplits, load_folder, write_image_folder
from pgd.datasets.images import IMAGE_SIZE_OPTION
from pgd.datasets.registry import register_dataset

CLASSES = ("horizontal", "vertical", "diagonal")
#: Background colour of each class (RGB, 0-255): the shortcut.
COLOURS = torch.tensor([[200, 60, 60], [60, 170, 60], [60, 90, 210]], dtype=torch.uint8)
SIZES = {"train": 3000, "valid": 300, "test": 900}
SIDE = 28


def draw_bars(labels: torch.Tensor, colours: torch.Tensor, seed: int) -> torch.Tensor:
    """``(N, 3, 28, 28)`` uint8: a light bar of each label's orientation, at a random offset, on
    a background of colour ``COLOURS[colours[i]]`` with a little noise."""
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    ys, xs = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    centre = (SIDE - 1) / 2 + torch.randint(-5, 6, (n, 2), generator=generator)
    dy = ys[None] - centre[:, 0, None, None]
    dx = xs[None] - centre[:, 1, None, None]
    angle = torch.tensor([0.0, math.pi / 2, math.pi / 4], dtype=torch.float64)[labels]
    across = (-torch.sin(angle)[:, None, None] * dx + torch.cos(angle)[:, None, None] * dy).abs()
    along = (torch.cos(angle)[:, None, None] * dx + torch.sin(angle)[:, None, None] * dy).abs()
    bar = (across <= 1.5) & (along <= 9)
    images = COLOURS[colours][:, :, None, None].expand(n, 3, SIDE, SIDE).clone().float()
    images += torch.randn(images.shape, generator=generator) * 12
    images = torch.where(bar[:, None], torch.full_like(images, 240.0), images)
    return images.clamp(0, 255).to(torch.uint8)


def write_toy_bars(folder: Path, ratio: float, seed: int = 0) -> Path:
    """Write the image folder for ``ratio`` once (a finished folder is reused)."""
    done = folder / "bias.csv"
    if done.is_file():
        return folder
    generator = torch.Generator().manual_seed(seed)
    splits, bias = {}, {}
    for i, (split, n) in enumerate(SIZES.items()):
        labels = torch.arange(n) % len(CLASSES)
        if split == "train":  # the class's own colour, but for a share `ratio` of conflicting
            conflicting = torch.rand(n, generator=generator) < ratio
            shift = torch.randint(1, len(CLASSES), (n,), generator=generator)
            colours = torch.where(conflicting, (labels + shift) % len(CLASSES), labels)
        else:  # colour unrelated to the class: a third of the images are aligned
            colours = torch.randint(0, len(CLASSES), (n,), generator=generator)
        splits[split] = (draw_bars(labels, colours, seed + 1 + i), labels)
        bias[split] = [CLASSES[c] + " background" for c in colours.tolist()]
    staging = folder.with_name(folder.name + ".writing")
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted earlier write
    write_image_folder(staging, splits, CLASSES, bias)
    staging.replace(folder)
    return folder


def build(request: DataRequest) -> FolderSplits:
    """The registry's builder: the folder for ``request.ratio``, written on first use."""
    ratio = request.ratio if request.ratio is not None else SPEC.default_ratio
    folder = data_root(request.root) / "toy-bars" / f"ratio{ratio:g}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    write_toy_bars(folder, ratio)
    size = request.options["image_size"] or SIDE
    return load_folder(folder, image_size=size, root=request.root)


def _name_parts(ratio: float | None, options: Mapping[str, Any], source: str | None) -> list[str]:
    parts = ["toybars", f"ratio{ratio:g}"]
    if options["image_size"] is not None:
        parts.append(f"{options['image_size']}px")
    return parts


SPEC = register_dataset(
    DatasetSpec(
        name="toybars",
        label="Toy bars",
        title="bars of three orientations on class-coloured backgrounds (an example plugin)",
        build=build,
        sources=("drawn and written under the data root on first use",),
        stand_in=False,
        default_model="cnn",
        default_ratio=0.02,
        options=(IMAGE_SIZE_OPTION,),
        name_parts=_name_parts,
    )
)
