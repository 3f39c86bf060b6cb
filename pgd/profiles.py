"""Run profiles: how long every experiment trains, chosen once for a whole session.

``smoke`` exists for continuous integration (seconds, meaningless numbers); ``quick`` fits a lab
session on a laptop CPU; ``full`` is the schedule of the paper's official code (100 epochs per
training stage). The profile is read from the environment variable ``PGD_PROFILE`` (default
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
    """

    name: str
    epochs: int
    max_train: int | None
    max_eval: int | None
    seeds: tuple[int, ...]


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", epochs=2, max_train=1200, max_eval=400, seeds=(0,)),
    "quick": Profile("quick", epochs=20, max_train=None, max_eval=None, seeds=(0, 1, 2)),
    "full": Profile("full", epochs=100, max_train=None, max_eval=None, seeds=(0, 1, 2)),
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
