"""The built site as a reader's browser sees it: headless Chromium over every page.

The site is the strict build's ``_build/html`` when it is newer than every source page (``make
test`` runs ``book-strict`` first), otherwise a fresh build into a temporary folder. It is served
on localhost and every page is loaded in headless Chromium (driven by Selenium). Screenshots of
the landing page and chapter 2 go to ``_build/screenshots/``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
# Debian's packages by default; elsewhere (e.g. GitHub's runners, which ship Google Chrome) the
# environment names the browser and its driver.
CHROMIUM = Path(os.environ.get("PGD_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("PGD_CHROMEDRIVER", "/usr/bin/chromedriver"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
SLUG = CONFIG["repository"]["url"].removeprefix("https://github.com/")
BRANCH = CONFIG["repository"].get("branch", "main")
# Images from other hosts cannot load on the offline test machines; only these may appear.
EXTERNAL_IMAGES = {"https://colab.research.google.com/assets/colab-badge.svg"}
# Without the background-networking flags Chromium hangs on a machine without internet.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
]


def _toc_documents() -> list[str]:
    """Every document the table of contents lists, root first (without suffix)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    found = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                found.append(entry["file"])
            walk(entry.get("chapters"))
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return found


def _source_of(document: str) -> Path:
    for suffix in (".md", ".ipynb"):
        if (ROOT / f"{document}{suffix}").exists():
            return ROOT / f"{document}{suffix}"
    raise FileNotFoundError(f"{document} is in _toc.yml but has no .md or .ipynb file")


def _is_fresh(html: Path) -> bool:
    """Every page of the toc is built, and newer than its source and the site-wide files."""
    shared = max(
        (ROOT / name).stat().st_mtime for name in ("_config.yml", "_toc.yml", "book/references.bib")
    )
    for document in _toc_documents():
        page = html / f"{document}.html"
        newest = max(shared, _source_of(document).stat().st_mtime)
        if not page.exists() or page.stat().st_mtime < newest:
            return False
    return True


@pytest.fixture(scope="module")
def site() -> Path:
    if _is_fresh(BUILT):
        yield BUILT
        return
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    if not jupyter_book.exists():
        pytest.skip("jupyter-book is not installed next to this Python (make setup installs it)")
    with tempfile.TemporaryDirectory(prefix="pgd-site-") as tmp:
        done = subprocess.run(
            [str(jupyter_book), "build", str(ROOT), "--path-output", tmp],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        html = Path(tmp) / "_build" / "html"
        assert done.returncode == 0 and (html / "index.html").exists(), done.stdout[-3000:]
        yield html


@pytest.fixture(scope="module")
def server(site):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _chromium_missing() -> str | None:
    """Why the browser checks cannot run here (one line), or None. Tests install nothing:
    `make system-deps` installs Chromium and its driver."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (
            f"Chromium or its driver is not installed ({', '.join(missing)} missing): "
            "`make system-deps` installs them, or set PGD_CHROMIUM and PGD_CHROMEDRIVER"
        )
    return None


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (it is in the dev extra)"
    )
    reason = _chromium_missing()
    if reason:
        pytest.skip(reason)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    (ROOT / "_build").mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=ROOT / "_build")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    driver.set_window_size(1280, 2000)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# Everything the checks need from one page, read in the browser after it loaded.
_READ_PAGE = """
const LAUNCH = '.dropdown-launch-buttons a[href]';
const done = arguments[arguments.length - 1];
// ChromeDriver can hand over a page that is still being parsed: wait for the whole document.
const parsed = new Promise(r => {
  const check = () => document.readyState === 'complete' ? r() : setTimeout(check, 50);
  check();
});
parsed.then(() => {
window.scrollTo(0, document.body.scrollHeight);
const pending = Array.from(document.images).filter(i => !i.complete).map(
  i => new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); }));
return Promise.race([Promise.all(pending), new Promise(r => setTimeout(r, 20000))]);
}).then(() => {
  window.scrollTo(0, 0);
  done({
    title: document.title,
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src,
                                                   width: i.naturalWidth,
                                                   alt: i.getAttribute("alt") || ""})),
    text: document.body.textContent,
    launch: Array.from(document.querySelectorAll(LAUNCH)).map(a => a.href)
      .filter(h => h.includes('colab.research.google.com')),
    solutions: Array.from(document.querySelectorAll('details')).filter(
      d => /^\\s*solution/i.test(d.querySelector('summary')?.textContent || '')).map(d => ({
        open: d.open,
        shown: Array.from(d.children).filter(c => c.tagName !== 'SUMMARY')
          .some(c => c.checkVisibility()),  // false inside a closed <details>
      })),
  });
});
"""


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "id" or (tag == "a" and name == "name")):
                self.ids.add(value)


@functools.cache
def _ids_of(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


@pytest.fixture(scope="module")
def pages(site, server, browser) -> dict[str, dict]:
    """Every HTML page of the site, loaded in Chromium: relative path -> what the page shows."""
    browser.set_script_timeout(60)
    read = {}
    paths = sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not p.relative_to(site).parts[0].startswith("_")
    )
    for rel in paths:
        with urllib.request.urlopen(f"{server}/{rel}", timeout=30) as response:
            status = response.status
        browser.get(f"{server}/{rel}")
        read[rel] = {"status": status, **browser.execute_async_script(_READ_PAGE)}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 2000, "deviceScaleFactor": 1, "mobile": False},
    )
    for name, rel, first_figure in (
        ("landing.png", "book/intro.html", False),
        ("chapter2.png", "notebooks/02_pgd_colored_mnist.html", False),
        ("chapter2-figures.png", "notebooks/02_pgd_colored_mnist.html", True),
    ):
        browser.get(f"{server}/{rel}")
        browser.execute_async_script(_READ_PAGE)  # waits for the images
        if first_figure:
            browser.execute_script("document.querySelector('figure').scrollIntoView(true)")
        browser.save_screenshot(str(SCREENSHOTS / name))
    return read


def test_every_toc_page_is_built_and_every_page_loads(site, pages):
    for document in _toc_documents():
        assert f"{document}.html" in pages, f"{document} is in _toc.yml but not in the site"
    failed = {rel: page["status"] for rel, page in pages.items() if page["status"] != 200}
    assert not failed
    untitled = [rel for rel, page in pages.items() if not page["title"].strip()]
    assert not untitled, "pages the browser could not render"


def test_every_internal_link_and_anchor_resolves(site, server, pages):
    host = urlsplit(server).netloc
    broken, anchors = [], 0
    for rel, page in pages.items():
        for href in page["links"]:
            link = urlsplit(href)
            if link.netloc != host:
                continue
            path = unquote(link.path).lstrip("/")
            target = site / (path + "index.html" if path.endswith("/") or not path else path)
            if not target.exists():
                broken.append(f"{rel}: {href} (no such file)")
            elif link.fragment and target.suffix == ".html":
                anchors += 1
                if unquote(link.fragment) not in _ids_of(target):
                    broken.append(f"{rel}: {href} (no such anchor)")
    assert not broken, "\n".join(broken)
    assert anchors > 100  # glossary terms, citations, section links: the anchors were checked


def test_every_image_loads(pages):
    broken = []
    for rel, page in pages.items():
        for image in page["images"]:
            if image["src"] in EXTERNAL_IMAGES:
                continue  # cannot load without internet; allowed by name
            local = image["src"].startswith(("http://127.0.0.1", "data:image/"))  # inline: glue
            if not local or image["width"] <= 0:
                broken.append(f"{rel}: {image['src'][:120]}")
    assert not broken, "images that are external or did not load:\n" + "\n".join(broken)
    assert sum(len(page["images"]) for page in pages.values()) > 20  # the chapters' figures


def test_every_figure_has_alt_text_that_describes_it(pages):
    """Sphinx falls back to the file name when a figure has no alt text: that is not one."""
    missing = [
        f"{rel}: {image['src'][:80]}"
        for rel, page in pages.items()
        for image in page["images"]
        if ("/_images/" in image["src"] or image["src"].startswith("data:image/"))  # figures
        and (len(image["alt"]) < 15 or image["alt"].endswith((".png", ".svg", ".jpg")))
    ]
    assert not missing, "images without a real alt text:\n" + "\n".join(missing)


def test_every_chapter_page_has_a_colab_launch_button_for_its_own_notebook(site, pages):
    chapters = [rel for rel in pages if rel.startswith("notebooks/")]
    assert len(chapters) == len(list((ROOT / "notebooks").glob("*.ipynb")))
    for rel in chapters:
        notebook = Path(rel).with_suffix(".ipynb").as_posix()
        expected = f"https://colab.research.google.com/github/{SLUG}/blob/{BRANCH}/{notebook}"
        assert pages[rel]["launch"] == [expected], rel
        colab = [h for h in pages[rel]["links"] if "colab.research.google.com/github/" in h]
        assert set(colab) == {expected}, rel  # the badge in the notebook too


def test_every_chapter_starts_with_its_exercise_solutions_collapsed(pages):
    chapters = {rel: page for rel, page in pages.items() if rel.startswith("notebooks/")}
    for rel, page in chapters.items():
        assert len(page["solutions"]) >= 3, f"{rel}: fewer than 3 solutions found"
        shown = [s for s in page["solutions"] if s["open"] or s["shown"]]
        assert not shown, f"{rel}: {len(shown)} solutions visible before a click"


def test_no_page_shows_a_traceback(pages):
    traceback = "Traceback (most recent call last)"
    shown = [rel for rel, page in pages.items() if traceback in page["text"]]
    assert not shown


def test_screenshots_of_the_landing_page_and_chapter_2_are_saved(pages):
    for name in ("landing.png", "chapter2.png", "chapter2-figures.png"):
        data = (SCREENSHOTS / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 50_000, name
