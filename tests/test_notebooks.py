"""Every chapter notebook is ready for Colab and was committed from a real run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_chapters_and_the_toc_lists_every_one():
    toc = (ROOT / "_toc.yml").read_text()
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in toc


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_installs_from_this_repository_only_on_colab(path):
    first = _source(_code_cells(_load(path))[0])
    slug = REPO_URL.removeprefix("https://github.com/")
    assert '"google.colab" in sys.modules' in first
    assert f"git+https://github.com/{slug}@main" in first
    assert "notebook_setup(" in first  # finds the GPU and says what it found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_badge_points_at_this_file_on_main(path):
    slug = REPO_URL.removeprefix("https://github.com/")
    text = "".join(_source(c) for c in _load(path)["cells"] if c["cell_type"] == "markdown")
    assert f"colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_come_from_one_clean_non_smoke_run(path):
    nb = _load(path)
    cells = _code_cells(nb)
    counts = [c.get("execution_count") for c in cells]
    assert counts == list(range(1, len(cells) + 1)), "not one top-to-bottom run (make execute)"
    outputs = json.dumps([c.get("outputs", []) for c in cells])
    assert '"output_type": "error"' not in outputs
    assert "Traceback" not in outputs
    provenance = [c for c in cells if "provenance_table(" in _source(c)]
    assert provenance, "no provenance cell"
    shown = json.dumps(provenance[0]["outputs"])
    assert re.search(r"profile\W+(quick|full)", shown), "provenance must show a real profile"
    assert not re.search(r"profile\W{0,8}smoke", outputs, re.I)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_has_objectives_summary_and_hidden_solutions(path):
    text = "".join(_source(c) for c in _load(path)["cells"] if c["cell_type"] == "markdown")
    assert "Learning objectives" in text and "## Summary" in text
    exercises = text.split("## Exercises", 1)[1]
    assert exercises.count(":class: dropdown") >= 3
