"""What the chapters probe in a trained model: how far its answers follow the colour of a Colored
MNIST digit rather than its shape, and what weights LfF gave its training samples."""

from __future__ import annotations

import os

import pandas as pd
import torch
from torch import Tensor, nn

from ..core.storage import safe_load
from ..datasets.cmnist import NUM_CLASSES, ColoredMNIST, recolour
from ..methods.lff import LfFObjective


def colour_sway(
    model: nn.Module,
    dataset: ColoredMNIST,
    *,
    device: torch.device | str = "cpu",
    batch_digits: int = 100,
) -> Tensor:
    """For every digit of ``dataset``: in how many of the ten colours the model answers the
    class that colour stands for, when the digit is painted in each colour in turn.

    A model that reads shape answers the colour's class only in the digit's own colour (1); a
    model that reads colour does so in all ten (10).

    Returns:
        ``(N,)`` int64 counts in ``0 .. 10``.
    """
    model.eval()
    colours = torch.arange(NUM_CLASSES)
    counts = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_digits):
            digits = range(start, min(start + batch_digits, len(dataset)))
            images = torch.cat([recolour(dataset, i) for i in digits])  # (B * 10, 3, 28, 28)
            answers = model(images.to(device)).argmax(1).cpu().view(len(digits), NUM_CLASSES)
            counts.append((answers == colours).sum(1))
    return torch.cat(counts)


def most_swayed_digit(
    model: nn.Module, dataset: ColoredMNIST, *, device: torch.device | str = "cpu"
) -> tuple[int, int]:
    """The digit of ``dataset`` whose answer follows its colour in the most colours (the first
    such digit), and that number of colours: the clearest single example of a colour shortcut."""
    sway = colour_sway(model, dataset, device=device)
    index = int(torch.argmax(sway))  # the first of the largest
    return index, int(sway[index])


def lff_final_weights(checkpoint: str | os.PathLike, labels: Tensor) -> Tensor:
    """LfF's relative-difficulty weights ``W = l_b / (l_b + l_d)`` of every training sample at the
    end of a run, from the per-sample loss averages its checkpoint keeps (the weights the last
    epoch trained with, up to the last batch's update).

    Args:
        checkpoint: the run's ``lff.pt``.
        labels: ``(N,)`` training labels (the class maxima normalise the averages).

    Returns:
        ``(N,)`` weights in ``[0, 1]``.
    """
    state = safe_load(checkpoint)["objective"]
    objective = LfFObjective(len(labels))
    objective.load_state_dict(state)
    return objective.relative_difficulty(torch.arange(len(labels)), labels)


def weights_by_group(weights: Tensor, labels: Tensor, bias_labels: Tensor) -> pd.DataFrame:
    """One row per (label, bias) group: its size, share of the samples, mean weight and share of
    the total weight (%), the last two showing how much a reweighting method favours it."""
    rows = []
    for t in labels.unique().tolist():
        for b in bias_labels.unique().tolist():
            members = (labels == t) & (bias_labels == b)
            if members.any():
                rows.append(
                    {
                        "label": t,
                        "bias": b,
                        "samples": int(members.sum()),
                        "share of samples (%)": 100 * float(members.float().mean()),
                        "mean weight": float(weights[members].mean()),
                        "share of weight (%)": 100 * float(weights[members].sum() / weights.sum()),
                    }
                )
    return pd.DataFrame(rows)
