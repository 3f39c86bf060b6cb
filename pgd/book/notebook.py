"""What every chapter's setup and provenance cells do: find the device and folders on Colab or
locally, apply the book's figure style, print provenance tables, read benchmark results."""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..core.profiles import Profile, get_profile
from ..core.runtime import (
    DATA_ENV,
    RUNS_ENV,
    cpu_threads,
    data_root,
    display_path,
    print_wrapped,
    provenance,
    resolve_device,
    runs_root,
    show_warnings_briefly,
    wrap,
)
from ..datasets.registry import DATASETS
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
        found = f"no GPU: running on the CPU ({cpu_threads()})"
    env = NotebookEnv(profile, device, data_root(), runs_root(), colab)
    use_book_style()
    show_warnings_briefly()
    pd.set_option("display.max_colwidth", None)  # provenance and descriptions in full
    print(f"{'Colab' if colab else 'local'} run; {found}")
    seeds = ", ".join(map(str, profile.seeds))
    own = {
        n: s.profile_epochs[profile.name]
        for n, s in DATASETS.items()
        if profile.name in s.profile_epochs
    }
    line = f"{profile.describe(own)}; seeds {seeds}; a chapter that sets its own says so"
    print_wrapped(line)
    print(f"data in {display_path(env.data_root)}; checkpoints in {display_path(env.runs_root)}")
    return env


def provenance_table(
    profile: Profile, device: torch.device, data_description: str, epochs: int | None = None
) -> pd.DataFrame:
    """The provenance cell's table: profile, device, data source, versions, code version.

    ``epochs``: the epochs per training stage this chapter's runs train (``config.stage_epochs``);
    without it the row gives the most the profile trains ("at most 20" where the profile trains
    fewer epochs on more data)."""
    if epochs is not None:
        trained = f"{epochs} epoch{'' if epochs == 1 else 's'} per stage"
    elif profile.work is not None:
        trained = f"at most {profile.epochs} epochs per stage"
    else:
        trained = f"{profile.epochs} epochs per stage"
    rows = {"profile": f"{profile.name} ({trained})", "data": data_description}
    rows.update(provenance(device))
    return pd.DataFrame({"value": rows}).rename_axis("provenance")


def mean_spread(
    values, digits: int = 1, *, signed: bool = False, unit: str = "", over: str | None = None
) -> str:
    """``values``' mean and standard deviation in words: ``"37.9 ± 1.5"``, or only the mean where
    there is one value (a spread over one seed is undefined, not zero). ``unit`` follows the
    numbers (``" points"``); ``over`` names what the values are one per (``"seed"``) and adds
    ``" (mean ± std over 3 seeds)"`` or ``" (one seed)"``.

    Example: ``mean_spread(gain, 2, signed=True, unit=" points", over="seed")`` is
    ``"+37.87 ± 1.54 points (mean ± std over 3 seeds)"``.

    Raises:
        ValueError: ``values`` is empty.
    """
    series = pd.Series(values, dtype=float).dropna()
    if series.empty:
        raise ValueError("mean_spread needs at least one value")
    mean = f"{series.mean():{'+' if signed else ''}.{digits}f}"
    if len(series) == 1:
        return f"{mean}{unit}" + (f" (one {over})" if over else "")
    text = f"{mean} ± {series.std():.{digits}f}{unit}"
    return text + (f" (mean ± std over {len(series)} {over}s)" if over else "")


#: Print a message wrapped at the width the site shows (``print_wrapped``), for the chapters'
#: long result lines: ``say(f"This chapter ran in {minutes:.1f} minutes; ", "...")``.
say = print_wrapped


#: An absolute path inside a message: shown the way :func:`display_path` shows paths.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/[^\s,;:()'\"]+")


def report_missing_data(name: str, error: BaseException, instead: str) -> str:
    """Print that dataset ``name`` is not available here, how to get it (``error``'s message,
    the machine's folders shown relative or with ``~``) and what the chapter uses ``instead``,
    wrapped at :data:`~pgd.core.runtime.NOTICE_WIDTH` characters; return the text.

    Example: ``report_missing_data("CelebA", error, "the stand-in of drawn faces")``.
    """
    how = _ABSOLUTE_PATH.sub(lambda m: display_path(m.group(0)), " ".join(str(error).split()))
    paragraphs = [f"{name} is not available here, so this run uses {instead}.", f"To get it: {how}"]
    text = wrap("\n".join(paragraphs))
    print(text)
    return text


BENCHMARK_URL = "https://raw.githubusercontent.com/pgd-book/pgd-book/main/benchmarks/results/"

#: Where the committed results tables are looked for, in order: this checkout's
#: ``benchmarks/results``, then the copy a pip install puts in ``<prefix>/share/pgd-book/results``
#: (pyproject's data-files).
RESULTS_FOLDERS = (
    Path(__file__).resolve().parents[2] / "benchmarks" / "results",
    Path(sysconfig.get_path("data")) / "share" / "pgd-book" / "results",
)


def benchmark_results(name: str = "per_sample_norms_cpu.csv") -> pd.DataFrame:
    """A results table written by ``benchmarks/`` (``make bench``) or the comparison grid
    (``make grid``): from this checkout, else from the copy installed with the package (Colab),
    else from the repository on GitHub.

    Raises:
        FileNotFoundError: found nowhere; says how to make it.
    """
    for folder in RESULTS_FOLDERS:
        if (folder / name).is_file():
            return pd.read_csv(folder / name)
    try:
        return pd.read_csv(BENCHMARK_URL + name)
    except Exception as error:  # no network, or not published
        places = ", ".join(display_path(f) for f in RESULTS_FOLDERS)
        raise FileNotFoundError(
            f"results table {name} is neither in {places} nor at {BENCHMARK_URL}: run "
            "`make bench` or `make grid` in a clone of the repository"
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
