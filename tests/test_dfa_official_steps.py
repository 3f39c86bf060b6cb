"""Converting DFA's official number of training steps into epochs
(book/tools/dfa_official_steps.py): counted against the batches the book's loader draws, the last
short batch of an epoch included."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from pgd.datasets.base import batch_loader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "tools"))

import dfa_official_steps  # noqa: E402


@pytest.mark.parametrize(
    ("steps", "samples", "batch"),
    [(50_000, 3_600, 256), (50_000, 54_000, 256), (10, 256, 256), (7, 257, 256), (1, 5, 256)],
)
def test_epochs_hold_at_least_the_steps_and_one_epoch_fewer_does_not(steps, samples, batch):
    per_epoch = len(batch_loader(TensorDataset(torch.zeros(samples, 1)), batch))
    epochs = dfa_official_steps.epochs_for_steps(steps, samples, batch)
    assert epochs * per_epoch >= steps
    assert (epochs - 1) * per_epoch < steps


def test_the_offline_subset_needs_thousands_of_epochs_and_full_mnist_hundreds():
    assert dfa_official_steps.epochs_for_steps(50_000, 3_600, 256) == 3_334
    assert dfa_official_steps.epochs_for_steps(50_000, 54_000, 256) == 237


def test_counts_below_one_are_refused_with_their_values():
    with pytest.raises(ValueError, match="got 0, 3600 and 256"):
        dfa_official_steps.epochs_for_steps(0, 3_600, 256)
