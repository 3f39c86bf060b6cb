"""PGD and its baselines side by side: a grid of runs over datasets, ratios, methods, seeds,
schedules, protocols and model-selection rules.

:func:`run_grid` runs every cell (one dataset, ratio, method, seed, schedule and protocol) with
:func:`pgd.experiments.pipeline.run`, writes each finished cell to ``<out>/cells/<run name>.json``
at once (atomically), and rewrites the tidy table ``<out>/results.csv`` after every cell: one
row per dataset / ratio / method / seed / schedule / protocol / selection rule with every metric,
the epoch the rule chose and the wall time. A selection rule is applied after training: the
training loop keeps the weights every rule chooses on the validation split, so the rules cost
an evaluation, not a training. Run the grid again after an interruption and finished cells are
read back, not recomputed; an unfinished cell resumes from its last epoch checkpoint.

*Schedules* are the profiles' numbers of epochs per training stage (``quick``: at most 20, fewer
on more data, 20 on the offline MNIST subset; ``full``: 100). *Protocols*: ``shared`` trains
every method with the dataset's network and its schedule; ``own`` trains each method as its paper
does on that dataset (its spec's ``protocols``), where it has such a protocol.

Hyper-parameters that a method has and PGD does not (JTT's lambda, GroupDRO's step size) are
chosen per dataset, ratio, schedule and protocol on the validation split only, at the grid's
first seed: each candidate is run, and the one with the highest validation group-mean accuracy
(the mean over (label, bias) groups, an estimate of unbiased accuracy that reads the validation
set's bias labels, as JTT's and GroupDRO's papers do) of its validation-loss-selected weights is
used for every seed. The candidates and the choice are written to ``<out>/tuning.csv``. The test
split is never looked at before the choice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..core.profiles import PROFILES, get_profile
from ..core.runtime import code_fingerprint, display_path, progress_enabled
from ..core.storage import atomic_write_text
from ..datasets.base import check_ratio
from ..datasets.registry import get_dataset
from ..methods.registry import METHODS
from ..training.loop import SELECTIONS
from .config import ExperimentConfig
from .pipeline import load_data, parse_selections, run


def grid_entries() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every registered method in the grid's order (methods that read no bias labels, those with
    several entries (PGD), the oracles), each of its :class:`~pgd.methods.base.GridEntry` its
    own entry: ``(name -> config fields, name -> label)``. Read from the registry each time, so a
    method registered by a plugin appears."""
    specs = list(METHODS.values())
    ordered = [m for m in specs if not m.oracle and not m.grid_entries]
    ordered += [m for m in specs if not m.oracle and m.grid_entries]
    ordered += [m for m in specs if m.oracle]
    fields: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    for spec in ordered:
        for entry in spec.entries():
            fields[entry.name] = {"method": spec.name, **entry.settings}
            labels[entry.name] = entry.label
    return fields, labels


def __getattr__(name: str) -> Any:
    """``GRID_METHODS`` (grid entry -> configuration fields) and ``LABELS`` (grid entry -> how
    tables and figures call it; oracles say so), as the registry stands now."""
    if name == "GRID_METHODS":
        return grid_entries()[0]
    if name == "LABELS":
        return grid_entries()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Method diagnostics copied into the results table (JTT's error set; empty for the others).
EXTRA_COLUMNS = ("error_set_size", "error_set_conflicting_share", "conflicting_in_error_set")

#: The validation metric the tuning maximises.
SELECTION_METRIC = "valid_group_mean_accuracy"


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``all`` or a comma-separated list of :data:`GRID_METHODS` names, in the grid's order."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip().lower() for n in names if n.strip()]
    entries = grid_entries()[0]
    if names == ["all"]:
        return list(entries)
    unknown = [n for n in names if n not in entries]
    if unknown or not names:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(entries)} or all"
        )
    return [n for n in entries if n in names]


def parse_ratios(text: str | Iterable[float] | None) -> list[float | None]:
    """Comma-separated bias-conflicting ratios, each in (0, 1)."""
    if text is None:
        return [None]
    values = text.split(",") if isinstance(text, str) else list(text)
    try:
        return [check_ratio(float(v)) for v in values if str(v).strip()]
    except ValueError as error:
        raise ValueError(f"bad --ratios {text!r}: {error}") from None


PROTOCOLS = ("shared", "own")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a grid method name, the protocol it stands for, and its full
    configuration."""

    method: str
    config: ExperimentConfig
    protocol: str = "shared"
    tuning: bool = False  # a candidate of the validation search (seed: the grid's first)

    @property
    def key(self) -> str:
        return self.config.name()


def parse_choices(text: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """A comma-separated list (or a list) of ``allowed`` values, checked, in the given order."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(allowed)}"
        )
    return list(dict.fromkeys(names))


def _config(
    method: str, dataset: str, ratio: float | None, seed: int, base: dict[str, Any]
) -> ExperimentConfig:
    entry = grid_entries()[0][method]
    spec = METHODS[entry["method"]]
    fields = {**base, **spec.grid_settings, **entry, "dataset": dataset, "ratio": ratio}
    return ExperimentConfig(**fields, seed=seed)


def _candidates(config: ExperimentConfig, method: str) -> list[ExperimentConfig]:
    grid = config.method_spec.tuning
    out = [config]
    for name, values in grid.items():
        out = [replace(c, **{name: v}) for c in out for v in values]
    return out


def _rows(cell: Cell, result: Any, seconds: float) -> list[dict[str, Any]]:
    """One row per selection rule the run was evaluated under."""
    config = cell.config
    hparams = config.method_hparams()
    common = {
        "dataset": config.dataset,
        "source": result.data["source"],
        "ratio": config.ratio,
        "method": cell.method,
        "label": grid_entries()[1][cell.method],
        "oracle": config.is_oracle,
        "seed": config.seed,
        "hparams": ", ".join(f"{k}={v:g}" for k, v in hparams.items()),
        "schedule": config.profile_spec.name,
        "profile": config.profile_spec.name,
        "epochs": config.stage_epochs(result.data["train_samples"]),
        "protocol": cell.protocol,
        "model": config.model,
        "train_samples": result.data["train_samples"],
        "full_dataset": result.data["full_dataset"],
    }
    diagnostics = {
        "conflicting_mass": result.conflicting_mass,
        "effective_sample_size": (
            result.sampling["effective_sample_size"] if result.sampling else None
        ),
        **{k: result.extras.get(k) for k in EXTRA_COLUMNS},
        "seconds": seconds,
        "device": result.provenance.get("device"),
        "code": code_fingerprint(),
        "run": cell.key,
    }
    rows = []
    for rule, chosen in result.by_selection.items():
        test, valid = chosen["metrics"]["test"], chosen["metrics"]["valid"]
        rows.append(
            common
            | {
                "selection": rule,
                "selection_oracle": chosen["oracle"],
                "selected_epoch": chosen["epoch"] + 1,  # 1-based, as the text counts epochs
                "accuracy": 100 * test["accuracy"],
                "aligned_accuracy": 100 * test["aligned_accuracy"],
                "conflicting_accuracy": 100 * test["conflicting_accuracy"],
                "group_mean_accuracy": 100 * test["group_mean_accuracy"],
                "worst_group_accuracy": 100 * test["worst_group_accuracy"],
                "valid_accuracy": 100 * valid["accuracy"],
                "valid_group_mean_accuracy": 100 * valid["group_mean_accuracy"],
            }
            | diagnostics
        )
    return rows


@dataclass
class GridResult:
    """What :func:`run_grid` returns: the tidy results (one row per cell of the grid and
    selection rule), the validation search, and where they were written."""

    results: pd.DataFrame
    tuning: pd.DataFrame
    folder: Path
    computed: int  # cells run by this call (the rest were read back)

    def summary(self, metric: str = "accuracy", **where: Any) -> pd.DataFrame:
        """See :func:`summary_table`."""
        return summary_table(self.results, metric, **where)


#: Columns of the results that are grid dimensions besides method, dataset, ratio and seed: a
#: table of means must fix each of them to one value.
DIMENSIONS = ("schedule", "protocol", "selection")


def select(results: pd.DataFrame, **where: Any) -> pd.DataFrame:
    """The rows of ``results`` whose columns equal ``where`` (``selection="last"``, ...).

    Raises:
        ValueError: a column does not exist, or no row matches (names the values present).
    """
    frame = results
    for column, value in where.items():
        if column not in frame:
            raise ValueError(f"the results have no column {column!r}")
        kept = frame[frame[column] == value]
        if kept.empty:
            raise ValueError(
                f"no results with {column}={value!r}; present: "
                f"{', '.join(map(str, frame[column].unique()))}"
            )
        frame = kept
    return frame


def summary_table(results: pd.DataFrame, metric: str = "accuracy", **where: Any) -> pd.DataFrame:
    """``mean +- std`` over seeds of ``metric``: one row per method (in grid order, oracles
    last), one column per (dataset, ratio); the sample standard deviation (ddof 1). ``where``
    fixes the other dimensions (``schedule``, ``protocol``, ``selection``).

    Raises:
        ValueError: the rows left still span several values of a dimension (say which).
    """
    frame = select(results, **where).copy()
    for column in DIMENSIONS:
        if column in frame and frame[column].nunique() > 1:
            raise ValueError(
                f"the results hold several values of {column} "
                f"({', '.join(map(str, frame[column].unique()))}): pick one, e.g. "
                f"summary_table(results, {metric!r}, {column}={frame[column].iloc[0]!r})"
            )
    frame["ratio"] = frame["ratio"].map(lambda r: "-" if pd.isna(r) else f"{100 * r:g}%")
    stats = frame.groupby(["method", "dataset", "ratio"], sort=False)[metric].agg(
        ["mean", "std", "count"]
    )
    text = stats.apply(
        lambda r: f"{r['mean']:.2f} ± {r['std']:.2f}" if r["count"] > 1 else f"{r['mean']:.2f}",
        axis=1,
    ).unstack(["dataset", "ratio"])
    entries, labels = grid_entries()
    order = [m for m in entries if m in text.index]
    text = text.loc[order]
    text.index = [labels[m] for m in order]
    text.index.name = "method"
    return text


def setting_label(row: Mapping[str, Any]) -> str:
    """How tables name a training setting: ``full, shared, last`` (schedule, protocol, rule)."""
    return f"{row['schedule']}, {row['protocol']}, {row['selection']}"


def setting_table(
    results: pd.DataFrame, metric: str = "accuracy", *, ratio: float | None = None
) -> pd.DataFrame:
    """``mean +- std`` over seeds of ``metric`` for every method (rows, grid order) under every
    training setting present (columns: schedule, protocol, selection rule), at one ``ratio``
    (None: the only one, as on CelebA). Oracle rules are marked ``(oracle)``; a method without
    an own protocol has no ``own`` entries.

    Raises:
        ValueError: ``ratio`` is not in the results (names those present).
    """
    frame = results if ratio is None else select(results, ratio=ratio)
    frame = frame.assign(setting=frame.apply(setting_label, axis=1))
    frame.loc[frame["selection_oracle"], "setting"] += " (oracle)"
    stats = frame.groupby(["method", "setting"], sort=False)[metric].agg(["mean", "std", "count"])
    text = stats.apply(
        lambda r: f"{r['mean']:.1f} ± {r['std']:.1f}" if r["count"] > 1 else f"{r['mean']:.1f}",
        axis=1,
    ).unstack("setting")
    entries, labels = grid_entries()
    order = [m for m in entries if m in text.index]
    text = text.loc[order, list(dict.fromkeys(frame["setting"]))]
    text.index = [labels[m] for m in order]
    text.index.name = "method"
    return text.fillna("")


def best_settings(results: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """For every method and ratio, its best setting by mean ``metric`` over seeds among the
    settings whose selection rule reads no bias labels: one row per (ratio, method) with the
    setting and its mean and standard deviation.

    The choice looks at the test results: it is the most favourable reading of each method,
    not a model selection, and only fit for asking whether another method beats even that."""
    frame = results[~results["selection_oracle"]]
    frame = frame.assign(setting=frame.apply(setting_label, axis=1))
    stats = (
        frame.groupby(["ratio", "method", "setting"], sort=False, dropna=False)[metric]
        .agg(["mean", "std"])
        .reset_index()
    )
    best = stats.loc[stats.groupby(["ratio", "method"], sort=False, dropna=False)["mean"].idxmax()]
    return best.reset_index(drop=True)


def wall_time_table(results: pd.DataFrame, **where: Any) -> pd.DataFrame:
    """Mean wall time per run in seconds (over seeds): one row per method, one column per
    ratio, plus each method's time relative to vanilla's (mean over ratios). A run is counted
    once, whatever the number of selection rules it was evaluated under."""
    frame = select(results, **where).drop_duplicates("run")
    seconds = frame.groupby(["method", "ratio"], sort=False)["seconds"].mean().unstack()
    seconds.columns = [f"{100 * r:g}%" if pd.notna(r) else "-" for r in seconds.columns]
    entries, labels = grid_entries()
    order = [m for m in entries if m in seconds.index]
    seconds = seconds.loc[order]
    if "vanilla" in seconds.index:
        seconds["x vanilla"] = seconds.mean(axis=1) / seconds.loc["vanilla"].mean()
    seconds.index = [labels[m] for m in order]
    seconds.index.name = "method"
    return seconds.round(2)


def _read_cell(path: Path) -> list[dict[str, Any]] | None:
    """A finished cell's rows, or None (never run, unreadable, or written by a version of the
    grid with another record format: then it is run again). The rows keep the code version
    that produced them (column ``code``)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    rows = record.get("rows") if isinstance(record, dict) else None
    return rows if isinstance(rows, list) and rows else None


def _dataset_options(
    dataset: str, options: dict[str, Any], data_root: str | os.PathLike | None
) -> dict[str, Any]:
    """``options`` (those given, not None), checked against the dataset's spec, with every
    option left at ``"auto"`` resolved to what the data turned out to be (Colored MNIST's digit
    source), by loading the data once at the smoke profile's size."""
    spec = get_dataset(dataset)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - {o.name for o in spec.options})
    if unknown:
        settings = ", ".join(o.name for o in spec.options) or "none"
        raise ValueError(
            f"{', '.join(unknown)}: not a setting of dataset {dataset} (its settings: {settings})"
        )
    config = ExperimentConfig(dataset=dataset, profile="smoke", **given)
    auto = [o.name for o in spec.options if o.choices and config.options[o.name] == "auto"]
    if auto:
        source = load_data(config, root=data_root).source
        given.update({name: source for name in auto})
    return given


def run_grid(
    *,
    dataset: str = "cmnist",
    ratios: Sequence[float | None] | str | None = None,
    methods: Sequence[str] | str = "all",
    seeds: int | Sequence[int] = 3,
    profile: str | None = None,
    out: str | os.PathLike = "results",
    device: str = "auto",
    epochs: int | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool | None = None,
    tune: bool = True,
    model: str | None = None,
    schedules: Sequence[str] | str | None = None,
    protocols: Sequence[str] | str = "shared",
    selections: Sequence[str] | str = "valid_loss",
    **options: Any,
) -> GridResult:
    """Run (or resume) the grid and write ``results.csv`` and ``tuning.csv`` into ``out``.

    Args:
        dataset: ``cmnist``, ``celeba`` or ``bffhq``.
        ratios: bias-conflicting ratios (a list or comma-separated text; None: the dataset's
            default; CelebA has none).
        methods: ``all`` or names of :func:`grid_entries`.
        seeds: a number of seeds (0, 1, ...) or the seeds themselves; each seed also colours
            Colored MNIST afresh, so the spread covers data and training.
        profile: ``smoke``, ``quick`` or ``full`` (default ``$PGD_PROFILE``, else quick): the
            schedule when ``schedules`` is not given.
        out: results folder; holds every cell's record (``cells/``). The runs' checkpoints go
            where :func:`pgd.experiments.pipeline.run` puts them (``$PGD_RUNS/<run name>``), so
            a chapter that runs the same configuration reads them back.
        device, epochs: as in :class:`pgd.experiments.config.ExperimentConfig`.
        progress: one progress bar over the cells (None: unless ``$PGD_PROGRESS`` is 0).
        tune: search each method's ``tuning`` candidates on the validation split (False:
            each method's defaults).
        model: the network of every cell of the shared protocol (None: the dataset's default).
        schedules: profiles whose schedule (epochs per stage) to run, e.g. ``quick,full``
            (default: ``profile``).
        protocols: ``shared`` (every method with the dataset's network and schedule) and/or
            ``own`` (each method's published protocol, its spec's ``protocols``; methods without
            one are left out of it).
        selections: model-selection rules to report (``all`` or names from
            :data:`pgd.training.loop.SELECTIONS`; default: the stages' own rule, validation
            loss): each run is evaluated with the weights every rule chose on the validation
            split, one row per rule, without retraining.
        options: the dataset's own settings (its spec's ``options``, e.g. Colored MNIST's
            ``digits``, the face datasets' ``stand_in`` and ``image_size``); an option left at
            ``"auto"`` is resolved once, so that every cell's name says what it was trained on.

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
    schedule_list = (
        parse_choices(schedules, tuple(PROFILES), "schedule")
        if schedules is not None
        else [get_profile(profile).name]
    )
    protocol_list = parse_choices(protocols, PROTOCOLS, "protocol")
    rules = parse_selections(selections)  # the rows asked for, in this order
    folder = Path(out)
    cells_dir = folder / "cells"
    common: dict[str, Any] = {"device": device, "epochs": epochs}
    common.update(_dataset_options(dataset, options, data_root))

    # Every cell of the grid; tuned methods get their candidates at the first seed.
    plan: list[tuple[str, list[Cell]]] = []  # (method, candidates)
    for schedule in schedule_list:
        for protocol in protocol_list:
            for ratio in ratio_list:
                for method in names:
                    base = {**common, "profile": schedule}
                    if protocol == "shared":
                        if model is not None:
                            base["model"] = model
                    elif dataset in METHODS[grid_entries()[0][method]["method"]].protocols:
                        spec = METHODS[grid_entries()[0][method]["method"]]
                        base.update(spec.protocols[dataset].fields)
                    else:
                        continue  # no published protocol of its own for this dataset
                    first = _config(method, dataset, ratio, seed_list[0], base)
                    options = _candidates(first, method) if tune else [first]
                    cells = [Cell(method, c, protocol, tuning=True) for c in options]
                    plan.append((method, cells))
    total = sum(len(c) + len(seed_list) - 1 for _, c in plan)
    show = progress_enabled(progress)
    bar = tqdm(total=total, desc=f"grid {dataset}", unit="run", disable=not show)
    records: dict[str, list[dict[str, Any]]] = {}
    computed = 0
    began = time.perf_counter()

    def execute(cell: Cell) -> list[dict[str, Any]]:
        nonlocal computed
        path = cells_dir / f"{cell.key}.json"
        if cell.key not in records:
            rows = _read_cell(path)
            if rows is not None and not set(SELECTIONS) <= {r["selection"] for r in rows}:
                rows = None  # evaluated under fewer rules than there are: evaluate again
            if rows is None:
                where = f"{cell.method}, ratio {cell.config.ratio}, seed {cell.config.seed}"
                bar.set_postfix_str(where)
                started = time.perf_counter()
                result = run(
                    cell.config,
                    data_root=data_root,
                    resume=True,
                    progress=False,
                    selections=list(SELECTIONS),
                )
                rows = _rows(cell, result, time.perf_counter() - started)
                atomic_write_text(json.dumps({"rows": rows}, indent=1) + "\n", path)
                computed += 1
            records[cell.key] = rows
        bar.update(1)
        return [r | {"protocol": cell.protocol} for r in records[cell.key]]

    def asked(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [by_rule(found, rule) for rule in rules]

    def by_rule(rows: list[dict[str, Any]], rule: str) -> dict[str, Any]:
        return next(r for r in rows if r["selection"] == rule)

    rows: list[dict[str, Any]] = []
    tuning_rows: list[dict[str, Any]] = []
    try:
        for method, candidates in plan:
            tried = [execute(c) for c in candidates]
            scores = [by_rule(t, "valid_loss")[SELECTION_METRIC] for t in tried]
            best = max(range(len(tried)), key=lambda i: scores[i])
            if len(candidates) > 1:
                for i, found in enumerate(tried):
                    record = by_rule(found, "valid_loss")
                    keys = ("dataset", "ratio", "method", "seed", "schedule", "protocol")
                    tuning_rows.append(
                        {k: record[k] for k in (*keys, "hparams", "run")}
                        | {SELECTION_METRIC: scores[i], "chosen": i == best}
                    )
            chosen = candidates[best]
            for seed in seed_list:
                config = replace(chosen.config, seed=seed, data_seed=None)
                rows.extend(asked(execute(Cell(method, config, chosen.protocol))))
            _write_tables(folder, rows, tuning_rows)
    finally:
        bar.close()
    results, tuning = _write_tables(folder, rows, tuning_rows)
    versions = sorted(set(results["code"]))
    if len(versions) > 1 or versions != [code_fingerprint()]:
        print(
            f"note: the results come from code version(s) {', '.join(versions)}; this code is "
            f"{code_fingerprint()} (finished runs are reused; delete {display_path(cells_dir)} to "
            "rerun them)"
        )
    if show:
        minutes = (time.perf_counter() - began) / 60
        print(
            f"grid {dataset}: {computed} runs computed, {len(records) - computed} read back, "
            f"{minutes:.1f} min; results in {display_path(folder / 'results.csv')}"
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
