"""GroupDRO (Sagawa et al., ICLR 2020), online: the loss of the worst (label, bias) groups is
up-weighted by exponentiated gradient ascent. Reads the training bias labels: an oracle."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.params import Param
from ..datasets.base import group_ids
from ..training.objectives import Objective
from .base import MethodOutcome, MethodSpec, Trainer


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


def run(trainer: Trainer) -> MethodOutcome:
    """ERM's schedule with the group-weighted loss of :class:`GroupDROObjective`."""
    train = trainer.data.train
    num_bias = int(train.bias_labels.max()) + 1
    objective = GroupDROObjective(
        train.num_classes * num_bias, num_bias, trainer.params["dro_step"]
    )
    result = trainer.train_stage(
        "groupdro",
        trainer.fresh_model(),
        desc="GroupDRO (oracle)",
        objective=objective,
        kind="vanilla",
    )
    return MethodOutcome(result.model, {"groupdro": result.history}, final=result)


def _check_step(step: float) -> float:
    if float(step) <= 0:
        raise ValueError(f"GroupDRO's step size must be positive, got {step}")
    return step


SPEC = MethodSpec(
    name="groupdro",
    label="GroupDRO (oracle)",
    run=run,
    reads_bias_labels=True,
    changes="the worst groups' loss is up-weighted online (exponentiated gradient ascent)",
    source="Sagawa et al., ICLR 2020",
    params=(
        Param(
            "dro_step",
            0.01,
            "step size eta of the group weights",
            parse=float,
            check=_check_step,
            tag="eta",
        ),
    ),
    tuning={"dro_step": (0.01, 0.1)},  # searched on the validation split in the grid
)
