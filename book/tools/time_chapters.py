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
                "`apt-get install dataset-fashion-mnist` (or `make fashion-mnist`)"
            )
        with gzip.open(source, "rb") as packed, open(raw / name, "wb") as plain:
            shutil.copyfileobj(packed, plain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--full-size", action="store_true", help="Fashion-MNIST as MNIST")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "timed-nb")
    args = parser.parse_args()

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.chapters:
        notebooks = [nb for nb in notebooks if nb.name[:2] in {c.zfill(2) for c in args.chapters}]
    work = Path(tempfile.mkdtemp(prefix="pgd-timing-"))
    data_root, runs = work / "data", work / "runs"
    data_root.mkdir()
    if args.full_size:
        place_full_size_digits(data_root)
    args.out.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "PGD_PROFILE": args.profile,
        "PGD_DATA": str(data_root),
        "PGD_RUNS": str(runs),
        "PGD_PROGRESS": "0",
    }
    jupyter = Path(sys.executable).with_name("jupyter")
    print("| chapter | profile | minutes (cells) | minutes (whole command) |\n|---|---|---|---|")
    for notebook in notebooks:
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
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
