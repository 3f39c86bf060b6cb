"""PGD's step 3 sampling: importance-batch sampling with replacement, from the scores.

Sample ``i`` is drawn with probability ``p_i = s_i / sum_j s_j``; an epoch is ``N`` independent
draws (``N`` = number of training samples), so a sample of high score appears several times per
epoch and one of score near zero almost never. As in the official code the loss is NOT reweighted
by ``1 / (N p_i)``: the point is to change what the model trains on, not to estimate the uniform
gradient with less variance.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import WeightedRandomSampler


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
