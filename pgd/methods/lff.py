"""LfF, Learning from Failure (Nam et al., NeurIPS 2020): two networks trained together, a
GCE-trained one that learns the bias, and one whose cross-entropy is weighted by the relative
difficulty ``l_b / (l_b + l_d)``. Reads no bias labels."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..core.params import Param
from ..core.runtime import seed_everything
from ..training.objectives import GeneralizedCELoss, Objective
from .base import MethodOutcome, MethodSpec, Protocol, Trainer
from .difficulty import RelativeDifficulty


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
        self.gce = GeneralizedCELoss(q)
        self.difficulty = RelativeDifficulty(num_samples, ema)

    def relative_difficulty(self, index: Tensor, labels: Tensor) -> Tensor:
        """``(B,)`` weights ``l_b / (l_b + l_d)`` from the class-normalised moving averages."""
        return self.difficulty.weights(index, labels)

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, bias: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        if not isinstance(model, LfFPair):
            raise TypeError("LfF trains an LfFPair (a biased and a debiased network)")
        logits_b = model.biased(images).float()
        logits_d = model.debiased(images).float()
        ce_b = F.cross_entropy(logits_b, labels, reduction="none")
        ce_d = F.cross_entropy(logits_d, labels, reduction="none")
        self.difficulty.update(index, labels, ce_b, ce_d)
        weight = self.relative_difficulty(index, labels).to(ce_d.device)
        loss = (ce_d * weight).mean() + self.gce(logits_b, labels).mean()
        return loss, logits_d

    def state_dict(self) -> dict[str, Any]:
        return self.difficulty.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.difficulty.load_state_dict(state)


def run(trainer: Trainer) -> MethodOutcome:
    """Both networks trained together (:class:`LfFObjective`); the outcome's model is the pair,
    whose output is the debiased network's."""
    seed_everything(trainer.seed)
    pair = LfFPair(trainer.build_model(), trainer.build_model())
    params = trainer.params
    objective = LfFObjective(len(trainer.data.train), q=params["lff_q"], ema=params["lff_ema"])
    result = trainer.train_stage(
        "lff", pair, desc="LfF biased + debiased models", objective=objective, kind="vanilla"
    )
    return MethodOutcome(result.model, {"lff": result.history}, final=result)


def _check_q(q: float) -> float:
    if not 0 < float(q) <= 1:
        raise ValueError(f"LfF needs q in (0, 1], got {q}")
    return q


def _check_ema(ema: float) -> float:
    if not 0 <= float(ema) < 1:
        raise ValueError(f"LfF needs a loss moving-average decay ema in [0, 1), got {ema}")
    return ema


#: LfF's own Colored MNIST protocol (the comparison grid's ``own`` protocol).
LFF_MLP = (
    "LfF (Nam et al., 2020) on Colored MNIST: an MLP with three hidden layers of 100, Adam, "
    "lr 1e-3, batch 256"
)

SPEC = MethodSpec(
    name="lff",
    label="LfF",
    run=run,
    reads_bias_labels=False,
    changes="a GCE model learns the bias; a second model's loss is weighted by relative difficulty",
    source="Nam et al., NeurIPS 2020",
    params=(
        Param("lff_q", 0.7, "GCE exponent q", parse=float, check=_check_q, tag="q"),
        Param(
            "lff_ema", 0.7, "loss moving-average decay", parse=float, check=_check_ema, tag="ema"
        ),
    ),
    protocols={"cmnist": Protocol({"model": "mlp"}, LFF_MLP)},
)
