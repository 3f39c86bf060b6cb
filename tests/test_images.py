"""Image-file datasets: decoding errors, safe extraction, download diagnosis, stand-in folders."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from layouts import render_stand_in
from PIL import Image

from pgd.datasets import bffhq, celeba
from pgd.datasets.archives import (
    DownloadError,
    UnsafeArchiveError,
    diagnose_download,
    safe_extract,
)
from pgd.datasets.images import CorruptImageError, ImageFileDataset, read_image, verify_files
from pgd.datasets.standins import STAND_IN_MARKER, proportional_counts, stand_in_folder


def _png(path, size=(20, 16)):
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)
    return path


def test_read_image_names_a_truncated_file(tmp_path):
    path = _png(tmp_path / "face.png", (64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match=r"face\.png"):
        read_image(path)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_the_quick_check_finds_a_file_cut_off_after_its_header(tmp_path, suffix):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole, cut, trailer = (tmp_path / f"{n}.{suffix}" for n in ("whole", "cut", "trailer"))
    Image.fromarray(pixels).save(whole)
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.8)])
    trailer.write_bytes(data + b"\x00" * 100)  # bytes after the end marker are allowed
    verify_files([str(whole), str(trailer)])
    with pytest.raises(CorruptImageError, match=r"cut\.(jpg|png)"):  # PNG: PIL sees it too
        verify_files([str(whole), str(cut)])


def test_read_image_names_a_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "000001.jpg"
    path.write_text("<html>quota</html>")
    with pytest.raises(CorruptImageError, match=r"000001\.jpg"):
        read_image(path)


def test_dataset_items_head_and_evaluation_view(tmp_path):
    files = [str(_png(tmp_path / f"{i}.png", (40, 40))) for i in range(5)]
    labels, bias = torch.tensor([0, 1, 0, 1, 0]), torch.tensor([0, 1, 1, 1, 0])
    train_tf = bffhq.IMAGES.transforms(32, train=True)
    eval_tf = bffhq.IMAGES.transforms(32, train=False)
    data = ImageFileDataset(files, labels, bias, "train", train_tf, eval_tf)
    image, label, b, index = data[2]
    assert image.shape == (3, 32, 32) and int(label) == 0 and int(b) == 1 and index == 2
    assert data.is_conflicting.tolist() == [False, False, True, False, False]
    head = data.head(3)
    assert len(head) == 3 and head.files == files[:3]
    assert data.without_augmentation().transform is eval_tf


def test_celeba_transform_crops_the_aligned_face_to_a_square(tmp_path):
    image = Image.new("RGB", (178, 218))
    assert celeba.IMAGES.transforms(64, train=False)(image).shape == (3, 64, 64)


@pytest.mark.parametrize("train", [False, True])
def test_each_dataset_s_preprocessing_is_its_baseline_s_torchvision_pipeline(train):
    """CelebA as LfF and JTT prepare it, BFFHQ as DFA does: the same random draws give the same
    tensors as the plain torchvision composition."""
    import torchvision.transforms as T

    norm = [T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    flip = [T.RandomHorizontalFlip()] if train else []
    expected = {
        celeba.IMAGES: T.Compose([T.CenterCrop(178), T.Resize(48), *flip, *norm]),
        bffhq.IMAGES: T.Compose(
            [T.Resize((48, 48)), *([T.RandomCrop(48, padding=1)] if train else []), *flip, *norm]
        ),
    }
    pixels = torch.randint(0, 256, (218, 178, 3), generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    for pipeline, plain in expected.items():
        for seed in range(4):
            torch.manual_seed(seed)
            ours = pipeline.transforms(48, train=train)(image)
            torch.manual_seed(seed)
            assert torch.equal(ours, plain(image)), (pipeline.name, seed)


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_safe_extract_unpacks_a_normal_zip(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"bffhq/valid/1_0_0.png": b"x", "bffhq/readme.txt": b"y"})
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "bffhq" / "valid" / "1_0_0.png").read_bytes() == b"x"
    assert not list(tmp_path.glob(".out.extracting"))


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_safe_extract_refuses_members_that_escape(tmp_path, name):
    archive = _zip(tmp_path / "bad.zip", {"fine.txt": b"1", name: b"2"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # nothing half-extracted


def test_safe_extract_refuses_links_in_a_tar(tmp_path):
    archive = tmp_path / "bffhq.tar"
    with tarfile.open(archive, "w") as t:
        info = tarfile.TarInfo("bffhq/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(archive, tmp_path / "out")


def test_safe_extract_unpacks_a_tar_gz(tmp_path):
    archive = tmp_path / "bffhq.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo("bffhq/test/3_1_0.png")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "bffhq" / "test" / "3_1_0.png").read_bytes() == b"abc"


def test_diagnose_download_recognises_the_google_drive_quota_page(tmp_path):
    page = tmp_path / "img_align_celeba.zip"
    page.write_text(
        "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
        "<body>Too many users have viewed or downloaded this file recently.</body></html>"
    )
    message = diagnose_download(page)
    assert "quota" in message and "Kaggle" in message
    with pytest.raises(DownloadError, match="quota"):
        safe_extract(page, tmp_path / "out")


def test_diagnose_download_recognises_a_truncated_zip(tmp_path):
    full = _zip(
        tmp_path / "full.zip", {f"img_align_celeba/{i:06d}.jpg": b"x" * 5000 for i in range(20)}
    )
    cut = tmp_path / "img_align_celeba.zip"
    cut.write_bytes(full.read_bytes()[:30000])
    assert "not a complete zip" in diagnose_download(cut)
    assert diagnose_download(full) is None
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    assert "empty" in diagnose_download(empty)
    assert "expected 7" in diagnose_download(full, expected_size=7)


def test_the_test_folders_draw_the_bias_as_colour_and_the_target_as_shape():
    rng = np.random.default_rng(0)
    warm = np.asarray(render_stand_in(0, 0, 64, 64, rng), dtype=float)
    cool = np.asarray(render_stand_in(0, 1, 64, 64, rng), dtype=float)
    assert warm[0, 0, 0] > warm[0, 0, 2] and cool[0, 0, 2] > cool[0, 0, 0]
    disc = np.asarray(render_stand_in(0, 0, 64, 64, np.random.default_rng(1)), dtype=float)
    square = np.asarray(render_stand_in(1, 0, 64, 64, np.random.default_rng(1)), dtype=float)
    assert np.abs(disc - square).mean() > 1  # same colour draw, different shape


def test_stand_in_folder_is_written_once_and_never_over_real_files(tmp_path):
    calls = []

    def write(out):
        calls.append(out)
        (out / "a.txt").write_text("1")

    folder = stand_in_folder(tmp_path / "s", {"dataset": "x", "n": 1}, write)
    assert (folder / STAND_IN_MARKER).is_file() and (folder / "a.txt").is_file()
    stand_in_folder(tmp_path / "s", {"dataset": "x", "n": 1}, write)
    assert len(calls) == 1
    stand_in_folder(tmp_path / "s", {"dataset": "x", "n": 2}, write)
    assert len(calls) == 2
    real = tmp_path / "real"
    real.mkdir()
    (real / "000001.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a stand-in"):
        stand_in_folder(real, {"dataset": "x"}, write)


_WRITER = """
import sys, time
from pathlib import Path
from pgd.datasets.standins import stand_in_folder

def write(out):
    with open(sys.argv[2], "a") as log:
        log.write("wrote\\n")
    time.sleep(1.0)  # a slow generation: the other process arrives while this one writes
    (out / "a.txt").write_text("1")

print((stand_in_folder(Path(sys.argv[1]), {"dataset": "x"}, write) / "a.txt").read_text())
"""


def test_processes_asking_for_the_same_stand_in_at_once_write_it_once(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    log = tmp_path / "writes.log"
    command = [sys.executable, str(script), str(tmp_path / "s"), str(log)]
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], [err for _, err in results]
    assert [out.strip() for out, _ in results] == ["1", "1", "1"]
    assert log.read_text().count("wrote") == 1
    assert (tmp_path / "s" / STAND_IN_MARKER).is_file()


def test_proportional_counts_keep_the_shares_and_give_exact_ties_to_the_first_group():
    training = {(0, 0): 2_640, (0, 1): 2_460, (1, 0): 849, (1, 1): 51}
    expected = {(0, 0): 440, (0, 1): 410, (1, 0): 142, (1, 1): 8}
    assert proportional_counts(training, 1_000) == expected
    # 1498 1/3, 48 1/3, 193 1/3: three equal remainders, the one sample left goes to the first
    assert proportional_counts({"a": 62, "b": 2, "c": 8}, 1_740) == {"a": 1_499, "b": 48, "c": 193}
    assert sum(proportional_counts({"a": 3, "b": 3, "c": 3}, 10).values()) == 10
    with pytest.raises(ValueError, match="counts >= 0"):
        proportional_counts({"a": 5, "b": -1}, 10)
