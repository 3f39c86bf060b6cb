"""Files that must never be half-written or silently wrong: atomic saves, safe loads, checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import torch

from .errors import PgdError

T = TypeVar("T")


class CorruptFileError(PgdError):
    """A file exists but cannot be read back, or its content does not match its checksum."""


@contextmanager
def _atomic_file(path: Path, mode: str) -> Iterator[IO]:
    """An open temporary file beside ``path`` that replaces ``path`` once written and synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``. A crash at any moment leaves either the old file or the new one, never a mix."""
    path = Path(path)
    with _atomic_file(path, "wb") as file:
        torch.save(obj, file)
    return path


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (no arbitrary code runs from the file).

    Raises:
        FileNotFoundError: there is no such file.
        CorruptFileError: the file exists but cannot be unpickled (truncated, overwritten, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged archive
        raise CorruptFileError(
            f"{path} cannot be read ({type(error).__name__}: {error})"
        ) from error


def cached(
    path: str | os.PathLike,
    compute: Callable[[], Any],
    read: Callable[[Any], T],
    *,
    stale: Callable[[Exception], None] | None = None,
) -> T:
    """A value computed once and kept in ``path``.

    The file, where there is one, is loaded with :func:`safe_load` and handed to ``read``, which
    returns the value or raises (:class:`CorruptFileError`, or the ``KeyError`` / ``TypeError``
    of a file in another format) when the file is damaged, stale or of another shape. Then, after
    ``stale(error)`` (a warning, say) where given, ``compute()`` makes what to store, which is
    saved atomically over the old file and read the same way.
    """
    path = Path(path)
    if path.is_file():
        try:
            return read(safe_load(path))
        except (CorruptFileError, KeyError, TypeError, IndexError, AttributeError) as error:
            if stale is not None:
                stale(error)
    stored = compute()
    atomic_save(stored, path)
    return read(stored)


def tensor_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (in key order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically, like :func:`atomic_save`."""
    path = Path(path)
    with _atomic_file(path, "w") as file:
        file.write(text)
    return path


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``target`` the same file as ``source``: a hard link where the file system allows one
    (no extra space), else a copy (a mounted Google Drive folder, another device)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """An empty folder beside ``folder`` (``.<name>.writing``) to write into; when the block ends
    without an error it replaces ``folder`` (an older one is removed first) in one rename, so a
    half-written folder never takes its place. After an error the staging folder stays, and the
    next attempt clears it."""
    folder = Path(folder)
    staging = folder.parent / f".{folder.name}.writing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
