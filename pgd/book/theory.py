"""The mathematics of chapter 6 (why per-sample gradient norms find and fix bias), as small
functions that the chapter calls and ``tests/test_theory.py`` checks on small cases.

Four groups, in the chapter's order:

1. the softmax classifier's last-layer gradient: :func:`softmax_residual`,
   :func:`residual_norm_bounds`, :func:`last_layer_terms` (its factors on a trained network);
2. a two-feature logistic model of dataset bias (a weak "shape" feature that sets the label and a
   strong "colour" feature that agrees with it on most training samples):
   :class:`SpuriousProblem`, :func:`fit_logistic`, :func:`logistic_grads`,
   :func:`expected_sigmoid`;
3. importance sampling: :func:`importance_sampling_variance`, :func:`optimal_proposal`,
   :func:`conflicting_share`;
4. the asymptotic (Fisher information / sandwich covariance) argument and the simulations that
   test it: :func:`pool_fisher`, :func:`excess_risk_prediction`, :func:`sandwich_bound`,
   :func:`optimal_sampling`, :func:`simulate_variance`, :func:`simulate_debiasing`,
   :func:`population_accuracy`, :func:`mean_ci`.

Everything is float64 and deterministic given its ``generator`` or seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..datasets.base import batch_loader
from ..models import last_linear

DTYPE = torch.float64


# 1. The softmax classifier's last-layer gradient ------------------------------------------------


def softmax_residual(logits: Tensor, labels: Tensor) -> Tensor:
    """``softmax(z) - onehot(y)``: the gradient of the cross-entropy w.r.t. the logits.

    Args:
        logits: ``(B, C)``.
        labels: ``(B,)`` class indices.

    Returns:
        ``(B, C)``; the last layer's weight gradient of sample ``i`` is ``residual[i] h_i^T``.
    """
    return logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)


def residual_norm_bounds(true_class_prob: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Bounds on ``||softmax(z) - onehot(y)||_2`` from ``q = p(y|x)`` alone.

    With ``m = 1 - q`` the mass on wrong classes, ``m * sqrt(C / (C - 1)) <= ||r||_2 <= sqrt(2) m``:
    the lower bound when the wrong mass is spread evenly over the ``C - 1`` wrong classes, the
    upper when it sits on one of them. For ``C = 2`` both equal ``sqrt(2) m``.

    Args:
        true_class_prob: ``(B,)`` probabilities of the true class.
        num_classes: ``C >= 2``.

    Returns:
        ``(lower, upper)``, each ``(B,)``.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    wrong = 1.0 - true_class_prob
    return wrong * math.sqrt(num_classes / (num_classes - 1)), wrong * math.sqrt(2.0)


@torch.no_grad()
def last_layer_terms(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> pd.DataFrame:
    """The two factors of every sample's last-layer score, and the probability of its label.

    Runs ``model`` in eval mode (restored afterwards) over ``dataset`` (items
    ``(image, label, bias_label, index)``) with the default :func:`pgd.models.last_linear`.

    Returns:
        One row per sample, in index order: ``residual_norm`` ``||softmax(z) - onehot(y)||_2``,
        ``feature_norm`` ``||h||_2``, ``true_prob`` ``p(y|x)``, ``loss``, ``label``,
        ``bias_label``, ``conflicting``. ``residual_norm * feature_norm`` is PGD's last-layer
        score (weight only, p = 2).
    """
    layer = last_linear(model)
    device = next(model.parameters()).device
    captured: list[Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    was_training = model.training
    model.eval()
    parts = []
    try:
        for images, labels, bias, index in batch_loader(dataset, batch_size):
            logits = model(images.to(device)).double()
            labels = labels.to(device)
            features = captured.pop().double().flatten(1)
            probs = logits.softmax(1)
            true_prob = probs.gather(1, labels[:, None]).squeeze(1)
            parts.append(
                pd.DataFrame(
                    {
                        "index": torch.as_tensor(index).cpu().numpy(),
                        "residual_norm": softmax_residual(logits, labels).norm(dim=1).cpu(),
                        "feature_norm": features.norm(dim=1).cpu(),
                        "true_prob": true_prob.cpu(),
                        "loss": F.cross_entropy(logits, labels, reduction="none").cpu(),
                        "label": labels.cpu().numpy(),
                        "bias_label": torch.as_tensor(bias).cpu().numpy(),
                    }
                )
            )
    finally:
        hook.remove()
        model.train(was_training)
    table = pd.concat(parts).sort_values("index").set_index("index")
    table["conflicting"] = table["label"] != table["bias_label"]
    return table


# 2. A two-feature logistic model of dataset bias -----------------------------------------------


@dataclass
class ToyData:
    """Samples of a :class:`SpuriousProblem`.

    Attributes:
        x: ``(n, 2)`` features, columns ``shape`` and ``colour``.
        y: ``(n,)`` labels in {0, 1}.
        bias: ``(n,)`` the colour's class in {0, 1}.
        conflicting: ``(n,)`` bool, ``bias != y``.
    """

    x: Tensor
    y: Tensor
    bias: Tensor
    conflicting: Tensor


@dataclass(frozen=True)
class SpuriousProblem:
    """Colored MNIST in two dimensions.

    A latent class ``a`` in {0, 1} (fair coin) sets the shape feature,
    ``shape ~ N((2a - 1) shape_mean, shape_std^2)``; a bias class ``b`` equals ``a`` except with
    probability ``rho`` (the conflicting ratio; 1/2 on an unbiased test set) and sets the colour
    feature, ``colour ~ N((2b - 1) colour_mean, colour_std^2)``. The colour is the stronger,
    easier feature (larger mean, so a small weight separates the aligned samples).

    ``label="class"``: the label is ``a`` (the shape's class, as the digit is in Colored MNIST).
    ``label="logistic"``: the label is drawn as ``y ~ Bernoulli(sigmoid(slope * shape))``, so
    ``p(y | x)`` is the same logistic function of the inputs under every ``rho``: a well-specified
    model whose only shift is in the inputs (covariate shift), the setting of the asymptotic theory.
    """

    shape_mean: float = 1.0
    shape_std: float = 0.5
    colour_mean: float = 3.0
    colour_std: float = 0.5
    label: str = "class"
    slope: float = 3.0

    def __post_init__(self) -> None:
        if self.label not in ("class", "logistic"):
            raise ValueError(f"label must be 'class' or 'logistic', got {self.label!r}")
        if min(self.shape_std, self.colour_std) <= 0:
            raise ValueError("the feature standard deviations must be positive")

    def sample(self, n: int, rho: float, generator: torch.Generator) -> ToyData:
        """``n`` samples with conflicting ratio ``rho`` (0.5: the unbiased distribution)."""
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"the conflicting ratio must be in [0, 1], got {rho}")
        a = torch.randint(0, 2, (n,), generator=generator)
        flip = torch.rand(n, generator=generator, dtype=DTYPE) < rho
        b = torch.where(flip, 1 - a, a)
        shape = (2 * a - 1) * self.shape_mean + self.shape_std * torch.randn(
            n, generator=generator, dtype=DTYPE
        )
        colour = (2 * b - 1) * self.colour_mean + self.colour_std * torch.randn(
            n, generator=generator, dtype=DTYPE
        )
        if self.label == "class":
            y = a
        else:
            u = torch.rand(n, generator=generator, dtype=DTYPE)
            y = (u < torch.sigmoid(self.slope * shape)).long()
        return ToyData(torch.stack([shape, colour], 1), y, b, b != y)

    def optimum(self) -> Tensor:
        """``theta*`` of the well-specified ``label="logistic"`` problem: ``(slope, 0)``."""
        if self.label != "logistic":
            raise ValueError("theta* is known in closed form only for label='logistic'")
        return torch.tensor([self.slope, 0.0], dtype=DTYPE)

    def density_ratio(self, x: Tensor, rho: float) -> Tensor:
        """``p_unbiased(x) / p_rho(x)`` of the inputs ``(n, 2)``, exactly (a Gaussian mixture)."""

        def density(conflicting: float) -> Tensor:
            total = torch.zeros(len(x), dtype=DTYPE)
            for a in (0, 1):
                shape = torch.exp(
                    -0.5 * ((x[:, 0] - (2 * a - 1) * self.shape_mean) / self.shape_std) ** 2
                )
                for b in (0, 1):
                    p_b = conflicting if b != a else 1.0 - conflicting
                    z = (x[:, 1] - (2 * b - 1) * self.colour_mean) / self.colour_std
                    total = total + 0.5 * p_b * shape * torch.exp(-0.5 * z**2)
            return total

        return density(0.5) / density(rho)


def fit_logistic(
    x: Tensor,
    y: Tensor,
    weights: Tensor | None = None,
    ridge: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> Tensor:
    """Weighted, optionally ridge-penalised logistic regression (no intercept) by Newton's method.

    Minimises ``sum_i w_i l_i(theta) / sum_i w_i + ridge / 2 ||theta||^2`` with
    ``l_i = -log p(y_i | x_i)``, ``p(1 | x) = sigmoid(x . theta)``.

    Args:
        x: ``(n, d)``; y: ``(n,)`` in {0, 1}; weights: ``(n,)`` non-negative (default all ones).

    Returns:
        ``(d,)`` float64 parameters.

    Raises:
        RuntimeError: Newton's method did not converge (separable data without a ridge penalty).
    """
    x, y = x.to(DTYPE), y.to(DTYPE)
    w = torch.ones(len(y), dtype=DTYPE) if weights is None else weights.to(DTYPE)
    w = w / w.sum()
    theta = torch.zeros(x.shape[1], dtype=DTYPE)
    eye = torch.eye(x.shape[1], dtype=DTYPE)
    for _ in range(max_iter):
        p = torch.sigmoid(x @ theta)
        gradient = x.T @ (w * (p - y)) + ridge * theta
        hessian = (x * (w * p * (1 - p))[:, None]).T @ x + ridge * eye + 1e-12 * eye
        step = torch.linalg.solve(hessian, gradient)
        theta = theta - step
        if step.norm() < tol * (1.0 + theta.norm()):
            return theta
    raise RuntimeError(
        f"logistic regression did not converge in {max_iter} Newton steps (|theta| = "
        f"{theta.norm():.3g}): the data are probably separable; add a ridge penalty"
    )


def logistic_grads(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample gradients ``(sigmoid(x . theta) - y) x`` of the logistic loss, ``(n, d)``."""
    return (torch.sigmoid(x @ theta) - y.to(DTYPE))[:, None] * x


def logistic_loss(theta: Tensor, x: Tensor, y: Tensor) -> float:
    """Mean logistic (binary cross-entropy) loss."""
    return float(F.binary_cross_entropy_with_logits(x @ theta, y.to(DTYPE)))


def accuracy(theta: Tensor, x: Tensor, y: Tensor) -> float:
    """Share of samples with ``(x . theta > 0) == y``."""
    return float(((x @ theta > 0).long() == y).to(DTYPE).mean())


def expected_sigmoid(mean: float, std: float, nodes: int = 80) -> float:
    """``E[sigmoid(m)]`` for ``m ~ N(mean, std^2)``, by Gauss-Hermite quadrature."""
    points, weights = np.polynomial.hermite_e.hermegauss(nodes)
    values = 1.0 / (1.0 + np.exp(-(mean + std * points)))
    return float((weights * values).sum() / math.sqrt(2 * math.pi))


def predicted_residuals(problem: SpuriousProblem, theta: Tensor) -> dict[str, float]:
    """Mean ``|sigmoid(x . theta) - y|`` of aligned and conflicting samples, derived.

    For ``label="class"`` and ``y = 1`` (``y = 0`` is the mirror image), the margin
    ``m = x . theta`` is Gaussian with mean ``theta_s mu_s +- theta_c mu_c`` (+ for aligned, - for
    conflicting) and variance ``theta_s^2 sigma_s^2 + theta_c^2 sigma_c^2``; the residual is
    ``1 - sigmoid(m) = sigmoid(-m)``.
    """
    if problem.label != "class":
        raise ValueError("derived for label='class'")
    ts, tc = float(theta[0]), float(theta[1])
    std = math.hypot(ts * problem.shape_std, tc * problem.colour_std)
    aligned = ts * problem.shape_mean + tc * problem.colour_mean
    conflicting = ts * problem.shape_mean - tc * problem.colour_mean
    return {
        "aligned": expected_sigmoid(-aligned, std),
        "conflicting": expected_sigmoid(-conflicting, std),
    }


# 3. Importance sampling ------------------------------------------------------------------------


def importance_sampling_variance(grads: Tensor, probs: Tensor) -> float:
    """Exact total variance of the one-draw importance-sampling gradient estimate.

    Draw ``i`` with probability ``q_i`` and return ``g_i / (N q_i)``: unbiased for the mean
    gradient ``G``, with ``E||estimate - G||^2 = sum_i ||g_i||^2 / (N^2 q_i) - ||G||^2``.

    Args:
        grads: ``(N, D)`` per-sample gradients. probs: ``(N,)`` positive, summing to 1.
    """
    grads, probs = grads.to(DTYPE), probs.to(DTYPE)
    n = len(grads)
    second = (grads.pow(2).sum(1) / probs).sum() / n**2
    return float(second - grads.mean(0).pow(2).sum())


def optimal_proposal(grads: Tensor) -> Tensor:
    """The variance-minimising ``q_i = ||g_i|| / sum_j ||g_j||`` (Cauchy-Schwarz), ``(N,)``."""
    norms = grads.to(DTYPE).norm(dim=1)
    return norms / norms.sum()


def conflicting_share(rho: float, ratio: float) -> float:
    """Probability mass on conflicting samples after sampling in proportion to scores.

    With a share ``rho`` of conflicting samples whose mean score is ``ratio`` times the aligned
    samples' mean score: ``rho r / (1 - rho + rho r)``.
    """
    return rho * ratio / (1.0 - rho + rho * ratio)


def norm_ratio(scores: Tensor, conflicting: Tensor) -> float:
    """Mean score of conflicting samples divided by the mean score of aligned ones."""
    scores = torch.as_tensor(scores, dtype=DTYPE)
    conflicting = torch.as_tensor(conflicting, dtype=torch.bool)
    return float(scores[conflicting].mean() / scores[~conflicting].mean())


# 4. The asymptotic argument, and simulations ---------------------------------------------------


def pool_fisher(theta: Tensor, x: Tensor, probs: Tensor) -> Tensor:
    """Fisher information ``sum_i p_i sigmoid_i (1 - sigmoid_i) x_i x_i^T`` of a distribution
    that puts mass ``probs`` ``(N,)`` on the inputs ``x`` ``(N, d)``; ``(d, d)``."""
    p = torch.sigmoid(x @ theta)
    return (x * (probs.to(DTYPE) * p * (1 - p))[:, None]).T @ x


def excess_risk_prediction(fisher_test: Tensor, fisher_train: Tensor, n: int) -> float:
    """Asymptotic excess test loss of maximum likelihood on ``n`` samples from the training
    distribution, well-specified model: ``tr(I_test I_train^-1) / (2 n)``."""
    return float(torch.trace(fisher_test @ torch.linalg.inv(fisher_train)) / (2 * n))


def sandwich_bound(
    theta: Tensor, x: Tensor, train_probs: Tensor, test_probs: Tensor, n: int
) -> float:
    """Upper bound on :func:`excess_risk_prediction`: ``tr(I_test^-1 V) / (2 n)`` with
    ``V = sum_i test_i^2 / train_i * s_i (1 - s_i) x_i x_i^T`` (``s_i = sigmoid(x_i . theta)``),
    the sandwich covariance of the importance-weighted estimator (matrix Cauchy-Schwarz)."""
    p = torch.sigmoid(x @ theta)
    weights = test_probs.to(DTYPE) ** 2 / train_probs.to(DTYPE) * p * (1 - p)
    v = (x * weights[:, None]).T @ x
    fisher_test = pool_fisher(theta, x, test_probs)
    return float(torch.trace(torch.linalg.solve(fisher_test, v)) / (2 * n))


def optimal_sampling(theta: Tensor, x: Tensor, test_probs: Tensor) -> Tensor:
    """The training distribution minimising :func:`sandwich_bound`:
    ``h_i ∝ test_i sqrt(E_y ||I_test^-1/2 g_i||^2) = test_i sqrt(s_i (1 - s_i)) ||L^-1 x_i||``
    (``s_i = sigmoid(x_i . theta)``, ``I_test = L L^T``): the test distribution reweighted by the
    whitened expected gradient norm. ``(N,)``, sums to 1."""
    p = torch.sigmoid(x @ theta)
    fisher_test = pool_fisher(theta, x, test_probs)
    whitened = torch.linalg.solve(torch.linalg.cholesky(fisher_test), x.T).T  # L^-1 x
    h = test_probs.to(DTYPE) * torch.sqrt(p * (1 - p)) * whitened.norm(dim=1)
    return h / h.sum()


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of a normal-approximation confidence interval of the mean."""
    values = np.asarray(values, dtype=float)
    z = {0.9: 1.6449, 0.95: 1.9600, 0.99: 2.5758}[level]
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(z * values.std(ddof=1) / math.sqrt(len(values)))


def simulate_variance(
    problem: SpuriousProblem,
    rho: float,
    n: int,
    seeds: int,
    pool_size: int = 100_000,
    test_size: int = 200_000,
    seed: int = 0,
) -> pd.DataFrame:
    """The asymptotic theory's own setting, simulated: maximum likelihood on ``n`` samples drawn
    from a large biased pool under three training distributions, scored on the unbiased one.

    ``uniform`` (the pool as it is), ``density ratio`` (``h ∝ p_unbiased / p_biased``: the
    unbiased inputs) and ``gradient-norm optimum`` (:func:`optimal_sampling` at ``theta*``).
    Sampling depends on the inputs only, as the theory requires. Needs ``label="logistic"``.

    Returns:
        One row per seed x method: ``excess_loss`` (unbiased test loss minus that of
        ``theta*``), ``predicted`` (:func:`excess_risk_prediction`), ``bound``
        (:func:`sandwich_bound`), ``accuracy``.
    """
    theta_star = problem.optimum()
    gen = torch.Generator().manual_seed(seed)
    pool = problem.sample(pool_size, rho, gen)
    test = problem.sample(test_size, 0.5, gen)
    base_loss = logistic_loss(theta_star, test.x, test.y)
    ratio = problem.density_ratio(pool.x, rho)
    test_probs = ratio / ratio.sum()
    train = {
        "uniform": torch.full((pool_size,), 1.0 / pool_size, dtype=DTYPE),
        "density ratio": test_probs,
        "gradient-norm optimum": optimal_sampling(theta_star, pool.x, test_probs),
    }
    fisher_test = pool_fisher(theta_star, pool.x, test_probs)
    rows = []
    for method, probs in train.items():
        predicted = excess_risk_prediction(fisher_test, pool_fisher(theta_star, pool.x, probs), n)
        bound = sandwich_bound(theta_star, pool.x, probs, test_probs, n)
        for s in range(seeds):
            draw = torch.Generator().manual_seed(10_000 * (seed + 1) + s)
            index = torch.multinomial(probs, n, replacement=True, generator=draw)
            theta = fit_logistic(pool.x[index], pool.y[index])
            rows.append(
                {
                    "method": method,
                    "seed": s,
                    "excess_loss": logistic_loss(theta, test.x, test.y) - base_loss,
                    "predicted": predicted,
                    "bound": bound,
                    "accuracy": accuracy(theta, test.x, test.y),
                }
            )
    return pd.DataFrame(rows)


def group_balanced_weights(conflicting: Tensor) -> Tensor:
    """Weights giving the conflicting and the aligned samples half the total mass each (the
    oracle, which needs the bias labels); all ones where one of the groups is empty."""
    conflicting = conflicting.bool()
    share = conflicting.to(DTYPE).mean()
    if share in (0.0, 1.0):
        return torch.ones(len(conflicting), dtype=DTYPE)
    return torch.where(conflicting, 0.5 / share, 0.5 / (1 - share))


def pgd_scores(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """PGD's score for a logistic model: the per-sample gradient norm ``|s - y| ||x||``."""
    return logistic_grads(theta, x, y).norm(dim=1)


def _fit_three(data: ToyData, ridge: float, gen: torch.Generator | None, n: int | None):
    """Uniform, PGD and group-balanced fits on ``data``: by resampling ``n`` draws (as PGD
    trains) when ``gen`` is given, else by weighting (the population limit)."""
    biased = fit_logistic(data.x, data.y, ridge=ridge)
    weights = {
        "PGD": pgd_scores(biased, data.x, data.y),
        "group-balanced (oracle)": group_balanced_weights(data.conflicting),
    }
    fits = {"uniform": (biased, None)}
    for method, w in weights.items():
        if gen is None:
            fits[method] = (fit_logistic(data.x, data.y, w, ridge=ridge), w)
        else:
            index = torch.multinomial(w, n, replacement=True, generator=gen)
            fits[method] = (fit_logistic(data.x[index], data.y[index], ridge=ridge), w)
    return fits


def _debiasing_rows(
    data: ToyData, test: ToyData, ridge: float, gen: torch.Generator | None, n: int | None
) -> list[dict[str, Any]]:
    """One row per method of :func:`_fit_three`: ``accuracy`` on ``test``, ``colour_reliance``
    (``theta_colour / theta_shape``) and ``conflicting_mass`` (share of the sampling mass on the
    conflicting samples; their share of the data for ``uniform``)."""
    rows = []
    for method, (theta, w) in _fit_three(data, ridge, gen, n).items():
        weights = torch.ones(len(data.y), dtype=DTYPE) if w is None else w
        rows.append(
            {
                "method": method,
                "accuracy": accuracy(theta, test.x, test.y),
                "colour_reliance": float(theta[1] / theta[0]),
                "conflicting_mass": float(weights[data.conflicting].sum() / weights.sum()),
            }
        )
    return rows


def simulate_debiasing(
    problem: SpuriousProblem,
    rho: float,
    n: int,
    seeds: int,
    ridge: float = 0.01,
    test_size: int = 100_000,
    seed: int = 0,
) -> pd.DataFrame:
    """PGD on the two-feature problem, as the method runs: a biased model (ridge logistic
    regression, uniform), scores ``|s - y| ||x||`` on its own training set, a second model fit on
    ``n`` draws with replacement in proportion to the scores; beside it ``uniform`` (the biased
    model itself) and ``group-balanced (oracle)``.

    Returns:
        One row per seed x method: ``accuracy`` on the unbiased test set, ``colour_reliance``
        (``theta_colour / theta_shape``), ``conflicting_mass`` (share of the sampling mass on
        conflicting samples; their share of the data for ``uniform``).
    """
    test = problem.sample(test_size, 0.5, torch.Generator().manual_seed(seed))
    rows = []
    for s in range(seeds):
        gen = torch.Generator().manual_seed(10_000 * (seed + 1) + s)
        data = problem.sample(n, rho, gen)
        rows += [
            {"method": row["method"], "seed": s, **row}
            for row in _debiasing_rows(data, test, ridge, gen, n)
        ]
    return pd.DataFrame(rows)


def population_accuracy(
    problem: SpuriousProblem, rho: float, ridge: float = 0.01, size: int = 400_000, seed: int = 0
) -> pd.DataFrame:
    """The ``n -> infinity`` limit of :func:`simulate_debiasing`: each method's weighted fit on
    ``size`` samples (weights in place of resampling). One row per method: ``accuracy``,
    ``colour_reliance``, ``conflicting_mass``."""
    gen = torch.Generator().manual_seed(seed)
    data = problem.sample(size, rho, gen)
    test = problem.sample(size, 0.5, gen)
    return pd.DataFrame(_debiasing_rows(data, test, ridge, None, None))
