"""Planning the comparison grid, without running anything: which grid entries there are (every
registered method, in the grid's order), how the command line's choices are read, and
:func:`plan_grid`, the runs a grid makes: per schedule, protocol, ratio and method, the
candidates of its validation search at the first seed (one when nothing is tuned)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..datasets.base import check_ratio
from ..methods.registry import METHODS
from .config import ExperimentConfig


def grid_entries() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every registered method in the grid's order (methods that read no bias labels, those with
    several entries (PGD), the oracles), each of its :class:`~pgd.methods.base.GridEntry` its
    own entry: ``(name -> config fields, name -> label)``. Read from the registry each time, so a
    method registered by a plugin appears."""
    specs = list(METHODS.values())
    ordered = [m for m in specs if not m.oracle and not m.grid_entries]
    ordered += [m for m in specs if not m.oracle and m.grid_entries]
    ordered += [m for m in specs if m.oracle]
    fields: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    for spec in ordered:
        for entry in spec.entries():
            fields[entry.name] = {"method": spec.name, **entry.settings}
            labels[entry.name] = entry.label
    return fields, labels


def __getattr__(name: str) -> Any:
    """``GRID_METHODS`` (grid entry -> configuration fields) and ``LABELS`` (grid entry -> how
    tables and figures call it; oracles say so), as the registry stands now."""
    if name == "GRID_METHODS":
        return grid_entries()[0]
    if name == "LABELS":
        return grid_entries()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``all`` or a comma-separated list of :data:`GRID_METHODS` names, in the grid's order."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip().lower() for n in names if n.strip()]
    entries = grid_entries()[0]
    if names == ["all"]:
        return list(entries)
    unknown = [n for n in names if n not in entries]
    if unknown or not names:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(entries)} or all"
        )
    return [n for n in entries if n in names]


def parse_ratios(text: str | Iterable[float] | None) -> list[float | None]:
    """Comma-separated bias-conflicting ratios, each in (0, 1)."""
    if text is None:
        return [None]
    values = text.split(",") if isinstance(text, str) else list(text)
    try:
        return [check_ratio(float(v)) for v in values if str(v).strip()]
    except ValueError as error:
        raise ValueError(f"bad --ratios {text!r}: {error}") from None


PROTOCOLS = ("shared", "own")
#: Training budgets: ``stage`` gives every training stage the schedule's epochs (PGD, with two
#: stages, trains twice as long as a one-stage method); ``total`` gives every method as many
#: epochs in all as the method of most stages in the grid.
BUDGETS = ("stage", "total")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a grid method name, the protocol it stands for, and its full
    configuration."""

    method: str
    config: ExperimentConfig
    protocol: str = "shared"
    budget: str = "stage"

    @property
    def key(self) -> str:
        return self.config.name()


def parse_choices(text: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """A comma-separated list (or a list) of ``allowed`` values, checked, in the given order."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(allowed)}"
        )
    return list(dict.fromkeys(names))


def entry_config(
    method: str, dataset: str, ratio: float | None, seed: int, base: dict[str, Any]
) -> ExperimentConfig:
    """The configuration of grid entry ``method`` on ``dataset`` at ``ratio`` and ``seed``: ``base``
    (the grid's common settings), then the method's grid settings, then the entry's own."""
    entry = grid_entries()[0][method]
    spec = METHODS[entry["method"]]
    fields = {**base, **spec.grid_settings, **entry, "dataset": dataset, "ratio": ratio}
    return ExperimentConfig(**fields, seed=seed)


def candidates(config: ExperimentConfig) -> list[ExperimentConfig]:
    """``config`` under every combination of its method's tuning values (itself if none)."""
    grid = config.method_spec.tuning
    out = [config]
    for name, values in grid.items():
        out = [replace(c, **{name: v}) for c in out for v in values]
    return out


@dataclass(frozen=True)
class PlannedMethod:
    """One grid entry under one schedule, protocol and ratio: the candidates of its validation
    search at the grid's first seed (one cell when nothing is tuned). The chosen candidate then
    runs at every seed."""

    method: str
    protocol: str
    candidates: tuple[Cell, ...]
    budget: str = "stage"


def plan_grid(
    dataset: str,
    *,
    ratios: Sequence[float | None],
    methods: Sequence[str],
    seeds: Sequence[int],
    schedules: Sequence[str],
    protocols: Sequence[str],
    settings: Mapping[str, Any],
    model: str | None = None,
    tune: bool = True,
    budgets: Sequence[str] = ("stage",),
    train_samples: int | None = None,
) -> list[PlannedMethod]:
    """The grid's searches in the order they run: schedules, then budgets, protocols, ratios and
    methods.

    Pure: it reads the registries and builds configurations, and runs, loads and writes nothing.

    Args:
        dataset: a registered dataset.
        ratios, methods, seeds, schedules, protocols: the grid's values, already parsed
            (:func:`parse_ratios`, :func:`parse_methods`, :func:`parse_choices`); ``seeds[0]`` is
            the seed of the validation search.
        settings: configuration fields every cell shares (device, epochs, the dataset's options).
        model: the network of every cell of the ``shared`` protocol (None: the dataset's
            default); the ``own`` protocol takes each method's published one on ``dataset`` and
            leaves out methods that have none.
        tune: give each method the candidates of its spec's ``tuning`` (False: its defaults).
        budgets: :data:`BUDGETS`; under ``total`` a method of ``k`` stages trains
            ``most / k`` times the schedule's epochs per stage, where ``most`` is the largest
            number of stages among ``methods`` (a method that already has the most is the same
            run under both budgets).
        train_samples: the training set's size, which sets the schedule's epochs under a
            profile bounded by work (needed for the ``total`` budget without ``epochs``).

    Raises:
        ValueError: no seed; or the ``total`` budget where every method has one stage (it would
            be the stage budget under another name).
    """
    if not seeds:
        raise ValueError("at least one seed is needed")
    entries = grid_entries()[0]
    specs = {method: METHODS[entries[method]["method"]] for method in methods}
    most = max((spec.stages for spec in specs.values()), default=1)
    if "total" in budgets and most == 1 and methods:
        raise ValueError(
            "the total budget gives every method as many epochs in all as the requested method "
            f"of most stages, and every requested method ({', '.join(methods)}) has one stage: "
            "it would be the stage budget under another name. Request a method of several "
            "stages beside them (e.g. --methods vanilla,pgd)"
        )
    planned: list[PlannedMethod] = []
    for schedule in schedules:
        for budget in budgets:
            for protocol in protocols:
                for ratio in ratios:
                    for method in methods:
                        spec = specs[method]
                        base = {**settings, "profile": schedule}
                        if protocol == "shared":
                            if model is not None:
                                base["model"] = model
                        elif dataset in spec.protocols:
                            base.update(spec.protocols[dataset].fields)
                        else:
                            continue  # no published protocol of its own for this dataset
                        first = entry_config(method, dataset, ratio, seeds[0], base)
                        if budget == "total" and most > spec.stages:
                            per_stage = first.stage_epochs(train_samples)
                            first = replace(first, epochs=per_stage * most // spec.stages)
                        configs = candidates(first) if tune else [first]
                        cells = tuple(Cell(method, c, protocol, budget) for c in configs)
                        planned.append(PlannedMethod(method, protocol, cells, budget))
    return planned


def planned_runs(plan: Sequence[PlannedMethod], seeds: Sequence[int]) -> int:
    """How many runs ``plan`` makes at most: every candidate, and the chosen one at the other
    seeds (a candidate already run is read back, not run again)."""
    return sum(len(p.candidates) + len(seeds) - 1 for p in plan)
