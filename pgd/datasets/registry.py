"""The registered datasets: name -> :class:`~pgd.datasets.base.DatasetSpec`.

Every dataset module defines one ``SPEC`` (its builder, data sources, default model and ratio,
and its own settings); adding a dataset is writing such a module and listing it here.
"""

from __future__ import annotations

from ..core.params import lookup, register
from . import bffhq, celeba, cmnist, folder
from .base import DataRequest, DatasetSpec, Splits

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (cmnist.SPEC, celeba.SPEC, bffhq.SPEC, folder.SPEC)
}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry (a plugin's import calls it; see :mod:`pgd.core.plugins`):
    ``--dataset NAME``, its settings on the command line and in ``ExperimentConfig``, ``list``.
    Registering the same spec again changes nothing.

    Raises:
        ValueError: another dataset has this name.
    """
    return register(DATASETS, spec, "dataset")


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset ``name``.

    Raises:
        ValueError: no such dataset (the message lists the registered ones).
    """
    return lookup(DATASETS, name, "dataset")


def build_dataset(name: str, request: DataRequest) -> Splits:
    """Build dataset ``name`` for ``request``; a stand-in says so (its notice is printed once
    per process: a notebook that runs ten experiments on a stand-in says so once)."""
    data = get_dataset(name).build(request)
    if data.source == "stand-in":
        data.announce()  # the stand-in is never used silently
    return data
