"""Do the chapters read in Jupyter and Colab as they do on the site?

    python book/tools/check_markup.py                 # every notebooks/*.ipynb
    python book/tools/check_markup.py a.ipynb b.ipynb

Jupyter and Colab render a markdown cell as CommonMark with raw HTML; they know nothing of MyST.
Every markdown cell is rendered here with markdown-it-py's CommonMark renderer (tables on, as in
Jupyter), and the result is checked for what would show as raw text there: MyST roles
(``{cite}`...```), directives (```` ```{admonition} ````, ``:::{note}``), targets (``(label)=``)
and equation labels (``$$ ... $$ (label)``). In the exercises section (from the ``## Exercises``
heading on), a solution must sit inside a closed ``<details>`` element: no code block and no
"Solution" outside one, and no ``<details open>``. Prints one line per problem; exit status 1 if
there is any. Standard library and markdown-it-py (a dependency of the book's build) only.
"""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[2]
RENDERER = MarkdownIt("commonmark").enable("table")

# What MyST syntax looks like once a CommonMark renderer has passed it through as text.
VISIBLE_MYST = {
    "MyST role": re.compile(r"\{[a-z][\w:+-]*\}<code>"),
    "MyST directive": re.compile(r'class="language-\{|:{3,}\s*\{[\w-]+\}'),
    "MyST target": re.compile(r"(^|>)\s*\([\w:-]+\)=\s*($|<)", re.M),
}
EQUATION_LABEL = re.compile(r"\$\$\s*\([\w:-]+\)")
EXERCISES = re.compile(r"^#+\s*Exercises?\b", re.M)

# Spans of a markdown text that are not prose: code, math, links, HTML tags, headings.
NOT_PROSE = re.compile(
    r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$|!?\[[^\]]*\]\([^)]*\)|<[^>\n]*>|^#+ [^\n]*$",
    re.S | re.M,
)


def prose(text: str) -> str:
    """``text`` with code, math, links, HTML tags and headings blanked (same length)."""
    return NOT_PROSE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


class _Solutions(HTMLParser):
    """What of an exercises section a reader sees without opening anything."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.in_summary = False
        self.exposed: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "details":
            self.depth += 1
            if any(name == "open" for name, _ in attrs):
                self.exposed.append("a <details open> (it starts expanded)")
        elif tag == "summary":
            self.in_summary = True
        elif tag == "pre" and self.depth == 0:
            self.exposed.append("a code block outside <details>")

    def handle_endtag(self, tag):
        if tag == "details":
            self.depth = max(0, self.depth - 1)
        elif tag == "summary":
            self.in_summary = False

    def handle_data(self, data):
        if self.depth == 0 and not self.in_summary and re.search(r"\bsolution\b", data, re.I):
            self.exposed.append(f"'Solution' outside <details>: {data.strip()[:60]!r}")


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def markup_problems(nb: dict, name: str = "notebook") -> list[str]:
    """Every way ``nb``'s markdown would show MyST syntax or a solution in Jupyter or Colab."""
    problems: list[str] = []
    in_exercises = False
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "markdown"]
    for number, cell in enumerate(cells, 1):
        text = _source(cell)
        html = RENDERER.render(text)
        where = f"{name}, markdown cell {number}"
        for what, pattern in VISIBLE_MYST.items():
            found = pattern.search(html)
            if found:
                problems.append(f"{where}: {what} shows as text: {found.group(0).strip()!r}")
        found = EQUATION_LABEL.search(text)
        if found:
            problems.append(f"{where}: equation label shows as text: {found.group(0)!r}")
        if EXERCISES.search(text):
            in_exercises = True
            html = RENDERER.render(text[EXERCISES.search(text).end() :])
        if in_exercises:
            parser = _Solutions()
            parser.feed(html)
            problems += [f"{where}: {exposed}" for exposed in parser.exposed]
    return problems


def main(argv: list[str] | None = None) -> int:
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    paths = paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    problems = []
    for path in paths:
        problems += markup_problems(json.loads(path.read_text(encoding="utf-8")), path.name)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} markup problems in {len(paths)} notebooks")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
