from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pgd.training.metrics import Predictions, evaluate, group_accuracy_table, predict, summarize


def _predictions(predicted, labels, bias):
    n = len(labels)
    return Predictions(
        torch.tensor(predicted), torch.tensor(labels), torch.tensor(bias), torch.zeros(n)
    )


def test_aligned_conflicting_group_and_worst_group_accuracy():
    # groups: (0,0) 2 samples both right; (0,1) 2 samples one right; (1,1) 1 right; (1,0) 1 wrong
    p = _predictions([0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 0])
    m = summarize(p)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["aligned_accuracy"] == pytest.approx(3 / 3)
    assert m["conflicting_accuracy"] == pytest.approx(1 / 3)
    assert m["group_mean_accuracy"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert m["worst_group_accuracy"] == 0
    assert m["samples"] == 6


def test_group_table_has_one_row_per_present_group():
    p = _predictions([0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 0])
    table = group_accuracy_table(p).set_index(["label", "bias"])
    assert len(table) == 4
    assert table.loc[(0, 1), "samples"] == 2 and table.loc[(0, 1), "accuracy"] == 0.5
    assert bool(table.loc[(1, 1), "aligned"]) and not bool(table.loc[(1, 0), "aligned"])


def test_missing_subset_gives_nan_not_a_crash():
    m = summarize(_predictions([0, 1], [0, 1], [0, 1]))
    assert math.isnan(m["conflicting_accuracy"]) and m["aligned_accuracy"] == 1


def test_predict_returns_index_ordered_outputs_and_restores_mode(cmnist):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10)).train()
    subset = cmnist.valid
    p = predict(model, subset, batch_size=64)
    assert model.training
    assert torch.equal(p.labels, subset.labels) and torch.equal(p.bias_labels, subset.bias_labels)
    x, y, _, _ = subset[[0, 399]]
    with torch.no_grad():
        logits = model(x)
    assert p.predicted[[0, 399]].tolist() == logits.argmax(1).tolist()
    expected = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(p.losses[[0, 399]], expected)
    assert evaluate(model, subset)["samples"] == 400


def test_roc_auc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    from pgd.training.metrics import roc_auc

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (300,), generator=g).double()  # many ties
    positive = torch.rand(300, generator=g) < 0.2
    assert roc_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)


def test_roc_auc_needs_both_classes():
    from pgd.training.metrics import roc_auc

    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc(torch.ones(3), torch.ones(3, dtype=torch.bool))


def test_bias_following_rate_counts_conflicting_samples_predicted_as_their_bias():
    from pgd.training.metrics import bias_following_rate

    # conflicting samples: (label 0, bias 1) predicted 1 -> follows; (1, 2) predicted 1 -> not.
    p = _predictions([1, 1, 0], [0, 1, 0], [1, 2, 0])
    assert bias_following_rate(p) == 0.5
