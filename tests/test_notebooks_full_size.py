"""The notebook check as a runner with internet sees it: full-size MNIST files in the data folder.

`make test` runs the chapters (smoke profile, nbval) where full MNIST cannot be downloaded, so they
read the offline 5,000-digit subset. A machine with internet (the Pages workflow, a reader's
laptop) finds MNIST's 60,000 + 10,000 digits instead. Cells whose outputs nbval compares must
print the same for both; this test puts files in MNIST's raw layout and of MNIST's size into the
data folder (random images: the format and counts of the release, not its digits)
and runs the chapters that read MNIST through the same nbval command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from layouts import write_mnist_raw

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ("01_dataset_bias.ipynb", "02_pgd_colored_mnist.ipynb")


def write_full_size_mnist(root: Path) -> Path:
    """MNIST's four raw files, of the release's format and size (60,000 training and 10,000 test
    28 x 28 images), under ``root/MNIST/raw``."""
    return write_mnist_raw(root, n_train=60_000, n_test=10_000)


def test_the_written_files_read_as_full_mnist(tmp_path):
    from pgd.datasets.cmnist import load_digits

    write_full_size_mnist(tmp_path)
    digits = load_digits("torchvision", root=tmp_path)
    assert digits.train_images.shape == (60_000, 28, 28)
    assert digits.test_images.shape == (10_000, 28, 28)


@pytest.mark.slow
def test_the_checked_notebook_outputs_hold_with_full_size_mnist(tmp_path):
    write_full_size_mnist(tmp_path / "data")
    env = os.environ | {
        "PGD_PROFILE": "smoke",
        "PGD_DATA": str(tmp_path / "data"),
        "PGD_RUNS": str(tmp_path / "runs"),
        "MPLBACKEND": "Agg",
    }
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    command += ["--nbval-lax", "--nbval-current-env", *(f"notebooks/{c}" for c in CHAPTERS)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # the chapters trained on the full-size files, not on the offline subset
    runs = [p.name for p in (tmp_path / "runs").iterdir()]
    assert runs and all("torchvision" in name for name in runs), runs
