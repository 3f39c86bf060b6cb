"""A chapter as a reader runs it: alone in a new folder, data and checkpoints in their default
places. Its outputs must name none of the reader's folders by their absolute path (a saved or
shared notebook would carry them), and must not warn about arithmetic on empty groups."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ("07_comparison.ipynb", "08_own_data.ipynb")


def _outputs(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return json.dumps([c.get("outputs", []) for c in cells if c["cell_type"] == "code"])


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_chapter_run_in_a_new_folder_prints_no_absolute_path(tmp_path, chapter):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    shutil.copy(ROOT / "notebooks" / chapter, work / chapter)
    env = {k: v for k, v in os.environ.items() if k not in ("PGD_DATA", "PGD_RUNS")}
    env |= {"HOME": str(home), "PGD_PROFILE": "smoke", "MPLBACKEND": "Agg", "PGD_PROGRESS": "0"}
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute"]
    command += ["--output", "executed.ipynb", chapter]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = _outputs(work / "executed.ipynb")
    assert str(tmp_path) not in outputs, "an output names the reader's folder by its full path"
    assert str(ROOT) not in outputs
    assert "RuntimeWarning" not in outputs and "inf points" not in outputs


def test_the_chapters_run_here_have_no_output_that_nbval_would_compare():
    """The Makefile leaves these chapters out of its nbval run: a checked cell would go
    unchecked."""
    for chapter in CHAPTERS:
        cells = json.loads((ROOT / "notebooks" / chapter).read_text())["cells"]
        assert not any("nbval-check-output" in c["metadata"].get("tags", []) for c in cells)
    makefile = (ROOT / "Makefile").read_text()
    assert all(f"notebooks/{chapter}" in makefile for chapter in CHAPTERS)
