"""The publishing workflow: it parses, runs the README's two commands and deploys the site."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def _workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def _runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def _uses(job: dict) -> list[str]:
    return [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]


def test_workflow_runs_on_every_push_to_main():
    assert _workflow()["on"]["push"]["branches"] == ["main"]


def test_workflow_runs_the_readme_commands_in_order():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(make \w+)\s", readme, re.M)
    assert commands[:2] == ["make book", "make test"]
    runs = " ".join(_runs(_workflow()["jobs"]["test-and-build"]))
    assert runs.index("make test") < runs.index("make book")


def test_workflow_deploys_the_built_site_to_pages_only_from_main():
    workflow = _workflow()
    build, deploy = workflow["jobs"]["test-and-build"], workflow["jobs"]["deploy"]
    # only the deploy job may write to Pages; every other job (pull requests too) reads
    assert workflow["permissions"] == {"contents": "read"}
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert "permissions" not in build
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages"))
    assert upload["with"]["path"] == "_build/html"
    assert _uses(deploy) == ["actions/deploy-pages"]
    assert deploy["needs"] == "test-and-build"
    assert "push" in deploy["if"] and "refs/heads/main" in deploy["if"]
    assert deploy["environment"]["name"] == "github-pages"


#: The oldest major of each action that runs on Node 24 (Node 20 actions are deprecated on the
#: hosted runners).
CURRENT_MAJORS = {
    "actions/checkout": 5,
    "actions/setup-python": 6,
    "actions/upload-pages-artifact": 4,
    "actions/deploy-pages": 5,
}


def test_workflow_uses_current_action_majors():
    for job in _workflow()["jobs"].values():
        for step in job["steps"]:
            if "uses" not in step:
                continue
            action, _, version = step["uses"].partition("@")
            assert action in CURRENT_MAJORS, f"{action}: add it to CURRENT_MAJORS"
            assert int(version.lstrip("v").split(".")[0]) >= CURRENT_MAJORS[action], step["uses"]


def test_make_test_installs_nothing_on_the_system():
    """`make test` neither calls apt-get nor sudo; system packages come from `make system-deps`."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(
        ["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "pytest" in plan and "ruff" in plan  # the plan is the real one
    assert "apt-get" not in plan and "sudo" not in plan
    deps = subprocess.run(
        ["make", "-n", "system-deps"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "apt-get install" in deps and "chromium-driver" in deps
