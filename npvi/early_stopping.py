r"""Early stopping for :func:`npvi.fit`: stop when a monitored score has stopped improving.

Keras' ``EarlyStopping`` callback, as a small immutable rule. After each epoch whose
score it monitors (every epoch for ``"loss"``; the validation epochs for
``"val_log_likelihood"``), the rule compares the score with the best so far: it
improves when it is better by more than ``min_delta`` (higher for the held-out
log-likelihood, lower for the training loss). Training stops at the first check that
finds ``patience`` or more epochs since the best one, and with
``restore_best_weights=True`` (the default here; Keras' default is False) the result
holds the state of the best epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from npvi.evaluation import VAL_LOG_LIKELIHOOD

#: What :class:`EarlyStopping` can monitor, and whether higher or lower is better.
MONITORS = {VAL_LOG_LIKELIHOOD: "max", "loss": "min"}


class Progress(NamedTuple):
    """The best score so far and its epoch (None before the first check)."""

    best: float | None = None
    best_epoch: int | None = None


@dataclass(frozen=True)
class EarlyStopping:
    r"""Stop :func:`npvi.fit` when ``monitor`` has not improved for ``patience`` epochs.

    * ``monitor``: ``"val_log_likelihood"`` (the default; the mean held-out log predictive
      density, which needs ``validation_data=``; higher is better) or ``"loss"`` (the
      epoch's mean training loss, the negative ELBO estimate; lower is better);
    * ``patience``: the epochs without improvement after which training stops;
    * ``min_delta``: the least change that counts as an improvement;
    * ``restore_best_weights``: return the state (params and optimizer state) of the best
      epoch, not of the last; True by default, unlike Keras;
    * ``start_from_epoch``: epochs before which the score is not watched (a warm-up,
      e.g. while a KL schedule anneals).

    A check at epoch :math:`t` with score :math:`v` improves on the best :math:`b` when
    :math:`v > b + \delta` (``"max"``) or :math:`v < b - \delta` (``"min"``); training
    stops at the first check with :math:`t - t_\text{best} \ge` ``patience``. A NaN score
    never improves.

    >>> rule = EarlyStopping(patience=2, monitor="loss")
    >>> progress = Progress()
    >>> for epoch, loss in enumerate([5.0, 4.0, 4.5, 4.2, 3.0], start=1):
    ...     progress, improved = rule.update(progress, epoch, loss)
    ...     if rule.should_stop(progress, epoch):
    ...         break
    >>> epoch, progress.best_epoch, progress.best
    (4, 2, 4.0)
    """

    patience: int = 10
    monitor: str = VAL_LOG_LIKELIHOOD
    min_delta: float = 0.0
    restore_best_weights: bool = True
    start_from_epoch: int = 0

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            hint = ""
            if self.monitor in ("val_loss", "val_elbo"):
                hint = f"; npvi's held-out score is {VAL_LOG_LIKELIHOOD!r} (higher is better)"
            raise ValueError(f"EarlyStopping: monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}{hint}")
        for name in ("patience", "start_from_epoch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "patience" else 0):
                least = "a positive" if name == "patience" else "a non-negative"
                raise ValueError(f"EarlyStopping: {name} must be {least} int, got {value!r}")
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, int | float) or not (
            math.isfinite(self.min_delta) and self.min_delta >= 0
        ):
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got {self.min_delta!r}")

    @property
    def mode(self) -> str:
        """``"max"`` or ``"min"``: which way is better for :attr:`monitor`."""
        return MONITORS[self.monitor]

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` is better than ``best`` by more than ``min_delta``."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value > best + self.min_delta if self.mode == "max" else value < best - self.min_delta

    def update(self, progress: Progress, epoch: int, value: float) -> tuple[Progress, bool]:
        """The progress after a check of ``value`` at ``epoch``, and whether it is a new best."""
        if epoch <= self.start_from_epoch or not self.improves(value, progress.best):
            return progress, False
        return Progress(float(value), int(epoch)), True

    def should_stop(self, progress: Progress, epoch: int) -> bool:
        """Whether training stops after ``epoch``: ``patience`` epochs or more since the best one."""
        if epoch <= self.start_from_epoch:
            return False
        since = epoch - (self.start_from_epoch if progress.best_epoch is None else progress.best_epoch)
        return since >= self.patience


def progress_from_json(value: Any) -> Progress:
    """:class:`Progress` from its JSON form (a checkpoint's)."""
    if value is None:
        return Progress()
    return Progress(value.get("best"), value.get("best_epoch"))
