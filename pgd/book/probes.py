"""What the chapters' figures probe in a trained model: how far its answers follow the colour of
a Colored MNIST digit rather than its shape."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..datasets.cmnist import NUM_CLASSES, ColoredMNIST, recolour


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
