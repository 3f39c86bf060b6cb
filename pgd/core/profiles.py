"""Run profiles: how long every experiment trains, chosen once for a whole session.

``smoke`` exists for continuous integration (seconds, meaningless numbers, a few hundred images).
``quick`` fits a lab session and keeps every image (capping the data would change the number of
bias-conflicting samples, the very quantity the book is about): it trains fewer epochs instead,
bounded by work, about 160,000 training images per stage and at most 20 epochs, so that full
MNIST's 54,000 training digits get 3 epochs and the offline 3,600-digit subset gets 20.
``benchmarks/results/profile_agreement_cuda.csv`` measures how close its comparisons come to the
full profile's (the instructors' page shows the table). ``full`` is the schedule of the paper's
official code (100 epochs per training stage). A dataset whose epochs cost far more declares its
own epochs per profile in its spec (``DatasetSpec.profile_epochs``: ResNet-18 on CelebA trains
10 under full, on BFFHQ 30; chapters 4 and 5 estimate the time from measured throughput). The
profile is read from the environment variable ``PGD_PROFILE`` (default ``quick``) and can be
overridden in code by passing a name or a :class:`Profile`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PROFILE_ENV = "PGD_PROFILE"


@dataclass(frozen=True)
class Profile:
    """How much work one experiment does.

    Attributes:
        name: ``smoke``, ``quick`` or ``full``.
        epochs: epochs of every training stage (vanilla; PGD's biased and debiased models
            each); with ``work``, the most a stage trains.
        max_train: keep at most this many training samples (``None``: all of them).
        max_eval: keep at most this many validation and test samples each (``None``: all).
        seeds: the seeds a chapter averages over.
        work: training images per stage (``None``: no bound): a dataset without epochs of its
            own trains ``round(work / training images)`` epochs, at least 1 and at most
            ``epochs``.
    """

    name: str
    epochs: int
    max_train: int | None
    max_eval: int | None
    seeds: tuple[int, ...]
    work: int | None = None

    def epochs_for(self, train_size: int | None = None, own: int | None = None) -> int:
        """Epochs per training stage with ``train_size`` training samples (``None``: the most
        the profile trains, as if the data were small); ``own``: the dataset's own epochs under
        this profile (``DatasetSpec.profile_epochs``), which replace the profile's."""
        if own is not None:
            return own
        if self.work is None or train_size is None:
            return self.epochs
        return max(1, min(self.epochs, round(self.work / max(train_size, 1))))

    def describe(self, dataset_epochs: Mapping[str, int] | None = None) -> str:
        """One line: what this profile trains, for setup cells and help texts;
        ``dataset_epochs``: the datasets with their own epochs under it, ``{name: epochs}``."""
        own = ", ".join(f"{d} {e}" for d, e in (dataset_epochs or {}).items())
        own = f" ({own})" if own else ""
        if self.work is None:
            epochs = f"{self.epochs} epochs per training stage{own}"
        else:
            epochs = (
                f"at most {self.epochs} epochs per training stage{own}, fewer on more data: about "
                f"{self.work:,} training images per stage, every image kept"
            )
        limits = f"; {self.cap()} images" if self.cap() else ""
        return f"profile {self.name!r}: {epochs}{limits}"

    def cap(self) -> str | None:
        """How many images of each split the profile keeps, in words (None: every image)."""
        if not self.max_train:
            return None
        return f"at most {self.max_train:,} training and {self.max_eval:,} validation and test"


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", epochs=2, max_train=1200, max_eval=400, seeds=(0,)),
    "quick": Profile(
        "quick",
        epochs=20,
        max_train=None,  # every image: a cap would cut the bias-conflicting samples
        max_eval=None,
        seeds=(0, 1, 2),
        work=160_000,  # full MNIST: 3 epochs; the offline subset: 20
    ),
    "full": Profile(
        "full",
        epochs=100,
        max_train=None,
        max_eval=None,
        seeds=(0, 1, 2),
    ),
}


def get_profile(profile: str | Profile | None = None) -> Profile:
    """Return the profile named ``profile``, or the one named by ``$PGD_PROFILE`` (default quick).

    Raises:
        ValueError: the name is not one of :data:`PROFILES`.
    """
    if isinstance(profile, Profile):
        return profile
    name = profile if profile is not None else os.environ.get(PROFILE_ENV, "quick")
    name = name.strip().lower()
    if name not in PROFILES:
        source = "" if profile is not None else f" (from ${PROFILE_ENV})"
        raise ValueError(f"unknown profile {name!r}{source}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
