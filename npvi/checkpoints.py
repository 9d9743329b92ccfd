r"""Periodic checkpoints of a fit, so that a killed run resumes where it stopped, bit for bit.

``npvi.fit(..., checkpoints=npvi.Checkpoints(directory, every=k, keep=n))`` writes, after
every ``k``-th epoch and after the last, one :func:`npvi.save` file
``directory/epoch-000040.npz`` holding the model's npvi layers (where each can be described
in a config), the params that ``fit`` would return had it ended there (the best epoch's,
under early stopping that restores them), the whole :class:`~numpyro.infer.svi.SVIState`
of that epoch (optimizer moments, step count, SVI key) and the run's progress: the epoch,
the loss of every step so far, the history and the early-stopping record. Only the newest ``n`` are kept. With
early stopping that restores the best state, each file also holds the best epoch's state,
so that a resumed run can still return it. Every file is written atomically (a temporary
file, ``fsync``, then ``os.replace``), so a run killed at any moment leaves only whole
files, and loses at most ``k`` epochs.

``fit(..., checkpoints=..., resume=True)`` continues from the newest file: the epochs
after it get the keys they would have had (an epoch's key depends on ``rng_key`` and its
number only), so the resumed run's params, losses and history are those of the run that
was never interrupted. A directory that already holds checkpoints is never written over
by a fresh run: without ``resume=True`` that is a ``ValueError``.

Why not Orbax? Orbax (``orbax-checkpoint``) is JAX's checkpoint library for sharded
states of large models, written asynchronously across hosts. npvi's states are
replicated (data parallelism keeps a full copy on every device), so one process writes
one file; that file must also carry the layer configs and stay readable by
:func:`npvi.load` without extra dependencies, and npvi's own format already does this
atomically and versioned. Orbax would add a dozen dependencies (TensorStore among them)
and about a second of import time for no gain here; restoring needs the target structure
either way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from numpyro.infer.svi import SVIState

from npvi import io
from npvi.early_stopping import Progress, progress_from_json

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.npz$")
#: The name under which a checkpoint holds the best epoch's state (early stopping).
BEST = "best"


class Resumed(NamedTuple):
    """A run read back from a checkpoint: its state and progress after ``epoch``."""

    state: SVIState
    epoch: int
    losses: np.ndarray
    history: dict[str, np.ndarray]
    progress: Progress
    best_state: SVIState | None  # the best epoch's, where the run kept it
    stopped: bool  # early stopping ended the run


class Checkpoints:
    """Where and how often :func:`npvi.fit` checkpoints a run: ``every`` epochs, the newest ``keep`` files.

    >>> import tempfile
    >>> checkpoints = Checkpoints(tempfile.mkdtemp(), every=5, keep=2)
    >>> checkpoints.path(40).name, checkpoints.epochs(), checkpoints.latest()
    ('epoch-000040.npz', [], None)
    """

    def __init__(self, directory: str | os.PathLike, *, every: int = 1, keep: int = 3) -> None:
        for name, value in (("every", every), ("keep", keep)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Checkpoints: {name} must be a positive int, got {value!r}")
        self.directory = Path(directory)
        self.every = every
        self.keep = keep

    def __repr__(self) -> str:
        return f"Checkpoints({str(self.directory)!r}, every={self.every}, keep={self.keep})"

    def path(self, epoch: int) -> Path:
        """The file of the checkpoint after ``epoch``."""
        return self.directory / f"epoch-{epoch:06d}.npz"

    def epochs(self) -> list[int]:
        """The epochs that have a checkpoint here, oldest first."""
        if not self.directory.is_dir():
            return []
        found = (_EPOCH_FILE.match(entry.name) for entry in self.directory.iterdir())
        return sorted(int(match[1]) for match in found if match)

    def latest(self) -> Path | None:
        """The newest checkpoint, or None."""
        epochs = self.epochs()
        return self.path(epochs[-1]) if epochs else None

    def remove_temporaries(self) -> list[Path]:
        """Remove what a killed write left behind (``.epoch-*.npz.*.tmp``); returns the removed files."""
        if not self.directory.is_dir():
            return []
        stale = [
            entry
            for entry in self.directory.iterdir()
            if entry.name.startswith(".epoch-") and entry.name.endswith(io.TEMPORARY_SUFFIX)
        ]
        for entry in stale:
            entry.unlink(missing_ok=True)
        return stale

    def write(
        self,
        path: Path,
        *,
        layers: list,
        params: Mapping[str, Any],
        state: SVIState,
        epoch: int,
        training: dict[str, Any],
        arrays: Mapping[str, Any],
        best_state: SVIState | None = None,
    ) -> None:
        """Write one checkpoint atomically (only on process 0 when several processes train)."""
        if jax.process_index() != 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        extra = {} if best_state is None else {BEST: best_state}
        io.write(
            path, layers, params, state=state, epoch=epoch, training=training, training_arrays=arrays,
            extra_states=extra,
        )  # fmt: skip

    def prune(self) -> None:
        """Delete all but the newest ``keep`` epoch checkpoints."""
        if jax.process_index() != 0:
            return
        for epoch in self.epochs()[: -self.keep]:
            self.path(epoch).unlink(missing_ok=True)


def run_record(
    *,
    epoch: int,
    num_data: int,
    batch_size: int,
    rng_key: jax.Array,
    progress: Progress,
    losses: np.ndarray,
    history: Mapping[str, Any],
    stopped: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and arrays that describe a run's progress after ``epoch``."""
    training = {
        "epoch": int(epoch),
        "num_data": int(num_data),
        "batch_size": int(batch_size),
        "rng_key": key_words(rng_key),
        "early_stopping": progress._asdict(),
        "stopped": bool(stopped),
        "history": sorted(history),
    }
    arrays = {"losses": np.asarray(losses)}
    arrays.update({f"history.{name}": np.asarray(value) for name, value in history.items()})
    return training, arrays


def key_words(rng_key: jax.Array) -> list[int]:
    """The words of a PRNG key (raw or typed) as ints: what makes one run's keys its own."""
    if jax.numpy.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        rng_key = jax.random.key_data(rng_key)
    return [int(word) for word in np.asarray(rng_key).reshape(-1)]


def resume(path: Path, like: SVIState, *, num_data: int, batch_size: int, rng_key: jax.Array) -> Resumed:
    """Read the run saved in ``path`` into a state shaped like ``like``; it must be this run's (data, batch, key)."""
    training, arrays = io.read_training(path)
    if training is None:
        raise ValueError(f"fit: {str(path)!r} is not a checkpoint of a fit (it holds no training progress)")
    expected = {"num_data": num_data, "batch_size": batch_size, "rng_key": key_words(rng_key)}
    differ = {name: (training[name], value) for name, value in expected.items() if training[name] != value}
    if differ:
        said = "; ".join(f"{name} {saved} there, {now} here" for name, (saved, now) in differ.items())
        raise ValueError(
            f"fit: the checkpoints in {str(path.parent)!r} come from another run ({said}), so resuming would not "
            "continue it; pass the same data, batch_size and rng_key, or use another directory"
        )
    saved = io.load_state(path, like)
    best = io.load_state(path, like, name=BEST).state if BEST in io.state_names(path) else None
    prefix = "history."
    history = {name[len(prefix):]: value for name, value in arrays.items() if name.startswith(prefix)}
    progress = progress_from_json(training["early_stopping"])
    return Resumed(saved.state, saved.epoch, arrays["losses"], history, progress, best, training["stopped"])
