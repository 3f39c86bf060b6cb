"""`make student`: copies of the chapters without outputs and without exercise solutions."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "book" / "tools" / "make_student.py"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Written independently of the script: the opening of a solution, an HTML <details> whose summary
# says Solution (how the chapters write them) or a MyST admonition or dropdown titled Solution.
SOLUTION_OPENING = re.compile(
    r"^\s*((`{3,}|:{3,})\{(admonition|dropdown)\}\s*Solution"
    r"|<details[^>]*>\s*\n?\s*<summary>(<b>)?\s*Solution)",
    re.M | re.I,
)
EXERCISE = re.compile(r"^\*\*(\d+)\.", re.M)


def _markdown(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def _exercise_section(nb: dict) -> str:
    return "\n".join(_markdown(nb)).split("## Exercises", 1)[1]


def _exercise_texts(section: str) -> list[str]:
    """Each exercise's statement: from its ``**N.`` to the solution fence that follows it."""
    texts = []
    for found in EXERCISE.finditer(section):
        rest = section[found.start() :]
        end = SOLUTION_OPENING.search(rest)
        texts.append(rest[: end.start() if end else len(rest)].strip())
    return texts


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_make_student_writes_a_copy_of_every_chapter(student_dir):
    assert NOTEBOOKS
    assert sorted(p.name for p in student_dir.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_in_the_chapter_has_a_solution(path):
    section = _exercise_section(_load(path))
    exercises = EXERCISE.findall(section)
    assert exercises, "no numbered exercises (**1. ...**) after ## Exercises"
    assert exercises == [str(n) for n in range(1, len(exercises) + 1)]
    assert len(SOLUTION_OPENING.findall(section)) == len(exercises)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_has_no_outputs(path, student_dir):
    copy = _load(student_dir / path.name)
    for cell in copy["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == []
            assert cell["execution_count"] is None
            assert "execution" not in cell["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_has_no_solutions_but_every_exercise_text(path, student_dir):
    full, copy = _load(path), _load(student_dir / path.name)
    text = "\n".join(_markdown(copy))
    assert not SOLUTION_OPENING.search(text)
    assert ":class: dropdown" not in _exercise_section(copy)
    assert "<details" not in _exercise_section(copy)
    for exercise in _exercise_texts(_exercise_section(full)):
        assert exercise in text
    assert "## Summary" in text  # the rest of the chapter is there


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_keeps_code_and_the_cells_without_solutions(path, student_dir):
    full, copy = _load(path), _load(student_dir / path.name)
    assert len(copy["cells"]) == len(full["cells"])
    assert copy["metadata"] == full["metadata"]
    for before, after in zip(full["cells"], copy["cells"], strict=True):
        assert before["source"] == after["source"] or SOLUTION_OPENING.search(
            "".join(before["source"])
        )


def test_solutions_in_any_fence_style_are_removed_whole(tmp_path):
    spec = importlib.util.spec_from_file_location("make_student", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "\n".join(
        [
            "## Exercises",
            "",
            "**1. Backticks.** First question.",
            "",
            "````{admonition} Solution",
            ":class: dropdown",
            "```python",
            "print('answer one')",
            "```",
            "Because.",
            "````",
            "",
            "**2. Colons.** Second question.",
            "",
            ":::{admonition} Solution to exercise 2",
            ":class: dropdown",
            "answer two",
            ":::",
            "",
            "**3. Dropdown.** Third question.",
            "",
            "```{dropdown} Solution",
            "answer three",
            "```",
            "",
            "```{admonition} Hint",
            "kept: not a solution",
            "```",
            "",
            "**4. Details.** Fourth question.",
            "",
            '<details class="solution">',
            "<summary><b>Solution</b></summary>",
            "",
            "answer four, with a nested hint:",
            "<details><summary>Hint</summary>inner</details>",
            "",
            "</details>",
            "",
            "**5. One line.** Fifth question.",
            "",
            "<details><summary>Solution</summary>",
            "",
            "answer five",
            "",
            "</details>",
            "",
            "<details><summary>Background</summary>kept: not a solution either</details>",
        ]
    )
    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)},
            {
                "cell_type": "code",
                "execution_count": 3,
                "metadata": {"execution": {}, "tags": ["hide-input"]},
                "outputs": [{"output_type": "stream", "name": "stdout", "text": ["x\n"]}],
                "source": ["print('x')"],
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    source = tmp_path / "07_new.ipynb"
    source.write_text(json.dumps(nb))
    report = module.write_student_copies([source], tmp_path / "out")
    assert report == {"07_new.ipynb": 5}
    copy = _load(tmp_path / "out" / "07_new.ipynb")
    shown = "".join(copy["cells"][0]["source"])
    assert "answer" not in shown and "Because" not in shown and "Solution" not in shown
    assert "inner" not in shown and "</details>\n\n</details>" not in shown
    for question in (
        "First question.",
        "Second question.",
        "Third question.",
        "Fourth question.",
        "Fifth question.",
        "kept: not a solution",
        "kept: not a solution either",
    ):
        assert question in shown
    code = copy["cells"][1]
    assert code["outputs"] == [] and code["execution_count"] is None
    assert code["metadata"] == {"tags": ["hide-input"]}
