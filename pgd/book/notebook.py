"""What every chapter's setup and provenance cells do: find the device and folders on Colab or
locally, apply the book's figure style, print provenance tables, read benchmark results."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..core.profiles import Profile, get_profile
from ..core.runtime import (
    DATA_ENV,
    RUNS_ENV,
    data_root,
    display_path,
    provenance,
    resolve_device,
    runs_root,
    show_warnings_briefly,
)
from .plots import use_book_style


@dataclass
class NotebookEnv:
    """What a chapter's setup cell found: profile, device and folders."""

    profile: Profile
    device: torch.device
    data_root: Path
    runs_root: Path
    colab: bool


def notebook_setup(use_drive: bool = False) -> NotebookEnv:
    """The work of every chapter's setup cell, on Colab and locally.

    On Colab, data and checkpoints go to ``/content/pgd-book`` or, with ``use_drive``, to
    ``MyDrive/pgd-book`` on Google Drive (mounted here), so that a disconnected runtime resumes
    where it stopped. Elsewhere ``$PGD_DATA`` and ``$PGD_RUNS`` (or their defaults) apply. Prints
    the profile, the device found and the folders.
    """
    colab = "google.colab" in sys.modules
    if colab:
        base = Path("/content/pgd-book")
        if use_drive:
            from google.colab import drive  # type: ignore[import-not-found]

            drive.mount("/content/drive")
            base = Path("/content/drive/MyDrive/pgd-book")
        os.environ.setdefault(DATA_ENV, str(base / "data"))
        os.environ.setdefault(RUNS_ENV, str(base / "runs"))
    profile = get_profile()
    device = resolve_device("auto")
    if device.type == "cuda":
        found = f"GPU found: {torch.cuda.get_device_name(device.index or 0)}"
    elif colab:
        found = "no GPU: Runtime > Change runtime type > GPU makes the full profile much faster"
    else:
        found = f"no GPU: running on the CPU ({torch.get_num_threads()} threads)"
    env = NotebookEnv(profile, device, data_root(), runs_root(), colab)
    use_book_style()
    show_warnings_briefly()
    pd.set_option("display.max_colwidth", None)  # provenance and descriptions in full
    print(f"{'Colab' if colab else 'local'} run; {found}")
    seeds = ", ".join(map(str, profile.seeds))
    print(f"profile {profile.name!r}: {profile.epochs} epochs per training stage; seeds {seeds}")
    print(f"data in {display_path(env.data_root)}; checkpoints in {display_path(env.runs_root)}")
    return env


def provenance_table(profile: Profile, device: torch.device, data_description: str) -> pd.DataFrame:
    """The provenance cell's table: profile, device, data source, versions, code version."""
    rows = {
        "profile": f"{profile.name} ({profile.epochs} epochs per stage)",
        "data": data_description,
    }
    rows.update(provenance(device))
    return pd.DataFrame({"value": rows}).rename_axis("provenance")


BENCHMARK_URL = "https://raw.githubusercontent.com/pgd-book/pgd-book/main/benchmarks/results/"


def benchmark_results(name: str = "per_sample_norms_cpu.csv") -> pd.DataFrame:
    """A results table written by ``benchmarks/`` (``make bench``): from this checkout when the
    package is installed from it, else (on Colab) from the repository on GitHub.

    Raises:
        FileNotFoundError: not in this checkout and not downloadable; says how to make it.
    """
    local = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / name
    if local.is_file():
        return pd.read_csv(local)
    try:
        return pd.read_csv(BENCHMARK_URL + name)
    except Exception as error:  # no network, or not published
        raise FileNotFoundError(
            f"benchmark results {name} are neither at {local} nor at {BENCHMARK_URL}: run "
            "`make bench` (or python benchmarks/per_sample_norms.py) in a clone of the repository"
        ) from error


def name_groups(table: pd.DataFrame, splits) -> pd.DataFrame:
    """``table`` (one row per group, columns ``label`` and ``bias``: a run's ``test_groups``, or
    several stacked) with a ``group`` column "target / bias" in the words of ``splits``
    (``class_names`` and ``bias_names``, e.g. "Blond_Hair / not Male")."""
    names = [
        f"{splits.class_names[t]} / {splits.bias_names[b]}"
        for t, b in zip(table["label"].tolist(), table["bias"].tolist(), strict=True)
    ]
    return table.assign(group=names)
