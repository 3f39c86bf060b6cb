"""What each of GroupDRO's ingredients does on Colored MNIST at 1 %, for chapter 7.

GroupDRO as its official code runs it (group-balanced batches, step size 0.01, no group
adjustment, the schedule's weight decay), then the same with one ingredient changed at a time:
uniform batches (how the book ran GroupDRO before), the paper's group adjustment C = 2, strong
weight decay 0.1, the larger step size 0.1. Three seeds, the full profile, the shared protocol
(the small CNN and its schedule); every selection rule's test and validation metrics, as the
comparison grid writes them. Runs are read back from their checkpoints in ``$PGD_RUNS`` where
they exist (the grid's own GroupDRO candidates are among them).

    PGD_RUNS=_build/runs-full python book/tools/groupdro_ablation.py \\
        --out benchmarks/results/groupdro_ablation_cmnist.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pgd.experiments import pipeline
from pgd.experiments.grid import Cell
from pgd.experiments.tables import result_rows
from pgd.training.selection import SELECTIONS

#: The official run, then one ingredient changed at a time: name -> GroupDRO's settings.
SETTINGS = {
    "official (balanced batches)": {},
    "uniform batches": {"dro_sampling": "uniform"},
    "group adjustment C = 2": {"dro_adjustment": 2.0},
    "weight decay 0.1": {"dro_weight_decay": 0.1},
    "step size 0.1": {"dro_step": 0.1},
}


def ablation(profile: str, seeds: list[int], ratio: float, digits: str) -> pd.DataFrame:
    """One row per setting, seed and selection rule."""
    rows = []
    for name, settings in SETTINGS.items():
        for seed in seeds:
            config = pipeline.ExperimentConfig(
                dataset="cmnist",
                digits=digits,
                ratio=ratio,
                method="groupdro",
                seed=seed,
                profile=profile,
                **settings,
            )
            began = time.perf_counter()
            result = pipeline.run(config, resume=True, progress=False, selections=list(SELECTIONS))
            cell = Cell("groupdro", config)
            for row in result_rows(cell, result, time.perf_counter() - began):
                rows.append({"setting": name} | row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", default="full")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--digits", default="auto")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    table = ablation(args.profile, seeds, args.ratio, args.digits)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    main_rule = table[table["selection"] == "valid_loss"]
    print(main_rule.groupby("setting", sort=False)["accuracy"].agg(["mean", "std"]).round(1))


if __name__ == "__main__":
    main()
