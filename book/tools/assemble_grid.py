"""Put one committed results table together from several grids' outputs.

`make grid` writes one folder per grid; a grid run in parts (some methods on one day, others on
another, under the same results version) leaves several. This script takes named methods from
each source and writes ``PREFIX.csv`` and ``PREFIX_tuning.csv``::

    python book/tools/assemble_grid.py --out benchmarks/results/compare_cmnist \
        --take benchmarks/results/compare_cmnist.csv=vanilla,lff,pgd,pgd_all,upsample \
        --take _build/runs-full/compare/cmnist-main=dfa,jtt,groupdro

A source is a grid folder (its ``results.csv`` and ``tuning.csv``) or a committed results CSV
(its tuning table beside it, ``NAME_tuning.csv``). A method may come from several sources (its
ratios or schedules run apart), but no two rows may share a key (method, dataset, ratio, seed and
every grid dimension): the script refuses instead of choosing. Rows of an older table without a
``budget`` column ran under the stage budget (the only one there was) and say so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pgd.experiments.compare import grid_entries
from pgd.training.checkpoints import training_seconds

KEY = ["dataset", "source", "ratio", "method", "seed", "schedule", "budget", "protocol"]


def _read(source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if source.is_dir():
        results, tuning = source / "results.csv", source / "tuning.csv"
    else:
        results, tuning = source, source.with_name(f"{source.stem}_tuning.csv")
    if not results.is_file():
        raise SystemExit(f"{results} does not exist: run the grid (python -m pgd compare) first")
    frames = [pd.read_csv(results), pd.DataFrame()]
    if tuning.is_file():
        try:
            frames[1] = pd.read_csv(tuning)
        except pd.errors.EmptyDataError:  # a grid that tuned nothing
            pass
    for frame in frames:
        if not frame.empty and "budget" not in frame:
            frame["budget"] = "stage"
    return frames[0], frames[1]


def assemble(takes: list[tuple[Path, list[str]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of each source's named methods, in grid order; refuses a key held by two rows (a
    run taken from two sources, or one source's rows twice)."""
    results, tuning = [], []
    for source, methods in takes:
        frame, tuned = _read(source)
        for method in methods:
            if method not in set(frame["method"]):
                raise SystemExit(f"{source} holds no rows of {method}")
        results.append(frame[frame["method"].isin(methods)])
        if not tuned.empty:
            tuning.append(tuned[tuned["method"].isin(methods)])
    table = pd.concat(results, ignore_index=True)
    keys = table[[*KEY, "selection"]].astype(str)
    if keys.duplicated().any():
        twice = table[keys.duplicated(keep=False)].iloc[0]
        raise SystemExit(f"two rows share a key, e.g. {twice[[*KEY, 'selection']].to_dict()}")
    order = {method: i for i, method in enumerate(grid_entries()[0])}
    dims = {column: list(dict.fromkeys(table[column])) for column in ("schedule", "protocol")}
    sort = table.assign(
        _schedule=table["schedule"].map(dims["schedule"].index),
        _budget=table["budget"].map({"stage": 0, "total": 1}),
        _protocol=table["protocol"].map(dims["protocol"].index),
        _method=table["method"].map(order),
    )
    by = ["_schedule", "_budget", "_protocol", "ratio", "_method", "seed"]
    table = sort.sort_values(by, kind="stable").drop(columns=[c for c in sort if c.startswith("_")])
    tuned = pd.concat(tuning, ignore_index=True) if tuning else pd.DataFrame()
    return table.reset_index(drop=True), tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="PREFIX: writes PREFIX.csv, PREFIX_tuning.csv")
    parser.add_argument(
        "--runs",
        type=Path,
        help="the grids' checkpoint folder: each run found there gets its training time from "
        "its checkpoints (seconds), not the time of the invocation that wrote the row",
    )
    parser.add_argument(
        "--take",
        action="append",
        required=True,
        metavar="SOURCE=METHOD,METHOD",
        help="a grid folder or results CSV, and the methods to take from it",
    )
    args = parser.parse_args()
    takes = []
    for take in args.take:
        source, _, methods = take.partition("=")
        if not methods:
            raise SystemExit(f"--take {take}: name the methods, e.g. {source}=vanilla,pgd")
        takes.append((Path(source), methods.split(",")))
    results, tuning = assemble(takes)
    if args.runs is not None:
        found = {run: training_seconds(args.runs / run) for run in results["run"].unique()}
        timed = results["run"].map(found)
        results["seconds"] = timed.fillna(results["seconds"])
        timed_runs = sum(value is not None for value in found.values())
        print(f"training time from the checkpoints of {timed_runs} of {len(found)} runs")
    out = Path(args.out)
    results.to_csv(out.with_name(f"{out.name}.csv"), index=False)
    tuning.to_csv(out.with_name(f"{out.name}_tuning.csv"), index=False)
    counts = results.drop_duplicates("run").groupby("method", sort=False).size()
    print(f"{len(results)} rows, {results['run'].nunique()} runs: {counts.to_dict()}")


if __name__ == "__main__":
    main()
