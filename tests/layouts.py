"""Write datasets in their real on-disk layouts, small and random, for the loaders' tests.

A plain module (not ``conftest.py``) so that tests import it the same way under ``pytest`` and
``python -m pytest``: ``from layouts import write_celeba_layout``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pgd  # noqa: F401  (makes torchvision importable first)
from pgd.datasets.celeba import ATTRIBUTES
from pgd.datasets.cmnist import Digits


def synthetic_digits(n_train: int = 200, n_test: int = 50, seed: int = 0) -> Digits:
    """Random blob 'digits' for tests that need speed rather than realism."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n_train + n_test, 28, 28, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(n_train + n_test) % 10
    return Digits(
        images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], "synthetic", "test"
    )


def write_mnist_raw(
    folder: Path, n_train: int = 30, n_test: int = 10, compress: bool = False, name: str = "MNIST"
):
    """Write MNIST's four IDX files, in the layout torchvision reads (<root>/<name>/raw/)."""
    raw = folder / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (torch.rand(n, 28, 28, generator=g) * 255).to(torch.uint8)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28)
            + images.numpy().tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.numpy().tobytes(),
        }
        for name, payload in files.items():
            if compress:
                (raw / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (raw / name).write_bytes(payload)
    return raw


def write_celeba_layout(
    folder: Path, n: int = 24, kaggle: bool = False, seed: int = 0
) -> tuple[Path, dict]:
    """Write CelebA's on-disk layout with ``n`` small random JPEG faces: official (txt files,
    ``img_align_celeba/``) or Kaggle's (csv files, ``img_align_celeba/img_align_celeba/``).

    Returns the folder and ``{file name: (partition, Blond_Hair, Male)}``.
    """
    rng = np.random.default_rng(seed)
    images = folder / "img_align_celeba"
    if kaggle:
        images = images / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    truth, attr_rows, part_rows = {}, [], []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name, quality=80)
        values = rng.choice([-1, 1], size=len(ATTRIBUTES))
        part = 0 if i < n * 2 // 3 else (1 if i < n * 5 // 6 else 2)
        attr_rows.append((name, values))
        part_rows.append((name, part))
        blond, male = ATTRIBUTES.index("Blond_Hair"), ATTRIBUTES.index("Male")
        truth[name] = (part, int(values[blond] == 1), int(values[male] == 1))
    if kaggle:
        lines = ["image_id," + ",".join(ATTRIBUTES)]
        lines += [name + "," + ",".join(str(v) for v in values) for name, values in attr_rows]
        (folder / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
        lines = ["image_id,partition"] + [f"{name},{part}" for name, part in part_rows]
        (folder / "list_eval_partition.csv").write_text("\n".join(lines) + "\n")
    else:
        lines = [str(n), " ".join(ATTRIBUTES) + " "]
        lines += [name + " " + " ".join(f"{v:2d}" for v in values) for name, values in attr_rows]
        (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        lines = [f"{name} {part}" for name, part in part_rows]
        (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder, truth


def write_bffhq_layout(
    root: Path,
    per_group: int = 3,
    pct: str = "0.5pct",
    *,
    aligned: int | None = None,
    size: int = 128,
) -> Path:
    """Write BFFHQ's distributed layout under ``root/bffhq`` with small random PNG faces:
    ``<pct>/align/<t>/<id>_<t>_<t>.png`` (``aligned`` per class, default ``3 * per_group``),
    ``<pct>/conflict/<t>/<id>_<t>_<b>.png`` (b != t), ``valid/`` and ``test/`` with every
    group; ``size`` x ``size`` pixels."""
    rng = np.random.default_rng(0)
    folder = root / "bffhq"
    number = 0

    def write(where: Path, t: int, b: int) -> None:
        nonlocal number
        number += 1
        where.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(where / f"{number:05d}_{t}_{b}.png")

    for t in (0, 1):
        for _ in range(per_group * 3 if aligned is None else aligned):
            write(folder / pct / "align" / str(t), t, t)
        for _ in range(per_group):
            write(folder / pct / "conflict" / str(t), t, 1 - t)
        for split in ("valid", "test"):
            for b in (0, 1):
                for _ in range(per_group):
                    write(folder / split, t, b)
    return folder


def write_folder_layout(
    root: Path,
    per_class: int = 50,
    *,
    conflicting: int = 5,
    splits: tuple[str, ...] = ("train", "test"),
    bias_csv: bool = True,
    classes: tuple[str, str] = ("disc", "square"),
    seed: int = 0,
) -> Path:
    """An image folder of two classes (a disc or a square on a coloured background, of varied
    sizes and image modes), ``per_class`` images per class and split, ``conflicting`` of them with
    the other class's background; ``bias.csv`` names each background (warm / cool)."""
    rng = np.random.default_rng(seed)
    rows = ["path,bias"]
    modes = ("RGB", "RGBA", "L", "P")
    for split in splits:
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                bias = 1 - label if i < conflicting else label
                side = int(rng.integers(24, 48))
                image = render_stand_in(label, bias, side, side + 4, rng).convert(modes[i % 4])
                rel = f"{split}/{name}/{i:03d}.png"
                image.save(root / rel)
                rows.append(f"{rel},{('warm', 'cool')[bias]}")
    if bias_csv:
        (root / "bias.csv").write_text("\n".join(rows) + "\n")
    return root


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
