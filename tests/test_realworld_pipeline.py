"""CelebA and BFFHQ through the whole pipeline: configuration rules, the command line on the
stand-in (what CI and readers without the data run), and ResNet-18's options."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
from layouts import write_bffhq_layout

import pgd.models
from pgd.datasets.images import measure_loading
from pgd.experiments.cli import main
from pgd.experiments.config import ExperimentConfig
from pgd.models import build_model
from pgd.training.schedules import stage_config
from pgd.training.throughput import estimated_seconds, measure_throughput


def test_real_world_datasets_default_to_resnet18_and_their_own_ratio():
    celeba = ExperimentConfig(dataset="celeba", profile="smoke")
    bffhq = ExperimentConfig(dataset="bffhq", profile="smoke")
    assert celeba.model == bffhq.model == "resnet18"
    assert celeba.ratio is None and bffhq.ratio == 0.005
    assert ExperimentConfig(dataset="cmnist").model == "cnn"
    assert ExperimentConfig(dataset="cmnist").ratio == 0.01


def test_options_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="CelebA has no bias-conflicting ratio"):
        ExperimentConfig(dataset="celeba", ratio=0.01)
    with pytest.raises(ValueError, match="stand_in is a setting of celeba, bffhq"):
        ExperimentConfig(dataset="cmnist", stand_in=True)
    with pytest.raises(ValueError, match="image_size"):
        ExperimentConfig(dataset="bffhq", image_size=8)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ExperimentConfig(dataset="cmnist", ratio=0.0)
    with pytest.raises(ValueError, match="target_attr is a setting of celeba,"):
        ExperimentConfig(dataset="bffhq", target_attr="Young")


def test_bad_worker_counts_are_refused(monkeypatch):
    from pgd.datasets.images import default_workers
    from pgd.experiments.pipeline import load_data

    monkeypatch.setenv("PGD_WORKERS", "four")
    with pytest.raises(ValueError, match="PGD_WORKERS"):
        default_workers("cpu")
    monkeypatch.setenv("PGD_WORKERS", "3")
    assert default_workers("cpu") == 3
    with pytest.raises(ValueError, match="workers must be 0 or more"):
        load_data(ExperimentConfig(dataset="bffhq", stand_in=True), workers=-1)


def test_profiles_give_resnet_datasets_their_own_epochs():
    assert ExperimentConfig(dataset="bffhq", profile="full").profile_spec.epochs == 30
    assert ExperimentConfig(dataset="celeba", profile="full").profile_spec.epochs == 10
    assert ExperimentConfig(dataset="cmnist", profile="full").profile_spec.epochs == 100
    assert ExperimentConfig(dataset="bffhq", profile="smoke").profile_spec.epochs == 2
    assert ExperimentConfig(dataset="bffhq", profile="quick").stage_epochs(10**9) == 5


def test_resnet_stages_follow_dfa_with_mixed_precision():
    config = stage_config("resnet18", "debiased", 3)
    assert (config.optimizer, config.lr, config.batch_size) == ("adam", 1e-4, 64)
    assert config.amp and config.channels_last
    assert stage_config("resnet18", "biased", 3).loss == "gce"


def test_run_names_say_stand_in_and_attributes():
    name = ExperimentConfig(dataset="celeba", stand_in=True, profile="smoke").name()
    assert name.startswith("celeba-standin-Blond_Hair-Male-pgd-resnet18-smoke")
    assert "ratio0.005" in ExperimentConfig(dataset="bffhq", profile="smoke").name()
    real = ExperimentConfig(
        dataset="bffhq", stand_in=True, stand_in_validation="real", profile="smoke"
    )
    assert real.name().startswith("bffhq-standin-ratio0.005-realvalid-")
    assert "realvalid" not in ExperimentConfig(dataset="bffhq", stand_in=True).name()


def test_imagenet_weights_that_cannot_be_downloaded_are_a_clear_error(monkeypatch):
    import torchvision

    original = torchvision.models.resnet18

    def offline(*args, weights=None, **kwargs):
        if weights is not None:
            raise urllib.error.URLError("no network")
        return original(*args, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(RuntimeError, match=r"could not be downloaded.*--pretrained"):
        build_model("resnet18", num_classes=2, pretrained=True)
    with pytest.raises(ValueError, match="only resnet18"):
        build_model("cnn", pretrained=True)
    assert pgd.models.last_linear(build_model("resnet18", num_classes=2)).out_features == 2


def test_throughput_is_measured_for_training_and_scoring():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    speed = measure_throughput(model, (3, 8, 8), batch_size=4, steps=2, warmup=1)
    assert speed["train_images_per_s"] > 0 and speed["score_images_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "validation"), [("bffhq", "oracle"), ("celeba", "real")])
def test_stand_in_smoke_run_reports_groups_and_says_stand_in(tmp_path, dataset, validation, capsys):
    out = tmp_path / "result.json"
    argv = ["run", "--dataset", dataset, "--stand-in", "--method", "pgd", "--profile", "smoke"]
    argv += ["--epochs", "1", "--image-size", "32"]  # the whole pipeline, at the smallest cost
    argv += ["--stand-in-validation", validation]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "STAND-IN DATA" in printed and "per (label, bias) group" in printed
    described = json.loads(out.read_text())["data"]["description"]
    assert ("validation split in the training proportions" in described) == (validation == "real")
    summary = json.loads(out.read_text())
    assert summary["data"]["source"] == "stand-in" and summary["data"]["stand_in"]
    assert summary["config"]["model"] == "resnet18"
    groups = summary["test_groups"]
    assert len(groups) == 4 and sum(g["samples"] for g in groups) == 400
    for key in ("accuracy", "conflicting_accuracy", "worst_group_accuracy", "aligned_accuracy"):
        assert 0.0 <= summary["metrics"]["test"][key] <= 1.0
    assert 0.0 < summary["pgd"]["conflicting_probability_mass"] <= 1.0


def test_real_layout_folder_runs_without_code_changes(tmp_path, capsys):
    write_bffhq_layout(tmp_path / "data", per_group=2)
    argv = ["run", "--dataset", "bffhq", "--data-root", str(tmp_path / "data"), "--method"]
    argv += ["vanilla", "--profile", "smoke", "--epochs", "1", "--image-size", "32"]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "STAND-IN" not in printed and "BFFHQ, target age" in printed


def test_wrong_layout_is_an_error_naming_what_is_missing(tmp_path, capsys):
    (tmp_path / "data" / "bffhq" / "valid").mkdir(parents=True)
    (tmp_path / "data" / "bffhq" / "0.5pct").mkdir()
    argv = ["run", "--dataset", "bffhq", "--data-root", str(tmp_path / "data"), "--profile"]
    assert main([*argv, "smoke", "--no-progress"]) == 2
    assert "align is missing" in capsys.readouterr().err


def test_unknown_celeba_attribute_is_an_error_listing_valid_ones(tmp_path, capsys):
    argv = ["run", "--dataset", "celeba", "--stand-in", "--target-attr", "Blonde"]
    assert main([*argv, "--profile", "smoke", "--no-progress"]) == 2
    assert "Blond_Hair" in capsys.readouterr().err


def test_time_estimate_adds_training_validation_and_scoring():
    speed = {"train_images_per_s": 100.0, "score_images_per_s": 400.0}
    seconds = estimated_seconds(speed, train_samples=1000, eval_samples=200, epochs=3, stages=2)
    assert seconds == pytest.approx(2 * 3 * 10 + 2 * 3 * 0.5 + 2.5)


def test_image_figures_show_every_group(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from pgd.book.plots import plot_group_accuracies, plot_image_groups, plot_scores_by_group
    from pgd.datasets.bffhq import load_bffhq
    from pgd.training.metrics import group_accuracy_table, predict

    write_bffhq_layout(tmp_path, per_group=2)
    with pytest.warns(UserWarning):
        data = load_bffhq(tmp_path, image_size=32)
    fig = plot_image_groups(data, per_group=3)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 4 and sum("conflicting" in label for label in labels) == 2
    assert measure_loading(data.train, batch_size=2, batches=2) > 0
    scores = torch.rand(len(data.train))
    ax = plot_scores_by_group(scores, data.train, data.class_names, data.bias_names)
    assert len(ax.get_xticklabels()) == 4
    model = build_model("resnet18", num_classes=2)
    table = group_accuracy_table(predict(model, data.test))
    ax = plot_group_accuracies({"a": table, "b": table}, data.class_names, data.bias_names)
    assert len(ax.get_xticklabels()) == 4
