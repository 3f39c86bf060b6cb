"""How fast a model trains and scores on a device (compute only, on random inputs), and the wall
time a run should take at that speed: what the face chapters print before training on real data."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..gradients.scores import batch_last_layer_grad_norms
from .loop import to_device


def measure_throughput(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    *,
    batch_size: int = 64,
    num_classes: int = 2,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    steps: int = 5,
    warmup: int = 2,
) -> dict[str, float]:
    """Images per second of ``model`` on ``device``, on random inputs (compute only, no data
    loading): a training step (forward, backward, optimiser step) and PGD's score pass
    (eval-mode forward plus the closed-form last-layer norm), each timed over ``steps`` batches
    after ``warmup`` untimed ones, with CUDA synchronised around the timings.

    The model is trained for a few steps on noise: pass a copy you do not need.

    Returns:
        ``{"train_images_per_s": ..., "score_images_per_s": ...}``
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if channels_last and cuda else None
    use_amp = amp and cuda
    model.to(device)
    if memory_format is not None:
        model.to(memory_format=memory_format)
    images = to_device(torch.randn(batch_size, *image_shape), device, memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def score_step() -> None:
        batch_last_layer_grad_norms(model, images, labels)

    out = {}
    for name, step, mode in (("train", train_step, True), ("score", score_step, False)):
        model.train(mode)
        for _ in range(warmup):
            step()
        sync()
        began = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out[f"{name}_images_per_s"] = steps * batch_size / (time.perf_counter() - began)
    model.eval()
    return out


def estimated_seconds(
    speed: dict[str, float],
    *,
    train_samples: int,
    eval_samples: int,
    epochs: int,
    stages: int,
) -> float:
    """Wall time a run should take at the measured ``speed`` (see :func:`measure_throughput`):
    ``stages`` training stages of ``epochs`` epochs over ``train_samples`` images, a validation
    pass over ``eval_samples`` images after every epoch, one score pass over the training set.
    Compute only: data loading and decoding, if slower, come on top."""
    train = stages * epochs * train_samples / speed["train_images_per_s"]
    evaluate = stages * epochs * eval_samples / speed["score_images_per_s"]
    score = train_samples / speed["score_images_per_s"]
    return train + evaluate + score
