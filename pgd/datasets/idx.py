"""MNIST's file format (IDX), read without torchvision: MNIST and Fashion-MNIST copied by hand,
gzipped or not, are read (and unpacked for torchvision) without the network."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch
from torch import Tensor

from .base import DataUnavailableError

_DTYPES = {0x08: torch.uint8}


def read_idx(path: str | os.PathLike) -> Tensor:
    """An IDX file (MNIST's format), gzipped or not, as a uint8 tensor.

    Raises:
        DataUnavailableError: the file is truncated or not an IDX file of bytes (named).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise DataUnavailableError(
            f"{path} cannot be read ({type(error).__name__}: {error}): it is damaged or "
            "incomplete. Delete it and fetch it again."
        ) from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataUnavailableError(f"{path} is not an IDX file of bytes (MNIST's format)")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    start = 4 + 4 * dims
    expected = start + int(torch.Size(shape).numel())
    if len(data) != expected:
        raise DataUnavailableError(
            f"{path} has {len(data):,} bytes where its header announces {expected:,}: the file "
            "is truncated or damaged. Delete it and fetch it again."
        )
    values = torch.frombuffer(bytearray(data[start:]), dtype=torch.uint8)
    return values.reshape(shape).clone()


def unpack_gzipped(folder: Path, names: tuple[str, ...]) -> list[str]:
    """Unpack ``<name>.gz`` into ``<name>`` in ``folder`` wherever only the gzipped file is
    there, after reading it through (a damaged file raises, named); returns the names unpacked.
    torchvision's MNIST reads the unpacked files only (it unpacks in its download step)."""
    done = []
    for name in names:
        packed, plain = folder / f"{name}.gz", folder / name
        if plain.is_file() or not packed.is_file():
            continue
        read_idx(packed)  # the whole file, checked
        tmp = plain.with_suffix(".unpacking")
        with gzip.open(packed, "rb") as source, open(tmp, "wb") as target:
            target.write(source.read())
        os.replace(tmp, plain)
        done.append(name)
    return done
