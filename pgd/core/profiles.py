"""Run profiles: how long every experiment trains, chosen once for a whole session.

``smoke`` exists for continuous integration (seconds, meaningless numbers); ``quick`` fits a lab
session on a laptop CPU, bounded by work rather than by the data's size: 20 epochs on at most
4,000 training and 2,000 validation and test images (every dataset's order is random, so the
first images keep its groups), so that a chapter takes as long on the full MNIST as on a small
subset; ``full`` is the schedule of the paper's official code (100 epochs per
training stage) on Colored MNIST, with shorter schedules for ResNet-18 on CelebA (10 epochs) and
BFFHQ (30 epochs), whose epochs cost far more (chapters 4 and 5 estimate the time from measured
throughput). The profile is read from the environment variable ``PGD_PROFILE`` (default
``quick``) and can be overridden in code by passing a name or a :class:`Profile`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROFILE_ENV = "PGD_PROFILE"


@dataclass(frozen=True)
class Profile:
    """How much work one experiment does.

    Attributes:
        name: ``smoke``, ``quick`` or ``full``.
        epochs: epochs of every training stage (vanilla; PGD's biased and debiased models each).
        max_train: keep at most this many training samples (``None``: all of them).
        max_eval: keep at most this many validation and test samples each (``None``: all).
        seeds: the seeds a chapter averages over.
        dataset_epochs: ``(dataset, epochs)`` pairs that replace ``epochs`` for datasets whose
            epochs cost far more (ResNet-18 on 224 x 224 CelebA and BFFHQ images).
    """

    name: str
    epochs: int
    max_train: int | None
    max_eval: int | None
    seeds: tuple[int, ...]
    dataset_epochs: tuple[tuple[str, int], ...] = ()

    def epochs_for(self, dataset: str) -> int:
        """Epochs per training stage on ``dataset``."""
        return dict(self.dataset_epochs).get(dataset, self.epochs)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", epochs=2, max_train=1200, max_eval=400, seeds=(0,)),
    "quick": Profile(
        "quick",
        epochs=20,
        max_train=4000,  # bounded by work: chapters 1 to 3 in minutes on full-size data
        max_eval=2000,
        seeds=(0, 1, 2),
        dataset_epochs=(("celeba", 2), ("bffhq", 5)),
    ),
    "full": Profile(
        "full",
        epochs=100,
        max_train=None,
        max_eval=None,
        seeds=(0, 1, 2),
        dataset_epochs=(("celeba", 10), ("bffhq", 30)),
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
