"""Fashion-MNIST (Xiao et al., 2017) written out as an image folder with a spurious cue: the
worked example of chapter 8, "PGD on your own data".

Fashion-MNIST has MNIST's format and size (60,000 training and 10,000 test images, 28 x 28, ten
classes of clothes). :func:`write_border_folder` paints a coloured border around every image: in
the training and validation splits the colour of the image's class (the colours of Colored MNIST)
except for a share ``ratio`` of *bias-conflicting* images, which get a random other colour; in the
test split the colour is uniformly random, so test accuracy measures how well a model reads the
clothes rather than the border. The border colour of every image goes into ``bias.csv``, and the
recipe (source, ratio, seed, border width) into ``PGD_FOLDER.json``: a folder with the same recipe
is reused, anything else is never overwritten.

Where the files come from (:func:`load_fashion_mnist`), in this order: ``<root>/FashionMNIST/raw``
(the four IDX files, gzipped or not: torchvision's layout), Debian's ``dataset-fashion-mnist``
package (``/usr/share/datasets/fashion-mnist``), torchvision's download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ..core import compat
from ..core.runtime import data_root, display_path
from ..core.storage import staged_folder
from .base import DataUnavailableError
from .cmnist import PALETTE, Digits
from .folder import write_image_folder
from .idx import read_idx

CLASSES = (
    "T-shirt or top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
#: The border colours, one per class (Colored MNIST's palette).
COLOURS = (
    "crimson",
    "teal",
    "yellow",
    "cerulean",
    "orange",
    "purple",
    "cyan",
    "pink",
    "lime",
    "maroon",
)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
RECIPE = "PGD_FOLDER.json"


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _read_folder(folder: Path) -> dict[str, Tensor] | None:
    found = {key: _find(folder, name) for key, name in FILES.items()}
    if any(path is None for path in found.values()):
        return None
    return {key: read_idx(path) for key, path in found.items()}


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True) -> Digits:
    """Fashion-MNIST's 60,000 training and 10,000 test images (``(N, 28, 28)`` uint8).

    Args:
        root: data root (default ``$PGD_DATA``); looked in at ``<root>/FashionMNIST/raw``.
        download: try torchvision's download when no local copy is found.

    Raises:
        DataUnavailableError: no copy found and none could be downloaded; says how to get one.
    """
    root = data_root(root)
    raw = root / "FashionMNIST" / "raw"
    tensors, source = None, "torchvision's download"
    for folder, where in (
        (raw, display_path(raw)),
        (DEBIAN_FOLDER, "Debian's dataset-fashion-mnist"),
    ):
        tensors = _read_folder(folder)
        if tensors is not None:
            source = where
            break
    else:
        if download:
            try:
                datasets = compat.import_torchvision().datasets
                datasets.FashionMNIST(str(root), train=True, download=True)
                datasets.FashionMNIST(str(root), train=False, download=True)
                tensors = _read_folder(raw)
            except (RuntimeError, OSError, ValueError) as error:
                reason = (str(error).strip().splitlines() or ["no details"])[-1]
                source = f"(download failed: {reason})"
        if tensors is None:
            raise DataUnavailableError(
                f"Fashion-MNIST is neither in {display_path(raw)} nor in {DEBIAN_FOLDER}, and "
                f"{'it could not be downloaded ' + source if download else 'download was off'}. "
                "On Debian or Ubuntu: sudo apt-get install dataset-fashion-mnist; on any machine "
                "with internet, load_fashion_mnist(download=True); or copy the four files "
                f"({', '.join(v + '.gz' for v in FILES.values())}) into {display_path(raw)}."
            )
    counts = (len(tensors["train_images"]), len(tensors["test_images"]))
    if counts != (60_000, 10_000) or len(tensors["train_labels"]) != counts[0]:
        raise DataUnavailableError(
            f"Fashion-MNIST from {source} has {counts[0]:,} training and {counts[1]:,} test "
            "images, not 60,000 and 10,000: the files are not the release. Fetch them again."
        )
    return Digits(
        tensors["train_images"],
        tensors["train_labels"].long(),
        tensors["test_images"],
        tensors["test_labels"].long(),
        "fashion-mnist",
        f"Fashion-MNIST (60,000 training + 10,000 test images) from {source}",
    )


def add_border(images: Tensor, colours: Tensor, width: int = 3) -> Tensor:
    """Grey ``(N, H, W)`` uint8 images as ``(N, 3, H, W)`` RGB with a ``width``-pixel border in
    ``colours`` (``(N,)`` indices into Colored MNIST's palette)."""
    rgb = images.unsqueeze(1).expand(-1, 3, -1, -1).clone()
    paint = (PALETTE[colours] * 255).round().to(torch.uint8)[:, :, None, None]
    mask = torch.ones(images.shape[1:], dtype=torch.bool)
    mask[width:-width, width:-width] = False
    rgb[:, :, mask] = paint.expand(-1, -1, int(mask.sum()), 1)[..., 0]
    return rgb


def border_colours(labels: Tensor, ratio: float | None, generator: torch.Generator) -> Tensor:
    """Each image's border colour: its class's, except with probability ``ratio`` a uniformly
    random other one; ``ratio=None``: uniformly random, independent of the class (the test set)."""
    if ratio is None:
        return torch.randint(0, len(COLOURS), labels.shape, generator=generator)
    other = torch.rand(labels.shape, generator=generator) < ratio
    shift = torch.randint(1, len(COLOURS), labels.shape, generator=generator)
    return torch.where(other, (labels + shift) % len(COLOURS), labels)


def write_border_folder(
    out: str | os.PathLike,
    images: Digits,
    *,
    ratio: float = 0.01,
    width: int = 3,
    seed: int = 0,
    valid_fraction: float = 0.1,
    max_train: int | None = None,
    max_test: int | None = None,
    class_names: tuple[str, ...] = CLASSES,
) -> Path:
    """Write ``images`` as an image folder with class-coloured borders (see the module
    docstring) into ``out``, or reuse ``out`` if it holds a folder of the same recipe.

    Args:
        ratio: share of bias-conflicting images in train and valid.
        width: border width in pixels.
        seed: seeds the colours and the train/valid split.
        valid_fraction: share of the training images written to ``valid/``.
        max_train, max_test: keep only the first images (a small slice for quick checks).
        class_names: the class folders' names, by label.

    Raises:
        FileExistsError: ``out`` holds something else (nothing is overwritten).
    """
    out = Path(out)
    recipe = {
        "source": images.description,
        "ratio": ratio,
        "width": width,
        "seed": seed,
        "valid_fraction": valid_fraction,
        "max_train": max_train,
        "max_test": max_test,
        "classes": list(class_names),
    }
    marker = out / RECIPE
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return out
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise FileExistsError(f"{out} holds files that pgd did not write; choose another folder")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images.train_labels), generator=generator)
    train_x, train_y = images.train_images[order], images.train_labels[order]
    if max_train is not None:
        train_x, train_y = train_x[:max_train], train_y[:max_train]
    test_x, test_y = images.test_images[:max_test], images.test_labels[:max_test]
    cut = len(train_y) - round(valid_fraction * len(train_y))
    parts = {
        "train": (train_x[:cut], train_y[:cut], ratio),
        "valid": (train_x[cut:], train_y[cut:], ratio),
        "test": (test_x, test_y, None),
    }
    splits, bias = {}, {}
    for split, (x, y, share) in parts.items():
        colours = border_colours(y, share, generator)
        splits[split] = (add_border(x, colours, width), y)
        bias[split] = [COLOURS[c] for c in colours.tolist()]
    with staged_folder(out) as staging:
        write_image_folder(staging, splits, class_names, bias=bias)
        (staging / RECIPE).write_text(json.dumps(recipe, indent=1) + "\n")
    return out
