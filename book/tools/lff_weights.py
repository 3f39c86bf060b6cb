"""LfF's final relative-difficulty weights per (hair colour, gender) group of the CelebA stand-in,
for chapter 7, which shows them without the grid's checkpoints.

The runs are the comparison grid's LfF runs on the CelebA stand-in (``make grid``: small CNN,
48 x 48 faces, 8 epochs per stage, seeds 0 to 2, the full profile), read back from their
checkpoints in ``$PGD_RUNS`` or trained there if missing (the same configuration, so the same
run). For each seed it writes the groups' sizes, their mean weight and their share of the total
weight, with the run's test accuracy (its validation-loss-selected weights) to check against the
grid's own table, ``benchmarks/results/compare_celeba_stand_in.csv``.

    PGD_RUNS=_build/runs-full python book/tools/lff_weights.py \\
        --out benchmarks/results/lff_weights_celeba_stand_in.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pgd.book import probes
from pgd.experiments import pipeline

SEEDS = (0, 1, 2)


def grid_config(seed: int) -> pipeline.ExperimentConfig:
    """The comparison grid's LfF run on the CelebA stand-in for ``seed``."""
    return pipeline.ExperimentConfig(
        dataset="celeba",
        stand_in=True,
        model="cnn",
        image_size=48,
        epochs=8,
        method="lff",
        seed=seed,
        profile="full",
    )


def weights_table(seeds: tuple[int, ...] = SEEDS) -> pd.DataFrame:
    """One row per seed and group (see the module docstring)."""
    rows = []
    for seed in seeds:
        config = grid_config(seed)
        result = pipeline.run(config, resume=True, progress=False)
        data = pipeline.load_data(config)
        weights = probes.lff_final_weights(result.checkpoint_dir / "lff.pt", data.train.labels)
        table = probes.weights_by_group(weights, data.train.labels, data.train.bias_labels)
        table.insert(
            0,
            "group",
            [
                f"{data.class_names[t]}, {data.bias_names[b]}"
                for t, b in zip(table["label"], table["bias"], strict=True)
            ],
        )
        table.insert(0, "seed", seed)
        table["run_test_accuracy"] = 100 * result.metrics["test"]["accuracy"]
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    table = weights_table()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.round(3).to_string(index=False))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
