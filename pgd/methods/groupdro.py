"""GroupDRO (Sagawa et al., ICLR 2020), online: the loss of the worst (label, bias) groups is
up-weighted by exponentiated gradient ascent. Reads the training bias labels: an oracle.

As the official code runs it (``loss.py``'s ``LossComputer``, the README's commands): batches
drawn group-balanced (``--reweight_groups``: every group equally likely, with replacement), the
group weights ``q`` updated before the loss is formed, a group absent from the batch counting as
loss 0 in that update. The paper's other ingredients are settings: the group adjustment ``C``
(the update sees ``L_g + C / sqrt(n_g)``, ``n_g`` the group's training count; the official code
applies it only where every group's ``C`` is positive, so one ``C`` for all groups here), and
strong weight decay (``dro_weight_decay``, replacing the schedule's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.params import Param
from ..datasets.base import group_ids
from ..training.objectives import Objective
from .base import MethodOutcome, MethodSpec, Trainer, format_setting
from .sampling import group_balanced_weights, importance_sampler


class GroupDROObjective(Objective):
    """Online GroupDRO (Sagawa et al., ICLR 2020): minimise ``sum_g q_g L_g`` over the groups of
    the batch, after the ascent step ``q_g <- q_g exp(step * L_g)`` (renormalised) on the groups
    present. Needs bias labels: an oracle.

    Args:
        num_groups: number of (label, bias) groups.
        num_bias: number of bias values (group of a sample: ``label * num_bias + bias``).
        step: the step size eta of the group weights.
    """

    def __init__(
        self,
        num_groups: int,
        num_bias: int,
        step: float = 0.01,
        *,
        adjustment: float = 0.0,
        group_counts: Tensor | None = None,
    ) -> None:
        super().__init__()
        if step <= 0:
            raise ValueError(f"GroupDRO's step size must be positive, got {step}")
        if adjustment < 0:
            raise ValueError(f"GroupDRO's group adjustment C must be at least 0, got {adjustment}")
        if adjustment > 0 and group_counts is None:
            raise ValueError("GroupDRO's group adjustment C / sqrt(n_g) needs the groups' counts")
        self.num_bias = num_bias
        self.step = step
        self.weights = torch.full((num_groups,), 1.0 / num_groups)
        # A group without training samples is never in a batch, so its weight is never stepped:
        # it needs no adjustment (the official code would divide by zero).
        self.shift = torch.zeros(num_groups)
        if adjustment > 0 and group_counts is not None:
            present = group_counts > 0
            self.shift[present] = (adjustment / group_counts[present].double().sqrt()).float()

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
        adjusted = group_loss.detach() + self.shift.to(losses.device)
        step = torch.where(present, self.step * adjusted, torch.zeros_like(group_loss))
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
    """The group-weighted loss of :class:`GroupDROObjective` on group-balanced batches (or
    uniform ones, ``dro_sampling="uniform"``), with the schedule's weight decay or the strong one
    of ``dro_weight_decay``."""
    train, params = trainer.data.train, trainer.params
    num_bias = int(train.bias_labels.max()) + 1
    num_groups = train.num_classes * num_bias
    groups = group_ids(train.labels, train.bias_labels, num_bias)
    objective = GroupDROObjective(
        num_groups,
        num_bias,
        params["dro_step"],
        adjustment=params["dro_adjustment"],
        group_counts=torch.bincount(groups, minlength=num_groups),
    )
    sampler = None
    if params["dro_sampling"] == "balanced":
        weights = group_balanced_weights(train.labels, train.bias_labels, num_bias)
        sampler = importance_sampler(weights, generator=trainer.generator())
    decay = params["dro_weight_decay"]
    result = trainer.train_stage(
        "groupdro",
        trainer.fresh_model(),
        desc="GroupDRO (oracle)",
        objective=objective,
        sampler=sampler,
        kind="vanilla",
        changes={"weight_decay": decay} if decay is not None else None,
    )
    return MethodOutcome(result.model, {"groupdro": result.history}, final=result)


def _check_step(step: float) -> float:
    if float(step) <= 0:
        raise ValueError(f"GroupDRO's step size must be positive, got {step}")
    return step


def _check_adjustment(value: float) -> float:
    if float(value) < 0:
        raise ValueError(f"GroupDRO's group adjustment C must be at least 0, got {value}")
    return float(value)


def _check_decay(value: float | None) -> float | None:
    if value is None or str(value).strip().lower() in ("none", "default"):
        return None
    if float(value) < 0:
        raise ValueError(f"GroupDRO's weight decay must be at least 0, got {value}")
    return float(value)


def _name_parts(params: Mapping[str, Any]) -> list[str]:
    parts = [f"eta{format_setting(params['dro_step'])}"]
    if params["dro_adjustment"]:
        parts.append(f"C{format_setting(params['dro_adjustment'])}")
    if params["dro_weight_decay"] is not None:
        parts.append(f"wd{format_setting(params['dro_weight_decay'])}")
    if params["dro_sampling"] != "balanced":
        parts.append(params["dro_sampling"])
    return parts


SPEC = MethodSpec(
    name="groupdro",
    label="GroupDRO (oracle)",
    run=run,
    reads_bias_labels=True,
    changes="the worst groups' loss is up-weighted online (exponentiated gradient ascent), on "
    "group-balanced batches",
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
        Param(
            "dro_adjustment",
            0.0,
            "group adjustment C: the weights' update sees L_g + C / sqrt(n_g)",
            parse=float,
            check=_check_adjustment,
            tag="C",
        ),
        Param(
            "dro_weight_decay",
            None,
            "weight decay replacing the schedule's (the paper's strong l2: 0.1 to 1); default: "
            "the schedule's",
            parse=_check_decay,
            check=_check_decay,
            tag="wd",
        ),
        Param(
            "dro_sampling",
            "balanced",
            "how batches are drawn: group-balanced, as the official code runs GroupDRO, or uniform",
            choices=("balanced", "uniform"),
        ),
    ),
    name_parts=_name_parts,
    # searched on the validation split in the grid: the paper's three ingredients
    tuning={
        "dro_step": (0.01, 0.1),
        "dro_adjustment": (0.0, 2.0),
        "dro_weight_decay": (None, 0.1),
    },
)
