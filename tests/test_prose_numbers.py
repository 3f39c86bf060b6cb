"""Every number a page states in prose is one it printed, or one declared with its source
(book/tools/prose_numbers.py): on every chapter and page, and on altered copies that must fail."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "tools"))

import prose_numbers  # noqa: E402


def test_every_chapter_and_page_states_only_numbers_it_printed_or_declared():
    missing = prose_numbers.check_all()
    assert not missing, "\n".join(map(str, missing))


def _alter_a_printed_number(notebook: Path) -> str:
    """Change, in the first markdown cell that has one, a percentage that the chapter printed
    and did not declare, to one that it did not print. Returns the new text."""
    cells = json.loads(notebook.read_text())
    printed = prose_numbers.chapter_outputs(notebook)
    for cell in cells["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        declared = cell.get("metadata", {}).get("numbers", {})
        for number in prose_numbers.prose_numbers(text, "x"):
            if number.kind != "percent" or number.text in declared:
                continue
            if not prose_numbers.appears(number, printed):
                continue
            for shift in range(1, 50):  # a nearby value that the chapter never printed
                step = 10**-number.decimals * shift
                altered = f"{number.value + step:.{number.decimals}f}"
                probe = prose_numbers.ProseNumber(altered, "percent", "x", "")
                if not prose_numbers.appears(probe, printed):
                    break
            cell["source"] = [text.replace(number.text, altered, 1)]
            notebook.write_text(json.dumps(cells))
            return altered
    raise AssertionError(f"no printed percentage in the prose of {notebook.name}")


@pytest.mark.parametrize("chapter", ["02_pgd_colored_mnist", "05_bffhq"])
def test_a_chapter_whose_prose_misquotes_a_printed_number_fails(tmp_path, chapter):
    copy = tmp_path / f"{chapter}.ipynb"
    shutil.copy(ROOT / "notebooks" / f"{chapter}.ipynb", copy)
    assert prose_numbers.check_chapter(copy) == []
    altered = _alter_a_printed_number(copy)
    flagged = [m.number.text for m in prose_numbers.check_chapter(copy)]
    assert altered in flagged


def test_a_page_whose_table_misquotes_its_csv_fails(tmp_path):
    page = tmp_path / "instructors.md"
    text = (ROOT / "book" / "instructors.md").read_text()
    assert "| 02 | 1% | quick (3) | 26.5 | 75.3 |" in text
    page.write_text(text.replace("| 26.5 | 75.3 |", "| 26.5 | 75.9 |"))
    assert prose_numbers.check_page(ROOT / "book" / "instructors.md") == []
    assert [m.number.text for m in prose_numbers.check_page(page)] == ["75.9"]


def test_code_maths_citations_links_and_equation_numbers_are_not_prose():
    text = (
        "Accuracy rose to 65.7 % (`lr = 0.02`, $p = 0.7$, {cite}`ahn2023pgd`) "
        '[the guide](https://example.org/v1.5 "title 2.5"), as (2.3) and equation 6.1 say; '
        "3,600 digits in 0.4 minutes, 3 seeds, torch 2.13.0."
    )
    found = {(n.text, n.kind) for n in prose_numbers.prose_numbers(text, "x")}
    assert found == {("65.7", "percent"), ("3,600", "count"), ("0.4", "time")}


def test_a_percentage_matches_a_printed_fraction_at_the_precision_written():
    number = prose_numbers.ProseNumber("65.7", "percent", "x", "")
    assert prose_numbers.appears(number, {0.6573})
    assert prose_numbers.appears(number, {65.74})
    assert not prose_numbers.appears(number, {65.76, 0.6576})
    count = prose_numbers.ProseNumber("3,600", "count", "x", "")
    assert prose_numbers.appears(count, {3600.0}) and not prose_numbers.appears(count, {3601.0})
