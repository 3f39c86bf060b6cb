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


def test_quick_keeps_every_image_and_bounds_work_by_fewer_epochs():
    """quick never cuts the data (that would cut the bias-conflicting samples): it trains fewer
    epochs on more images, so full MNIST's 54,000 training digits cost about what the offline
    3,600-digit subset costs, and the subset keeps its 20 epochs."""
    quick = PROFILES["quick"]
    assert quick.max_train is None and quick.max_eval is None
    assert quick.epochs_for(54_000) == 3
    assert quick.epochs_for(3_600) == 20  # at most `epochs`
    assert quick.epochs_for(10**9) == 1  # at least one
    assert quick.epochs_for(10**9, own=5) == 5  # a dataset's own epochs are not scaled
    assert quick.epochs_for() == 20  # size unknown: the most it trains
    assert PROFILES["full"].epochs_for(54_000) == 100  # full is not bounded by work


def test_a_run_trains_the_epochs_of_its_data_size():
    from pgd.experiments.config import ExperimentConfig

    assert ExperimentConfig(profile="quick").stage_epochs(54_000) == 3
    assert ExperimentConfig(profile="quick").stage_epochs(3_600) == 20
    assert ExperimentConfig(profile="quick", epochs=7).stage_epochs(54_000) == 7


def test_profiles_describe_what_they_train():
    quick = PROFILES["quick"].describe()
    assert quick.startswith("profile 'quick': at most 20 epochs per training stage")
    assert "about 160,000 training images per stage, every image kept" in quick
    assert "at most 1,200 training" in PROFILES["smoke"].describe()
    # the full profile's line, with the registered datasets' own epochs, is the one its
    # committed chapters printed
    assert PROFILES["full"].describe({"celeba": 10, "bffhq": 30}) == (
        "profile 'full': 100 epochs per training stage (celeba 10, bffhq 30)"
    )


def test_a_chapter_can_say_what_the_profile_does_to_its_run(cmnist):
    from pgd.experiments.config import ExperimentConfig
    from pgd.experiments.pipeline import profile_summary

    quick = profile_summary(ExperimentConfig(profile="quick"), cmnist)
    assert quick == (
        "profile 'quick' here: 3,600 training, 400 validation, 1,000 test images (every image); "
        "20 epochs per training stage"
    )
    smoke_data = cmnist.limit(PROFILES["smoke"].max_train, PROFILES["smoke"].max_eval)
    smoke = profile_summary(ExperimentConfig(profile="smoke", epochs=1), smoke_data)
    assert smoke == (
        "profile 'smoke' here: 1,200 training, 400 validation, 400 test images (at most 1,200 "
        "training and 400 validation and test); 1 epoch per training stage (this chapter's "
        "setting)"
    )
