"""The repository's name and the published site's address, from one setting.

``repository.url`` in ``_config.yml`` is the one setting (``https://github.com/OWNER/NAME``, with
``repository.branch``). Everything else derives from it:

* the published site, GitHub Pages' address for the repository, ``https://OWNER.github.io/NAME/``
  (``html.baseurl`` in ``_config.yml``, which must equal it);
* every chapter's Colab badge and install cell (``git+https://github.com/OWNER/NAME@BRANCH``);
* the links from the chapters to the book's pages (glossary, references, instructors...):
  absolute addresses on the published site, so that they work in Colab and in a downloaded
  notebook, where ``../book/glossary.md`` leads nowhere;
* the package's address for the committed benchmark results, and the clone command of
  ``book/how_to_run.md``.

    python book/tools/site_links.py           # rewrite all of them (and html.baseurl) from it
    python book/tools/site_links.py --check   # list what differs (exit 1), change nothing

Used as a Sphinx extension (``_config.yml``: ``sphinx.local_extensions``), it turns the absolute
links back into relative ones while the site is built, so that the site links its own pages (and
the strict build checks them) instead of the published copy.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
NAME = r"[\w.-]+/[\w.-]+"


def settings(root: Path = ROOT) -> tuple[str, str, str]:
    """``(OWNER/NAME, branch, site address ending in /)`` from ``root/_config.yml``."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    url = config["repository"]["url"].rstrip("/")
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url)
    if match is None:
        raise SystemExit(
            f"repository.url in _config.yml is not https://github.com/OWNER/NAME: {url}"
        )
    owner, name = match.groups()
    return f"{owner}/{name}", config["repository"].get("branch", "main"), site_url(owner, name)


def site_url(owner: str, name: str) -> str:
    """GitHub Pages' address for the repository ``owner/name``."""
    return f"https://{owner.lower()}.github.io/{name}/"


def absolute_links(text: str, site: str) -> str:
    """Links to the book's pages, ``](../book/PAGE.md``, as ``](SITE/book/PAGE.html``."""
    return re.sub(r"\]\(\.\./book/([\w-]+)\.md", rf"]({site}book/\1.html", text)


def relative_links(text: str, site: str) -> str:
    """The inverse of :func:`absolute_links` (anchors and titles are left as they are)."""
    return re.sub(rf"\]\({re.escape(site)}book/([\w-]+)\.html", r"](../book/\1.md", text)


def derived(text: str, slug: str, branch: str, site: str) -> str:
    """``text`` with every derived address made from the setting."""
    text = re.sub(
        rf"colab\.research\.google\.com/github/{NAME}/blob/[\w.-]+/",
        f"colab.research.google.com/github/{slug}/blob/{branch}/",
        text,
    )
    text = re.sub(
        rf"git\+https://github\.com/{NAME}@[\w.-]+", f"git+https://github.com/{slug}@{branch}", text
    )
    text = re.sub(
        rf"raw\.githubusercontent\.com/{NAME}/[\w.-]+/",
        f"raw.githubusercontent.com/{slug}/{branch}/",
        text,
    )
    text = re.sub(r"https://[\w.-]+\.github\.io/[\w.-]+/", site, text)
    text = re.sub(
        rf"git clone https://github\.com/{NAME} && cd [\w.-]+",
        f"git clone https://github.com/{slug} && cd {slug.split('/')[1]}",
        text,
    )
    return text


def files(root: Path = ROOT) -> list[Path]:
    """The files that hold derived addresses."""
    return [
        *sorted((root / "notebooks").glob("*.ipynb")),
        root / "pgd" / "book" / "notebook.py",
        root / "book" / "how_to_run.md",
    ]


def expected(path: Path, root: Path = ROOT, setting: tuple[str, str, str] | None = None) -> str:
    """What ``path`` holds once every address in it is derived from the setting (``setting``:
    :func:`settings` of ``root``, read again when not given)."""
    slug, branch, site = setting or settings(root)
    text = derived(path.read_text(), slug, branch, site)
    return absolute_links(text, site) if path.suffix == ".ipynb" else text


def check(root: Path = ROOT) -> list[str]:
    """The files whose addresses do not follow the setting, and a wrong ``html.baseurl``."""
    setting = settings(root)
    problems = [
        str(p.relative_to(root)) for p in files(root) if expected(p, root, setting) != p.read_text()
    ]
    config = yaml.safe_load((root / "_config.yml").read_text())
    if config.get("html", {}).get("baseurl") != setting[2]:
        problems.append(f"_config.yml: html.baseurl must be {setting[2]}")
    return problems


def sync(root: Path = ROOT) -> list[str]:
    """Rewrite ``html.baseurl`` and every derived address under ``root`` from the setting;
    return the files changed."""
    changed = []
    config = root / "_config.yml"
    setting = settings(root)
    site = setting[2]
    text = re.sub(r"(?m)^(\s*baseurl:\s*)\S+$", rf"\g<1>{site}", config.read_text())
    if text != config.read_text():
        config.write_text(text)
        changed.append("_config.yml")
    for path in files(root):
        text = expected(path, root, setting)
        if text != path.read_text():
            path.write_text(text)
            changed.append(str(path.relative_to(root)))
    return changed


def setup(app) -> dict:
    """Sphinx extension: the chapters' absolute links to the book's pages become relative."""
    site = settings(Path(app.srcdir))[2]

    def source_read(app, docname: str, source: list[str]) -> None:
        source[0] = relative_links(source[0], site)

    app.connect("source-read", source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list what differs; change nothing")
    args = parser.parse_args(argv)
    problems = check()
    if args.check:
        for problem in problems:
            print(f"not derived from _config.yml's repository.url: {problem}")
        return 1 if problems else 0
    for name in sync():
        print(f"rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
