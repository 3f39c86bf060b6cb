"""The chapters as Jupyter and Colab render them, and the pages' promises about citations and the
glossary."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from pybtex.database import parse_file

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("check_markup", ROOT / "book/tools/check_markup.py")
check_markup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_markup)

BIBLIOGRAPHY = parse_file(str(ROOT / "book" / "references.bib")).entries
# Chapters link the book's pages by their published address (book/tools/site_links.py).
SITE = re.escape(yaml.safe_load((ROOT / "_config.yml").read_text())["html"]["baseurl"])
# A citation in a chapter: author-year text linking to the references page, the key as link title.
CITATION = re.compile(rf'\]\({SITE}book/references\.html "([\w-]+)"\)')
GLOSSARY_LINK = re.compile(rf"\[([^\]]+)\]\({SITE}book/glossary\.html#([\w-]+)\)")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _markdown(nb: dict) -> str:
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def _cell(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_shows_no_myst_syntax_in_jupyter_and_keeps_solutions_collapsed(path):
    assert check_markup.markup_problems(_load(path), path.name) == []


@pytest.mark.parametrize(
    ("broken", "reported"),
    [
        ("```{admonition} Note\n:class: tip\nText.\n```", "MyST directive"),
        (":::{note}\nText.\n:::", "MyST directive"),
        ("As shown by {cite}`ahn2023pgd`.", "MyST role"),
        ("See {eq}`gce`.", "MyST role"),
        ("(my-label)=\n## A section", "MyST target"),
        ("$$\nx = 1\n$$ (one)", "equation label"),
        ("## Exercises\n\n**1. Q.**\n\nSolution: the answer is 4.", "'Solution' outside"),
        ("## Exercises\n\n**1. Q.**\n\n```python\nprint(4)\n```", "code block outside"),
        (
            "## Exercises\n\n**1. Q.**\n\n<details open>\n<summary>Solution</summary>\n\n4\n\n"
            "</details>",
            "starts expanded",
        ),
    ],
)
def test_the_check_fails_on_a_chapter_with_raw_myst_or_an_uncollapsed_solution(broken, reported):
    nb = copy.deepcopy(_load(NOTEBOOKS[1]))
    if "Exercises" in broken:  # replace the chapter's own exercises by the broken ones
        start = next(i for i, c in enumerate(nb["cells"]) if "## Exercises" in "".join(c["source"]))
        nb["cells"] = [*nb["cells"][:start], _cell(broken)]
    else:  # early in the chapter, before its exercises
        nb["cells"].insert(1, _cell(broken))
    problems = check_markup.markup_problems(nb, "copy")
    assert len(problems) == 1 and reported in problems[0], problems


def test_a_collapsed_html_solution_passes_the_check():
    text = (
        "## Exercises\n\n**1. Q.**\n\n<details>\n<summary>Solution</summary>\n\n"
        "```python\nprint(4)\n```\nThe answer is 4.\n\n</details>"
    )
    assert check_markup.markup_problems({"cells": [_cell(text)]}) == []


def _citations() -> dict[str, set[str]]:
    """Bibliography key -> the chapters (file stems) and pages that cite it."""
    found: dict[str, set[str]] = {}
    for path in NOTEBOOKS:
        for key in CITATION.findall(_markdown(_load(path))):
            found.setdefault(key, set()).add(path.stem)
    for page in (ROOT / "book").glob("*.md"):
        if page.stem == "references":
            continue
        for key in re.findall(r"\{cite(?::[tp])?\}`([\w-]+)`", page.read_text()):
            found.setdefault(key, set()).add(page.stem)
    return found


def test_every_citation_names_an_entry_of_the_bibliography():
    unknown = sorted(set(_citations()) - set(BIBLIOGRAPHY))
    assert not unknown


def test_every_bibliography_entry_is_cited_somewhere():
    assert sorted(set(BIBLIOGRAPHY) - set(_citations())) == []


def test_references_page_says_where_each_work_is_cited():
    """Its table (one row per work) names exactly the chapters and pages that cite the work."""
    page = (ROOT / "book" / "references.md").read_text()
    rows = re.findall(r"^\| \{cite:t\}`([\w-]+)` \| (.*) \|$", page, re.M)
    assert sorted(key for key, _ in rows) == sorted(BIBLIOGRAPHY)
    stems = {p.name[:2].lstrip("0"): p.stem for p in NOTEBOOKS}
    for key, cell in rows:
        chapters = {stems[n] for n in re.findall(r"\[(\d+)\]\(\.\./notebooks/", cell)}
        pages = {p for p in re.findall(r"\]\((\w+)\.md\)", cell)}
        assert chapters | pages == _citations()[key], key


def _glossary_slugs() -> set[str]:
    """The anchors of the glossary's terms (its level-2 headings, as MyST and GitHub slug them)."""
    headings = re.findall(r"^## (.+)$", (ROOT / "book" / "glossary.md").read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_links_glossary_terms_at_their_first_use(path):
    text = _markdown(_load(path))
    links = list(GLOSSARY_LINK.finditer(text))
    assert len({m.group(2) for m in links}) >= 5, "a chapter links the glossary terms it uses"
    assert {m.group(2) for m in links} <= _glossary_slugs(), "a link to a term with no entry"
    first: dict[str, re.Match] = {}
    for m in links:
        first.setdefault(m.group(2), m)
    for slug, m in first.items():
        before = check_markup.prose(text[: m.start()])
        used = re.search(rf"(?<![\w-]){re.escape(m.group(1))}(?![\w-])", before, re.I)
        assert not used, f"{slug}: used before its link, at {before[used.start() - 40 :][:80]!r}"
