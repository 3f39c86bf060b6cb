"""What the two guards cost: the spot check of per-sample gradient norms, and the quick check of
image files before training. Both measured side by side with what they guard, in one run.

* **Spot check** (``grad_norms(..., check=k)``; PGD's scoring runs it on its first batch): for
  the models of ``per_sample_norms.py`` (eval mode, batch 256), the time of one batch's norms
  without and with the check of ``k`` samples, for the whole-network norms and for the
  last-layer closed form; the check's cost as a share of one batch and of one scoring pass over
  ``--scoring-samples`` images (the full Colored MNIST training split: 54,000).
* **Quick verification** (``verify_files``; the default before training on folders too large
  to keep in memory): ``--files`` JPEG files of CelebA's size (178 x 218) written into a
  temporary folder, then read with PIL's header check alone (the check before), the header and
  the end marker (the check now), and a full decode of every file (what the first epoch does at
  least once per file). The files were just written, so they are read from the page cache: the
  ratios are CPU costs; on a cold disk all three wait for the same reads.

Run: ``python benchmarks/checks_cost.py`` (writes ``results/checks_cost_<device>.csv``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

import pgd  # noqa: F401  (torchvision import fix, before anything else)
from pgd.datasets.images import read_image, verify_files
from pgd.gradients.grad_norms import grad_norms, spot_check
from pgd.gradients.scores import batch_last_layer_grad_norms
from pgd.models import TinyViT, build_model, last_linear, resnet18

RESULTS = Path(__file__).resolve().parent / "results"


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "resnet18":
        return resnet18(num_classes=10).eval(), (3, 32, 32)
    if name == "vit":
        return TinyViT(num_classes=10).eval(), (3, 32, 32)
    return build_model(name).eval(), (3, 28, 28)


def spot_check_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    batches = -(-args.scoring_samples // args.batch)
    for name in args.models:
        model, shape = _model(name)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(args.batch, *shape, generator=g)
        y = torch.randint(0, 10, (args.batch,), generator=g)
        last = last_linear(model)

        def last_checked(model=model, x=x, y=y, last=last) -> None:
            norms = batch_last_layer_grad_norms(model, x, y)
            spot_check(model, x, y, norms, [last.weight], args.k, tolerance=3.5e-4)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the torch.func fallback of the ViT's attention
            pairs = {
                "all layers": (
                    _median_seconds(lambda m=model, a=x, b=y: grad_norms(m, a, b), args.repeats),
                    _median_seconds(
                        lambda m=model, a=x, b=y: grad_norms(m, a, b, check=args.k), args.repeats
                    ),
                ),
                "last layer": (
                    _median_seconds(
                        lambda m=model, a=x, b=y: batch_last_layer_grad_norms(m, a, b),
                        args.repeats,
                    ),
                    _median_seconds(last_checked, args.repeats),
                ),
            }
        for scores, (plain, checked) in pairs.items():
            cost = max(checked - plain, 0.0)
            rows.append(
                {
                    "guard": f"spot check, {args.k} samples",
                    "case": f"{name}, {scores}, batch {args.batch}",
                    "without_ms": 1e3 * plain,
                    "with_ms": 1e3 * checked,
                    "cost_share_of_one_batch": cost / plain,
                    "cost_share_of_scoring_pass": cost / (plain * batches),
                    "note": f"scoring pass: {args.scoring_samples:,} images, {batches} batches",
                }
            )
            print(rows[-1], flush=True)
    return rows


def _header_only(files: list[str]) -> None:
    for name in files:
        with Image.open(name) as image:
            image.verify()


def _decode_all(files: list[str]) -> None:
    for name in files:
        read_image(name)


def verify_rows(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        files = []
        for i in range(args.files):
            path = Path(folder) / f"{i:06d}.jpg"
            pixels = np.roll(base, i % 178, axis=1)  # different files, one noise image
            Image.fromarray(pixels).save(path, quality=90)
            files.append(str(path))
        timings = {
            "header only (before)": _median_seconds(lambda: _header_only(files), 1),
            "header and end marker (now)": _median_seconds(lambda: verify_files(files), 1),
            "full decode": _median_seconds(lambda: _decode_all(files), 1),
        }
    decode = timings["full decode"]
    rows = []
    for case, seconds in timings.items():
        rows.append(
            {
                "guard": "quick verification",
                "case": f"{case}, {args.files:,} JPEG files of 178 x 218",
                "without_ms": None,
                "with_ms": 1e3 * seconds,
                "cost_share_of_one_batch": None,
                "cost_share_of_scoring_pass": None,
                "share_of_decoding_every_file": seconds / decode,
                "note": "files in the page cache (just written): CPU cost",
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn,resnet18,vit")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=2, help="samples of the spot check")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scoring-samples", type=int, default=54_000)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--tmp", default=None, help="where to write the JPEG files")
    parser.add_argument("--out", type=Path, default=RESULTS / "checks_cost_cpu.csv")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    rows = spot_check_rows(args) + (verify_rows(args) if args.files else [])
    table = pd.DataFrame(rows)
    table["machine"] = f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
