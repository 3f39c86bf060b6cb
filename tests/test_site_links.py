"""The repository's name lives in one setting; badges, install cells and links derive from it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "tools"))
import site_links  # noqa: E402


def test_every_address_follows_the_repository_setting():
    assert site_links.check() == []


def test_the_site_address_is_github_pages_for_the_repository():
    slug, branch, site = site_links.settings()
    owner, name = slug.split("/")
    assert site == f"https://{owner.lower()}.github.io/{name}/"
    assert branch == "main"


def test_chapters_link_the_book_pages_by_their_published_address():
    _, _, site = site_links.settings()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert "](../book/" not in text, f"{path.name}: a relative link leads nowhere in Colab"
        assert f"]({site}book/glossary.html#" in text


def test_links_round_trip_between_site_and_published_addresses():
    site = "https://owner.github.io/name/"
    text = 'see [a term](../book/glossary.md#profile) and [Ahn](../book/references.md "ahn2023pgd")'
    absolute = site_links.absolute_links(text, site)
    assert absolute == (
        f"see [a term]({site}book/glossary.html#profile) and "
        f'[Ahn]({site}book/references.html "ahn2023pgd")'
    )
    assert site_links.relative_links(absolute, site) == text


def test_renaming_the_repository_is_one_edit_and_one_command(tmp_path):
    for name in ("_config.yml", "notebooks", "book", "pgd/book"):
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    config = tmp_path / "_config.yml"
    config.write_text(
        config.read_text().replace(
            "url: https://github.com/pgd-book/pgd-book", "url: https://github.com/Someone/fork"
        )
    )
    stale = site_links.check(tmp_path)
    assert "notebooks/01_dataset_bias.ipynb" in stale and "book/how_to_run.md" in stale
    assert any("html.baseurl" in problem for problem in stale)
    changed = site_links.sync(tmp_path)
    assert "_config.yml" in changed and "pgd/book/notebook.py" in changed
    assert site_links.check(tmp_path) == []
    assert "baseurl: https://someone.github.io/fork/" in config.read_text()
    chapter = (tmp_path / "notebooks" / "02_pgd_colored_mnist.ipynb").read_text()
    assert "git+https://github.com/Someone/fork@main" in chapter
    assert "colab.research.google.com/github/Someone/fork/blob/main/notebooks/" in chapter
    assert "https://someone.github.io/fork/book/glossary.html#" in chapter
    assert "pgd-book/pgd-book" not in chapter
