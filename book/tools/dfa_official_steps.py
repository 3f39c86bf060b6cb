"""DFA's own Colored MNIST protocol at its official length, for chapter 7.

The comparison grid trains DFA's own protocol (its 100-100-16 MLP encoders, Adam, lr 0.01, batch
256) for the schedule's epochs. Its official script (``scripts/run_cmnist_ours.sh``) trains a
number of *steps*, 50,000 batches of 256, whatever the size of the training set: about 237 epochs
of full MNIST's 54,000 training digits, and thousands of epochs of the offline subset's 3,600.
This script converts the official steps into epochs for the data at hand and runs DFA's own
protocol that long, with vanilla training beside it on its own protocol (LfF's MLP, Adam, batch
256) for as many steps, so that what the length alone does can be told from what DFA does. The
learning-rate steps and the feature swap keep their official fractions of training. Three seeds,
one ratio (1 %), every selection rule, as the grid writes them; runs are checkpointed in
``$PGD_RUNS`` and read back.

    PGD_RUNS=_build/runs-full python book/tools/dfa_official_steps.py \\
        --out benchmarks/results/dfa_official_steps_cmnist.csv
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pgd.core.runtime import runs_root
from pgd.experiments import compare, pipeline
from pgd.training.schedules import stage_config

#: Training steps of DFA's official Colored MNIST script (``--num_steps 50000``).
OFFICIAL_STEPS = 50_000


def epochs_for_steps(steps: int, train_samples: int, batch_size: int) -> int:
    """The fewest epochs that hold ``steps`` batches, the last batch of an epoch kept even when
    it is short (as the training loop does): ``epochs_for_steps(50_000, 3_600, 256) == 3_334``.

    Raises:
        ValueError: a count below 1.
    """
    if min(steps, train_samples, batch_size) < 1:
        raise ValueError(
            f"steps, training samples and batch size must be at least 1, got {steps}, "
            f"{train_samples} and {batch_size}"
        )
    return math.ceil(steps / math.ceil(train_samples / batch_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--digits", default="auto")
    args = parser.parse_args()
    config = pipeline.ExperimentConfig(
        dataset="cmnist", method="dfa", ratio=args.ratio, digits=args.digits, profile="full"
    )
    data = pipeline.load_data(config)
    batch = stage_config("dfa_mlp", "vanilla", 1).batch_size
    if stage_config("mlp", "vanilla", 1).batch_size != batch:
        raise SystemExit("vanilla's own protocol no longer draws DFA's batch size: revise this")
    epochs = epochs_for_steps(OFFICIAL_STEPS, len(data.train), batch)
    print(
        f"{OFFICIAL_STEPS:,} steps of {batch} on {len(data.train):,} training digits "
        f"({data.source}): {epochs:,} epochs"
    )
    grid = compare.run_grid(
        dataset="cmnist",
        ratios=[args.ratio],
        methods="vanilla,dfa",
        seeds=args.seeds,
        schedules="full",
        protocols="own",
        epochs=epochs,
        selections="all",
        digits=data.source,
        progress=False,
        out=runs_root() / "compare" / "cmnist-dfa-official-steps",
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.results.to_csv(args.out, index=False)
    last = grid.results[grid.results["selection"] == "last"]
    print(last.groupby("method")["accuracy"].agg(["mean", "std"]).round(1))


if __name__ == "__main__":
    main()
