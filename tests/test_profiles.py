from __future__ import annotations

import pytest

from pgd.core.profiles import PROFILES, Profile, get_profile


def test_profile_comes_from_the_environment_and_defaults_to_quick(monkeypatch):
    assert get_profile().name == "quick"
    monkeypatch.setenv("PGD_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile("full").name == "full"  # code overrides the environment


def test_full_profile_is_the_papers_100_epoch_schedule():
    assert PROFILES["full"].epochs == 100 and PROFILES["full"].max_train is None
    assert PROFILES["smoke"].epochs < PROFILES["quick"].epochs < PROFILES["full"].epochs


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    with pytest.raises(ValueError, match="smoke, quick, full"):
        get_profile("fast")
    monkeypatch.setenv("PGD_PROFILE", "turbo")
    with pytest.raises(ValueError, match=r"PGD_PROFILE"):
        get_profile()


def test_a_profile_object_passes_through():
    custom = Profile("custom", epochs=3, max_train=10, max_eval=10, seeds=(0,))
    assert get_profile(custom) is custom


def test_quick_is_bounded_by_work_and_leaves_the_offline_subset_whole(cmnist):
    """quick caps the data, so that full MNIST costs what the 3,600-digit subset costs; the
    subset itself (and with it every quick run on it) is unchanged."""
    quick = PROFILES["quick"]
    assert quick.max_train == 4000 and quick.max_eval == 2000
    capped = cmnist.limit(quick.max_train, quick.max_eval)
    assert len(capped.train) == len(cmnist.train) == 3600
    assert capped.train is cmnist.train and len(capped.test) == len(cmnist.test)
    assert PROFILES["full"].max_train is None and PROFILES["full"].max_eval is None
