"""The benchmark script runs and its methods agree; speed itself is measured by `make bench`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_per_sample_norm_benchmark_runs_and_every_method_agrees(tmp_path):
    out = tmp_path / "bench.csv"
    methods = "fwd+bwd,last layer,all layers,vmap(grad),loop,BackPACK,Opacus"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "per_sample_norms.py"),
            *("--batch", "8", "--repeats", "1", "--models", "mlp,cnn", "--methods", methods),
            *("--no-memory", "--device", "cpu", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("ratio_all_layers_to_fwd_bwd=") and "speedup_vs_loop=" in last
    table = pd.read_csv(out)
    assert set(table["method"]) == set(methods.split(","))
    measured = table.dropna(subset=["max_rel_diff"])
    assert set(measured["method"]) >= {"vmap(grad)", "loop"}
    assert (measured["max_rel_diff"] < 1e-4).all(), measured[["model", "method", "max_rel_diff"]]
    # a library that is missing or refuses the model is reported, not silently dropped
    skipped = table[table["ms"].isna()]
    assert skipped["note"].str.startswith("not run:").all()


def test_the_instructors_profile_table_is_the_committed_measurement():
    """Every row of the quick-against-full table on the instructors' page comes from
    benchmarks/results/profile_agreement_cuda.csv, as ``profile_agreement.py --summary`` prints
    it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import profile_agreement
    finally:
        sys.path.pop(0)
    results = ROOT / "benchmarks" / "results" / "profile_agreement_cuda.csv"
    table = profile_agreement.summary(results, profile_agreement.CHAPTER_PROFILES)
    page = (ROOT / "book" / "instructors.md").read_text()
    assert table.count("\n") >= 10
    assert table in page
