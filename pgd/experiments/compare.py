"""PGD and its baselines side by side: a grid of runs over datasets, ratios, methods, seeds,
schedules, protocols and model-selection rules. What the grid runs is planned by
:mod:`.grid` (:func:`~pgd.experiments.grid.plan_grid`), its tables are made by :mod:`.tables`;
this module runs it.

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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..core.profiles import PROFILES, get_profile
from ..core.runtime import code_fingerprint, display_path, progress_enabled
from ..core.storage import atomic_write_text
from ..datasets.registry import get_dataset
from ..training.checkpoints import training_seconds
from ..training.selection import SELECTIONS
from . import grid as _grid
from .config import ExperimentConfig
from .grid import (
    BUDGETS,
    PROTOCOLS,
    Cell,
    grid_entries,
    parse_choices,
    parse_methods,
    parse_ratios,
    plan_grid,
    planned_runs,
)
from .pipeline import load_data, parse_selections, run
from .tables import (
    DIMENSIONS,
    EXTRA_COLUMNS,
    best_settings,
    budget_table,
    coverage_table,
    diagnostics_by_seed,
    load_results,
    ratio_label,
    result_rows,
    select,
    setting_label,
    setting_table,
    summary_table,
    wall_time_table,
    write_tables,
)

__all__ = [
    "BUDGETS",
    "DIMENSIONS",
    "EXTRA_COLUMNS",
    "PROTOCOLS",
    "SELECTION_METRIC",
    "Cell",
    "GridResult",
    "best_settings",
    "budget_table",
    "coverage_table",
    "diagnostics_by_seed",
    "grid_entries",
    "load_results",
    "parse_choices",
    "parse_methods",
    "parse_ratios",
    "plan_grid",
    "ratio_label",
    "run_grid",
    "select",
    "setting_label",
    "setting_table",
    "summary_table",
    "wall_time_table",
]


def __getattr__(name: str) -> Any:
    """``GRID_METHODS`` and ``LABELS`` as the registry stands now (see :mod:`.grid`)."""
    return _grid.__getattr__(name)


#: The validation metric the tuning maximises.
SELECTION_METRIC = "valid_group_mean_accuracy"


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


def _train_samples(
    dataset: str,
    common: dict[str, Any],
    schedules: Sequence[str],
    data_root: str | os.PathLike | None,
) -> int | None:
    """The training set's size where a schedule's epochs depend on it (a profile bounded by
    work), for the ``total`` budget; None where none does."""
    sized = [s for s in schedules if get_profile(s).work is not None]
    if not sized:
        return None
    config = ExperimentConfig(dataset=dataset, profile=sized[0], **common)
    return len(load_data(config, root=data_root).train)


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
    budgets: Sequence[str] | str = "stage",
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
        budgets: ``stage`` and/or ``total`` (:data:`~pgd.experiments.grid.BUDGETS`): the
            schedule's epochs per training stage, or as many epochs in all as the method of most
            stages (PGD's two); a column ``budget`` of the results.
        selections: model-selection rules to report (``all`` or names from
            :data:`pgd.training.selection.SELECTIONS`; default: the stages' own rule, validation
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
    schedule_list = (
        parse_choices(schedules, tuple(PROFILES), "schedule")
        if schedules is not None
        else [get_profile(profile).name]
    )
    protocol_list = parse_choices(protocols, PROTOCOLS, "protocol")
    budget_list = parse_choices(budgets, BUDGETS, "budget")
    rules = parse_selections(selections)  # the rows asked for, in this order
    folder = Path(out)
    cells_dir = folder / "cells"
    common: dict[str, Any] = {"device": device, "epochs": epochs}
    common.update(_dataset_options(dataset, options, data_root))

    plan = plan_grid(
        dataset,
        ratios=ratio_list,
        methods=names,
        seeds=seed_list,
        schedules=schedule_list,
        protocols=protocol_list,
        settings=common,
        model=model,
        tune=tune,
        budgets=budget_list,
        train_samples=_train_samples(dataset, common, schedule_list, data_root)
        if "total" in budget_list and epochs is None
        else None,
    )
    total = planned_runs(plan, seed_list)
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
                # A run resumed or read back from its checkpoints is timed by their per-epoch
                # history, not by this call (which may only have loaded it).
                trained = training_seconds(result.checkpoint_dir) if result.checkpoint_dir else None
                elapsed = time.perf_counter() - started
                rows = result_rows(cell, result, elapsed if trained is None else trained)
                atomic_write_text(json.dumps({"rows": rows}, indent=1) + "\n", path)
                computed += 1
            records[cell.key] = rows
        bar.update(1)
        return [r | {"protocol": cell.protocol, "budget": cell.budget} for r in records[cell.key]]

    def asked(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [by_rule(found, rule) for rule in rules]

    def by_rule(rows: list[dict[str, Any]], rule: str) -> dict[str, Any]:
        return next(r for r in rows if r["selection"] == rule)

    rows: list[dict[str, Any]] = []
    tuning_rows: list[dict[str, Any]] = []
    try:
        for planned in plan:
            candidates = planned.candidates
            tried = [execute(c) for c in candidates]
            scores = [by_rule(t, "valid_loss")[SELECTION_METRIC] for t in tried]
            best = max(range(len(tried)), key=lambda i: scores[i])
            if len(candidates) > 1:
                for i, found in enumerate(tried):
                    record = by_rule(found, "valid_loss")
                    keys = ("dataset", "ratio", "method", "seed", "schedule", "budget", "protocol")
                    tuning_rows.append(
                        {k: record[k] for k in (*keys, "hparams", "run")}
                        | {SELECTION_METRIC: scores[i], "chosen": i == best}
                    )
            chosen = candidates[best]
            for seed in seed_list:
                config = replace(chosen.config, seed=seed, data_seed=None)
                cell = Cell(planned.method, config, chosen.protocol, chosen.budget)
                rows.extend(asked(execute(cell)))
            write_tables(folder, rows, tuning_rows)
    finally:
        bar.close()
    results, tuning = write_tables(folder, rows, tuning_rows)
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
