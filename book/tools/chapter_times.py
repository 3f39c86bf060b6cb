"""How long each chapter took to execute, read from the notebooks themselves.

Every notebook executed by ``make execute`` (or ``jupyter nbconvert --execute``) records, in each
code cell's metadata, when the kernel started the cell (``iopub.execute_input``) and when it
replied (``shell.execute_reply``). This script reports, per notebook, the time from the first code
cell's start to the last code cell's reply, and the profile its provenance cell shows::

    python book/tools/chapter_times.py                      # the committed notebooks/*.ipynb
    python book/tools/chapter_times.py /tmp/smoke-nb/*.ipynb

It prints a Markdown table (chapter | profile | minutes). Kernel start-up, before the first
cell, is not included. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def _text(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


def execution_minutes(nb: dict) -> float | None:
    """Minutes from the first code cell's start to the last code cell's reply (None: no record)."""
    times = [
        c.get("metadata", {}).get("execution", {}) for c in nb["cells"] if c["cell_type"] == "code"
    ]
    times = [t for t in times if "iopub.execute_input" in t and "shell.execute_reply" in t]
    if not times:
        return None
    start = _timestamp(times[0]["iopub.execute_input"])
    end = _timestamp(times[-1]["shell.execute_reply"])
    return (end - start).total_seconds() / 60


def provenance_profile(nb: dict) -> str:
    """The profile name shown by the notebook's provenance cell ("?" when there is none)."""
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "provenance_table(" not in _source(cell):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            html = _text(data.get("text/html", ""))
            found = re.search(r"<th>profile</th>\s*<td>\s*(\w+)", html)
            if not found:
                found = re.search(r"^profile\s+(\w+)", _text(data.get("text/plain", "")), re.M)
            if found:
                return found.group(1)
    return "?"


def table(paths: list[Path]) -> str:
    """A Markdown table: one row per notebook, chapter, profile and minutes."""
    rows = ["| chapter | profile | minutes |", "|---|---|---:|"]
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        minutes = execution_minutes(nb)
        shown = "not recorded" if minutes is None else f"{minutes:.1f}"
        rows.append(f"| {path.stem} | {provenance_profile(nb)} | {shown} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="notebooks to read (default: notebooks/*.ipynb)"
    )
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    print(table(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
