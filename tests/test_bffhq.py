"""BFFHQ loading on folders written in the distributed layout, archives, and its errors."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from layouts import write_bffhq_layout

import pgd.datasets.bffhq as bffhq
from pgd.datasets.base import DataUnavailableError


def test_train_is_align_plus_conflict_with_labels_from_file_names(tmp_path):
    folder = write_bffhq_layout(tmp_path, per_group=2)
    with pytest.warns(UserWarning, match="distributed dataset has"):
        data = bffhq.load_bffhq(tmp_path, image_size=32)
    assert data.is_real and data.folder == folder
    assert len(data.train) == 2 * (6 + 2) and int(data.train.is_conflicting.sum()) == 4
    for split in (data.train, data.valid, data.test):
        for file, t, b in zip(split.files, split.labels, split.bias_labels, strict=True):
            assert bffhq.parse_labels(file) == (int(t), int(b))
    assert len(data.test) == 8 and int(data.test.is_conflicting.sum()) == 4  # the whole folder
    assert data.class_names == ("age 0", "age 1")  # no guess at which is young
    image, _label, _bias, index = data.valid[1]
    assert image.shape == (3, 32, 32) and index == 1


def test_training_order_is_shuffled_once_so_prefixes_keep_conflicting_samples(tmp_path):
    write_bffhq_layout(tmp_path, per_group=4)
    with pytest.warns(UserWarning):
        first = bffhq.load_bffhq(tmp_path, image_size=32)
    with pytest.warns(UserWarning):
        again = bffhq.load_bffhq(tmp_path, image_size=32)
    assert first.train.files == again.train.files
    assert sorted(first.train.files) != first.train.files


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_in_the_data_folder_is_extracted(tmp_path, kind):
    source = write_bffhq_layout(tmp_path / "src", per_group=1)
    root = tmp_path / "root"
    root.mkdir()
    if kind == "zip":
        with zipfile.ZipFile(root / "bffhq.zip", "w") as z:
            for path in sorted(source.rglob("*")):
                z.write(path, path.relative_to(source.parent).as_posix())
    else:
        with tarfile.open(root / "bffhq.tar.gz", "w:gz") as t:
            t.add(source, arcname="bffhq")
    with pytest.warns(UserWarning):
        data = bffhq.load_bffhq(root, image_size=32)
    assert data.folder == root / "bffhq" and len(data.train) == 8


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DataUnavailableError, match="Learning-Debiased-Disentangled"):
        bffhq.load_bffhq(tmp_path)


def test_partial_folders_say_what_is_missing(tmp_path):
    folder = write_bffhq_layout(tmp_path, per_group=1)
    shutil.rmtree(folder / "0.5pct" / "conflict")
    with pytest.raises(DataUnavailableError, match=r"incomplete: .*conflict is missing"):
        bffhq.load_bffhq(tmp_path)
    folder = write_bffhq_layout(tmp_path / "b", per_group=1)
    shutil.rmtree(folder / "test")
    with pytest.raises(DataUnavailableError, match=r"incomplete: .*test is missing"):
        bffhq.load_bffhq(tmp_path / "b")
    for png in (folder / "0.5pct" / "align" / "1").iterdir():
        png.unlink()
    with pytest.raises(DataUnavailableError, match="holds no images"):
        bffhq.load_bffhq(tmp_path / "b")


def test_other_ratio_folder_is_named_when_absent(tmp_path):
    write_bffhq_layout(tmp_path, per_group=1)
    with pytest.raises(DataUnavailableError, match=r"no 2pct folder .*found: 0\.5pct"):
        bffhq.load_bffhq(tmp_path, ratio=0.02)


def test_file_names_and_folders_must_agree(tmp_path):
    folder = write_bffhq_layout(tmp_path, per_group=1)
    wrong = next((folder / "0.5pct" / "align" / "0").iterdir())
    wrong.rename(wrong.with_name("99999_0_1.png"))  # a conflicting name in the align folder
    with pytest.raises(DataUnavailableError, match="not BFFHQ's layout"):
        bffhq.load_bffhq(tmp_path)
    folder = write_bffhq_layout(tmp_path / "b", per_group=1)
    some = next((folder / "valid").iterdir())
    some.rename(some.with_name("face.png"))
    with pytest.raises(ValueError, match=r"<id>_<target>_<bias>\.png"):
        bffhq.load_bffhq(tmp_path / "b")


def test_stand_in_is_written_in_the_real_layout_and_labelled(tmp_path):
    folder = bffhq.write_bffhq_stand_in(
        tmp_path / "bffhq",
        size=32,
        aligned={(0, 0): 8, (1, 1): 8},
        conflicting={"0.5pct": 1, "1pct": 2},
        evaluation={"valid": 1, "test": 2},
        real_valid=6,
    )
    names = {p.relative_to(folder).parts[:3] for p in folder.rglob("*.png")}
    assert ("0.5pct", "conflict", "1") in names and ("0.5pct", "align", "0") in names
    assert ("1pct", "conflict", "0") in names
    assert all(bffhq.parse_labels(p) for p in folder.rglob("*.png"))
    data = bffhq.load_bffhq(tmp_path, image_size=32)  # the ordinary loader finds it
    assert data.source == "stand-in" and "STAND-IN" in data.description
    assert len(data.train) == 18 and len(data.test) == 8
    rarer = bffhq.load_bffhq(tmp_path, ratio=0.01, image_size=32)
    assert len(rarer.train) == 20
    # the 1% folder holds the 0.5% folder's faces (linked) and two more conflicting ones
    assert {Path(f).name for f in data.train.files} < {Path(f).name for f in rarer.train.files}
    assert Path(data.train.files[0]).suffix == ".png"


def _stand_in(folder: Path, real_valid: int) -> Path:
    return bffhq.write_bffhq_stand_in(
        folder,
        size=16,
        aligned={(0, 0): 40, (1, 1): 40},
        conflicting={"0.5pct": 1, "1pct": 2},
        evaluation={"valid": 2, "test": 2},
        real_valid=real_valid,
    )


def _groups(split) -> dict[tuple[int, int], int]:
    pairs = zip(split.labels.tolist(), split.bias_labels.tolist(), strict=True)
    return {g: n for g, n in sorted(Counter(pairs).items())}


def test_stand_in_validation_is_the_training_mix_or_on_request_the_balanced_oracle(tmp_path):
    _stand_in(tmp_path / "bffhq", real_valid=82)
    real = bffhq.load_bffhq(tmp_path, image_size=16, validation="real")
    oracle = bffhq.load_bffhq(tmp_path, image_size=16, validation="oracle")
    # real: the 0.5pct training split's proportions (40 : 40 : 1 : 1) at 82 faces
    assert _groups(real.valid) == {(0, 0): 40, (0, 1): 1, (1, 0): 1, (1, 1): 40}
    assert "validation split in the 0.5pct training proportions" in real.description
    assert _groups(oracle.valid) == dict.fromkeys([(0, 0), (0, 1), (1, 0), (1, 1)], 2)
    assert {Path(f).parent.name for f in oracle.valid.files} == {"valid-oracle"}
    assert "training proportions" not in oracle.description
    # training and test are the same faces, in the same order, whichever validation is read
    assert real.train.files == oracle.train.files and real.test.files == oracle.test.files
    with pytest.raises(ValueError, match="choose one of oracle, real"):
        bffhq.load_bffhq(tmp_path, image_size=16, validation="balanced")


def test_the_real_validation_split_is_drawn_last_so_other_faces_do_not_depend_on_it(tmp_path):
    small, large = _stand_in(tmp_path / "a", real_valid=4), _stand_in(tmp_path / "b", real_valid=82)
    for path in small.rglob("*.png"):
        if path.relative_to(small).parts[0] != "valid":
            assert path.read_bytes() == (large / path.relative_to(small)).read_bytes(), path
    assert len(list((small / "valid").iterdir())) == 4


def test_a_stand_in_written_before_the_oracle_folder_existed_says_how_to_renew_it(tmp_path):
    folder = _stand_in(tmp_path / "bffhq", real_valid=4)
    shutil.rmtree(folder / "valid-oracle")
    with pytest.raises(DataUnavailableError, match="earlier version of pgd wrote it"):
        bffhq.load_bffhq(tmp_path, image_size=16)
    assert len(bffhq.load_bffhq(tmp_path, image_size=16, validation="real").valid) == 4


def test_real_bffhq_reads_its_one_validation_folder_whatever_the_setting(tmp_path):
    write_bffhq_layout(tmp_path, per_group=2)
    with pytest.warns(UserWarning):
        default = bffhq.load_bffhq(tmp_path, image_size=16)
    with pytest.warns(UserWarning):
        real = bffhq.load_bffhq(tmp_path, image_size=16, validation="real")
    assert default.valid.files == real.valid.files
    assert {Path(f).parent.name for f in real.valid.files} == {"valid"}


def test_a_label_outside_zero_and_one_is_refused_naming_the_file(tmp_path):
    folder = write_bffhq_layout(tmp_path, per_group=1)
    victim = next((folder / "test").glob("*.png"))
    stray = victim.with_name(victim.name.rsplit("_", 2)[0] + "_2_0.png")
    victim.rename(stray)
    with pytest.raises(ValueError, match=rf"{stray.name}: BFFHQ's labels are 0 or 1"):
        bffhq.load_bffhq(tmp_path)


def test_only_the_released_file_counts_make_a_full_dataset(tmp_path):
    write_bffhq_layout(tmp_path, per_group=2)
    with pytest.warns(UserWarning, match="distributed dataset has"):
        data = bffhq.load_bffhq(tmp_path, image_size=32)
    assert data.is_real and not data.is_full


def test_a_rarer_ratio_is_derived_from_the_same_faces_by_links(tmp_path):
    folder = write_bffhq_layout(tmp_path, per_group=4, aligned=250, size=8)
    derived = bffhq.derive_rarer_ratio(folder, 0.004)
    assert derived == folder / "0.4pct"
    data = bffhq.load_bffhq(tmp_path, ratio=0.004, image_size=16, verify="off")
    assert len(data.train) == 502 and int(data.train.is_conflicting.sum()) == 2
    one = next((derived / "conflict" / "0").iterdir())
    source = folder / "0.5pct" / "conflict" / "0" / one.name
    assert one.stat().st_ino == source.stat().st_ino  # a link, not a copy
    before = derived.stat().st_ino
    assert bffhq.derive_rarer_ratio(folder, 0.004) == derived
    assert derived.stat().st_ino == before  # reused, not written again


def test_a_rarer_ratio_is_copied_where_the_folder_cannot_hold_links(tmp_path, monkeypatch):
    import os

    folder = write_bffhq_layout(tmp_path, per_group=4, aligned=250, size=8)

    def no_links(source, target):
        raise OSError(95, "Operation not supported")  # as on a mounted Google Drive folder

    monkeypatch.setattr(os, "link", no_links)
    derived = bffhq.derive_rarer_ratio(folder, 0.004)
    one = next((derived / "conflict" / "0").iterdir())
    source = folder / "0.5pct" / "conflict" / "0" / one.name
    assert one.read_bytes() == source.read_bytes() and one.stat().st_ino != source.stat().st_ino
    data = bffhq.load_bffhq(tmp_path, ratio=0.004, image_size=16, verify="off")
    assert int(data.train.is_conflicting.sum()) == 2


def test_a_derived_ratio_must_be_rarer_than_its_source(tmp_path):
    folder = write_bffhq_layout(tmp_path, per_group=2, size=8)
    with pytest.raises(ValueError, match="only make the bias-conflicting images rarer"):
        bffhq.derive_rarer_ratio(folder, 0.01)
    with pytest.raises(ValueError, match="keeps no conflicting image of class 0"):
        bffhq.derive_rarer_ratio(folder, 0.001)


def test_keep_in_memory_false_decodes_per_item_as_for_full_size_data(tmp_path):
    write_bffhq_layout(tmp_path, per_group=2, size=8)
    kept = bffhq.load_bffhq(tmp_path, image_size=16, verify="off")
    streamed = bffhq.load_bffhq(tmp_path, image_size=16, verify="off", keep_in_memory=False)
    assert kept.train.pixels is not None and streamed.train.pixels is None
    assert torch.equal(kept.test[0][0], streamed.test[0][0])  # the same evaluation image
