"""What a training stage minimises: cross-entropy or the generalized cross-entropy (the biased
model's loss in LfF and PGD), and the :class:`Objective` through which methods with more to do
per batch (LfF's two networks, GroupDRO's group weights) give the loop their loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("ce", "gce")


class GeneralizedCELoss(nn.Module):
    """Generalized cross-entropy (Zhang & Sabuncu, 2018) as LfF and the official PGD code use it.

    GCE is ``(1 - p_y^q) / q``; its gradient is ``p_y^q`` times that of the cross-entropy, so it
    down-weights samples the model finds hard and amplifies whatever is easiest to learn (here:
    colour). Like LfF and the official code, this returns ``q * p_y^q * CE`` with ``p_y^q``
    detached: the gradient is ``q`` times the textbook GCE gradient.

    Input ``(B, C)`` logits and ``(B,)`` labels; output ``(B,)`` per-sample losses.
    """

    def __init__(self, q: float = 0.7) -> None:
        super().__init__()
        if not 0 < q <= 1:
            raise ValueError(f"GCE's q must lie in (0, 1], got {q}")
        self.q = q

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, labels, reduction="none")
        p_y = torch.exp(-ce).detach()
        return ce * p_y.pow(self.q) * self.q


class Objective:
    """The loss a training stage minimises, computed from one batch.

    The default objective is the configured cross-entropy or GCE of ``model(images)``. Methods
    with more to do per batch (LfF's two models, GroupDRO's group weights) subclass it; whatever
    state they keep between batches goes through :meth:`state_dict` into the checkpoint, so a
    killed run resumes with it.
    """

    def __init__(self, loss: str = "ce", gce_q: float = 0.7) -> None:
        self.criterion = GeneralizedCELoss(gce_q) if loss == "gce" else None

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, bias: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return ``(loss, logits)``: the scalar loss to minimise and the ``(B, C)`` logits of
        the model being trained (for the running training accuracy)."""
        logits = model(images).float()
        if self.criterion is None:
            return F.cross_entropy(logits, labels), logits
        return self.criterion(logits, labels).mean(), logits

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
