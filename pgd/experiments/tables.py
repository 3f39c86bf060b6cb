"""The comparison's result tables: the rows a finished run adds, writing and reading
``results.csv``, and the tables the chapters and the command line print from it (means and
spreads over seeds, settings side by side, wall times)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.runtime import code_fingerprint
from ..core.storage import atomic_write_text
from ..methods.base import format_setting
from ..methods.registry import METHODS
from .grid import Cell, grid_entries


def ratio_label(ratio: float) -> str:
    """A conflicting ratio as the tables print it: ``0.005 -> "0.5%"``; ``"-"`` for none."""
    return "-" if pd.isna(ratio) else f"{100 * ratio:g}%"


#: Method diagnostics copied into the results table (JTT's error set; empty for the others).
EXTRA_COLUMNS = ("error_set_size", "error_set_conflicting_share", "conflicting_in_error_set")


def result_rows(cell: Cell, result: Any, seconds: float) -> list[dict[str, Any]]:
    """The rows of the results table for one finished run (``result``, an
    :class:`~pgd.experiments.pipeline.ExperimentResult`): one per selection rule it was
    evaluated under."""
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
        "hparams": ", ".join(f"{k}={format_setting(v)}" for k, v in hparams.items()),
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


def write_tables(
    folder: Path, rows: list[dict[str, Any]], tuning_rows: list[dict[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``results.csv`` and ``tuning.csv`` into ``folder`` (atomically) and return them."""
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


#: Columns of the results that are grid dimensions besides method, dataset, ratio and seed: a
#: table of means must fix each of them to one value.
DIMENSIONS = ("schedule", "budget", "protocol", "selection")


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
    fixes the other dimensions (``schedule``, ``budget``, ``protocol``, ``selection``).

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
    frame["ratio"] = frame["ratio"].map(ratio_label)
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
    """How tables name a training setting: ``full, shared, last`` (schedule, protocol, rule),
    with ``, total budget`` where the run had PGD's total number of epochs."""
    budget = row.get("budget", "stage")
    extra = f", {budget} budget" if isinstance(budget, str) and budget != "stage" else ""
    return f"{row['schedule']}, {row['protocol']}, {row['selection']}{extra}"


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
    seconds.columns = [ratio_label(r) for r in seconds.columns]
    entries, labels = grid_entries()
    order = [m for m in entries if m in seconds.index]
    seconds = seconds.loc[order]
    if "vanilla" in seconds.index:
        seconds["x vanilla"] = seconds.mean(axis=1) / seconds.loc["vanilla"].mean()
    seconds.index = [labels[m] for m in order]
    seconds.index.name = "method"
    return seconds.round(2)


def budget_table(results: pd.DataFrame, metric: str = "accuracy", **where: Any) -> pd.DataFrame:
    """Every method under both training budgets: ``mean +- std`` over seeds of ``metric`` with
    the schedule's epochs per stage (``stage``: PGD's two stages train twice as long as a
    one-stage method) and with PGD's total number of epochs (``total``), the change of the mean,
    and each method's rank under each budget (1: highest mean) among the methods run under both,
    so that the two ranks compare the same field. One row per method (grid order,
    oracles marked as their labels say); ``where`` fixes the other dimensions (``ratio``,
    ``schedule``, ``protocol``, ``selection``). A method of as many stages as PGD has the same
    runs under both budgets.

    Raises:
        ValueError: the rows lack one of the budgets, or still span several values of another
            dimension.
    """
    frame = select(results, **where)
    for column in ("ratio", *DIMENSIONS):
        if column != "budget" and column in frame and frame[column].nunique(dropna=False) > 1:
            raise ValueError(
                f"the results hold several values of {column} "
                f"({', '.join(map(str, frame[column].unique()))}): fix it in budget_table(...)"
            )
    missing = [b for b in ("stage", "total") if b not in set(frame["budget"])]
    if missing:
        raise ValueError(f"no results under the {' and '.join(missing)} budget")
    stats = frame.groupby(["method", "budget"], sort=False)[metric].agg(["mean", "std", "count"])
    entries, labels = grid_entries()
    order = [m for m in entries if m in stats.index.get_level_values("method")]
    rows = []
    for method in order:
        row: dict[str, Any] = {"method": labels[method]}
        for budget in ("stage", "total"):
            if (method, budget) not in stats.index:
                row[f"{budget} budget"] = "not run"
                continue
            r = stats.loc[(method, budget)]
            row[f"{budget} budget"] = (
                f"{r['mean']:.1f} ± {r['std']:.1f}" if r["count"] > 1 else f"{r['mean']:.1f}"
            )
        both = [(method, b) in stats.index for b in ("stage", "total")]
        row["change"] = (
            round(stats.loc[(method, "total"), "mean"] - stats.loc[(method, "stage"), "mean"], 1)
            if all(both)
            else None
        )
        rows.append(row)
    table = pd.DataFrame(rows).set_index("method")
    under_both = [m for m in order if all((m, b) in stats.index for b in ("stage", "total"))]
    for budget in ("stage", "total"):
        means = {labels[m]: stats.loc[(m, budget), "mean"] for m in under_both}
        ranked = pd.Series(means).rank(ascending=False, method="min")
        table[f"rank ({budget})"] = ranked.reindex(table.index).astype("Int64")
    return table[["stage budget", "total budget", "change", "rank (stage)", "rank (total)"]]


def diagnostics_by_seed(
    results: pd.DataFrame, metric: str | None = None, **where: Any
) -> pd.DataFrame:
    """The methods' own diagnostics (:data:`EXTRA_COLUMNS`: JTT's error set) run by run: one row
    per method, ratio and seed that has them, with the hyper-parameters the run used; the spread
    a mean over seeds hides. Shares in %: how much of the error set is bias-conflicting (its
    purity) and how many of the conflicting samples it holds (its recall). ``metric`` (e.g.
    ``"accuracy"``) adds that test metric of each run, beside what it drew from.

    Raises:
        ValueError: ``metric`` is asked for, but a run still appears under several selection
            rules or settings (fix them in ``where``, e.g. ``selection="last"``).
    """
    frame = select(results, **where)
    frame = frame[frame[list(EXTRA_COLUMNS)].notna().any(axis=1)]
    if metric is not None and frame["run"].duplicated().any():
        raise ValueError(
            f"a run appears under several rules or settings, so its {metric} is not one number: "
            "fix them, e.g. diagnostics_by_seed(results, metric, selection='last')"
        )
    frame = frame.drop_duplicates("run")
    shown = [*EXTRA_COLUMNS, *([metric] if metric else [])]
    table = frame[["label", "ratio", "seed", "hparams", *shown]].assign(
        ratio=frame["ratio"].map(ratio_label),
        error_set_conflicting_share=100 * frame["error_set_conflicting_share"],
        conflicting_in_error_set=100 * frame["conflicting_in_error_set"],
    )
    return (
        table.rename(
            columns={
                "label": "method",
                "error_set_size": "error set",
                "error_set_conflicting_share": "conflicting in it (%)",
                "conflicting_in_error_set": "of all conflicting (%)",
                **({metric: f"test {metric.replace('_', ' ')} (%)"} if metric else {}),
            }
        )
        .set_index(["method", "ratio", "seed"])
        .round(1)
    )


def coverage_table(results: pd.DataFrame) -> pd.DataFrame:
    """Which cells a grid's results hold: one row per method (grid order, labelled), one column
    per (schedule, budget, protocol), each entry the conflicting ratios the method ran at there
    (``"0.5%, 1%"``); ``"not run"`` where it did not, ``"no own protocol"`` under ``own`` for a
    method that has none on the dataset.

    Raises:
        ValueError: the results span several datasets (select one first).
    """
    if results["dataset"].nunique() > 1:
        raise ValueError("the results span several datasets: select(results, dataset=...) first")
    dataset = results["dataset"].iloc[0]
    dims = ["schedule", "budget", "protocol"]
    cells = results.drop_duplicates(["method", "ratio", "seed", *dims])
    table = (
        cells.groupby(["method", *dims], sort=False)["ratio"]
        .agg(lambda ratios: ", ".join(map(ratio_label, sorted(ratios.dropna().unique()))))
        .unstack(dims)
    )
    entries, labels = grid_entries()
    for method in table.index:
        has_own = dataset in METHODS[entries[method]["method"]].protocols
        for column in table.columns:
            if pd.isna(table.loc[method, column]):
                no_own = column[-1] == "own" and not has_own
                table.loc[method, column] = "no own protocol" if no_own else "not run"
    order = [method for method in entries if method in table.index]
    return table.loc[order].rename(index=labels)
