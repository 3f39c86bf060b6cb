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
