"""Chapter 6's claims, each on a small case: the same comparisons the chapter prints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from pgd.book import theory
from pgd.gradients.scores import grad_norm_scores
from pgd.methods.sampling import importance_sampler, sampling_probabilities
from pgd.models import build_model

DT = torch.float64


def test_last_layer_gradient_is_residual_outer_features_and_its_norm_factorises():
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(6, 4).to(DT)
    h = torch.randn(9, 6, generator=gen, dtype=DT)
    y = torch.randint(0, 4, (9,), generator=gen)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, h_i, y_i):
        return F.cross_entropy(functional_call(layer, p, (h_i[None],)), y_i[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, h, y)["weight"]  # (B, 4, 6)
    residual = theory.softmax_residual(layer(h).detach(), y)
    torch.testing.assert_close(per_sample, residual[:, :, None] * h[:, None, :])
    torch.testing.assert_close(
        per_sample.flatten(1).norm(dim=1), residual.norm(dim=1) * h.norm(dim=1)
    )


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_residual_norm_lies_between_its_bounds_in_one_minus_the_true_class_probability(classes):
    gen = torch.Generator().manual_seed(classes)
    logits = 4 * torch.randn(2000, classes, generator=gen, dtype=DT)
    labels = torch.randint(0, classes, (2000,), generator=gen)
    norm = theory.softmax_residual(logits, labels).norm(dim=1)
    q = logits.softmax(1).gather(1, labels[:, None]).squeeze(1)
    lower, upper = theory.residual_norm_bounds(q, classes)
    assert bool((lower <= norm + 1e-12).all() and (norm <= upper + 1e-12).all())
    loss = F.cross_entropy(logits, labels, reduction="none")
    # 1 - q = 1 - exp(-loss): the score is a bounded, increasing function of the loss
    torch.testing.assert_close(1 - q, 1 - torch.exp(-loss))
    assert bool((norm <= math.sqrt(2) * torch.clamp(loss, max=1.0) + 1e-12).all())


def test_residual_bounds_are_attained_by_even_and_by_concentrated_wrong_mass():
    even = torch.tensor([[0.4, 0.2, 0.2, 0.2]], dtype=DT)  # wrong mass spread evenly
    peaked = torch.tensor([[0.4, 0.6, 0.0, 0.0]], dtype=DT)  # wrong mass on one class
    label = torch.tensor([0])
    lower, upper = theory.residual_norm_bounds(torch.tensor([0.4], dtype=DT), 4)
    for probs, bound in [(even, lower), (peaked, upper)]:
        residual = probs - F.one_hot(label, 4).to(DT)
        torch.testing.assert_close(residual.norm(dim=1), bound)
    with pytest.raises(ValueError, match="at least 2 classes"):
        theory.residual_norm_bounds(torch.tensor([0.5]), 1)


def test_last_layer_terms_multiply_to_pgds_last_layer_score(cmnist):
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    subset = cmnist.train.head(200)
    terms = theory.last_layer_terms(model, subset, batch_size=64)
    scores = grad_norm_scores(model, subset, layers="last", batch_size=64)
    torch.testing.assert_close(
        torch.tensor((terms["residual_norm"] * terms["feature_norm"]).to_numpy()),
        scores.double(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert terms["conflicting"].sum() == int(subset.is_conflicting.sum())


def test_expected_sigmoid_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    for mean, std in [(0.0, 1.0), (2.5, 0.7), (-4.0, 3.0)]:
        draws = mean + std * torch.randn(400_000, generator=gen, dtype=DT)
        assert theory.expected_sigmoid(mean, std) == pytest.approx(
            float(torch.sigmoid(draws).mean()), abs=3e-3
        )


def test_colour_reliant_model_gives_conflicting_samples_large_residuals_as_derived():
    problem = theory.SpuriousProblem()
    data = problem.sample(50_000, 0.01, torch.Generator().manual_seed(1))
    theta = theory.fit_logistic(data.x, data.y, ridge=0.01)
    # the biased fit leans on colour: it contributes more to the margin than the shape
    assert theta[1] * problem.colour_mean > 2 * theta[0] * problem.shape_mean > 0
    derived = theory.predicted_residuals(problem, theta)
    residual = (torch.sigmoid(data.x @ theta) - data.y).abs()
    for group, mask in [("aligned", ~data.conflicting), ("conflicting", data.conflicting)]:
        assert derived[group] == pytest.approx(float(residual[mask].mean()), abs=0.02)
    assert derived["conflicting"] > 0.7 and derived["aligned"] < 0.05


def test_fit_logistic_matches_gradient_descent_and_refuses_separable_data():
    problem = theory.SpuriousProblem(label="logistic")
    data = problem.sample(3000, 0.2, torch.Generator().manual_seed(2))
    theta = theory.fit_logistic(data.x, data.y)
    assert theory.logistic_grads(theta, data.x, data.y).mean(0).norm() < 1e-8
    separable = theory.SpuriousProblem(shape_std=0.05).sample(200, 0.0, torch.Generator())
    with pytest.raises(RuntimeError, match="separable"):
        theory.fit_logistic(separable.x, separable.y, max_iter=30)
    theory.fit_logistic(separable.x, separable.y, ridge=0.01)  # a ridge penalty fixes it


def test_importance_sampling_variance_formula_matches_simulation_and_norms_minimise_it():
    gen = torch.Generator().manual_seed(3)
    grads = torch.randn(12, 3, generator=gen, dtype=DT) * torch.rand(12, 1, generator=gen)
    uniform = torch.full((12,), 1 / 12, dtype=DT)
    best = theory.optimal_proposal(grads)
    for probs in (uniform, best):
        index = torch.multinomial(probs, 400_000, replacement=True, generator=gen)
        estimates = grads[index] / (12 * probs[index, None])
        measured = float((estimates - grads.mean(0)).pow(2).sum(1).mean())
        assert theory.importance_sampling_variance(grads, probs) == pytest.approx(
            measured, rel=0.02
        )
    minimum = float(grads.norm(dim=1).mean() ** 2 - grads.mean(0).pow(2).sum())
    assert theory.importance_sampling_variance(grads, best) == pytest.approx(minimum)
    for _ in range(50):
        other = best * torch.exp(0.3 * torch.randn(12, generator=gen, dtype=DT))
        other = other / other.sum()
        assert theory.importance_sampling_variance(grads, other) >= minimum - 1e-12


def test_conflicting_share_formula_is_the_score_mass_and_what_the_sampler_draws():
    gen = torch.Generator().manual_seed(4)
    conflicting = torch.rand(5000, generator=gen) < 0.02
    scores = torch.where(conflicting, 1.0, 0.05) * torch.rand(5000, generator=gen, dtype=DT)
    rho = float(conflicting.double().mean())
    r = theory.norm_ratio(scores, conflicting)
    mass = float(sampling_probabilities(scores)[conflicting].sum())
    assert theory.conflicting_share(rho, r) == pytest.approx(mass, rel=1e-10)
    drawn = torch.tensor(list(importance_sampler(scores, 200_000, generator=gen)))
    assert float(conflicting[drawn].double().mean()) == pytest.approx(mass, abs=0.005)


def _variance_problem() -> theory.SpuriousProblem:
    return theory.SpuriousProblem(
        label="logistic", shape_std=0.5, colour_mean=1.0, colour_std=0.5, slope=2.0
    )


def test_sandwich_bound_is_above_the_fisher_trace_and_optimal_sampling_minimises_it():
    problem = _variance_problem()
    pool = problem.sample(20_000, 0.02, torch.Generator().manual_seed(5))
    theta = problem.optimum()
    ratio = problem.density_ratio(pool.x, 0.02)
    test = ratio / ratio.sum()
    fisher_test = theory.pool_fisher(theta, pool.x, test)
    best = theory.optimal_sampling(theta, pool.x, test)
    best_bound = theory.sandwich_bound(theta, pool.x, best, test, 1)
    gen = torch.Generator().manual_seed(6)
    for _ in range(30):
        h = best * torch.exp(torch.randn(len(best), generator=gen, dtype=DT))
        h = h / h.sum()
        bound = theory.sandwich_bound(theta, pool.x, h, test, 1)
        exact = theory.excess_risk_prediction(fisher_test, theory.pool_fisher(theta, pool.x, h), 1)
        assert exact <= bound + 1e-12
        assert bound >= best_bound - 1e-12
    # sampling the test distribution itself: the bound is tight and equals d / (2 n)
    assert theory.sandwich_bound(theta, pool.x, test, test, 1) == pytest.approx(1.0)


def test_density_ratio_is_one_on_unbiased_data_and_large_on_conflicting_inputs():
    problem = theory.SpuriousProblem()
    data = problem.sample(2000, 0.01, torch.Generator().manual_seed(7))
    torch.testing.assert_close(problem.density_ratio(data.x, 0.5), torch.ones(2000, dtype=DT))
    ratio = problem.density_ratio(data.x, 0.01)
    assert float(ratio[data.conflicting].median()) > 10
    assert float(ratio[~data.conflicting].median()) < 1


def test_simulated_excess_loss_matches_the_asymptotic_prediction_and_uniform_is_worst():
    table = theory.simulate_variance(
        _variance_problem(), 0.01, n=200, seeds=150, pool_size=30_000, test_size=60_000
    )
    means = table.groupby("method")[["excess_loss", "predicted", "bound"]].mean()
    for method, row in means.iterrows():
        assert row["excess_loss"] == pytest.approx(row["predicted"], rel=0.3), method
        assert row["predicted"] <= row["bound"] + 1e-12
    assert means.loc["uniform", "excess_loss"] > 1.5 * means.loc["density ratio", "excess_loss"]


def test_pgd_beats_uniform_and_the_group_oracle_beats_or_matches_pgd_on_the_spurious_problem():
    table = theory.simulate_debiasing(theory.SpuriousProblem(), 0.01, n=500, seeds=30)
    acc = table.groupby("method")["accuracy"].mean()
    assert acc["uniform"] < 0.7 < acc["PGD"] <= acc["group-balanced (oracle)"] + 0.01
    reliance = table.groupby("method")["colour_reliance"].mean()
    assert reliance["PGD"] < reliance["uniform"] / 3
    limits = theory.population_accuracy(theory.SpuriousProblem(), 0.01, size=100_000)
    assert limits.set_index("method")["accuracy"]["PGD"] > 0.9


def test_label_dependent_resampling_hurts_when_the_uniform_fit_is_already_unbiased():
    table = theory.simulate_debiasing(_variance_problem(), 0.01, n=500, seeds=30)
    acc = table.groupby("method")["accuracy"].mean()
    assert acc["PGD"] < acc["uniform"] and acc["group-balanced (oracle)"] < acc["uniform"]


def test_mean_ci_and_input_checks():
    mean, half = theory.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(1.96 / math.sqrt(3))
    with pytest.raises(ValueError, match="conflicting ratio"):
        theory.SpuriousProblem().sample(10, 1.5, torch.Generator())
    with pytest.raises(ValueError, match="label"):
        theory.SpuriousProblem(label="noisy")
    with pytest.raises(ValueError, match="closed form"):
        theory.SpuriousProblem().optimum()
