"""A training stage's checkpoint: written atomically after every epoch, read with
``weights_only=True``, and used to resume only when it was written for the same run (its
``identity``), with the global random state that makes a resumed run end as an uninterrupted one."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.runtime import display_path
from ..core.storage import CorruptFileError, atomic_save, safe_load


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (loaded with ``weights_only=True``), or None if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return safe_load(path)


def global_rng_state() -> dict[str, Any]:
    """torch's global random state (CPU, and every GPU's where there are GPUs)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StageCheckpoint:
    """The checkpoint file of one training stage, for the run ``identity`` describes."""

    def __init__(self, path: str | os.PathLike, identity: dict[str, Any]) -> None:
        self.path, self.identity = path, identity

    def load(self) -> dict[str, Any] | None:
        """The saved state to resume from, or None: no file yet, or one written for another
        configuration or results version (said in a warning; the file will be overwritten).

        Raises:
            CorruptFileError: the file cannot be read; says how to restart the stage.
        """
        try:
            state = load_checkpoint(self.path)
        except CorruptFileError as error:
            raise CorruptFileError(
                f"{error}. Delete {self.path} to restart this stage, or run without --resume."
            ) from error
        if state is not None and state.get("identity") != self.identity:
            warnings.warn(
                f"checkpoint {display_path(self.path)} was written for another configuration or "
                "results version; starting this stage from scratch (it will be overwritten).",
                stacklevel=3,
            )
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` with this run's identity, atomically."""
        atomic_save({"identity": self.identity, **state}, self.path)


def training_seconds(run_folder: str | os.PathLike) -> float | None:
    """The training time of a run: the sum of the per-epoch seconds its checkpoints' histories
    hold, over every stage (``*.pt``); None where the folder holds no finished checkpoint. Unlike a
    wall-clock time of the invocation that read the run back, it counts a run once however often
    it was resumed."""
    total, found = 0.0, False
    for path in sorted(Path(run_folder).glob("*.pt")):
        checkpoint = load_checkpoint(path)
        if not checkpoint or not checkpoint.get("finished"):
            return None
        total += sum(epoch.get("seconds", 0.0) for epoch in checkpoint.get("history", []))
        found = True
    return total if found else None
