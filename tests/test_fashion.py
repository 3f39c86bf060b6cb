"""Fashion-MNIST read from its IDX files and written as chapter 8's image folder."""

from __future__ import annotations

import json

import pytest
import torch
from layouts import synthetic_digits, write_mnist_raw

from pgd.datasets import fashion
from pgd.datasets.base import DataUnavailableError
from pgd.datasets.folder import load_folder


def test_idx_files_are_read_gzipped_or_not_and_truncation_is_named(tmp_path):
    for compress in (False, True):
        raw = write_mnist_raw(tmp_path / str(compress), n_train=12, n_test=4, compress=compress)
        suffix = ".gz" if compress else ""
        images = fashion.read_idx(raw / f"train-images-idx3-ubyte{suffix}")
        labels = fashion.read_idx(raw / f"train-labels-idx1-ubyte{suffix}")
        assert images.shape == (12, 28, 28) and images.dtype == torch.uint8
        assert labels.tolist() == [i % 10 for i in range(12)]
    path = raw.parent.parent / "cut"
    path.write_bytes((raw.parent / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes()[:-40])
    path = path.rename(path.with_suffix(".gz"))
    with pytest.raises(DataUnavailableError, match="cut"):
        fashion.read_idx(path)


def test_files_that_are_not_the_release_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "DEBIAN_FOLDER", tmp_path / "no-debian")
    write_mnist_raw(tmp_path, n_train=30, n_test=10, compress=True, name="FashionMNIST")
    with pytest.raises(DataUnavailableError, match="not 60,000 and 10,000"):
        fashion.load_fashion_mnist(tmp_path, download=False)
    with pytest.raises(DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        fashion.load_fashion_mnist(tmp_path / "empty", download=False)


@pytest.mark.skipif(
    not fashion.DEBIAN_FOLDER.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (`sudo make system-deps` installs it)",
)
def test_the_debian_package_gives_the_release(tmp_path):
    data = fashion.load_fashion_mnist(tmp_path, download=False)
    assert data.train_images.shape == (60_000, 28, 28) and len(data.test_labels) == 10_000
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10


def test_the_border_folder_follows_its_recipe(tmp_path):
    digits = synthetic_digits(n_train=600, n_test=200)
    names = tuple(f"class {c}" for c in range(10))
    out = fashion.write_border_folder(tmp_path / "f", digits, ratio=0.1, class_names=names)
    data = load_folder(out, image_size=28)
    assert data.valid_note == "valid/ folder" and (len(data.train), len(data.valid)) == (540, 60)
    # class colours for 90% of train, random colours in test; bias values are colour names
    share = float(data.train.is_conflicting.float().mean())
    assert 0.05 < share < 0.15
    assert float(data.test.is_conflicting.float().mean()) > 0.8
    assert set(data.bias_values["train"]) <= set(fashion.COLOURS)
    image = data.train.images[0]  # the border carries the colour, the inside stays grey
    assert not torch.equal(image[0, 0], image[1, 0]) or not torch.equal(image[1, 0], image[2, 0])
    assert torch.equal(image[0, 14, 5:23], image[1, 14, 5:23])
    recipe = json.loads((out / fashion.RECIPE).read_text())
    assert recipe["ratio"] == 0.1 and recipe["classes"] == list(names)
    before = (out / "bias.csv").stat().st_mtime_ns
    assert fashion.write_border_folder(out, digits, ratio=0.1, class_names=names) == out
    assert (out / "bias.csv").stat().st_mtime_ns == before  # same recipe: reused
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        fashion.write_border_folder(foreign, digits)
