"""ReBias, Learning De-biased Representations with Biased Representations (Bahng et al., ICML
2020). Reads no bias labels, but is told what *kind* of bias to expect: the family of a
bias-capturing network ``g``, one that can express the bias and little else.

Per batch, as the official code's trainer does (``trainer.py``: ``_update_g`` then ``_update_f``
on the same batch): ``g`` takes a step on ``CE(g) - lambda_g HSIC(z_g, z_f)`` (it learns the task
through the bias while its features move towards ``f``'s), then ``f``, the debiased network,
takes a step on ``CE(f) + lambda HSIC(z_f, z_g)`` with ``g`` after its step: ``f`` learns the task
while its features become statistically independent of what ``g`` can see. HSIC is the unbiased
estimator (Song et al., 2012) with Gaussian kernels of width ``sigma`` on the pooled features
(the official Colored MNIST setting: ``sigma = 1``, ``lambda = lambda_g = 1``, one ``g``).

The bias-capturing family (``rebias_bias_model``): ``pixel``, a network whose receptive field is
one pixel (:class:`pgd.models.LocalCNN` with 1 x 1 kernels, ReBias's Colored MNIST ``g``): it sees
colour and not shape; ``patch``, one that sees 5 x 5 patches (local texture, the role ReBias
gives a BagNet on images). The choice is the bias specification; the official code has no face
setting, so ``patch`` on BFFHQ and CelebA is the book's transfer of its image setting.

Where the book departs from the official code: ``f`` is the dataset's network trained with its
schedule (the official Colored MNIST ``f`` is a 7 x 7 convolutional network trained with Adam),
``g`` takes the same optimiser and schedule; the other network's features enter each step's HSIC
without a gradient (only the network being updated steps in the official code too, so the update
is the same); a batch of fewer than 4 samples, where the estimator is undefined, trains without
HSIC; and the weights are selected on the validation split like every other method's (the
official code keeps the last epoch).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.params import Param
from ..core.runtime import seed_everything
from ..models import LocalCNN, network_parts
from ..training.loop import make_optimizer, make_scheduler
from ..training.objectives import Objective
from ..training.schedules import stage_config
from .base import MethodOutcome, MethodSpec, Trainer

#: Bias-capturing families: name -> the receptive field of :class:`~pgd.models.LocalCNN`.
BIAS_MODELS = {"pixel": 1, "patch": 5}


def rbf_kernel(features: Tensor, sigma: float) -> Tensor:
    """``(B, ...) -> (B, B)`` Gaussian kernel ``exp(-|x_i - x_j|^2 / (2 sigma^2))``."""
    x = features.flatten(1)
    squared = x.pow(2).sum(1)
    distances = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp_min(0)
    return torch.exp(-distances / (2 * sigma**2))


def unbiased_hsic(x: Tensor, y: Tensor, sigma_x: float = 1.0, sigma_y: float = 1.0) -> Tensor:
    """The unbiased HSIC estimator (Song et al., 2012) between ``(B, ...)`` features ``x`` and
    ``y`` with Gaussian kernels, as ReBias's ``RbfHSIC`` computes it (``B >= 4``)::

        (tr(K~ L~) + 1'K~1 1'L~1 / ((B-1)(B-2)) - 2 / (B-2) 1'K~L~1) / (B (B-3))

    where ``K~``, ``L~`` are the kernel matrices with zero diagonals. Not normalised; may be
    slightly negative for independent features.
    """
    n = len(x)
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 samples, got {n}")
    k, l_ = rbf_kernel(x, sigma_x), rbf_kernel(y, sigma_y)
    k = k - torch.diag_embed(torch.diagonal(k))
    l_ = l_ - torch.diag_embed(torch.diagonal(l_))
    value = (k * l_.T).sum() + k.sum() * l_.sum() / ((n - 1) * (n - 2))
    value = value - 2 * (k.sum(0) @ l_.sum(0)) / (n - 2)
    return value / (n * (n - 3))


class ReBiasPair(nn.Module):
    """``f`` (``debiased``) and ``g`` (``biased``), each as an encoder and a classifier
    (:func:`pgd.models.network_parts`); ``forward`` is ``f``'s: the model ReBias delivers."""

    def __init__(self, debiased: nn.Module, biased: nn.Module) -> None:
        super().__init__()
        f, g = network_parts(debiased), network_parts(biased)
        self.encoder_f, self.head_f = f.encoder, f.classifier
        self.encoder_g, self.head_g = g.encoder, g.classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.head_f(self.encoder_f(images))

    def g_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder_g.parameters(), *self.head_g.parameters()]


class ReBiasObjective(Objective):
    """ReBias's two updates per batch for a :class:`ReBiasPair` (see the module's description):
    ``g``'s step is taken here, with ``g_optimizer``; ``f``'s loss is returned for the training
    loop's step (``g``'s parameters receive no gradient from it).

    Args:
        g_optimizer: the optimiser over ``g``'s parameters.
        g_scheduler: ``g``'s learning-rate schedule, stepped every ``epoch_size`` samples.
        epoch_size: training samples per epoch.
        lam, lam_g: the weights of HSIC in ``f``'s and (negated) in ``g``'s loss.
        sigma: the Gaussian kernels' width.
    """

    def __init__(
        self,
        g_optimizer: torch.optim.Optimizer,
        g_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        *,
        epoch_size: int,
        lam: float = 1.0,
        lam_g: float = 1.0,
        sigma: float = 1.0,
    ) -> None:
        super().__init__()
        self.g_optimizer, self.g_scheduler = g_optimizer, g_scheduler
        self.epoch_size, self.lam, self.lam_g, self.sigma = epoch_size, lam, lam_g, sigma
        self.samples_seen = 0

    def _hsic(self, x: Tensor, y: Tensor) -> Tensor:
        if len(x) < 4:  # undefined: the batch trains on the cross-entropy alone
            return x.new_zeros(())
        return unbiased_hsic(x.float(), y.float(), self.sigma, self.sigma)

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, bias: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        if not isinstance(model, ReBiasPair):
            raise TypeError("ReBias trains a ReBiasPair (a debiased and a bias-capturing network)")
        # g's step: its own cross-entropy minus HSIC with f's features (f in train mode, as in
        # the official code, which also runs f's forward here).
        with torch.autocast(images.device.type, enabled=False):
            with torch.no_grad():
                z_f = model.encoder_f(images).float()
            z_g = model.encoder_g(images).float()
            loss_g = F.cross_entropy(model.head_g(z_g), labels)
            loss_g = loss_g - self.lam_g * self._hsic(z_g, z_f)
            self.g_optimizer.zero_grad(set_to_none=True)
            loss_g.backward()
            self.g_optimizer.step()
            self.g_optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # g after its step, as the official code re-runs it
                z_g = model.encoder_g(images).float()
        # f's loss: its cross-entropy plus HSIC with g's features.
        z_f = model.encoder_f(images)
        logits = model.head_f(z_f).float()
        loss = F.cross_entropy(logits, labels) + self.lam * self._hsic(z_f, z_g)
        before = self.samples_seen // self.epoch_size
        self.samples_seen += len(labels)
        if self.g_scheduler is not None and self.samples_seen // self.epoch_size > before:
            self.g_scheduler.step()  # once per epoch, like the loop's schedule for f
        return loss, logits

    def state_dict(self) -> dict[str, Any]:
        return {
            "g_optimizer": self.g_optimizer.state_dict(),
            "g_scheduler": self.g_scheduler.state_dict() if self.g_scheduler else None,
            "samples_seen": self.samples_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.g_optimizer.load_state_dict(state["g_optimizer"])
            if self.g_scheduler is not None and state["g_scheduler"] is not None:
                self.g_scheduler.load_state_dict(state["g_scheduler"])
            self.samples_seen = int(state["samples_seen"])


def bias_model(family: str, num_classes: int, in_channels: int) -> LocalCNN:
    """The bias-capturing network of ``family`` (:data:`BIAS_MODELS`)."""
    return LocalCNN(num_classes, in_channels, kernel_size=BIAS_MODELS[family])


def run(trainer: Trainer) -> MethodOutcome:
    """``f`` (the dataset's network) and ``g`` (the named bias-capturing family) trained
    together (:class:`ReBiasObjective`); the outcome's model is the pair, whose output is
    ``f``'s."""
    seed_everything(trainer.seed)
    params = trainer.params
    shape = trainer.data.input_shape  # None: read it from an image
    channels = shape[0] if shape else int(trainer.data.train[0][0].shape[0])
    pair = ReBiasPair(
        trainer.build_model(),
        bias_model(params["rebias_bias_model"], trainer.num_classes, channels),
    )
    config = stage_config(trainer.model, "vanilla", trainer.epochs)
    g = nn.ParameterList(pair.g_parameters())
    g_optimizer = make_optimizer(g, config)
    objective = ReBiasObjective(
        g_optimizer,
        make_scheduler(g_optimizer, config),
        epoch_size=len(trainer.data.train),
        lam=params["rebias_lambda"],
        lam_g=params["rebias_lambda_g"],
        sigma=params["rebias_sigma"],
    )
    result = trainer.train_stage(
        "rebias",
        pair,
        desc="ReBias debiased + bias-capturing models",
        objective=objective,
        kind="vanilla",
    )
    return MethodOutcome(result.model, {"rebias": result.history}, final=result)


def _non_negative(value: float) -> float:
    if float(value) < 0:
        raise ValueError(f"ReBias's HSIC weights must be at least 0, got {value}")
    return float(value)


def _positive(value: float) -> float:
    if float(value) <= 0:
        raise ValueError(f"ReBias's kernel width sigma must be positive, got {value}")
    return float(value)


SPEC = MethodSpec(
    name="rebias",
    label="ReBias",
    run=run,
    reads_bias_labels=False,
    changes="features made independent (HSIC) of those of a network that can see only the bias",
    bias_prior="the bias's kind, as the family of a network that can see it (--rebias-bias-model)",
    source="Bahng et al., ICML 2020",
    params=(
        Param(
            "rebias_bias_model",
            "pixel",
            "the bias-capturing family: pixel (1-pixel receptive field: colour), patch (5 x 5: "
            "local texture); default: pixel on Colored MNIST, patch on faces",
            choices=tuple(BIAS_MODELS),
        ),
        Param(
            "rebias_lambda",
            1.0,
            "weight of HSIC in f's loss",
            parse=float,
            check=_non_negative,
            tag="lam",
        ),
        Param(
            "rebias_lambda_g",
            1.0,
            "weight of -HSIC in g's loss",
            parse=float,
            check=_non_negative,
            tag="lamg",
        ),
        Param(
            "rebias_sigma",
            1.0,
            "width of the Gaussian kernels",
            parse=float,
            check=_positive,
            tag="sigma",
        ),
    ),
    name_parts=lambda params: [
        params["rebias_bias_model"],
        *(f"{k}{params[n]:g}" for k, n in (("lam", "rebias_lambda"), ("lamg", "rebias_lambda_g"))),
        f"sigma{params['rebias_sigma']:g}",
    ],
    dataset_settings={
        "bffhq": {"rebias_bias_model": "patch"},
        "celeba": {"rebias_bias_model": "patch"},
    },
)
