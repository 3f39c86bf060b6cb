"""How debiased a model is: accuracy overall, on bias-aligned and bias-conflicting samples, per
(target, bias) group, and on the worst group.

A sample is *bias-aligned* when its bias attribute agrees with its label (a red zero) and
*bias-conflicting* otherwise (a green zero). On an unbiased test set, plain accuracy is the
*unbiased accuracy* of the Colored MNIST literature; the mean of per-group accuracies estimates
the same quantity on any test set, biased or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..datasets.base import batch_loader


@dataclass
class Predictions:
    """Model outputs over a dataset, in sample-index order. All tensors ``(N,)``, on CPU."""

    predicted: Tensor
    labels: Tensor
    bias_labels: Tensor
    losses: Tensor  # per-sample cross-entropy

    @property
    def correct(self) -> Tensor:
        return self.predicted == self.labels


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    amp: bool = False,
) -> Predictions:
    """Run ``model`` in eval mode over ``dataset`` (items ``(image, label, bias_label, index)``).

    ``batch_size`` defaults to the dataset's ``eval_batch_size`` attribute, else 1024. ``amp``:
    float16 autocast on CUDA (ignored elsewhere). The model's train/eval mode is restored.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batch_size = batch_size or getattr(dataset, "eval_batch_size", 1024)
    use_amp = amp and device.type == "cuda"
    was_training = model.training
    model.eval()
    parts: list[tuple[Tensor, ...]] = []
    try:
        for images, labels, bias, _index in batch_loader(
            dataset, batch_size, pin_memory=device.type == "cuda"
        ):
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(images.to(device, non_blocking=True)).float()
            labels_d = labels.to(device)
            loss = F.cross_entropy(logits, labels_d, reduction="none")
            parts.append((logits.argmax(1).cpu(), labels.cpu(), bias.cpu(), loss.cpu()))
    finally:
        model.train(was_training)
    if not parts:
        raise ValueError("cannot evaluate on an empty dataset")
    predicted, labels, bias, losses = (torch.cat(column) for column in zip(*parts, strict=True))
    return Predictions(predicted, labels.long(), bias.long(), losses)


def group_accuracy_table(predictions: Predictions) -> pd.DataFrame:
    """One row per (label, bias label) group present: its size, accuracy, and whether aligned.

    Returns:
        DataFrame with columns ``label, bias, samples, correct, accuracy, aligned``.
    """
    frame = pd.DataFrame(
        {
            "label": predictions.labels.numpy(),
            "bias": predictions.bias_labels.numpy(),
            "correct": predictions.correct.numpy(),
        }
    )
    table = (
        frame.groupby(["label", "bias"])
        .agg(samples=("correct", "size"), correct=("correct", "sum"), accuracy=("correct", "mean"))
        .reset_index()
    )
    table["aligned"] = table["label"] == table["bias"]
    return table


def group_mean_accuracy(correct: Tensor, labels: Tensor, bias_labels: Tensor) -> float:
    """Mean accuracy over the (label, bias) groups present; ``(N,)`` tensors. The groups' mean is
    taken as pandas takes it (their sum over their number, in float64), so this is the same
    number as :func:`summarize`'s ``group_mean_accuracy`` for the same predictions."""
    bias = bias_labels.long() - int(bias_labels.min())
    key = labels.long() * (int(bias.max()) + 1) + bias
    counts = torch.bincount(key)
    hits = torch.bincount(key, weights=correct.double())
    present = counts > 0
    accuracies = (hits[present] / counts[present]).numpy()
    return float(accuracies.sum() / len(accuracies))


def _accuracy(mask: Tensor, correct: Tensor) -> float:
    return float(correct[mask].float().mean()) if mask.any() else float("nan")


def summarize(predictions: Predictions) -> dict[str, float]:
    """The book's metrics from predictions.

    Returns:
        ``accuracy`` (plain; the unbiased accuracy on an unbiased test set), ``loss`` (mean
        cross-entropy), ``aligned_accuracy``, ``conflicting_accuracy``, ``group_mean_accuracy``
        (mean over (label, bias) groups), ``worst_group_accuracy`` (minimum over groups) and
        ``samples``. Accuracies are fractions in [0, 1]; NaN where a subset is empty.
    """
    correct = predictions.correct
    aligned = predictions.labels == predictions.bias_labels
    groups = group_accuracy_table(predictions)
    return {
        "accuracy": float(correct.float().mean()),
        "loss": float(predictions.losses.mean()),
        "aligned_accuracy": _accuracy(aligned, correct),
        "conflicting_accuracy": _accuracy(~aligned, correct),
        "group_mean_accuracy": group_mean_accuracy(
            correct, predictions.labels, predictions.bias_labels
        ),
        "worst_group_accuracy": float(groups["accuracy"].min()),
        "samples": len(correct),
    }


def evaluate(model: nn.Module, dataset: Dataset, **kwargs) -> dict[str, float]:
    """:func:`summarize` of :func:`predict` (keyword arguments go to :func:`predict`)."""
    return summarize(predict(model, dataset, **kwargs))


def bias_following_rate(predictions: Predictions) -> float:
    """Share of bias-conflicting samples predicted as the class their bias attribute belongs to
    (a green zero called "three" because three is green). Near 1: the model reads the bias."""
    conflicting = predictions.labels != predictions.bias_labels
    if not conflicting.any():
        return float("nan")
    return float((predictions.predicted == predictions.bias_labels)[conflicting].float().mean())


def roc_auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for detecting ``positive`` samples: the probability
    that a random positive scores higher than a random negative (ties count one half).

    Args:
        scores: ``(N,)`` real scores. positive: ``(N,)`` bool.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    positive = torch.as_tensor(positive, dtype=torch.bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs at least one positive and one negative sample")
    ranks = torch.tensor(pd.Series(scores.numpy()).rank(method="average").to_numpy())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
