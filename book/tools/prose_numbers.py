"""Every number a page states in prose is one it printed, or one declared as a setting or a fact.

For each chapter (``notebooks/*.ipynb``), every number in a markdown cell of these kinds:

* percentages (``65.7 %``, ``5%``),
* decimals (``0.4485``, ``1.3``),
* counts with a thousands separator (``3,600``),
* times (``0.4 minutes``, ``49 min``, ``12 s``),

outside code spans, maths, citations, link targets and HTML tags, must appear among the
chapter's printed outputs at the precision shown (``65.7`` matches a printed ``65.73``; a
percentage also matches a printed fraction, ``65.7 %`` a printed ``0.657``), or be declared in the
cell's metadata with what it is and where it comes from::

    {"numbers": {"100": "epochs per stage: the official schedule"}}

Pages outside the chapters (``book/*.md``) are checked against every chapter's outputs and the
committed CSV files they cite (``benchmarks/results/*.csv``); their declarations live in
:data:`PAGE_DECLARATIONS` (``book/prose_numbers.json``: page -> number -> what it is).

Run: ``python book/tools/prose_numbers.py`` (every chapter and page; exit status 1 and a list of
the numbers found nowhere), or ``--page FILE`` for one file.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PAGES = ROOT / "book"
PAGE_DECLARATIONS = PAGES / "prose_numbers.json"

# What is not prose: removed before numbers are looked for (in this order).
_NOT_PROSE = [
    re.compile(r"```.*?```", re.S),  # fenced code
    re.compile(r"\$\$.*?\$\$", re.S),  # display maths
    re.compile(r"(?<!\\)\$[^$\n]+?\$"),  # inline maths
    re.compile(r"\\\(.*?\\\)", re.S),
    re.compile(r"\{cite[^}]*\}`[^`]*`"),  # citations
    re.compile(r"\{[a-z]+\}`[^`]*`"),  # other roles ({doc}`...`, {ref}`...`)
    re.compile(r"`[^`\n]*`"),  # code spans
    re.compile(r"\]\([^)\s]*(?:\s+\"[^\"]*\")?\)"),  # link targets and titles
    re.compile(r"<[^>\n]+>"),  # HTML tags and their attributes
    re.compile(r"^#{1,6}\s*\d+(\.\d+)*\.?\s", re.M),  # section numbers of headings
    re.compile(r"\b\d+\.\d+\.\d+\b"),  # versions
    re.compile(r"\(\d+\.\d+\)"),  # equation references, (2.3)
    re.compile(r"\bequations?\s+\d+\.\d+(?:\s*(?:to|-|–|,|and)\s*\d+\.\d+)*"),
    re.compile(r"^\s*(:::|```)\{[^}]*\}.*$", re.M),  # directive lines
    re.compile(r"^:[a-z-]+:.*$", re.M),  # directive options
]

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_TIME_UNITS = r"(?:minutes?|min|seconds?|s|hours?|h)\b"
_PROSE_NUMBER = re.compile(
    rf"(?<![\w.,])(?P<number>{_NUMBER})"
    rf"(?P<unit>\s?%|\s(?:{_TIME_UNITS})|\s?(?:min|s|h)\b)?(?![\w])"
)
_OUTPUT_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?")


@dataclass(frozen=True)
class ProseNumber:
    """A number stated in prose: its text as written, the kind that makes it checked, the cell
    (or page) and the line it stands on."""

    text: str
    kind: str  # percent, decimal, count, time
    where: str
    line: str

    @property
    def value(self) -> float:
        return float(self.text.replace(",", ""))

    @property
    def decimals(self) -> int:
        return len(self.text.split(".")[1]) if "." in self.text else 0


def strip_non_prose(markdown: str) -> str:
    for pattern in _NOT_PROSE:
        markdown = pattern.sub(" ", markdown)
    return markdown


def prose_numbers(markdown: str, where: str) -> list[ProseNumber]:
    """The checked numbers of one markdown text (see the module docstring)."""
    found = []
    for line in strip_non_prose(markdown).splitlines():
        for match in _PROSE_NUMBER.finditer(line):
            text, unit = match.group("number"), (match.group("unit") or "").strip()
            if unit == "%":
                kind = "percent"
            elif unit:
                kind = "time"
            elif "," in text:
                kind = "count"
            elif "." in text:
                kind = "decimal"
            else:
                continue  # a plain integer: not one of the checked kinds
            found.append(ProseNumber(text, kind, where, line.strip()))
    return found


def output_numbers(text: str) -> set[float]:
    """Every number printed in ``text`` (HTML tags removed), as a value."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    values = set()
    for match in _OUTPUT_NUMBER.finditer(text):
        try:
            values.add(abs(float(match.group(0).replace(",", ""))))
        except ValueError:
            continue
    return values


def appears(number: ProseNumber, printed: set[float]) -> bool:
    """Whether ``number`` is among ``printed`` at the precision it is written with (a percentage
    also as a fraction)."""
    target, digits = number.value, number.decimals
    tolerance = 0.5 * 10**-digits + 1e-9
    candidates = [target] + ([target / 100] if number.kind == "percent" else [])
    for want in candidates:
        scale = 100.0 if want is not target else 1.0
        for value in printed:
            if abs(value * scale - target) <= tolerance:
                return True
    return False


def _cell_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _outputs_text(cell: dict) -> Iterator[str]:
    for output in cell.get("outputs", []):
        if "text" in output:
            yield "".join(output["text"])
        data = output.get("data", {})
        for kind in ("text/plain", "text/html", "text/markdown", "text/latex"):
            if kind in data:
                value = data[kind]
                yield "".join(value) if isinstance(value, list) else value


def chapter_outputs(notebook: Path) -> set[float]:
    """Every number the chapter's code cells printed."""
    return _printed(json.loads(notebook.read_text())["cells"])


def _printed(cells: list[dict]) -> set[float]:
    printed: set[float] = set()
    for cell in cells:
        if cell.get("cell_type") == "code":
            for text in _outputs_text(cell):
                printed |= output_numbers(text)
    return printed


@dataclass(frozen=True)
class Unmatched:
    number: ProseNumber

    def __str__(self) -> str:
        n = self.number
        return f"{n.where}: {n.text}{' %' if n.kind == 'percent' else ''} ({n.kind}) in: {n.line}"


def check_chapter(notebook: Path) -> list[Unmatched]:
    cells = json.loads(notebook.read_text())["cells"]
    printed = _printed(cells)
    missing = []
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "markdown":
            continue
        declared = cell.get("metadata", {}).get("numbers", {})
        where = f"{notebook.name} cell {index}"
        for number in prose_numbers(_cell_text(cell), where):
            if number.text in declared or appears(number, printed):
                continue
            missing.append(Unmatched(number))
    return missing


def _cited_csvs(text: str) -> Iterable[Path]:
    for name in sorted(set(re.findall(r"benchmarks/results/[\w.-]+\.csv", text))):
        path = ROOT / name
        if path.is_file():
            yield path


def check_page(page: Path, printed: set[float] | None = None) -> list[Unmatched]:
    text = page.read_text()
    pool = set(printed if printed is not None else all_chapter_outputs())
    for csv in _cited_csvs(text):
        pool |= output_numbers(csv.read_text())
    declarations = json.loads(PAGE_DECLARATIONS.read_text()) if PAGE_DECLARATIONS.is_file() else {}
    declared = declarations.get(page.name, {})
    return [
        Unmatched(n)
        for n in prose_numbers(text, page.name)
        if n.text not in declared and not appears(n, pool)
    ]


def all_chapter_outputs() -> set[float]:
    printed: set[float] = set()
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        printed |= chapter_outputs(notebook)
    return printed


def check_all() -> list[Unmatched]:
    missing = []
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        missing += check_chapter(notebook)
    printed = all_chapter_outputs()
    for page in sorted(PAGES.glob("*.md")):
        missing += check_page(page, printed)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", type=Path, help="one chapter (.ipynb) or page (.md)")
    args = parser.parse_args(argv)
    if args.page is None:
        missing = check_all()
    elif args.page.suffix == ".ipynb":
        missing = check_chapter(args.page)
    else:
        missing = check_page(args.page)
    for item in missing:
        print(item)
    print(f"{len(missing)} number(s) in prose found in no output and declared nowhere")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
