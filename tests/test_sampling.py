from __future__ import annotations

import math

import pytest
import torch

from pgd.methods.sampling import importance_sampler, probability_mass, sampling_probabilities


def test_probabilities_are_scores_divided_by_their_sum():
    probs = sampling_probabilities(torch.tensor([1.0, 3.0, 0.0, 4.0]))
    assert probs.dtype == torch.float64
    assert probs.tolist() == [0.125, 0.375, 0.0, 0.5]


def test_sampler_draws_n_indices_with_replacement_by_default():
    sampler = importance_sampler(torch.tensor([0.0, 0.0, 5.0]))
    assert len(sampler) == 3
    assert list(sampler) == [2, 2, 2]


def test_draw_frequencies_match_the_probabilities():
    scores = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.0, 2.5])
    expected = scores / scores.sum()
    n = 200_000
    sampler = importance_sampler(scores, num_samples=n, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.tensor(list(sampler)), minlength=len(scores)).double()
    # Each count within 5 binomial standard deviations of its expectation, zero-score never drawn.
    sd = torch.sqrt(n * expected * (1 - expected))
    assert ((counts - n * expected).abs() <= 5 * sd + 1e-9).all()
    assert counts[4] == 0


def test_same_generator_state_gives_the_same_epoch():
    scores = torch.rand(100)
    a = importance_sampler(scores, generator=torch.Generator().manual_seed(3))
    b = importance_sampler(scores, generator=torch.Generator().manual_seed(3))
    assert list(a) == list(b)


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (torch.tensor([1.0, float("nan")]), "NaN or infinite"),
        (torch.tensor([1.0, math.inf]), "NaN or infinite"),
        (torch.zeros(4), "every score is zero"),
        (torch.tensor([1.0, -0.5]), "non-negative"),
        (torch.tensor([]), "non-empty"),
        (torch.ones(2, 2), "1-D"),
    ],
)
def test_bad_scores_get_a_clear_error(scores, message):
    with pytest.raises(ValueError, match=message):
        importance_sampler(scores)


def test_non_finite_error_names_the_first_bad_indices():
    with pytest.raises(ValueError, match=r"indices \[2, 5\]"):
        sampling_probabilities(torch.tensor([1.0, 1.0, float("nan"), 1.0, 1.0, math.inf]))


def test_probability_mass_of_a_group():
    probs = sampling_probabilities(torch.tensor([1.0, 1.0, 2.0]))
    assert probability_mass(probs, torch.tensor([False, False, True])) == pytest.approx(0.5)


def test_expected_distinct_matches_simulation_and_the_uniform_limit():
    from pgd.methods.sampling import expected_distinct

    n = 1000
    uniform = torch.full((n,), 1 / n, dtype=torch.float64)
    assert expected_distinct(uniform) == pytest.approx(n * (1 - (1 - 1 / n) ** n))
    skewed = sampling_probabilities(torch.linspace(0, 1, n) ** 8)
    g = torch.Generator().manual_seed(0)
    simulated = [
        len(set(torch.multinomial(skewed, n, replacement=True, generator=g).tolist()))
        for _ in range(200)
    ]
    assert expected_distinct(skewed) == pytest.approx(sum(simulated) / 200, rel=0.01)


def test_sampling_diagnostics_match_direct_computation_and_sampler_draws():
    from pgd.methods.sampling import sampling_diagnostics, small_sample_warning

    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(400, generator=gen) ** 6  # a few large scores
    probs = sampling_probabilities(scores)
    labels = torch.arange(400) % 4
    bias = torch.where(torch.arange(400) < 20, (labels + 1) % 4, labels)
    diag = sampling_diagnostics(probs, labels=labels, bias_labels=bias)
    assert diag["effective_sample_size"] == pytest.approx(1 / float((probs**2).sum()))
    assert diag["top1pct_mass"] == pytest.approx(
        float(probs.sort(descending=True).values[:4].sum())
    )
    # distinct samples per epoch, against draws of the sampler itself
    distinct = [
        len(set(importance_sampler(scores, generator=torch.Generator().manual_seed(s))))
        for s in range(200)
    ]
    assert diag["distinct_per_epoch"] == pytest.approx(sum(distinct) / len(distinct), rel=0.02)
    groups = {(g["label"], g["bias"]): g for g in diag["group_mass"]}
    assert sum(g["samples"] for g in groups.values()) == 400
    assert sum(g["mass"] for g in groups.values()) == pytest.approx(1.0)
    conflicting = bias != labels
    mass = sum(g["mass"] for g in groups.values() if g["conflicting"])
    assert mass == pytest.approx(float(probs[conflicting].sum()))
    uniform = sampling_diagnostics(torch.full((400,), 1 / 400, dtype=torch.float64))
    assert uniform["effective_sample_size"] == pytest.approx(400)
    assert small_sample_warning(uniform) is None
    one = torch.zeros(400, dtype=torch.float64)
    one[:10] = 0.1
    assert "about 10 effective samples" in small_sample_warning(sampling_diagnostics(one))
