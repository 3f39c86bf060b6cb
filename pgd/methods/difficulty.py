"""The sample weights LfF and DFA share: a sample is weighted by how much harder the network that
learns the bias finds it than the other network does (its *relative difficulty*)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class RelativeDifficulty:
    """Per-sample moving averages of two networks' cross-entropy, ``loss_b`` (the network that
    learns the bias) and ``loss_d`` (the one being debiased), each divided by its maximum over
    the sample's class and combined as ``W = l_b / (l_b + l_d + 1e-8)``, as LfF's and DFA's
    official codes compute them. A sample's first visit stores its loss, later ones the moving
    average ``ema * old + (1 - ema) * new``.

    Args:
        num_samples: training set size (the averages are indexed by sample).
        ema: the moving average's decay, in ``[0, 1)``.
    """

    def __init__(self, num_samples: int, ema: float = 0.7) -> None:
        if not 0 <= ema < 1:
            raise ValueError(f"the EMA decay must lie in [0, 1), got {ema}")
        self.ema = ema
        self.loss_b = torch.zeros(num_samples)
        self.loss_d = torch.zeros(num_samples)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self.labels = torch.full((num_samples,), -1, dtype=torch.long)

    def _average(self, average: Tensor, index: Tensor, loss: Tensor) -> None:
        old = average[index]
        average[index] = torch.where(self.seen[index], self.ema * old + (1 - self.ema) * loss, loss)

    def update(self, index: Tensor, labels: Tensor, loss_b: Tensor, loss_d: Tensor) -> None:
        """Record one batch: the ``(B,)`` per-sample losses of samples ``index``."""
        index = index.cpu()
        self._average(self.loss_b, index, loss_b.detach().cpu())
        self._average(self.loss_d, index, loss_d.detach().cpu())
        self.seen[index] = True  # seen is only read before this batch's update, in _average
        self.labels[index] = labels.cpu()

    def weights(self, index: Tensor, labels: Tensor) -> Tensor:
        """``(B,)`` weights ``l_b / (l_b + l_d + 1e-8)`` of samples ``index`` (labels
        ``labels``), from the class-normalised averages."""
        index = index.cpu()
        loss_b, loss_d = self.loss_b[index], self.loss_d[index]
        labels = labels.cpu()
        for c in labels.unique():
            members = self.labels == c
            in_batch = labels == c
            loss_b[in_batch] /= self.loss_b[members].max().clamp_min(1e-8)
            loss_d[in_batch] /= self.loss_d[members].max().clamp_min(1e-8)
        return loss_b / (loss_b + loss_d + 1e-8)

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_b": self.loss_b,
            "loss_d": self.loss_d,
            "seen": self.seen,
            "labels": self.labels,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_b, self.loss_d = state["loss_b"], state["loss_d"]
        self.seen, self.labels = state["seen"], state["labels"]
