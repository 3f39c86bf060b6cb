"""CelebA loading on folders written in the real layouts (official and Kaggle), its errors, and
the download-failure diagnosis."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from layouts import write_celeba_layout
from PIL import Image

import pgd.datasets.celeba as celeba
import pgd.datasets.images as images
from pgd.datasets.archives import DownloadError
from pgd.datasets.base import DataUnavailableError
from pgd.datasets.images import CorruptImageError


def _expected(truth, split_code):
    return {name: v for name, v in truth.items() if v[0] == split_code}


@pytest.mark.parametrize("kaggle", [False, True], ids=["official", "kaggle"])
def test_loads_the_official_partition_with_labels_from_the_attribute_file(tmp_path, kaggle):
    folder, truth = write_celeba_layout(tmp_path / "celeba", n=24, kaggle=kaggle)
    data = celeba.load_celeba(tmp_path, image_size=32)
    assert data.is_real and data.folder == folder
    for split, code in celeba.PARTITIONS.items():
        dataset = getattr(data, split)
        expected = _expected(truth, code)
        assert sorted(Path(f).name for f in dataset.files) == sorted(expected)
        for file, label in zip(dataset.files, dataset.labels.tolist(), strict=True):
            assert label == expected[Path(file).name][1]
    image, label, _bias, index = data.train[0]
    assert image.shape == (3, 32, 32) and index == 0
    assert "NOT the official" in data.description  # 24 images, not 202,599


def test_bias_label_is_oriented_so_that_aligned_means_equal_labels(tmp_path):
    _folder, truth = write_celeba_layout(tmp_path / "celeba", n=30)
    data = celeba.load_celeba(tmp_path, image_size=32)
    train = _expected(truth, 0)
    blond = torch.tensor([train[Path(f).name][1] for f in data.train.files], dtype=torch.float)
    male = torch.tensor([train[Path(f).name][2] for f in data.train.files], dtype=torch.float)
    negative = float(torch.corrcoef(torch.stack([blond, male]))[0, 1]) < 0
    expected_bias = (1 - male) if negative else male
    assert torch.equal(data.train.bias_labels, expected_bias.long())
    assert data.bias_names == (("Male", "not Male") if negative else ("not Male", "Male"))
    assert float(torch.corrcoef(torch.stack([blond, data.train.bias_labels.float()]))[0, 1]) >= 0


def test_unknown_attribute_lists_the_valid_ones(tmp_path):
    write_celeba_layout(tmp_path / "celeba", n=12)
    with pytest.raises(ValueError, match=r"'blond_hair'.*did you mean 'Blond_Hair'.*Wavy_Hair"):
        celeba.load_celeba(tmp_path, target="blond_hair")
    with pytest.raises(ValueError, match="must differ"):
        celeba.load_celeba(tmp_path, target="Male", bias="Male")


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"not in .*Kaggle"):
        celeba.load_celeba(tmp_path)


def test_partial_image_folder_reports_how_many_are_missing(tmp_path):
    folder, _ = write_celeba_layout(tmp_path / "celeba", n=12)
    (folder / "img_align_celeba" / "000005.jpg").unlink()
    (folder / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(DataUnavailableError, match=r"10 of the 12 images .* 2 are missing"):
        celeba.load_celeba(tmp_path)
    shutil.rmtree(folder / "img_align_celeba")
    with pytest.raises(DataUnavailableError, match=r"image folder .* is missing"):
        celeba.load_celeba(tmp_path)


def test_damaged_attribute_file_is_reported(tmp_path):
    folder, _ = write_celeba_layout(tmp_path / "celeba", n=12)
    text = (folder / "list_attr_celeba.txt").read_text().splitlines()
    text[3] = text[3].replace("-1", "7", 1)
    (folder / "list_attr_celeba.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(DataUnavailableError, match=r"attribute file .* cannot be read"):
        celeba.load_celeba(tmp_path)


def test_a_corrupt_image_stops_the_loading_before_any_training_named(tmp_path, monkeypatch):
    """Small enough to be kept in memory: every file is decoded at once. Too large (the full
    release): every file's header is checked, or every file decoded with verify="full"."""
    _folder, _ = write_celeba_layout(tmp_path / "celeba", n=12)
    victim = next(iter(sorted((tmp_path / "celeba" / "img_align_celeba").glob("*.jpg"))))
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(CorruptImageError, match=victim.name):
        celeba.load_celeba(tmp_path, image_size=32)
    monkeypatch.setattr(images, "IMAGE_CACHE_BYTES", 0)  # as for the full release
    with pytest.raises(CorruptImageError, match=victim.name):
        celeba.load_celeba(tmp_path, image_size=32, verify="full")
    with pytest.raises(CorruptImageError, match=victim.name):
        celeba.load_celeba(tmp_path, image_size=32)  # the default, quick: header and end
    data = celeba.load_celeba(tmp_path, image_size=32, verify="off")  # then: when read
    for split in (data.train, data.valid, data.test):
        names = [Path(f).name for f in split.files]
        if victim.name in names:
            with pytest.raises(CorruptImageError, match=victim.name):
                split[names.index(victim.name)]
            break
    else:
        raise AssertionError("the damaged file is in no split")


def test_loading_lists_the_disk_once_not_every_epoch(tmp_path, monkeypatch):
    write_celeba_layout(tmp_path / "celeba", n=12)
    data = celeba.load_celeba(tmp_path, image_size=32)

    def forbidden(*args, **kwargs):
        raise AssertionError("the disk was searched again")

    monkeypatch.setattr(os, "scandir", forbidden)
    monkeypatch.setattr(os, "listdir", forbidden)
    monkeypatch.setattr(Path, "iterdir", forbidden)
    monkeypatch.setattr(Path, "glob", forbidden)
    from pgd.datasets.base import batch_loader

    for _epoch in range(2):
        assert sum(len(batch[1]) for batch in batch_loader(data.train, 4)) == len(data.train)


def test_official_zip_beside_the_text_files_is_extracted(tmp_path):
    folder, _ = write_celeba_layout(tmp_path / "celeba", n=12)
    archive = folder / "img_align_celeba.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for image in sorted((folder / "img_align_celeba").iterdir()):
            z.write(image, f"img_align_celeba/{image.name}")
    shutil.rmtree(folder / "img_align_celeba")
    data = celeba.load_celeba(tmp_path, image_size=32)
    assert len(data.train) + len(data.valid) + len(data.test) == 12


def test_kaggle_archive_is_extracted(tmp_path):
    source, _ = write_celeba_layout(tmp_path / "kaggle", n=12, kaggle=True)
    with zipfile.ZipFile(tmp_path / "archive.zip", "w") as z:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(source).as_posix())
    root = tmp_path / "root"
    root.mkdir()
    shutil.move(str(tmp_path / "archive.zip"), root / "archive.zip")
    data = celeba.load_celeba(root, image_size=32)
    assert data.folder == root / "celeba" and len(data.train) == 8


def _fake_torchvision_download(monkeypatch, payload: bytes):
    """torchvision's CelebA download, as it fails: it leaves ``payload`` as the zip, then raises."""

    class FakeCelebA:
        def __init__(self, root, **kwargs):
            target = Path(root) / "celeba" / "img_align_celeba.zip"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
            raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(celeba.compat.import_torchvision().datasets, "CelebA", FakeCelebA)


def test_download_failure_with_the_quota_page_tells_what_to_do(tmp_path, monkeypatch):
    quota = (
        b"<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title><body>Sorry, you "
        b"can't view or download this file at this time.</body></html>"
    )
    _fake_torchvision_download(monkeypatch, quota)
    with pytest.raises(DownloadError, match=r"quota(.|\n)*Kaggle"):
        celeba.load_celeba(tmp_path, download=True)


def test_download_failure_with_a_truncated_zip_tells_what_to_do(tmp_path, monkeypatch):
    _fake_torchvision_download(monkeypatch, b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(DownloadError, match="not a complete zip"):
        celeba.load_celeba(tmp_path, download=True)


def test_stand_in_is_written_in_the_real_layout_and_labelled(tmp_path):
    counts = {
        "train": {(0, 0): 6, (0, 1): 6, (1, 0): 3, (1, 1): 1},
        "valid": {(0, 0): 2, (0, 1): 2, (1, 0): 1, (1, 1): 1},
        "test": {(0, 0): 2, (0, 1): 2, (1, 0): 1, (1, 1): 1},
    }
    folder = celeba.write_celeba_stand_in(tmp_path / "standin", counts=counts)
    assert (folder / "img_align_celeba" / "000001.jpg").is_file()
    attributes = celeba.read_attributes(folder)
    assert list(attributes.columns) == list(celeba.ATTRIBUTES)
    assert len(celeba.read_partition(folder)) == 28
    # Read back through the ordinary loader (data root = the stand-in's parent folder).
    data = celeba.load_celeba(folder, image_size=32)
    assert data.source == "stand-in" and not data.is_real and "STAND-IN" in data.description
    assert data.summary().loc["train", "samples"] == 16


def test_stand_in_validation_has_the_training_mix_and_the_oracle_one_is_kept(tmp_path):
    counts = {
        "train": {(0, 0): 40, (0, 1): 40, (1, 0): 16, (1, 1): 4},
        "valid": {(0, 0): 2, (0, 1): 2, (1, 0): 3, (1, 1): 3},
        "test": {(0, 0): 2, (0, 1): 2, (1, 0): 1, (1, 1): 1},
    }
    folder = celeba.write_celeba_stand_in(tmp_path / "standin", counts=counts)
    real = celeba.load_celeba(folder, image_size=16, validation="real")
    oracle = celeba.load_celeba(folder, image_size=16, validation="oracle")

    def blond_male(split):
        frame = celeba.read_attributes(folder).loc[[Path(f).name for f in split.files]]
        return frame.groupby(["Blond_Hair", "Male"]).size().to_dict()

    # real: CelebA's official validation partition has the training proportions (10 faces)
    assert blond_male(real.valid) == {(0, 0): 4, (0, 1): 4, (1, 0): 2}
    assert blond_male(oracle.valid) == {(0, 0): 2, (0, 1): 2, (1, 0): 3, (1, 1): 3}
    assert "validation split in the training proportions" in real.description
    assert real.train.files == oracle.train.files and real.test.files == oracle.test.files
    assert not set(real.valid.files) & set(oracle.valid.files)
    assert len(celeba.read_partition(folder, celeba.ORACLE_PARTITION)) == 100 + 10 + 6


def test_swapping_target_and_bias_reads_the_same_images_in_the_same_groups(tmp_path):
    counts = {
        "train": {(0, 0): 6, (0, 1): 6, (1, 0): 3, (1, 1): 1},
        "valid": {(0, 0): 2, (0, 1): 2, (1, 0): 1, (1, 1): 1},
        "test": {(0, 0): 2, (0, 1): 2, (1, 0): 1, (1, 1): 1},
    }
    folder = celeba.write_celeba_stand_in(tmp_path / "standin", counts=counts)
    usual = celeba.load_celeba(folder, image_size=32, verify="off")
    swapped = celeba.load_celeba(
        folder, target="Male", bias="Blond_Hair", image_size=32, verify="off"
    )
    assert sorted(usual.train.files) == sorted(swapped.train.files)
    # Bias "not Blond_Hair" goes with men: the conflicting images are the blond man and the six
    # dark-haired women.
    labels, bias = swapped.train.labels, swapped.train.bias_labels
    assert int((labels.eq(1) & bias.eq(0)).sum()) == 1
    assert int((labels.eq(0) & bias.eq(1)).sum()) == 6
    assert swapped.bias_names == ("Blond_Hair", "not Blond_Hair")
    with pytest.raises(ValueError, match="Young takes the value 1 on every training image"):
        celeba.load_celeba(folder, target="Young", bias="Male", verify="off")
    with pytest.raises(ValueError, match="perfectly correlated"):
        celeba.load_celeba(folder, target="Wearing_Lipstick", bias="Male", verify="off")


def test_full_release_text_files_are_checked_against_torchvision_checksums(tmp_path, monkeypatch):
    import hashlib

    folder, _ = write_celeba_layout(tmp_path / "celeba", n=6)
    attributes = folder / "list_attr_celeba.txt"
    lines = attributes.read_text().splitlines()
    attributes.write_text("\n".join(["202599", *lines[1:]]) + "\n")  # claims the full release
    partition = folder / "list_eval_partition.txt"
    good = hashlib.md5(partition.read_bytes()).hexdigest()
    datasets = celeba.compat.import_torchvision().datasets
    monkeypatch.setattr(
        datasets.CelebA,
        "file_list",
        [("id1", "0" * 32, "list_attr_celeba.txt"), ("id2", good, "list_eval_partition.txt")],
    )
    with pytest.warns(UserWarning, match=r"list_attr_celeba\.txt .*differ"):
        assert celeba.verify_official_files(folder) == ["list_attr_celeba.txt"]
    attributes.write_text("\n".join(lines) + "\n")  # a subset: not checked
    assert celeba.verify_official_files(folder) == []


def _write_mirror(folder, sizes):
    """Parquet files in the Hugging Face mirror's schema: the JPEG bytes, celeb_id and the 40
    attributes as booleans, one file per split."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, n in sizes.items():
        rows = {"image": [], "celeb_id": []} | {a: [] for a in celeba.ATTRIBUTES}
        for i in range(n):
            buffer = io.BytesIO()
            pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, format="JPEG")
            rows["image"].append({"bytes": buffer.getvalue(), "path": None})
            rows["celeb_id"].append(i)
            for attribute in celeba.ATTRIBUTES:
                rows[attribute].append(bool(rng.integers(0, 2)))
        features = datasets.Features(
            {"image": datasets.Image(), "celeb_id": datasets.Value("int64")}
            | {a: datasets.Value("bool") for a in celeba.ATTRIBUTES}
        )
        table = datasets.Dataset.from_dict(rows, features=features)
        table.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def test_the_hugging_face_mirror_is_written_in_the_official_layout(tmp_path, monkeypatch):
    _write_mirror(tmp_path / "mirror", {"train": 6, "valid": 3, "test": 3})
    monkeypatch.setattr(
        celeba.layout, "OFFICIAL_COUNTS", {"train": 6, "valid": 3, "test": 3, "all": 12}
    )
    folder = celeba.download_celeba_mirror(tmp_path / "root", source=str(tmp_path / "mirror"))
    assert folder == tmp_path / "root" / "celeba"
    assert len(list((folder / "img_align_celeba").glob("*.jpg"))) == 12
    data = celeba.load_celeba(tmp_path / "root", image_size=32)
    assert (len(data.train), len(data.valid), len(data.test)) == (6, 3, 3)
    assert list(celeba.read_attributes(folder).columns) == list(celeba.ATTRIBUTES)


def test_a_mirror_whose_splits_are_not_the_official_partition_is_refused(tmp_path, monkeypatch):
    _write_mirror(tmp_path / "mirror", {"train": 5, "valid": 3, "test": 3})
    monkeypatch.setattr(
        celeba.layout, "OFFICIAL_COUNTS", {"train": 6, "valid": 3, "test": 3, "all": 12}
    )
    with pytest.raises(celeba.DataUnavailableError, match="official partition has 6 / 3 / 3"):
        celeba.download_celeba_mirror(tmp_path / "root", source=str(tmp_path / "mirror"))
    assert not (tmp_path / "root" / "celeba").exists()


def test_the_mirror_route_without_the_datasets_package_says_how_to_install_it(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails
    with pytest.raises(celeba.DataUnavailableError, match=r"pip install 'pgd-book\[mirror\]'"):
        celeba.download_celeba_mirror(tmp_path)


def test_a_failed_drive_download_falls_back_to_the_mirror(tmp_path, monkeypatch):
    calls = []

    def drive(root):
        calls.append("drive")
        raise DownloadError("quota")

    def mirror(root):
        calls.append("mirror")
        return write_celeba_layout(tmp_path / "celeba", n=6)[0]

    monkeypatch.setattr(celeba.acquire, "download_celeba", drive)
    monkeypatch.setattr(celeba.acquire, "download_celeba_mirror", mirror)
    assert celeba.prepare_celeba(tmp_path / "empty", download=True) == tmp_path / "celeba"
    assert calls == ["drive", "mirror"]
    with pytest.raises(DownloadError, match="quota"):
        celeba.prepare_celeba(tmp_path / "empty", download="drive")


@pytest.mark.parametrize("kaggle", [False, True])
@pytest.mark.parametrize("row", [0, 4])  # the first row, and one further down
def test_an_attribute_row_with_a_missing_value_is_named_by_its_line(tmp_path, kaggle, row):
    folder, _ = write_celeba_layout(tmp_path / "celeba", n=12, kaggle=kaggle)
    path = folder / ("list_attr_celeba.csv" if kaggle else "list_attr_celeba.txt")
    lines = path.read_text().splitlines()
    header = 1 if kaggle else 2
    cut = lines[header + row].rsplit("," if kaggle else " ", 1)[0]  # drop the last value
    lines[header + row] = cut
    path.write_text("\n".join(lines) + "\n")
    name = cut.split("," if kaggle else " ")[0]
    with pytest.raises(
        celeba.DataUnavailableError, match=rf"line {header + row + 1} \({name}\): 39"
    ):
        celeba.read_attributes(folder)


def test_a_test_jpeg_cut_off_mid_file_is_refused_before_training_by_the_default_check(
    tmp_path, monkeypatch
):
    """A full-size folder (not decoded in memory): the quick check finds the missing end marker
    of a test image whose header is intact, and names it, before any training."""
    _folder, rows = write_celeba_layout(tmp_path / "celeba", n=12)
    test_name = sorted(name for name, (part, *_rest) in rows.items() if part == 2)[-1]
    victim = tmp_path / "celeba" / "img_align_celeba" / test_name
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.7)])
    with Image.open(victim) as image:
        image.verify()  # the header alone does not show it
    monkeypatch.setattr(images, "IMAGE_CACHE_BYTES", 0)  # as for the full release
    with pytest.raises(CorruptImageError, match=rf"{test_name}.*end marker is missing"):
        celeba.load_celeba(tmp_path, image_size=32)
