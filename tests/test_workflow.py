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
    assert workflow["permissions"]["pages"] == "write"
    assert workflow["permissions"]["id-token"] == "write"
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages"))
    assert upload["with"]["path"] == "_build/html"
    assert _uses(deploy) == ["actions/deploy-pages"]
    assert deploy["needs"] == "test-and-build"
    assert "push" in deploy["if"] and "refs/heads/main" in deploy["if"]
    assert deploy["environment"]["name"] == "github-pages"
