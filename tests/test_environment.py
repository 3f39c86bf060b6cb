"""The pins that keep installs small and reproducible agree everywhere they are stated."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_map(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", line)
        if match and not line.strip().startswith("-"):
            out[match.group(1).lower()] = match.group(2).replace(" ", "")
    return out


def _environment_pip() -> dict[str, str]:
    text = (ROOT / "environment.yml").read_text()
    pip_block = text.split("- pip:", 1)[1]
    items = [m.group(1) for m in re.finditer(r"^\s+-\s+(.+)$", pip_block, re.M)]
    return _requirement_map(items)


def test_torch_and_torchvision_are_pinned_exactly_as_the_project_requires():
    pinned = _requirement_map(_pyproject()["project"]["optional-dependencies"]["pinned"])
    assert pinned == {"torch": "==2.13.0", "torchvision": "==0.28.0"}


def test_environment_yml_states_the_same_pins_as_pyproject():
    extras = _pyproject()["project"]["optional-dependencies"]
    expected = {}
    for group in ("pinned", "book", "dev"):
        expected.update(_requirement_map(extras[group]))
    assert _environment_pip() == expected


def test_environment_yml_installs_the_package_itself():
    assert re.search(r"^\s+-\s+-e \.\s*$", (ROOT / "environment.yml").read_text(), re.M)


def test_jupyter_book_stays_below_2_which_cannot_build_offline():
    book = _requirement_map(_pyproject()["project"]["optional-dependencies"]["book"])
    assert book["jupyter-book"] == ">=1.0.4.post1,<2"


def test_makefile_installs_the_pinned_extra_and_ci_runs_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[pinned,book,dev]"' in makefile
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ci[-1] == "make test"


def test_core_dependencies_leave_colab_torch_alone():
    core = _requirement_map(_pyproject()["project"]["dependencies"])
    assert not core["torch"].startswith("==") and not core["torchvision"].startswith("==")
