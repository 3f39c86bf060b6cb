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


# A chapter trains when it calls the pipeline's training entry points (or a comparison of them).
TRAINS = re.compile(r"\bpipeline\.(run|train_\w+)\(|\brun_grid\(|\bpgd\s+compare\b")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapters_that_train_ask_colab_for_a_gpu_runtime(path):
    nb = _load(path)
    if not any(TRAINS.search(_source(c)) for c in _code_cells(nb)):
        pytest.skip(f"{path.name} trains no model, so it need not ask for a GPU")
    assert nb["metadata"].get("accelerator") == "GPU", "Colab opens it on a CPU runtime"
    assert nb["metadata"].get("colab", {}).get("gpuType"), "no Colab GPU type in the metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_sets_the_data_and_checkpoint_folders_with_the_drive_switch(path):
    first = _source(_code_cells(_load(path))[0])
    assert re.search(r"^env = notebook_setup\(use_drive=\w+\)", first, re.M), (
        "the first cell must call notebook_setup(use_drive=...): it sets the data and checkpoint "
        "folders, on Google Drive for Colab users who switch it on"
    )


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
    # The setup cell printed the same profile as the provenance table: one run, one profile.
    printed = re.search(r"profile '(\w+)'", json.dumps(cells[0].get("outputs", [])))
    assert printed, "the setup cell did not print its profile"
    assert re.search(rf"profile\W+{printed.group(1)}\b", shown)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_run_recorded_its_timing_in_cell_order(path):
    """nbconvert/make execute record when each cell ran; book/tools/chapter_times.py reads them."""
    times = []
    for cell in _code_cells(_load(path)):
        execution = cell["metadata"].get("execution", {})
        assert "iopub.execute_input" in execution and "shell.execute_reply" in execution, (
            "a code cell without execution timestamps: not executed by make execute"
        )
        times += [execution["iopub.execute_input"], execution["shell.execute_reply"]]
    assert times == sorted(times), "cells were not executed once each, top to bottom"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_has_objectives_summary_and_hidden_solutions(path):
    text = "".join(_source(c) for c in _load(path)["cells"] if c["cell_type"] == "markdown")
    assert "Learning objectives" in text and "## Summary" in text
    exercises = text.split("## Exercises", 1)[1]
    assert exercises.count('<details class="solution">') >= 3


def test_output_checks_are_cell_tags_not_comments_in_reader_code():
    """nbval reads its markers from cell tags too: the code a reader sees carries none."""
    tagged = 0
    for path in NOTEBOOKS:
        for cell in _code_cells(_load(path)):
            assert "NBVAL" not in _source(cell), f"{path.name}: an nbval comment in the code"
            tagged += "nbval-check-output" in cell["metadata"].get("tags", [])
    # the deterministic cells whose committed output the smoke run must match, with any data source
    assert tagged >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_without_the_package_the_first_cell_prints_the_install_command_and_stops(
    path, monkeypatch, capsys
):
    """A chapter downloaded from the site and opened where pgd is not installed: the first cell
    says how to install it, stops the run (an error, so nothing below runs), and shows no
    traceback."""
    import importlib.util

    from IPython.core.interactiveshell import InteractiveShell

    first = _source(_code_cells(_load(path))[0])
    setup = first.split("\nimport time")[0]  # the install part, before the chapter's imports
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pgd" else real(name, *a)
    )
    result = InteractiveShell.instance().run_cell(setup)
    shown = capsys.readouterr().out
    slug = REPO_URL.removeprefix("https://github.com/")
    assert result.error_in_exec is not None, "the run must stop at the first cell"
    assert f'pip install "pgd-book @ git+https://github.com/{slug}@main"' in shown
    assert "Traceback" not in shown and "File " not in shown
