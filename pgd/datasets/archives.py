"""Archives and downloads: safe extraction of zip and tar files, and a diagnosis of what went
wrong with a download (Google Drive's quota page saved as the archive, a truncated file)."""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from ..core.errors import PgdError


class UnsafeArchiveError(PgdError):
    """An archive holds a member that would land outside the extraction folder."""


def _check_member(name: str, dest: Path) -> Path:
    target = (dest / name).resolve()
    if name.startswith(("/", "\\")) or ".." in Path(name).parts or not target.is_relative_to(dest):
        raise UnsafeArchiveError(
            f"archive member {name!r} would be written outside {dest}; refusing to extract it. "
            "The archive is not the one the dataset's authors distribute: download it again "
            "from the official link."
        )
    return target


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip or tar archive into ``dest``, refusing any member that would escape it
    (absolute paths, ``..``, links, devices). Members are extracted into a temporary folder
    beside ``dest`` first and moved into place at the end, so an interrupted extraction leaves
    nothing half-written in ``dest``.

    Raises:
        UnsafeArchiveError: a member's path escapes ``dest`` or is a link or device.
        DownloadError: the archive is damaged or not an archive (see :func:`diagnose_download`).
    """
    archive, dest = Path(archive), Path(dest).resolve()
    problem = diagnose_download(archive)
    if problem is not None:
        raise DownloadError(problem)
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _check_member(info.filename, staging.resolve())
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode == 0o120000:
                        raise UnsafeArchiveError(f"archive member {info.filename!r} is a link")
                z.extractall(staging)
        else:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for member in members:
                    _check_member(member.name, staging.resolve())
                    if not (member.isfile() or member.isdir()):
                        raise UnsafeArchiveError(
                            f"archive member {member.name!r} is a link or device; refusing it"
                        )
                t.extractall(staging, members=members)  # members checked above
        for item in staging.iterdir():
            target = dest / item.name
            if target.exists():
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            shutil.move(str(item), str(target))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        raise DownloadError(
            f"{archive} could not be extracted ({type(error).__name__}: {error}); it is damaged "
            "or incomplete: delete it and download it again."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


class DownloadError(PgdError):
    """A downloaded file is not what it should be; the message says what to do next."""


def diagnose_download(path: str | os.PathLike, expected_size: int | None = None) -> str | None:
    """What is wrong with a downloaded archive, in words, or None if it looks right.

    Recognises the Google Drive quota / warning page saved in place of the file (an HTML page),
    an empty or truncated zip or tar file, and a size different from ``expected_size``.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path} does not exist"
    size = path.stat().st_size
    if size == 0:
        return f"{path} is empty: the download did not start. Delete it and try again."
    with open(path, "rb") as file:
        head = file.read(2048).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:512]:
        quota = b"quota" in head or b"too many users" in head
        with open(path, "rb") as file:
            quota = quota or b"quota" in file.read(1 << 20).lower()
        why = (
            "Google Drive's 'download quota exceeded' page"
            if quota
            else "an HTML page (Google Drive's warning or sign-in page)"
        )
        return (
            f"{path} is {why}, not the archive. Google Drive limits how often a public file can "
            "be downloaded per day. Delete the file and either try again tomorrow, or download "
            "the archive in a browser (or from a mirror such as Kaggle) and put it, or the "
            "folder extracted from it, into the data folder."
        )
    if expected_size is not None and size != expected_size:
        return (
            f"{path} has {size:,} bytes, expected {expected_size:,}: the download is incomplete "
            "or a different file. Delete it and download it again."
        )
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                z.infolist()
        except zipfile.BadZipFile as error:
            return f"{path} is a damaged zip file ({error}). Delete it and download it again."
        return None
    if path.suffix == ".zip" or head.startswith(b"pk"):
        return (
            f"{path} is not a complete zip file (truncated download?). Delete it and download "
            "it again."
        )
    try:
        with tarfile.open(path) as t:
            t.getmembers()
    except (tarfile.TarError, EOFError, OSError) as error:
        return (
            f"{path} is neither a zip nor a complete tar archive ({error}). Delete it and "
            "download it again."
        )
    return None
