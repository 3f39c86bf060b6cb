"""PGD and its baselines side by side: a grid of runs over datasets, ratios, methods and seeds.

:func:`run_grid` runs every cell (one dataset, ratio, method and seed) with
:func:`pgd.experiments.pipeline.run`, writes each finished cell to ``<out>/cells/<run name>.json``
at once (atomically), and rewrites the tidy table ``<out>/results.csv`` after every cell: one
row per dataset / ratio / method / seed with every metric and the wall time. Run it again after an
interruption and finished cells are read back, not recomputed; an unfinished cell resumes from
its last epoch checkpoint.

Hyper-parameters that a method has and PGD does not (JTT's lambda, GroupDRO's step size) are
chosen per dataset and ratio on the validation split only, at the grid's first seed: each
candidate is run, and the one with the highest validation group-mean accuracy (the mean over
(label, bias) groups, an estimate of unbiased accuracy that reads the validation set's bias
labels, as JTT's and GroupDRO's papers do) is used for every seed. The candidates and the choice
are written to ``<out>/tuning.csv``. The test split is never looked at before the choice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..core.profiles import get_profile
from ..core.runtime import code_fingerprint
from ..core.runtime import data_root as resolve_data_root
from ..core.storage import atomic_write_text
from ..datasets.base import check_ratio
from ..datasets.cmnist import load_digits
from ..datasets.registry import get_dataset
from ..methods.registry import METHODS
from .config import ExperimentConfig
from .pipeline import run

#: Grid entries beyond one per registered method: PGD with its two scores.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "pgd": {
        "pgd": {"score_layers": "last", "label": "PGD (last layer)"},
        "pgd_all": {"score_layers": "all", "label": "PGD (all layers)"},
    },
}


def _grid_entries() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every registered method in the grid's order (methods that read no bias labels, PGD, the
    oracles), each PGD variant its own entry: ``(name -> config fields, name -> label)``."""
    specs = list(METHODS.values())
    ordered = [m for m in specs if not m.oracle and m.name not in VARIANTS]
    ordered += [m for m in specs if not m.oracle and m.name in VARIANTS]
    ordered += [m for m in specs if m.oracle]
    fields: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    for spec in ordered:
        for name, variant in VARIANTS.get(spec.name, {spec.name: {"label": spec.label}}).items():
            settings = {k: v for k, v in variant.items() if k != "label"}
            fields[name] = {"method": spec.name, **settings}
            labels[name] = variant["label"]
    return fields, labels


#: Method names of the grid (-> their configuration fields) and how tables and figures call
#: them (oracles say so).
GRID_METHODS, LABELS = _grid_entries()

#: Candidates tried on the validation split (ExperimentConfig field -> values). JTT's
#: identification epochs T = 1 follow its CelebA setting; lambda and eta are searched.
TUNING: dict[str, dict[str, tuple[float, ...]]] = {
    "jtt": {"jtt_upweight": (10.0, 50.0, 100.0)},
    "groupdro": {"dro_step": (0.01, 0.1)},
}
JTT_EPOCHS = 1

#: The validation metric the tuning maximises.
SELECTION_METRIC = "valid_group_mean_accuracy"


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``all`` or a comma-separated list of :data:`GRID_METHODS` names, in the grid's order."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip().lower() for n in names if n.strip()]
    if names == ["all"]:
        return list(GRID_METHODS)
    unknown = [n for n in names if n not in GRID_METHODS]
    if unknown or not names:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(GRID_METHODS)} or all"
        )
    return [n for n in GRID_METHODS if n in names]


def parse_ratios(text: str | Iterable[float] | None) -> list[float | None]:
    """Comma-separated bias-conflicting ratios, each in (0, 1)."""
    if text is None:
        return [None]
    values = text.split(",") if isinstance(text, str) else list(text)
    try:
        return [check_ratio(float(v)) for v in values if str(v).strip()]
    except ValueError as error:
        raise ValueError(f"bad --ratios {text!r}: {error}") from None


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a grid method name and its full configuration."""

    method: str
    config: ExperimentConfig
    tuning: bool = False  # a candidate of the validation search (seed: the grid's first)

    @property
    def key(self) -> str:
        return self.config.name()


def _config(
    method: str, dataset: str, ratio: float | None, seed: int, base: dict[str, Any]
) -> ExperimentConfig:
    fields = {**base, **GRID_METHODS[method], "dataset": dataset, "ratio": ratio, "seed": seed}
    if method == "jtt":
        fields["jtt_epochs"] = JTT_EPOCHS
    return ExperimentConfig(**fields)


def _candidates(config: ExperimentConfig, method: str) -> list[ExperimentConfig]:
    grid = TUNING.get(method, {})
    out = [config]
    for name, values in grid.items():
        out = [replace(c, **{name: v}) for c in out for v in values]
    return out


def _row(cell: Cell, result: Any, seconds: float) -> dict[str, Any]:
    test, valid = result.metrics["test"], result.metrics["valid"]
    config = cell.config
    hparams = config.method_hparams()
    return {
        "dataset": config.dataset,
        "source": result.data["source"],
        "ratio": config.ratio,
        "method": cell.method,
        "label": LABELS[cell.method],
        "oracle": config.is_oracle,
        "seed": config.seed,
        "hparams": ", ".join(f"{k}={v:g}" for k, v in hparams.items()),
        "profile": config.profile_spec.name,
        "epochs": config.profile_spec.epochs,
        "model": config.model,
        "train_samples": result.data["train_samples"],
        "accuracy": 100 * test["accuracy"],
        "aligned_accuracy": 100 * test["aligned_accuracy"],
        "conflicting_accuracy": 100 * test["conflicting_accuracy"],
        "group_mean_accuracy": 100 * test["group_mean_accuracy"],
        "worst_group_accuracy": 100 * test["worst_group_accuracy"],
        "valid_accuracy": 100 * valid["accuracy"],
        "valid_group_mean_accuracy": 100 * valid["group_mean_accuracy"],
        "conflicting_mass": result.conflicting_mass,
        "seconds": seconds,
        "device": result.provenance.get("device"),
        "code": code_fingerprint(),
        "run": cell.key,
    }


@dataclass
class GridResult:
    """What :func:`run_grid` returns: the tidy results (one row per cell of the grid), the
    validation search, and where they were written."""

    results: pd.DataFrame
    tuning: pd.DataFrame
    folder: Path
    computed: int  # cells run by this call (the rest were read back)

    def summary(self, metric: str = "accuracy") -> pd.DataFrame:
        """See :func:`summary_table`."""
        return summary_table(self.results, metric)


def summary_table(results: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """``mean +- std`` over seeds of ``metric``: one row per method (in grid order, oracles
    last), one column per (dataset, ratio); the sample standard deviation (ddof 1)."""
    frame = results.copy()
    frame["ratio"] = frame["ratio"].map(lambda r: "-" if pd.isna(r) else f"{100 * r:g}%")
    stats = frame.groupby(["method", "dataset", "ratio"], sort=False)[metric].agg(
        ["mean", "std", "count"]
    )
    text = stats.apply(
        lambda r: f"{r['mean']:.2f} ± {r['std']:.2f}" if r["count"] > 1 else f"{r['mean']:.2f}",
        axis=1,
    ).unstack(["dataset", "ratio"])
    order = [m for m in GRID_METHODS if m in text.index]
    text = text.loc[order]
    text.index = [LABELS[m] for m in order]
    text.index.name = "method"
    return text


def wall_time_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean wall time per run in seconds (over seeds): one row per method, one column per
    ratio, plus each method's time relative to vanilla's (mean over ratios)."""
    seconds = results.groupby(["method", "ratio"], sort=False)["seconds"].mean().unstack()
    seconds.columns = [f"{100 * r:g}%" if pd.notna(r) else "-" for r in seconds.columns]
    order = [m for m in GRID_METHODS if m in seconds.index]
    seconds = seconds.loc[order]
    if "vanilla" in seconds.index:
        seconds["x vanilla"] = seconds.mean(axis=1) / seconds.loc["vanilla"].mean()
    seconds.index = [LABELS[m] for m in order]
    seconds.index.name = "method"
    return seconds.round(2)


def _read_cell(path: Path) -> dict[str, Any] | None:
    """A finished cell's record, or None (never run, or unreadable: then it is run again). The
    record keeps the code version that produced it (column ``code``)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_grid(
    *,
    dataset: str = "cmnist",
    ratios: Sequence[float | None] | str | None = None,
    methods: Sequence[str] | str = "all",
    seeds: int | Sequence[int] = 3,
    profile: str | None = None,
    out: str | os.PathLike = "results",
    digits: str = "auto",
    stand_in: bool = False,
    device: str = "auto",
    epochs: int | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool | None = None,
    tune: bool = True,
) -> GridResult:
    """Run (or resume) the grid and write ``results.csv`` and ``tuning.csv`` into ``out``.

    Args:
        dataset: ``cmnist``, ``celeba`` or ``bffhq``.
        ratios: bias-conflicting ratios (a list or comma-separated text; None: the dataset's
            default; CelebA has none).
        methods: ``all`` or names from :data:`GRID_METHODS`.
        seeds: a number of seeds (0, 1, ...) or the seeds themselves; each seed also colours
            Colored MNIST afresh, so the spread covers data and training.
        profile: ``smoke``, ``quick`` or ``full`` (default ``$PGD_PROFILE``, else quick).
        out: results folder; also holds every cell's checkpoints (``runs/``) and record
            (``cells/``).
        digits, stand_in, device, epochs: as in :class:`pgd.experiments.config.ExperimentConfig`.
        progress: one progress bar over the cells (None: unless ``$PGD_PROGRESS`` is 0).
        tune: search the hyper-parameters of :data:`TUNING` on the validation split (False:
            each method's defaults).

    Returns:
        A :class:`GridResult`.
    """
    spec = get_dataset(dataset)
    if spec.default_ratio is None:
        if ratios not in (None, [None]):
            raise ValueError(f"{spec.label} has no bias-conflicting ratio: leave --ratios out")
        ratio_list: list[float | None] = [None]
    else:
        ratio_list = parse_ratios(ratios) if ratios is not None else [None]
    names = parse_methods(methods)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("at least one seed is needed")
    profile_name = get_profile(profile).name
    folder = Path(out)
    cells_dir, runs_dir = folder / "cells", folder / "runs"
    base: dict[str, Any] = {"profile": profile_name, "device": device, "epochs": epochs}
    if dataset == "cmnist":
        # Resolve "auto" once, so that a cell's name says which digits it was trained on.
        base["digits"] = load_digits(digits, resolve_data_root(data_root)).source
    elif spec.stand_in:
        base["stand_in"] = stand_in

    # Every cell of the grid; tuned methods get their candidates at the first seed.
    plan: list[tuple[str, float | None, list[Cell]]] = []  # (method, ratio, candidates)
    for ratio in ratio_list:
        for method in names:
            first = _config(method, dataset, ratio, seed_list[0], base)
            options = _candidates(first, method) if tune else [first]
            plan.append((method, ratio, [Cell(method, c, tuning=True) for c in options]))
    total = sum(len(c) for _, _, c in plan) + sum(len(seed_list) - 1 for _ in plan)
    show = progress if progress is not None else os.environ.get("PGD_PROGRESS", "1") != "0"
    bar = tqdm(total=total, desc=f"grid {dataset}", unit="run", disable=not show)
    records: dict[str, dict[str, Any]] = {}
    computed = 0
    began = time.perf_counter()

    def execute(cell: Cell) -> dict[str, Any]:
        nonlocal computed
        path = cells_dir / f"{cell.key}.json"
        if cell.key in records:
            return records[cell.key]
        record = _read_cell(path)
        if record is None:
            where = f"{cell.method}, ratio {cell.config.ratio}, seed {cell.config.seed}"
            bar.set_postfix_str(where)
            started = time.perf_counter()
            result = run(
                cell.config,
                data_root=data_root,
                checkpoint_dir=runs_dir / cell.key,
                resume=True,
                progress=False,
            )
            record = _row(cell, result, time.perf_counter() - started)
            atomic_write_text(json.dumps(record, indent=1) + "\n", path)
            computed += 1
        records[cell.key] = record
        bar.update(1)
        return record

    rows: list[dict[str, Any]] = []
    tuning_rows: list[dict[str, Any]] = []
    try:
        for method, _ratio, candidates in plan:
            tried = [execute(c) for c in candidates]
            best = max(range(len(tried)), key=lambda i: tried[i][SELECTION_METRIC])
            if len(candidates) > 1:
                for i, record in enumerate(tried):
                    tuning_rows.append(
                        {
                            k: record[k]
                            for k in ("dataset", "ratio", "method", "seed", "hparams", "run")
                        }
                        | {SELECTION_METRIC: record[SELECTION_METRIC], "chosen": i == best}
                    )
            chosen = candidates[best].config
            for seed in seed_list:
                config = replace(chosen, seed=seed, data_seed=None)
                rows.append(execute(Cell(method, config)))
            _write_tables(folder, rows, tuning_rows)
    finally:
        bar.close()
    results, tuning = _write_tables(folder, rows, tuning_rows)
    versions = sorted(set(results["code"]))
    if len(versions) > 1 or versions != [code_fingerprint()]:
        print(
            f"note: the results come from code version(s) {', '.join(versions)}; this code is "
            f"{code_fingerprint()} (finished runs are reused; delete {cells_dir} to rerun them)"
        )
    if show:
        minutes = (time.perf_counter() - began) / 60
        print(
            f"grid {dataset}: {computed} runs computed, {len(records) - computed} read back, "
            f"{minutes:.1f} min; results in {folder / 'results.csv'}"
        )
    return GridResult(results, tuning, folder, computed)


def _write_tables(
    folder: Path, rows: list[dict[str, Any]], tuning_rows: list[dict[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    results = pd.DataFrame(rows)
    tuning = pd.DataFrame(tuning_rows)
    atomic_write_text(results.to_csv(index=False), folder / "results.csv")
    atomic_write_text(tuning.to_csv(index=False), folder / "tuning.csv")
    return results, tuning


def load_results(folder: str | os.PathLike) -> pd.DataFrame:
    """The ``results.csv`` that :func:`run_grid` wrote into ``folder``.

    Raises:
        FileNotFoundError: no grid was run there; says the command that makes it.
    """
    path = Path(folder) / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run `python -m pgd compare --out {folder}` first"
        )
    return pd.read_csv(path)
