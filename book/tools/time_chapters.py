"""Time the chapters as a reader runs them: a fresh checkpoint folder, a chosen profile, and, for
Colored MNIST, digits of full MNIST's size.

Full MNIST cannot be downloaded where the book is built. ``--full-size`` therefore puts
Fashion-MNIST's IDX files (Debian's ``dataset-fashion-mnist``: the same format, 60,000 + 10,000
28 x 28 images, like MNIST) into a temporary data folder in MNIST's raw layout, so that the chapters
load 60,000 training images exactly as they do on Colab. The images are clothes, not digits, so the
accuracies of such a run mean nothing; only its times are used. Everything else the chapters need
(face stand-ins, chapter 8's image folder) is written afresh into the same temporary folder, as on
a first run.

    python book/tools/time_chapters.py --profile quick --full-size            # every chapter
    python book/tools/time_chapters.py --profile quick --full-size 01 02     # some of them
    python book/tools/time_chapters.py --profile quick --full-size --alone   # as on Colab

By default the chapters run in order and share one checkpoint folder, as they do in a local
checkout (chapter 2 reads chapter 1's vanilla model back). ``--alone`` gives every chapter its own
fresh data and checkpoint folder, as a reader who opens one chapter in a new Colab session has:
each chapter then trains (and writes) everything it needs itself.

For each chapter it prints the minutes from the first cell to the last (what
``chapter_times.py`` reads from the executed notebook) and the minutes of the whole command
(kernel start-up included), and keeps the executed notebooks in ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapter_times import execution_minutes  # noqa: E402


def place_full_size_digits(data_root: Path) -> None:
    """Fashion-MNIST's IDX files, decompressed, in MNIST's raw layout under ``data_root``."""
    raw = data_root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        source = FASHION / f"{name}.gz"
        if not source.is_file():
            raise SystemExit(
                f"{source} is missing: install Fashion-MNIST with "
                "`apt-get install dataset-fashion-mnist` (or `sudo make system-deps`)"
            )
        with gzip.open(source, "rb") as packed, open(raw / name, "wb") as plain:
            shutil.copyfileobj(packed, plain)


def fresh_folders(full_size: bool) -> Path:
    """A new temporary folder holding ``data/`` (with full-size digits if asked) and ``runs/``."""
    work = Path(tempfile.mkdtemp(prefix="pgd-timing-"))
    (work / "data").mkdir()
    if full_size:
        place_full_size_digits(work / "data")
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--full-size", action="store_true", help="Fashion-MNIST as MNIST")
    parser.add_argument(
        "--alone", action="store_true", help="a fresh data and checkpoint folder for every chapter"
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "timed-nb")
    args = parser.parse_args()

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.chapters:
        notebooks = [nb for nb in notebooks if nb.name[:2] in {c.zfill(2) for c in args.chapters}]
    args.out.mkdir(parents=True, exist_ok=True)
    jupyter = Path(sys.executable).with_name("jupyter")
    print("| chapter | profile | minutes (cells) | minutes (whole command) |\n|---|---|---|---|")
    work = None
    for notebook in notebooks:
        if work is None or args.alone:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            work = fresh_folders(args.full_size)
        env = os.environ | {
            "PGD_PROFILE": args.profile,
            "PGD_DATA": str(work / "data"),
            "PGD_RUNS": str(work / "runs"),
            "PGD_PROGRESS": "0",
        }
        began = time.perf_counter()
        subprocess.run(
            [
                str(jupyter),
                "nbconvert",
                "--to",
                "notebook",
                "--execute",
                "--ExecutePreprocessor.timeout=-1",
                "--output-dir",
                str(args.out),
                str(notebook),
            ],
            cwd=ROOT / "notebooks",
            env=env,
            check=True,
            capture_output=True,
        )
        whole = (time.perf_counter() - began) / 60
        cells = execution_minutes(json.loads((args.out / notebook.name).read_text()))
        shown = f"{cells:.1f}" if cells is not None else "?"
        print(f"| {notebook.stem} | {args.profile} | {shown} | {whole:.1f} |", flush=True)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
