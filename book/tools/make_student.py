"""Student copies of the chapters: no outputs, no exercise solutions.

    python book/tools/make_student.py                 # notebooks/*.ipynb -> _build/student/
    python book/tools/make_student.py --out DIR a.ipynb b.ipynb

Every code cell loses its outputs and execution count (and the timing metadata of the run).
In markdown cells, every solution block is removed whole: an HTML ``<details>`` element whose
``<summary>`` starts with "Solution" (how the chapters write them, so that they stay collapsed in
Colab and Jupyter as on the site), from ``<details`` to its ``</details>``; or a MyST directive
``{admonition}`` or ``{dropdown}`` whose title starts with "Solution", from its opening fence to its
closing one, in backtick or colon fences of any length. The exercise texts stay. Standard library
only, so that an instructor can run it with any Python 3.10+.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# An opening fence: 3+ backticks or colons, a directive name in braces, then its title.
_OPEN = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}[ \t]*(?P<title>.*)$"
)
_EXERCISE = re.compile(r"^\*\*\d+\.", re.M)
# An HTML solution: <details ...> then, on the same line or the next, <summary>Solution...
_SUMMARY = re.compile(
    r"^[ \t]*(<details\b[^>]*>)?[ \t]*<summary>(<b>|<strong>)?[ \t]*solution", re.I
)


def is_solution_opening(line: str) -> re.Match[str] | None:
    """The match of ``line`` if it opens a solution block (admonition or dropdown)."""
    found = _OPEN.match(line)
    if (
        found
        and found.group("name") in ("admonition", "dropdown")
        and found.group("title").strip().lower().startswith("solution")
    ):
        return found
    return None


def _details_solution_end(lines: list[str], i: int) -> int | None:
    """If ``lines[i]`` opens a ``<details>`` solution, the index just past its ``</details>``
    (nested ``<details>`` counted; unclosed: the end of the cell)."""
    if not re.match(r"^[ \t]*<details\b", lines[i], re.I):
        return None
    same_line = "<summary" in lines[i].lower()
    summary = lines[i] if same_line else (lines[i + 1] if i + 1 < len(lines) else "")
    if not _SUMMARY.match(summary):
        return None
    depth = 0
    for j in range(i, len(lines)):
        depth += len(re.findall(r"<details\b", lines[j], re.I))
        depth -= len(re.findall(r"</details>", lines[j], re.I))
        if depth <= 0:
            return j + 1
    return len(lines)


def strip_solutions(text: str) -> tuple[str, int]:
    """``text`` without its solution blocks, and how many were removed.

    A ``<details>`` block ends with its matching ``</details>``. A fenced block ends at the first
    later line made only of the opening fence's character, at least as many of them as the opening
    fence (the MyST/CommonMark rule); inner fences are shorter or of the other character. An
    unclosed block runs to the end of the cell, as MyST renders it.
    """
    lines = text.split("\n")
    kept: list[str] = []
    removed = 0
    i = 0
    while i < len(lines):
        found = is_solution_opening(lines[i])
        end = _details_solution_end(lines, i)
        if not found and end is None:
            kept.append(lines[i])
            i += 1
            continue
        if end is not None:
            i = end
        else:
            fence = found.group("fence")
            closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
            i += 1
            while i < len(lines) and not closing.match(lines[i]):
                i += 1
            i += 1  # the closing fence
        removed += 1
        # one blank line between what came before and what follows is enough
        while kept and kept[-1].strip() == "" and i < len(lines) and lines[i].strip() == "":
            i += 1
    while kept and kept[-1].strip() == "":
        kept.pop()
    return "\n".join(kept) + ("\n" if text.endswith("\n") else ""), removed


def count_exercises(text: str) -> int:
    """How many exercises: numbered paragraphs ``**1. Title.**`` after ``## Exercises``."""
    if "## Exercises" not in text:
        return 0
    return len(_EXERCISE.findall(text.split("## Exercises", 1)[1]))


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def _as_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def student_copy(nb: dict) -> tuple[dict, int]:
    """A copy of notebook ``nb`` for students, and the number of solution blocks removed."""
    copy = json.loads(json.dumps(nb))
    removed = 0
    for cell in copy["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            cell.get("metadata", {}).pop("execution", None)
        elif cell["cell_type"] == "markdown":
            text, n = strip_solutions(_source(cell))
            if n:
                cell["source"] = _as_lines(text)
                removed += n
    return copy, removed


def write_student_copies(paths: list[Path], out: Path) -> dict[str, int]:
    """Write a student copy of each of ``paths`` into ``out``; solutions removed, per file."""
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        copy, removed = student_copy(nb)
        text = json.dumps(copy, indent=1, ensure_ascii=False) + "\n"
        (out / path.name).write_text(text, encoding="utf-8")
        report[path.name] = removed
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "student")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not paths:
        parser.error("no notebooks found")
    for name, removed in write_student_copies(paths, args.out).items():
        print(f"{args.out / name}: outputs cleared, {removed} solutions removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
