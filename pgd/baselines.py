"""The methods PGD is compared with, on PGD's training loop (:func:`pgd.training.train`).

Each differs from ERM only in its per-batch objective or in how batches are drawn:

========== ============================================================ ===================
method     what it changes                                              bias labels
========== ============================================================ ===================
vanilla    nothing (ERM, uniform batches)                               no
lff        two models trained together: a GCE model that learns the     no
           bias, and a model whose cross-entropy is weighted by the
           relative difficulty ``l_b / (l_b + l_d)`` (Nam et al. 2020)
jtt        ERM for a few epochs, then training from scratch with its    no
           error set drawn ``lambda`` times as often (Liu et al. 2021)
upsample   batches drawn so that every (label, bias) group is equally   **yes (oracle)**
           likely
groupdro   the loss of the worst groups is up-weighted online by        **yes (oracle)**
           exponentiated gradient ascent (Sagawa et al. 2020)
pgd        importance sampling by the biased model's per-sample         no
           gradient norms (Ahn et al. 2023), :mod:`pgd.pipeline`
========== ============================================================ ===================

Methods that read bias labels of the training set are *oracles*: they show what knowing the bias
is worth, and are not competitors of PGD, which never sees those labels. Every method here uses
the same network, optimiser, learning-rate schedule, epochs and model selection (lowest
validation loss) as PGD's debiased model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .training import GeneralizedCELoss, Objective

#: Methods that need the bias labels of the training set.
ORACLES = ("upsample", "groupdro")


def group_ids(labels: Tensor, bias_labels: Tensor, num_bias: int) -> Tensor:
    """``(N,)`` group index ``label * num_bias + bias`` of every sample."""
    return labels.long() * num_bias + bias_labels.long()


class LfFPair(nn.Module):
    """LfF's two networks: ``biased`` (trained with GCE) and ``debiased``; the pair's output is the
    debiased network's, so evaluation and model selection see the model LfF delivers."""

    def __init__(self, biased: nn.Module, debiased: nn.Module) -> None:
        super().__init__()
        self.biased = biased
        self.debiased = debiased

    def forward(self, images: Tensor) -> Tensor:
        return self.debiased(images)


class LfFObjective(Objective):
    """Learning from Failure (Nam et al., NeurIPS 2020) for a :class:`LfFPair`.

    Per batch: the biased network minimises GCE (exponent ``q``); each sample's cross-entropy
    under both networks updates a per-sample exponential moving average (decay ``ema``); each
    average is divided by its maximum over the sample's class; the debiased network minimises
    its cross-entropy weighted by the relative difficulty ``W = l_b / (l_b + l_d)`` (detached).
    The two losses are summed, so one optimiser step updates both networks, as in LfF's code.

    Args:
        num_samples: training set size (the moving averages are indexed by sample).
        q: GCE exponent (LfF: 0.7).
        ema: moving-average decay (LfF: 0.7).
    """

    def __init__(self, num_samples: int, q: float = 0.7, ema: float = 0.7) -> None:
        super().__init__()
        if not 0 <= ema < 1:
            raise ValueError(f"the EMA decay must lie in [0, 1), got {ema}")
        self.gce = GeneralizedCELoss(q)
        self.ema = ema
        self.loss_b = torch.zeros(num_samples)
        self.loss_d = torch.zeros(num_samples)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self.labels = torch.full((num_samples,), -1, dtype=torch.long)

    def _update(self, average: Tensor, index: Tensor, loss: Tensor) -> None:
        old = average[index]
        average[index] = torch.where(self.seen[index], self.ema * old + (1 - self.ema) * loss, loss)

    def relative_difficulty(self, index: Tensor, labels: Tensor) -> Tensor:
        """``(B,)`` weights ``l_b / (l_b + l_d)`` from the class-normalised moving averages."""
        loss_b, loss_d = self.loss_b[index], self.loss_d[index]
        labels = labels.cpu()
        for c in labels.unique():
            members = self.labels == c
            in_batch = labels == c
            loss_b[in_batch] /= self.loss_b[members].max().clamp_min(1e-8)
            loss_d[in_batch] /= self.loss_d[members].max().clamp_min(1e-8)
        return loss_b / (loss_b + loss_d + 1e-8)

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, bias: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        if not isinstance(model, LfFPair):
            raise TypeError("LfF trains an LfFPair (a biased and a debiased network)")
        logits_b = model.biased(images).float()
        logits_d = model.debiased(images).float()
        ce_b = F.cross_entropy(logits_b, labels, reduction="none")
        ce_d = F.cross_entropy(logits_d, labels, reduction="none")
        index = index.cpu()
        self._update(self.loss_b, index, ce_b.detach().cpu())
        self._update(self.loss_d, index, ce_d.detach().cpu())
        self.seen[index] = True  # seen is only read before this batch's update, in _update
        self.labels[index] = labels.cpu()
        weight = self.relative_difficulty(index, labels).to(ce_d.device)
        loss = (ce_d * weight).mean() + self.gce(logits_b, labels).mean()
        return loss, logits_d

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_b": self.loss_b,
            "loss_d": self.loss_d,
            "seen": self.seen,
            "labels": self.labels,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.loss_b, self.loss_d = state["loss_b"], state["loss_d"]
            self.seen, self.labels = state["seen"], state["labels"]


class GroupDROObjective(Objective):
    """Online GroupDRO (Sagawa et al., ICLR 2020): minimise ``sum_g q_g L_g`` over the groups of
    the batch, after the ascent step ``q_g <- q_g exp(step * L_g)`` (renormalised) on the groups
    present. Needs bias labels: an oracle.

    Args:
        num_groups: number of (label, bias) groups.
        num_bias: number of bias values (group of a sample: ``label * num_bias + bias``).
        step: the step size eta of the group weights.
    """

    def __init__(self, num_groups: int, num_bias: int, step: float = 0.01) -> None:
        super().__init__()
        if step <= 0:
            raise ValueError(f"GroupDRO's step size must be positive, got {step}")
        self.num_bias = num_bias
        self.step = step
        self.weights = torch.full((num_groups,), 1.0 / num_groups)

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, bias: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        logits = model(images).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        groups = group_ids(labels, bias, self.num_bias)
        num_groups = len(self.weights)
        sums = torch.zeros(num_groups, device=losses.device).index_add(0, groups, losses)
        counts = torch.bincount(groups, minlength=num_groups).to(losses.device)
        present = counts > 0
        group_loss = sums / counts.clamp_min(1)
        weights = self.weights.to(losses.device)
        step = torch.where(present, self.step * group_loss.detach(), torch.zeros_like(group_loss))
        weights = weights * torch.exp(step)
        weights = weights / weights.sum()
        self.weights = weights.detach().cpu()
        return (weights * group_loss).sum(), logits

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.weights = state["weights"]


def group_balanced_weights(labels: Tensor, bias_labels: Tensor, num_bias: int) -> Tensor:
    """``(N,)`` sampling weights ``1 / |group|``: every present (label, bias) group is drawn
    equally often (upsampling by group; needs bias labels: an oracle)."""
    groups = group_ids(labels, bias_labels, num_bias)
    sizes = torch.bincount(groups)
    return 1.0 / sizes[groups].double()


def error_set_weights(correct: Tensor, upweight: float) -> Tensor:
    """JTT's sampling weights: ``upweight`` for the samples the identification model gets wrong
    (its error set), 1 for the others. ``correct``: ``(N,)`` booleans."""
    if upweight < 1:
        raise ValueError(f"JTT's up-weighting factor lambda must be at least 1, got {upweight}")
    return torch.where(correct.bool(), 1.0, float(upweight)).double()
