"""How fast are PGD's scores? Last-layer per-sample gradient norms, three ways, side by side.

On the same batches of Colored-MNIST-shaped inputs, for the MLP and the small CNN, this measures
(median of several repeats, in one run, so that the ratios are comparable on a noisy machine):

* ``forward``: a plain forward pass of the batch (the floor for any method that needs the logits);
* ``closed form``: :func:`pgd.scores.closed_form_grad_norms` (one forward pass);
* ``torch.func``: ``vmap(grad(...))`` over the last layer's weight (materialises B gradients);
* ``loop``: the official code's way, one backward pass per sample.

It also checks that the three agree. The last line is machine-readable:
``speedup_vs_loop=<x> speedup_vs_vmap=<y> closed_form_over_forward=<z>`` for the CNN.

Run: ``make bench`` (or ``python benchmarks/scores.py --samples 2048 --batch 256``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import pgd  # noqa: F401  (torchvision import fix, before anything else)
from pgd.models import build_model
from pgd.runtime import provenance, resolve_device
from pgd.scores import closed_form_grad_norms, per_sample_grad_norms, per_sample_grad_norms_loop


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        began = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def measure(name: str, samples: int, batch: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(name).to(device).eval()
    x = torch.rand(samples, 3, 28, 28, device=device)
    y = torch.randint(0, 10, (samples,), device=device)
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, samples, batch)]

    def forward():
        with torch.no_grad():
            return torch.cat([model(xb) for xb, _ in batches])

    def closed_form():
        with torch.no_grad():
            out = []
            for xb, yb in batches:
                h = model.features(xb)
                out.append(closed_form_grad_norms(h, model.classifier(h), yb))
            return torch.cat(out)

    def vmap():
        params = ["classifier.weight"]
        return torch.cat(
            [per_sample_grad_norms(model, xb, yb, params=params) for xb, yb in batches]
        )

    def loop():
        return torch.cat([per_sample_grad_norms_loop(model, xb, yb) for xb, yb in batches])

    rows = {}
    results = {}
    for label, fn in (
        ("forward", forward),
        ("closed form", closed_form),
        ("torch.func", vmap),
        ("loop", loop),
    ):
        seconds, out = _timed(fn, repeats)
        rows[label] = seconds
        results[label] = out
    for label in ("torch.func", "loop"):
        gap = (
            (results["closed form"] - results[label]).abs() / results[label].clamp(min=1e-12)
        ).max()
        assert gap < 1e-4, f"{name}: closed form and {label} disagree by {gap:.2e}"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    info = provenance(device)
    print(f"device: {info['device']}; torch {info['torch']}")
    print(f"{args.samples} samples in batches of {args.batch}, median of {args.repeats} repeats")
    print(f"{'model':<6} {'method':<12} {'samples/s':>12} {'x forward time':>15}")
    last = {}
    for name in ("mlp", "cnn"):
        rows = measure(name, args.samples, args.batch, args.repeats, device)
        for label, seconds in rows.items():
            ratio = seconds / rows["forward"]
            print(f"{name:<6} {label:<12} {args.samples / seconds:>12,.0f} {ratio:>15.2f}")
        last = rows
    print(
        f"speedup_vs_loop={last['loop'] / last['closed form']:.1f} "
        f"speedup_vs_vmap={last['torch.func'] / last['closed form']:.1f} "
        f"closed_form_over_forward={last['closed form'] / last['forward']:.2f}"
    )


if __name__ == "__main__":
    main()
