"""How fast are exact per-sample gradient norms? Seven ways, side by side, on the same batches.

For the LfF/DFA MLP and the official small CNN (inputs 3x28x28, Colored MNIST), a ResNet-18
(torchvision, weights=None, inputs 3xSxS, S=32 by default) and a small ViT (4x4 patches, two
Transformer encoder blocks, inputs 3x32x32), all in eval mode, this measures in one run,
interleaved round by round so that the ratios are comparable on a noisy machine:

* ``fwd+bwd``: a plain forward and backward pass of the batch (the floor: a training step);
* ``last layer``: PGD's official score in closed form (:mod:`pgd.gradients.scores`, forward
  only);
* ``all layers``: :func:`pgd.gradients.grad_norms.grad_norms`, exact over every parameter;
* ``vmap(grad)``: torch.func, materialising per-sample gradients, in chunks of the batch;
* ``loop``: the official code's way, one backward pass per sample (over all parameters here;
  on ResNet-18 timed on the first ``--loop-samples`` samples and scaled to the batch);
* ``BackPACK``: ``BatchL2Grad`` (backpack-for-pytorch), if installed;
* ``Opacus``: ghost-clipping per-sample norms (``GradSampleModuleFastGradientClipping``), if
  installed and if it supports the model (it refuses BatchNorm layers).

Every method's norms (ours included) are checked against a float64 per-sample loop on a copy of
the model, on the first ``--check-samples`` samples of the same batch (``last layer`` measures
less, so it is not compared). Peak memory: on CUDA, ``torch.cuda.max_memory_allocated``
above what was allocated before the call; on CPU, the rise of the process's peak resident memory
during one call, each method in a fresh process (``/proc/self/clear_refs``).

It prints a table, writes it as CSV (``--out``), and ends with one line for the MLP:
``ratio_all_layers_to_fwd_bwd=<x> speedup_vs_vmap=<y> speedup_vs_loop=<z>``.

Run: ``make bench`` (installs BackPACK and Opacus into .venv first), or
``python benchmarks/per_sample_norms.py --batch 256 --repeats 7``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pgd  # noqa: F401  (torchvision import fix, before anything else)
from pgd.gradients.grad_norms import grad_norms
from pgd.gradients.scores import (
    batch_last_layer_grad_norms,
    per_sample_grad_norms,
    per_sample_grad_norms_loop,
)
from pgd.models import TinyViT, build_model, resnet18

MODELS = ("mlp", "cnn", "resnet18", "vit")
METHODS = ("fwd+bwd", "last layer", "all layers", "vmap(grad)", "loop", "BackPACK", "Opacus")
RESULTS = Path(__file__).resolve().parent / "results"


class Unsupported(Exception):
    """A method that cannot run on this model or machine (the reason is reported)."""


def make_model(name: str, device: torch.device, size: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "resnet18":
        model = resnet18(num_classes=10)
        shape = (3, size, size)
    elif name == "vit":
        model = TinyViT(num_classes=10)
        shape = (3, 32, 32)
    else:
        model = build_model(name)
        shape = (3, 28, 28)
    return model.to(device).eval(), shape


def make_batch(shape, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), y.to(device)


def make_method(
    method: str, name: str, model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace
) -> tuple[Callable[[], Tensor | None], str]:
    """``(call, note)``: ``call()`` runs the method once on the batch and returns its norms."""
    batch = len(y)
    if method == "fwd+bwd":

        def floor() -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

        return floor, "floor: one training step's passes"
    if method == "last layer":
        return lambda: batch_last_layer_grad_norms(model, x, y), "forward only; last weight only"
    if method == "all layers":
        return lambda: grad_norms(model, x, y), "pgd.gradients.grad_norms, exact"
    if method == "vmap(grad)":
        chunk = args.vmap_chunk if name != "resnet18" else max(1, args.vmap_chunk // 4)

        def vmapped() -> Tensor:
            parts = [
                per_sample_grad_norms(model, x[i : i + chunk], y[i : i + chunk])
                for i in range(0, batch, chunk)
            ]
            return torch.cat(parts)

        return vmapped, f"chunks of {chunk}"
    if method == "loop":
        limit = args.loop_samples if name == "resnet18" else None

        def loop() -> Tensor:
            return per_sample_grad_norms_loop(model, x, y, all_parameters=True, limit=limit)

        note = "all parameters" + (
            f"; {limit} of {batch} backward passes timed, scaled x{batch / limit:g}"
            if limit is not None and limit < batch
            else ""
        )
        return loop, note
    if method == "BackPACK":
        try:
            from backpack import backpack, extend
            from backpack.extensions import BatchL2Grad
        except ImportError as error:
            raise Unsupported("not installed (pip install backpack-for-pytorch)") from error
        extended = extend(copy.deepcopy(model), use_converter=name == "resnet18").eval()
        loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))

        def backpack_norms() -> Tensor:
            extended.zero_grad(set_to_none=True)
            with backpack(BatchL2Grad()):
                loss_fn(extended(x), y).backward()
            return torch.stack([p.batch_l2 for p in extended.parameters()]).sum(0).sqrt()

        return backpack_norms, "BatchL2Grad (also computes the batch gradient)"
    if method == "Opacus":
        try:
            from opacus.grad_sample import GradSampleModuleFastGradientClipping
        except ImportError as error:
            raise Unsupported("not installed (pip install opacus)") from error
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise Unsupported("Opacus refuses BatchNorm layers")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = GradSampleModuleFastGradientClipping(
                copy.deepcopy(model).train(),  # Opacus records activations in train mode only
                batch_first=True,
                loss_reduction="sum",
                use_ghost_clipping=True,
            )

        def opacus_norms() -> Tensor:
            wrapped.zero_grad(set_to_none=True)
            F.cross_entropy(wrapped(x), y, reduction="sum").backward()
            return wrapped.get_norm_sample()

        return opacus_norms, "ghost clipping norms (also computes the batch gradient)"
    raise ValueError(f"unknown method {method!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Callable, device: torch.device) -> float:
    _sync(device)
    began = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - began


# --- memory -------------------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory_worker(args: argparse.Namespace) -> None:
    """In a fresh process: peak resident memory (MB) added by one call of one method."""
    device = torch.device(args.device)
    model, shape = make_model(args.model_name, device, args.resnet_size)
    x, y = make_batch(shape, args.batch, device)
    try:
        call, _ = make_method(args.method_name, args.model_name, model, x, y, args)
    except Unsupported:
        print(json.dumps({"peak_mb": None}))
        return
    call()  # warm-up: one-time allocations (kernels, thread pools) are not the method's
    _release_memory()
    before = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    call()
    peak = _rss_kb("VmHWM")
    print(json.dumps({"peak_mb": max(peak - before, 0) / 1024}))


def cpu_peak_mb(model: str, method: str, args: argparse.Namespace) -> float | None:
    command = [
        sys.executable,
        __file__,
        "--memory-worker",
        model,
        method,
        "--batch",
        str(args.batch),
        "--resnet-size",
        str(args.resnet_size),
        "--vmap-chunk",
        str(args.vmap_chunk),
        "--loop-samples",
        str(args.loop_samples),
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  (memory of {method} on {model} not measured: {done.stderr.strip()[-300:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def cuda_peak_mb(call: Callable, device: torch.device) -> float:
    _release_memory()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


# --- the run ------------------------------------------------------------------------------------


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    model, shape = make_model(name, device, args.resnet_size)
    x, y = make_batch(shape, args.batch, device)
    calls, notes, rows = {}, {}, []
    for method in args.methods:
        try:
            calls[method], notes[method] = make_method(method, name, model, x, y, args)
        except Unsupported as why:
            notes[method] = f"not run: {why}"
    # Warm-up, and agreement with a float64 per-sample loop on the first samples of this batch.
    k = min(args.check_samples, len(y))
    model64 = copy.deepcopy(model).double()
    reference = per_sample_grad_norms_loop(model64, x[:k].double(), y[:k], all_parameters=True)
    errors = {}
    for method, call in list(calls.items()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = call()
        except Exception as error:  # a library that cannot handle this model
            if method in ("BackPACK", "Opacus"):
                del calls[method]
                notes[method] = f"not run: {type(error).__name__}: {str(error)[:80]}"
                continue
            raise
        if out is not None and method != "last layer":
            n = min(k, len(out))
            got, want = out[:n].double(), reference[:n]
            errors[method] = float(((got - want).abs() / want).max())
    times: dict[str, list[float]] = {m: [] for m in calls}
    for round_ in range(args.repeats):
        for method, call in calls.items():
            if method == "loop" and round_ >= 3:
                continue  # slow and steady: three rounds are enough
            times[method].append(_timed(call, device))
    scale = {m: 1.0 for m in calls}
    if "loop" in calls and name == "resnet18" and args.loop_samples < args.batch:
        scale["loop"] = args.batch / args.loop_samples
    for method in args.methods:
        row = {
            "model": name,
            "input": "x".join(map(str, shape)),
            "batch": args.batch,
            "method": method,
            "note": notes[method],
        }
        if method in calls:
            seconds = statistics.median(times[method]) * scale[method]
            row["ms"] = 1e3 * seconds
            row["samples_per_s"] = args.batch / seconds
            row["max_rel_diff"] = errors.get(method)
            if args.memory:
                if device.type == "cuda":
                    row["peak_mb"] = cuda_peak_mb(calls[method], device)
                else:
                    row["peak_mb"] = cpu_peak_mb(name, method, args)
        rows.append(row)
    return rows


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds (median)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--resnet-size", type=int, default=32, help="ResNet-18 input side")
    parser.add_argument("--vmap-chunk", type=int, default=64, help="vmap chunk (ResNet: /4)")
    parser.add_argument("--loop-samples", type=int, default=32, help="ResNet-18 loop: samples")
    parser.add_argument(
        "--check-samples", type=int, default=16, help="samples checked against float64"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--out", type=Path, default=None, help="CSV (default results/<device>)")
    parser.add_argument("--memory-worker", nargs=2, metavar=("MODEL", "METHOD"), default=None)
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for m in args.methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but torch sees no CUDA GPU")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # torch's note that an operator (attention on CPU) has no vmap batching rule yet
    warnings.filterwarnings("ignore", message="There is a performance drop")
    if args.memory_worker is not None:
        args.model_name, args.method_name = args.memory_worker
        memory_worker(args)
        return 0
    device = torch.device(args.device)
    where = machine(device)
    print(f"per-sample gradient norms, batch {args.batch}, on {where}; torch {torch.__version__}")
    rows = []
    for name in args.models:
        print(f"- {name} ...", flush=True)
        rows += bench_model(name, args, device)
    table = pd.DataFrame(rows)
    floor = table[table.method == "fwd+bwd"].set_index("model")
    table["time_vs_floor"] = table.ms / table.model.map(floor.ms)
    if "peak_mb" in table:
        table["memory_vs_floor"] = table.peak_mb / table.model.map(floor.peak_mb)
    table["device"] = device.type
    table["machine"] = where
    table["torch"] = torch.__version__
    shown = [
        c
        for c in (
            "model",
            "method",
            "ms",
            "samples_per_s",
            "time_vs_floor",
            "peak_mb",
            "memory_vs_floor",
            "max_rel_diff",
            "note",
        )
        if c in table
    ]
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    out = args.out or RESULTS / f"per_sample_norms_{device.type}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"written to {out}")
    if "mlp" in args.models and {"fwd+bwd", "all layers", "vmap(grad)", "loop"} <= set(
        args.methods
    ):
        mlp = table[table.model == "mlp"].set_index("method").ms
        print(
            f"ratio_all_layers_to_fwd_bwd={mlp['all layers'] / mlp['fwd+bwd']:.2f} "
            f"speedup_vs_vmap={mlp['vmap(grad)'] / mlp['all layers']:.1f} "
            f"speedup_vs_loop={mlp['loop'] / mlp['all layers']:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
