"""Model selection on the validation split: the rules (which epoch's weights a stage keeps) and a
tracker that follows, epoch by epoch, the weights every rule would keep, saved with the checkpoint
so that a resumed stage chooses exactly as an uninterrupted one."""

from __future__ import annotations

from typing import Any

from torch import Tensor

#: Model-selection rules: which epoch's weights a stage keeps. ``valid_group_accuracy`` (the
#: mean accuracy over the validation split's (label, bias) groups) reads the validation split's
#: bias labels: an oracle rule, like the methods that read the training split's.
SELECTIONS = ("valid_loss", "valid_accuracy", "last", "valid_group_accuracy")
ORACLE_SELECTIONS = ("valid_group_accuracy",)


def is_better(selection: str, row: dict[str, float], best: float | None) -> bool:
    """Whether the epoch whose validation results are ``row`` replaces the one ``selection`` kept
    so far (whose value was ``best``; None: none kept yet)."""
    if selection == "last" or best is None:
        return True
    if selection == "valid_loss":
        return row["valid_loss"] <= best  # ties go to the later epoch, as in the official code
    return row[selection] >= best  # accuracies: ties go to the later epoch too


def selection_value(selection: str, row: dict[str, float]) -> float:
    """The number ``selection`` compares epochs by (the validation loss for ``last`` too)."""
    return row["valid_loss"] if selection in ("valid_loss", "last") else row[selection]


class SelectionTracker:
    """The weights the stage's own rule keeps (``best_*``) and those every rule of
    :data:`SELECTIONS` would keep (``tracked``: rule -> ``{"value", "epoch", "state"}``). Weights
    are shared, never copied, between rules that chose the same epoch."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.best_value: float | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.best_epoch = -1
        # A rule absent from a resumed checkpoint stays unavailable rather than being guessed.
        self.tracked: dict[str, dict[str, Any]] = {r: {"value": None} for r in SELECTIONS}

    def update(self, row: dict[str, float], epoch: int, state: dict[str, Tensor]) -> None:
        """Offer epoch ``epoch`` (validation results ``row``, weights ``state``: a copy that is
        never modified) to every rule."""
        if is_better(self.rule, row, self.best_value):
            self.best_value = selection_value(self.rule, row)
            self.best_state, self.best_epoch = state, epoch
        for rule, kept in self.tracked.items():
            if is_better(rule, row, kept["value"]):
                kept.update(value=selection_value(rule, row), epoch=epoch, state=state)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's selection entries (states shared with ``best_state`` stored once)."""
        return {
            "best_value": self.best_value,
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "tracked": self.tracked,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_state = state["best_value"], state["best_state"]
        self.best_epoch, self.tracked = state["best_epoch"], state["tracked"]

    def selected(self) -> dict[str, int]:
        """Rule -> the epoch it chose (0-based), for every rule that can be applied exactly."""
        return {rule: kept["epoch"] for rule, kept in self.tracked.items() if "state" in kept}

    def selected_states(self) -> dict[str, dict[str, Tensor]]:
        """Rule -> the weights of the epoch it chose."""
        return {rule: kept["state"] for rule, kept in self.tracked.items() if "state" in kept}
