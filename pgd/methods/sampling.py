"""Sampling of the methods that draw batches unevenly: PGD's importance-batch sampling with
replacement (step 3), from the scores, and the oracles' group-balanced weights.

Sample ``i`` is drawn with probability ``p_i = s_i / sum_j s_j``; an epoch is ``N`` independent
draws (``N`` = number of training samples), so a sample of high score appears several times per
epoch and one of score near zero almost never. As in the official code the loss is NOT reweighted
by ``1 / (N p_i)``: the point is to change what the model trains on, not to estimate the uniform
gradient with less variance.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import WeightedRandomSampler

from ..datasets.base import group_ids


def sampling_probabilities(scores: Tensor) -> Tensor:
    """Normalise non-negative scores into sampling probabilities.

    Args:
        scores: ``(N,)`` importance scores.

    Returns:
        ``(N,)`` float64 probabilities summing to 1.

    Raises:
        ValueError: scores that are empty, not 1-D, non-finite, negative, or all zero.
    """
    scores = torch.as_tensor(scores).detach().cpu().to(torch.float64)
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(f"scores must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    bad = ~torch.isfinite(scores)
    if bad.any():
        first = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(
            f"{int(bad.sum())} of {scores.numel()} scores are NaN or infinite (first at indices "
            f"{first}); the biased model probably diverged: check its training loss, lower its "
            "learning rate, and compute the scores again."
        )
    if (scores < 0).any():
        raise ValueError(
            f"scores must be non-negative (a gradient norm is); the smallest is {scores.min():.3g}"
        )
    total = scores.sum()
    if total <= 0:
        raise ValueError(
            "every score is zero, so there is no distribution to sample from: the biased model "
            "fits every training sample exactly (or the scores were computed on an empty "
            "model). Train the biased model for fewer epochs or check how the scores were made."
        )
    return scores / total


def importance_sampler(
    scores: Tensor, num_samples: int | None = None, generator: torch.Generator | None = None
) -> WeightedRandomSampler:
    """A sampler drawing ``num_samples`` (default ``N``) indices with replacement, index ``i``
    with probability ``scores[i] / scores.sum()``.

    Args:
        scores: ``(N,)`` importance scores (checked by :func:`sampling_probabilities`).
        num_samples: draws per epoch.
        generator: random generator, for reproducible and resumable epochs.
    """
    probs = sampling_probabilities(scores)
    n = len(probs) if num_samples is None else int(num_samples)
    if n <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    return WeightedRandomSampler(probs, num_samples=n, replacement=True, generator=generator)


def probability_mass(probs: Tensor, mask: Tensor) -> float:
    """Total probability of the samples selected by the boolean ``(N,)`` ``mask``."""
    return float(torch.as_tensor(probs, dtype=torch.float64)[torch.as_tensor(mask)].sum())


def expected_distinct(probs: Tensor, draws: int | None = None) -> float:
    """Expected number of distinct samples among ``draws`` (default ``N``) draws with
    replacement: ``sum_i 1 - (1 - p_i)^draws``. Uniform sampling of N from N gives about 63% of N.
    """
    probs = torch.as_tensor(probs, dtype=torch.float64)
    n = len(probs) if draws is None else int(draws)
    return float((1 - torch.exp(n * torch.log1p(-probs.clamp(max=1 - 1e-16)))).sum())


#: Below this many effective samples, a resampled epoch is mostly the same few images repeated:
#: a few dozen images cannot show a class's variation, and each is drawn N / ESS times an epoch.
SMALL_EFFECTIVE_SAMPLE_SIZE = 100


def sampling_diagnostics(
    probs: Tensor,
    *,
    labels: Tensor | None = None,
    bias_labels: Tensor | None = None,
    draws: int | None = None,
) -> dict:
    """How concentrated sampling with probabilities ``probs`` is.

    Args:
        probs: ``(N,)`` sampling probabilities (summing to 1).
        labels, bias_labels: ``(N,)``; with both (evaluation only, never used to train), the mass
            and size of every (label, bias) group.
        draws: draws per epoch (default ``N``).

    Returns:
        ``samples`` (N); ``effective_sample_size`` ``1 / sum p_i^2`` (N for uniform sampling, 1
        when one sample takes everything) and its ``effective_share`` of N;
        ``distinct_per_epoch``, the expected number of different samples among the draws of one
        epoch; ``top1pct_mass``, the probability on the top 1% of samples (at least one);
        ``group_mass``: ``[{label, bias, samples, mass, conflicting}]`` when both label tensors
        are given.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    n = len(p)
    ess = float(1.0 / p.pow(2).sum())
    top = max(1, math.ceil(n / 100))
    out: dict = {
        "samples": n,
        "effective_sample_size": ess,
        "effective_share": ess / n,
        "distinct_per_epoch": expected_distinct(p, draws),
        "top1pct_mass": float(p.topk(top).values.sum()),
    }
    if labels is not None and bias_labels is not None:
        frame = pd.DataFrame(
            {"label": labels.numpy(), "bias": bias_labels.numpy(), "mass": p.numpy()}
        )
        groups = frame.groupby(["label", "bias"]).agg(
            samples=("mass", "size"), mass=("mass", "sum")
        )
        groups = groups.reset_index()
        groups["conflicting"] = groups["label"] != groups["bias"]
        out["group_mass"] = [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in groups.to_dict(orient="records")
        ]
    return out


def small_sample_warning(diagnostics: dict) -> str | None:
    """A sentence when the effective sample size is below
    :data:`SMALL_EFFECTIVE_SAMPLE_SIZE`, else None."""
    ess = diagnostics["effective_sample_size"]
    if ess >= SMALL_EFFECTIVE_SAMPLE_SIZE:
        return None
    n = diagnostics["samples"]
    return (
        f"the sampling concentrates on about {ess:.0f} effective samples of {n:,} (each drawn "
        f"about {n / ess:.0f} times an epoch): the resampled model will mostly see the same few "
        "images again and again. Look at them before trusting its accuracy."
    )


def group_balanced_weights(labels: Tensor, bias_labels: Tensor, num_bias: int) -> Tensor:
    """``(N,)`` sampling weights ``1 / |group|``: every present (label, bias) group is drawn
    equally often (upsampling by group; needs bias labels: an oracle)."""
    groups = group_ids(labels, bias_labels, num_bias)
    sizes = torch.bincount(groups)
    return 1.0 / sizes[groups].double()
