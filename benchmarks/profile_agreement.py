"""How close does a shorter profile come to the full one? The chapters' key comparisons (vanilla
against PGD) run under several numbers of epochs per training stage, on the data a Colab reader
gets, every seed, side by side in one command; one tidy row per run.

What each chapter compares (its own setting, as the notebook sets it):

* ``02``: Colored MNIST, the small CNN, ratios 0.5 %, 1 % and 5 %, on full-size MNIST-format
  files (``--data-root`` must hold ``MNIST/raw/*-ubyte``; where full MNIST cannot be downloaded,
  Fashion-MNIST's IDX files in that layout stand in for its size, as
  ``book/tools/time_chapters.py --full-size`` does).
* ``04``: the CelebA stand-in, the small CNN on 48 x 48 faces.
* ``05``: the BFFHQ stand-in at 0.5 %, 1 % and 2 %, the small CNN on 48 x 48 faces.
* ``08``: Fashion-MNIST with class-coloured borders at 1 %, the small CNN on 28 x 28 images.

Every run is ``python -m pgd run ... --profile full --epochs E`` (the full profile keeps every
image; ``--epochs`` sets the schedule), without checkpoints, in its own process; ``--workers``
processes run at once (on one GPU they share it). Rows are appended to ``--out`` as runs finish,
so an interrupted command keeps what it finished. Data are prepared first (stand-ins written,
image folders decoded once), then the runs start, longest first.

    python benchmarks/profile_agreement.py --data-root DIR --out results.csv \\
        --epochs 02=3 02:0.01=100 04=2,4,8 05=2,4,8 08=3,6 --workers 12
    python benchmarks/profile_agreement.py --out results.csv --summary   # the Markdown table

``02:0.01=100`` runs chapter 2's comparison at the ratio 1 % only, for 100 epochs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

SEEDS = (0, 1, 2)
METHODS = ("vanilla", "pgd")

#: Chapter -> (its ``pgd run`` arguments, ratios or (None,)).
CHAPTERS: dict[str, tuple[list[str], tuple[float | None, ...]]] = {
    "02": (["--dataset", "cmnist", "--digits", "torchvision"], (0.005, 0.01, 0.05)),
    "04": (
        ["--dataset", "celeba", "--stand-in", "--model", "cnn", "--image-size", "48"],
        (None,),
    ),
    "05": (
        ["--dataset", "bffhq", "--stand-in", "--model", "cnn", "--image-size", "48"],
        (0.005, 0.01, 0.02),
    ),
    "08": (["--dataset", "folder", "--model", "cnn", "--image-size", "28"], (None,)),
}
FIELDS = (
    "chapter",
    "ratio",
    "method",
    "seed",
    "epochs",
    "accuracy",
    "aligned_accuracy",
    "conflicting_accuracy",
    "worst_group_accuracy",
    "train_samples",
    "train_conflicting",
    "seconds",
    "device",
    "source",
    "images",
    "torch",
)


def prepare(chapter: str, data_root: Path) -> Path:
    """Write what ``chapter`` reads (stand-ins, chapter 8's folder) and decode it once; return
    the data root its runs use."""
    code = {
        "04": "from pgd.experiments import pipeline as p; p.load_data(p.ExperimentConfig("
        "dataset='celeba', stand_in=True, model='cnn', image_size=48, profile='full'))",
        "05": "from pgd.experiments import pipeline as p\n"
        "for r in (0.005, 0.01, 0.02): p.load_data(p.ExperimentConfig(dataset='bffhq', "
        "stand_in=True, model='cnn', image_size=48, ratio=r, profile='full'))",
        "08": "from pgd.datasets import fashion; from pgd.experiments import pipeline as p\n"
        f"f = fashion.write_border_folder({str(data_root / 'fashion-border')!r}, "
        "fashion.load_fashion_mnist(download=False), ratio=0.01)\n"
        "p.load_data(p.ExperimentConfig(dataset='folder', model='cnn', image_size=28, "
        "profile='full'), f)",
    }.get(chapter)
    if code is not None:
        env = os.environ | {"PGD_DATA": str(data_root), "TQDM_DISABLE": "1"}
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return data_root / "fashion-border" if chapter == "08" else data_root


def run_one(job: dict, root: Path, device: str) -> dict:
    args, _ = CHAPTERS[job["chapter"]]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, "-m", "pgd", "run", *args, "--method", job["method"]]
        if job["ratio"] is not None:
            command += ["--ratio", str(job["ratio"])]
        command += ["--profile", "full", "--epochs", str(job["epochs"]), "--seed", str(job["seed"])]
        command += ["--device", device, "--data-root", str(root), "--workers", "0"]
        command += ["--no-checkpoints", "--no-progress", "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{job}: {done.stderr.strip().splitlines()[-3:]}")
        result = json.loads(out.read_text())
    test, data = result["metrics"]["test"], result["data"]
    row = dict(job)
    row.update({k: 100 * test[k] for k in FIELDS[5:9]})
    row.update(
        train_samples=data["train_samples"],
        train_conflicting=data.get("train_conflicting"),
        seconds=result["seconds"],
        device=result["device"],
        source=data["source"],
        images=data["description"],
        torch=result["provenance"].get("torch"),
    )
    return row


def summary(results: Path, profiles: dict[str, dict[int, str]]) -> str:
    """A Markdown table from a results file: per chapter, ratio and profile, PGD's unbiased
    accuracy minus vanilla's on every seed, and their means. ``profiles``: chapter -> epochs ->
    the profile name that trains them."""
    import pandas as pd

    rows = pd.read_csv(results, dtype={"chapter": str})
    rows["chapter"] = rows["chapter"].str.zfill(2)
    rows["ratio"] = rows["ratio"].fillna(-1.0)  # datasets without a ratio to choose
    table = rows.pivot_table(
        index=["chapter", "ratio", "epochs", "seed"], columns="method", values="accuracy"
    ).dropna()
    table = table.assign(gap=table["pgd"] - table["vanilla"]).reset_index()
    lines = [
        "| chapter | ratio | profile (epochs per stage) | vanilla | PGD "
        "| PGD - vanilla, seed 0 / 1 / 2 |",
        "|---|---|---|---|---|---|",
    ]
    for (chapter, ratio, epochs), group in table.groupby(
        ["chapter", "ratio", "epochs"], dropna=False
    ):
        name = profiles.get(chapter, {}).get(int(epochs))
        if name is None:
            continue
        gaps = " / ".join(f"{g:+.1f}" for g in group.sort_values("seed")["gap"])
        where = "-" if ratio < 0 else f"{100 * ratio:g}%"
        lines.append(
            f"| {chapter} | {where} | {name} ({int(epochs)}) | {group['vanilla'].mean():.1f} | "
            f"{group['pgd'].mean():.1f} | {gaps} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--epochs",
        nargs="+",
        default=[],
        help="CHAPTER=E1,E2,... for each chapter to run, e.g. 02=3,100 08=3,6",
    )
    parser.add_argument("--workers", type=int, default=1, help="runs at once")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--summary",
        action="store_true",
        help="print the Markdown table of --out (the chapters' quick and full epochs) and exit",
    )
    return parser.parse_args(argv)


#: Each chapter's epochs per stage under quick and full (chapter 2: quick's work bound on
#: 54,000 training digits; chapters 4, 5 and 8 set their own).
CHAPTER_PROFILES = {
    "02": {3: "quick", 100: "full"},
    "04": {4: "quick", 8: "full"},
    "05": {4: "quick", 8: "full"},
    "08": {3: "quick", 6: "full"},
}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.summary:
        print(summary(args.out, CHAPTER_PROFILES))
        return
    plan: list[tuple[str, tuple[float | None, ...], list[int]]] = []
    for item in args.epochs:
        target, _, values = item.partition("=")
        chapter, _, ratios = target.partition(":")
        if chapter not in CHAPTERS or not values:
            raise SystemExit(
                f"--epochs {item!r}: write CHAPTER[:R1,R2]=E1,E2 with CHAPTER in {list(CHAPTERS)}"
            )
        chosen = tuple(float(r) for r in ratios.split(",")) if ratios else CHAPTERS[chapter][1]
        plan.append((chapter, chosen, [int(v) for v in values.split(",")]))
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    chapters = sorted({chapter for chapter, _, _ in plan})
    began = time.perf_counter()
    with ThreadPoolExecutor(len(chapters)) as pool:
        prepared = pool.map(lambda c: prepare(c, args.data_root), chapters)
        roots = dict(zip(chapters, prepared, strict=True))
    print(f"data prepared in {time.perf_counter() - began:.0f} s", flush=True)
    jobs = [
        {"chapter": c, "ratio": r, "method": m, "seed": s, "epochs": e}
        for c, ratios, values in plan
        for e in values
        for r in ratios
        for s in seeds
        for m in methods
    ]
    # longest first: the methods with two stages, the most epochs, the largest data
    jobs.sort(key=lambda j: -(j["epochs"] * (2 if j["method"] == "pgd" else 1)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists()
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new:
            writer.writeheader()
        with ThreadPoolExecutor(args.workers) as pool:
            futures = [pool.submit(run_one, j, roots[j["chapter"]], args.device) for j in jobs]
            for future in as_completed(futures):
                try:
                    row = future.result()
                except RuntimeError as error:
                    print(f"failed: {error}", flush=True)
                    continue
                writer.writerow(row)
                handle.flush()
                print(
                    f"{time.perf_counter() - began:6.0f} s  ch{row['chapter']} {row['ratio']} "
                    f"{row['method']:8s} seed {row['seed']} {row['epochs']:3d} epochs: "
                    f"{row['accuracy']:.1f}% ({row['seconds']:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
