r"""A minibatch training loop that runs each epoch on device, and that a user can steer and trust.

Stepping ``svi.update`` from Python costs one dispatch per minibatch, which
dominates on small datasets. A :class:`Trainer` compiles one epoch (a fresh
permutation of the data, then ``svi.update`` on each minibatch inside a
:func:`jax.lax.scan`) and calls it once per epoch; it keeps its compiled programs,
so that training again with data of the same shapes compiles nothing. :func:`fit`
is one :class:`Trainer` used once.

The model sees the minibatch and the size of the full dataset:
``model(*minibatch, num_data=N, **kwargs)``. It puts its likelihood in
``numpyro.plate("data", num_data, subsample_size=x.shape[0])``, so NumPyro
scales each minibatch log-likelihood by :math:`N / B` while every layer's KL is
counted once; the minibatch ELBO is then an unbiased estimate of the
full-data ELBO

.. math::

    \mathcal{L} = \sum_{\ell} \mathrm{KL}(q_\ell \,\|\, p_\ell)
    - \frac{N}{B} \sum_{i \in \text{batch}} \log p(y_i \mid x_i, W).

Between epochs, Python steers: a held-out score on ``validation_data`` (the mean log
predictive density, :mod:`npvi.evaluation`, one more kept program), early stopping
(:class:`npvi.EarlyStopping`), periodic checkpoints that resume bit for bit
(:class:`npvi.Checkpoints`), and a check that stops at the first epoch whose loss is
not finite (:class:`DivergenceError`, which keeps the last finite state).

With ``mesh=`` the batch of :math:`B` rows is split over the devices and the sum
over it becomes per-device partial sums and one all-reduce; :math:`N`, :math:`B`
and the KL are those of the whole minibatch, so :math:`\mathcal{L}` is unchanged.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from numpyro import handlers
from numpyro.infer.svi import SVI, SVIRunResult, SVIState
from tqdm import tqdm  # the text bar: tqdm.auto warns in Jupyter kernels without ipywidgets

from npvi import checkpoints as checkpointing
from npvi.checkpoints import Checkpoints
from npvi.early_stopping import EarlyStopping, Progress
from npvi.elbo import ELBO
from npvi.evaluation import VAL_LOG_LIKELIHOOD, checked_samples, chunk_for, log_likelihood_program
from npvi.guides import MeanFieldGuide
from npvi.handlers import LINEAR_MESSAGE
from npvi.layers import LinearVariational
from npvi.serialization import serialize_layer
from npvi.sharding import (
    check_batch_divides,
    examples_sharding,
    local_rows,
    place_data,
    place_tree,
    replicated,
    resolve_mesh,
)
from npvi.tracing import Static, eval_static, partition
from npvi.validation import check_array_like, check_finite, check_numeric, check_observed, check_rng_key, is_concrete

#: Keyword through which training tells the model the size of the full dataset.
NUM_DATA = "num_data"
#: How ``fit`` is called, for messages about misplaced arguments.
FIT_CALL = "fit(svi, rng_key, x, y, num_epochs=..., batch_size=...)"
#: Keras' ``fit`` keywords that npvi names otherwise, and what to write instead.
KERAS_NAMES = {
    "epochs": "num_epochs",
    "verbose": "progress_bar (True or False)",
    "callbacks": (
        "early_stopping=npvi.EarlyStopping(...) and checkpoints=npvi.Checkpoints(...), and for code of your own "
        "after each epoch, npvi.Trainer.epoch in a loop"
    ),
    "validation_split": "validation_data=(x_val, y_val), with rows you set aside yourself",
    "steps_per_epoch": "none: an epoch is N // batch_size steps, so choose batch_size",
}
#: The key stream of the validation draws: ``fold_in(rng_key, VALIDATION_STREAM)``, the same at every check.
VALIDATION_STREAM = 1


def _accepts(fn: Callable[..., Any], name: str, *, var_keyword: bool = True) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (by name, or through ``**kwargs`` if ``var_keyword``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and some callables have no signature
        return True
    return any(p.name == name or (var_keyword and p.kind is inspect.Parameter.VAR_KEYWORD) for p in parameters)


def _check_keras_names(model: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """``TypeError`` for a Keras ``fit`` keyword that the model does not take by name: say npvi's."""
    for name, instead in KERAS_NAMES.items():
        if name in kwargs and not _accepts(model, name, var_keyword=False):
            raise TypeError(
                f"fit: {name}= is Keras' keyword; npvi's is {instead} (fit passes the keywords it does not know on "
                f"to the model, which takes no {name!r})"
            )


def _check_positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


def _check_data(
    data: tuple[Any, ...], batch_size: int, what: str = "data argument", arrays: str = "data array"
) -> int:
    if not data:
        raise ValueError(f"fit needs at least one data array (e.g. {FIT_CALL}), got none")
    lengths = []
    for position, array in enumerate(data):
        if isinstance(array, int | float) and not isinstance(array, bool):
            raise TypeError(
                f"fit: {what} {position} is the number {array!r}, not an array; the counts are keywords: {FIT_CALL}"
            )
        check_array_like("fit", f"{what} {position}", array)
        if not hasattr(array, "shape") or len(array.shape) == 0:
            raise TypeError(
                f"fit: {what} {position} must be an array with the examples on axis 0, "
                f"got {type(array).__name__} with shape {getattr(array, 'shape', None)}"
            )
        check_numeric("fit", f"{what} {position}", array)
        check_finite("fit", f"{what} {position}", local_rows("fit", array))
        lengths.append(int(array.shape[0]))
    if len(set(lengths)) != 1:
        raise ValueError(f"fit: every {arrays} must have the same length on axis 0, got lengths {lengths}")
    num_data = lengths[0]
    if batch_size > num_data:
        raise ValueError(f"fit: batch_size {batch_size} is larger than the data ({num_data} examples)")
    return num_data


def _check_observed_data(model: Callable[..., Any], data: tuple, kwargs: dict[str, Any]) -> None:
    """Every observed value of the whole data against its distribution's support, in one abstract trace."""

    def read() -> None:
        with handlers.block():
            check_observed(handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*data, **kwargs))

    eval_static(read)


def _unsubsampled_plate(trace: dict[str, dict[str, Any]], num_data: int) -> str | None:
    """The name of a plate of size ``num_data`` without ``subsample_size`` in a (partial) trace, if any."""
    for name, site in trace.items():
        if site["type"] == "plate" and site["args"][0] == num_data and site["args"][1] is None:
            return name
    return None


def _observed_scales(model: Callable[..., Any], batch: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``{observed site: its scale}`` for one minibatch, from an abstract trace; factors are left out.

    A plate of the full data's size without ``subsample_size`` fails inside NumPyro with a
    broadcasting error; it is said here in npvi's words.
    """
    num_data = kwargs[NUM_DATA]

    def read(batch: tuple) -> dict[str, Any]:
        tracer = handlers.trace(handlers.seed(model, rng_seed=0))
        with handlers.block():
            try:
                trace = tracer.get_trace(*batch, **kwargs)
            except ValueError as error:
                plate = _unsubsampled_plate(tracer.trace, num_data)
                if plate is None:
                    raise
                raise ValueError(
                    f"fit: numpyro.plate({plate!r}, {num_data}) has the full data's size but no subsample_size, so "
                    f"NumPyro expects {num_data} values in it and a minibatch has {batch[0].shape[0]}. Write\n"
                    f'    with numpyro.plate("{plate}", num_data, subsample_size=x.shape[0]):\n'
                    f"(NumPyro said: {error})"
                ) from None
        return {
            name: 1.0 if site["scale"] is None else site["scale"]
            for name, site in trace.items()
            if site["type"] == "sample" and site["is_observed"] and not site["infer"].get("is_auxiliary")
        }

    return eval_static(read, batch)


def _check_scales(scales: dict[str, Any], num_data: int, batch_size: int) -> None:
    """Each observed site must carry ``N / batch_size``: otherwise the KL outweighs the data ``N / B``-fold."""
    expected = num_data / batch_size
    for name, scale in scales.items():
        if not is_concrete(scale) or np.ndim(scale) != 0:
            continue  # a scale computed in the model, or one per example: the model scales on its own terms
        if not math.isclose(float(scale), expected, rel_tol=1e-5):
            raise ValueError(
                f"fit: the observed site {name!r} is scaled by {float(scale):.4g}, but minibatches of {batch_size} "
                f"from {num_data} examples need N / batch_size = {expected:.4g}; without it the KL weighs "
                f"{expected / float(scale):.3g} times too much. Put the likelihood in\n"
                f'    with numpyro.plate("data", num_data, subsample_size=x.shape[0]):\n'
                f"and give the model a num_data=None argument (fit passes num_data={num_data}); "
                "if the model scales its likelihood another way, pass check_scale=False"
            )


def _describable_layers(model: Callable[..., Any], batch: tuple, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The configs of the model's npvi layers for a checkpoint; none when one cannot be described."""

    def read(batch: tuple) -> list[dict[str, Any]]:
        with handlers.block():
            trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*batch, **kwargs)
        layers = [site["kwargs"]["layer"] for site in trace.values() if site["type"] == LINEAR_MESSAGE]
        if not all(isinstance(layer, LinearVariational) for layer in layers):
            return []  # a converted Flax or Equinox network: the user's code rebuilds it
        try:
            return [serialize_layer(layer) for layer in layers]
        except (TypeError, ValueError):
            return []

    return eval_static(read, batch)


def _init_program(
    svi: SVI,
    batch_size: int,
    rng_key: jax.Array,
    data: tuple[jax.Array, ...],
    init_params: dict | None,
    arrays: list,
    *,
    static: Static,
    shardings: tuple[NamedSharding, NamedSharding] | None = None,
) -> SVIState:
    """``svi.init(split(rng_key)[0], *first minibatch, init_params=..., **kwargs)``.

    With ``shardings = (batch, replicated)`` (a mesh), the minibatch is constrained to ``batch``.
    """
    kwargs = static.rebuild(arrays)
    batch = tuple(array[:batch_size] for array in data)
    if shardings is not None:
        batch = jax.lax.with_sharding_constraint(batch, shardings[0])
    return svi.init(jax.random.split(rng_key)[0], *batch, init_params=init_params, **kwargs)


def _with_kl_weight(svi: SVI, kl_weight: jax.Array) -> SVI:
    """The same SVI with its :class:`~npvi.ELBO` at another ``kl_weight`` (inside a traced step)."""
    annealed = copy.copy(svi)
    annealed.loss = svi.loss.with_kl_weight(kl_weight)
    return annealed


def _epoch_program(
    svi: SVI,
    stable_update: bool,
    batch_size: int,
    shuffle: bool,
    kl_schedule: Callable[[jax.Array], jax.Array] | None,
    state: SVIState,
    rng_key: jax.Array,
    epoch: jax.Array,
    data: tuple[jax.Array, ...],
    arrays: list,
    *,
    static: Static,
    shardings: tuple[NamedSharding, NamedSharding] | None = None,
) -> tuple[SVIState, jax.Array, jax.Array]:
    """One epoch: its rows from ``fold_in(split(rng_key)[1], epoch)``, then an SVI step on each minibatch.

    Step ``t`` of the run (counted from 0 over the epochs) uses
    ``kl_weight = kl_schedule(t)`` when there is a schedule. With
    ``shardings = (batch, replicated)`` (a mesh), every minibatch is constrained to
    ``batch`` and the state after every step to ``replicated``; nothing else changes,
    so the rows, the keys and the numbers are those of one device.
    """
    kwargs = static.rebuild(arrays)
    num_data = data[0].shape[0]
    num_batches = num_data // batch_size
    key = jax.random.fold_in(jax.random.split(rng_key)[1], epoch)
    order = jax.random.permutation(key, num_data) if shuffle else jnp.arange(num_data)
    rows = order[: num_batches * batch_size].reshape(num_batches, batch_size)
    steps = (epoch - 1) * num_batches + jnp.arange(num_batches)

    def step(state: SVIState, inputs: tuple[jax.Array, jax.Array]) -> tuple[SVIState, jax.Array]:
        batch, t = inputs
        step_svi = svi if kl_schedule is None else _with_kl_weight(svi, kl_schedule(t))
        update = step_svi.stable_update if stable_update else step_svi.update
        if shardings is None:
            return update(state, *(array[batch] for array in data), **kwargs)
        minibatch = jax.lax.with_sharding_constraint(tuple(array[batch] for array in data), shardings[0])
        state, loss = update(state, *minibatch, **kwargs)
        return jax.lax.with_sharding_constraint(state, shardings[1]), loss

    state, losses = jax.lax.scan(step, state, (rows, steps))
    return state, losses, jnp.mean(losses)


class FitResult(SVIRunResult):
    """NumPyro's :class:`~numpyro.infer.svi.SVIRunResult` ``(params, state, losses)``, plus what the run did.

    * ``history``: per epoch, ``"epoch"`` and ``"loss"`` (the epoch's mean loss, the
      negative ELBO estimate); with validation data, ``"val_epoch"`` and
      ``"val_log_likelihood"`` at each check (NumPy arrays);
    * ``epoch``: the last epoch trained (counted over the whole run, resumed ones included);
    * ``best_epoch``: early stopping's best epoch (None without early stopping);
    * ``stopped_epoch``: the epoch at which early stopping ended the run, or None.

    It unpacks and indexes as the 3-tuple, so code written for ``SVIRunResult`` runs unchanged.
    """

    history: dict[str, np.ndarray]
    epoch: int
    best_epoch: int | None
    stopped_epoch: int | None

    @classmethod
    def of(
        cls,
        params: dict,
        state: SVIState,
        losses: Any,
        *,
        history: dict[str, np.ndarray],
        epoch: int,
        best_epoch: int | None = None,
        stopped_epoch: int | None = None,
    ) -> FitResult:
        result = cls(params, state, losses)
        result.history, result.epoch = history, epoch
        result.best_epoch, result.stopped_epoch = best_epoch, stopped_epoch
        return result


class DivergenceError(FloatingPointError):
    """Training stopped: an epoch's loss was NaN or infinite. ``result`` holds what was learned before it.

    ``epoch`` and ``step`` (counted from 1 within the epoch) say where; ``result`` is the
    :class:`FitResult` that ``fit`` would have returned had it stopped after the last
    finite epoch (its state, and early stopping's best state where it restores one), so
    nothing already learned is lost. A subclass of :class:`FloatingPointError`, as JAX's
    ``jax_debug_nans`` raises.
    """

    def __init__(self, message: str, *, epoch: int, step: int, result: FitResult) -> None:
        super().__init__(message)
        self.epoch, self.step, self.result = epoch, step, result


class _Run:
    """What one call of :meth:`Trainer.fit` has done so far: losses, history, early stopping's record."""

    def __init__(self, epoch: int, losses: list[np.ndarray], history: dict[str, list], progress: Progress) -> None:
        self.epoch = epoch
        self.losses = losses
        self.history = history
        self.progress = progress
        self.best_state: SVIState | None = None
        self.stopped_epoch: int | None = None
        self.saved_epoch: int | None = None

    @classmethod
    def fresh(cls, epoch: int, validating: bool) -> _Run:
        names = ["epoch", "loss"] + (["val_epoch", VAL_LOG_LIKELIHOOD] if validating else [])
        return cls(epoch, [], {name: [] for name in names}, Progress())

    def history_arrays(self) -> dict[str, np.ndarray]:
        dtypes = {"epoch": np.int64, "val_epoch": np.int64}
        return {name: np.asarray(values, dtype=dtypes.get(name, np.float64)) for name, values in self.history.items()}

    def all_losses(self) -> np.ndarray:
        return np.concatenate(self.losses) if self.losses else np.zeros((0,), np.float32)


class Trainer:
    r"""Minibatch SVI in epochs, owning its compiled programs (in the spirit of optax's ``(init, update)``).

    The model (and guide) are called as ``model(*minibatch, num_data=N, **kwargs)``,
    where ``minibatch`` is the same rows of every data array and ``N`` their length.

    * :meth:`init` runs ``svi.init`` on the first ``batch_size`` rows with the key
      ``split(rng_key)[0]``; with a :class:`~npvi.MeanFieldGuide` it is one compiled
      program (other guides, whose first call may keep traced values, run as in NumPyro).
    * :meth:`epoch` is one compiled program: a permutation of the ``N`` rows drawn from
      ``fold_in(split(rng_key)[1], epoch)`` (``shuffle=False`` keeps their order), cut
      into ``N // batch_size`` minibatches, and ``svi.update`` on each in a
      :func:`jax.lax.scan`. The last ``N % batch_size`` rows of the permutation sit
      that epoch out, so every step has the same shape.
    * :meth:`evaluate` is one compiled program too: the mean log predictive density of
      held-out data over ``validation_samples`` posterior draws (:mod:`npvi.evaluation`).
    * :meth:`fit` runs :meth:`init`, compiles the epoch (and the evaluation) before the
      first epoch, so the progress bar times epochs only, and then runs the epochs,
      with validation, early stopping and checkpoints as :func:`npvi.fit` describes.

    ``kl_schedule`` (with :class:`npvi.ELBO` as the loss) is an optax-style schedule,
    ``step -> kl_weight``: step ``t`` of a run, counted from 0, trains with
    ``svi.loss.with_kl_weight(kl_schedule(t))``, evaluated inside the compiled epoch (KL
    annealing, e.g. ``optax.linear_schedule(0.0, 1.0, 1000)``).

    With minibatches (``batch_size < N``) the trainer checks, once per shape of the data,
    that every observed site of the model carries the scale ``N / batch_size``, which
    ``numpyro.plate("data", num_data, subsample_size=B)`` gives the likelihood; without it
    the KL would outweigh the data ``N / B``-fold, silently. A model that scales its
    likelihood another way passes ``check_scale=False``.

    ``mesh`` (a :class:`jax.sharding.Mesh` with an axis named ``data_axis``, or ``"all"``
    for one axis over :func:`jax.devices`) makes the same epochs data-parallel: every
    minibatch is split over the :math:`n` devices of ``data_axis`` (so ``batch_size``
    must be a multiple of :math:`n`, ``ValueError`` otherwise), the params, the optimizer
    state and the keys are replicated, and the data are placed on the mesh once per call,
    sharded over their examples where :math:`n` divides their number and replicated
    otherwise (:func:`npvi.sharding.place_data`). The permutation, the minibatches and the
    keys do not depend on the mesh, so the losses are those of one device up to the order
    of the sums over the minibatch (about 1e-6 relative in float32). Across processes, pass
    global arrays (:func:`npvi.sharding.global_data`). See :doc:`scaling`.

    The programs belong to the trainer: calling it again with data of the same shapes
    and the same non-array keyword arguments compiles nothing, and dropping the trainer
    frees them. An epoch's key depends only on ``rng_key`` and the epoch's number, so
    the first ``k`` epochs of a longer run are those of a run of ``k`` epochs, bit for
    bit, and a run resumed after epoch ``k`` (``init_state`` and ``initial_epoch=k``, or
    a checkpoint) continues as if never stopped.

    >>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None, num_data=None):
    ...     mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    ...     with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (100, 3))
    >>> y = x @ jnp.array([1.0, -2.0, 0.5])
    >>> svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    >>> trainer = npvi.Trainer(svi, batch_size=32, kl_schedule=optax.linear_schedule(0.0, 1.0, 10))
    >>> first = trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=5, progress_bar=False)
    >>> more = trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=10, init_state=first.state, initial_epoch=5,
    ...                    progress_bar=False)
    >>> more.losses.shape, more.epoch  # epochs 6 to 10, 3 steps each, on the programs the first fit compiled
    ((15,), 10)
    """

    def __init__(
        self,
        svi: SVI,
        *,
        batch_size: int,
        shuffle: bool = True,
        stable_update: bool = False,
        kl_schedule: Callable[[jax.Array], jax.Array] | None = None,
        check_scale: bool = True,
        validation_samples: int = 32,
        mesh: Mesh | str | None = None,
        data_axis: str = "data",
    ) -> None:
        if not isinstance(svi, SVI):
            raise TypeError(f"Trainer: expected a numpyro.infer.SVI, got {type(svi).__name__}")
        if kl_schedule is not None:
            if not callable(kl_schedule):
                raise TypeError(f"fit: kl_schedule must be a callable step -> kl_weight, got {kl_schedule!r}")
            if not isinstance(svi.loss, ELBO):
                raise TypeError(
                    f"fit: kl_schedule needs npvi.ELBO as the SVI's loss (it sets its kl_weight), "
                    f"got {type(svi.loss).__name__}"
                )
        self.svi = svi
        self.batch_size = _check_positive_int("fit", "batch_size", batch_size)
        self.shuffle = bool(shuffle)
        self.stable_update = bool(stable_update)
        self.kl_schedule = kl_schedule
        self.check_scale = bool(check_scale)
        self.validation_samples = checked_samples("fit", validation_samples)
        self.mesh = resolve_mesh("fit", mesh, data_axis)
        self.data_axis = data_axis
        self._checked: set[tuple] = set()  # data shapes and settings whose data and scales were checked
        self._compiled: set[tuple] = set()  # signatures of the epoch and evaluation programs compiled ahead
        init = functools.partial(_init_program, svi, self.batch_size)
        epoch = functools.partial(_epoch_program, svi, self.stable_update, self.batch_size, self.shuffle, kl_schedule)
        evaluate = functools.partial(
            log_likelihood_program, svi, self.validation_samples, chunk_for(self.validation_samples)
        )
        if self.mesh is None:
            self._replicated = None
            jit = functools.partial(jax.jit, static_argnames=("static",))
        else:
            check_batch_divides("fit", self.batch_size, self.mesh, data_axis)
            self._replicated = replicated(self.mesh)
            shardings = (examples_sharding(self.mesh, data_axis), self._replicated)
            init = functools.partial(init, shardings=shardings)
            epoch = functools.partial(epoch, shardings=shardings)
            jit = functools.partial(jax.jit, static_argnames=("static",), out_shardings=self._replicated)
        self._init = jit(init) if isinstance(svi.guide, MeanFieldGuide) else None
        self._init_eager = init
        self._epoch = jit(epoch)
        self._evaluate = jit(evaluate)

    def _replicate(self, tree: Any) -> Any:
        """``tree`` replicated over the mesh (placed once; a no-op where it is already); as it is without a mesh."""
        return tree if self._replicated is None else place_tree(tree, self._replicated)

    def _place(self, data: tuple) -> tuple[jax.Array, ...]:
        if self.mesh is None:
            return tuple(jnp.asarray(array) for array in data)
        # placed once per call: sharded over the examples where their number divides, else replicated
        return place_data(self.mesh, *data, data_axis=self.data_axis)

    def _prepare(self, data: tuple, kwargs: dict[str, Any]) -> tuple[tuple[jax.Array, ...], list, Static]:
        """Check the data and the model, and split the keyword arguments (with ``num_data``) for the programs."""
        _check_keras_names(self.svi.model, kwargs)
        num_data = _check_data(data, self.batch_size)
        if NUM_DATA in kwargs:
            raise TypeError(f"fit passes {NUM_DATA}= itself (the length of the data, {num_data}); do not pass it")
        if not _accepts(self.svi.model, NUM_DATA):
            raise TypeError(
                f"fit calls the model as model(*minibatch, {NUM_DATA}=N), but the model does not take a "
                f"{NUM_DATA!r} keyword; add `{NUM_DATA}=None` to its signature and use "
                f"numpyro.plate('data', {NUM_DATA}, subsample_size=x.shape[0]) around the likelihood"
            )
        kwargs = {**kwargs, NUM_DATA: num_data}
        arrays, static = partition(kwargs)
        data = self._place(data)
        if self.mesh is not None:
            arrays = self._replicate(arrays)
        shapes = tuple((array.shape, array.dtype) for array in data)
        if (shapes, static) not in self._checked:
            local = tuple(local_rows("fit", array) for array in data)  # each process checks the rows it holds
            _check_observed_data(self.svi.model, local, kwargs)
            if self.batch_size < num_data:
                batch = tuple(jax.ShapeDtypeStruct((self.batch_size, *array.shape[1:]), array.dtype) for array in data)
                scales = _observed_scales(self.svi.model, batch, kwargs)
                if self.check_scale:
                    _check_scales(scales, num_data, self.batch_size)
            self._checked.add((shapes, static))
        return data, arrays, static

    def _prepare_validation(self, validation_data: Any, kwargs: dict[str, Any]) -> tuple[tuple, list, Static]:
        """The validation arrays placed for :meth:`evaluate`'s program, with ``num_data`` their length."""
        if not isinstance(validation_data, tuple | list):
            raise TypeError(
                "fit: validation_data must be a tuple of arrays in the order of the training data, e.g. "
                f"validation_data=(x_val, y_val), got {type(validation_data).__name__}"
            )
        num_val = _check_data(tuple(validation_data), 1, what="validation_data array", arrays="validation_data array")
        arrays, static = partition({**kwargs, NUM_DATA: num_val})
        data = self._place(tuple(validation_data))
        if self.mesh is not None:
            data, arrays = self._replicate((data, arrays))
        shapes = ("validation", tuple((array.shape, array.dtype) for array in data))
        if (shapes, static) not in self._checked:
            _check_observed_data(self.svi.model, tuple(local_rows("fit", a) for a in data), static.rebuild(arrays))
            self._checked.add((shapes, static))
        return data, arrays, static

    def init(
        self, rng_key: jax.Array, *data: jax.Array, init_params: dict[str, jax.Array] | None = None, **kwargs: Any
    ) -> SVIState:
        """``svi.init`` on the first minibatch (rows ``0:batch_size``) with the key ``split(rng_key)[0]``."""
        check_rng_key("Trainer.init", rng_key, "trainer.init(rng_key, x, y)")
        data, arrays, static = self._prepare(data, kwargs)
        return self._run_init(rng_key, data, init_params, arrays, static)

    def _run_init(self, rng_key: jax.Array, data: tuple, init_params: dict | None, arrays: list, static: Static):
        rng_key, init_params = self._replicate((rng_key, init_params))
        if self._init is not None:
            return self._init(rng_key, data, init_params, arrays, static=static)
        return self._replicate(self._init_eager(rng_key, data, init_params, arrays, static=static))

    def epoch(
        self, state: SVIState, rng_key: jax.Array, epoch: int, *data: jax.Array, **kwargs: Any
    ) -> tuple[SVIState, jax.Array]:
        """Epoch number ``epoch`` (from 1): the new state and the loss of each of its ``N // batch_size`` steps."""
        check_rng_key("Trainer.epoch", rng_key, "trainer.epoch(state, rng_key, epoch, x, y)")
        data, arrays, static = self._prepare(data, kwargs)
        state, rng_key = self._replicate((state, rng_key))
        state, losses, _ = self._epoch(state, rng_key, epoch, data, arrays, static=static)
        return state, losses

    def evaluate(
        self, state_or_params: SVIState | dict[str, jax.Array], rng_key: jax.Array, *data: jax.Array, **kwargs: Any
    ) -> jax.Array:
        r"""The mean log predictive density of held-out ``data`` (e.g. ``x_val, y_val``) per example.

        :math:`\frac1n \sum_i \log \frac1S \sum_s p(y_i \mid x_i, W_s)` over
        ``validation_samples`` draws :math:`W_s \sim q` from ``split(rng_key, S)``
        (:mod:`npvi.evaluation`), for an :class:`~numpyro.infer.svi.SVIState` or a params
        dict; the model is called as ``model(*data, num_data=n, **kwargs)``. One compiled
        program, kept: a loop of :meth:`epoch` and :meth:`evaluate` compiles each once.
        """
        check_rng_key("Trainer.evaluate", rng_key, "trainer.evaluate(state, rng_key, x_val, y_val)")
        data, arrays, static = self._prepare_validation(tuple(data), kwargs)
        state_or_params, rng_key = self._replicate((state_or_params, rng_key))
        return self._evaluate(state_or_params, rng_key, data, arrays, static=static)

    def _compile_ahead(self, state: SVIState, rng_key: jax.Array, epoch: int, data: tuple, arrays: list,
                       static: Static, validation: tuple | None) -> None:  # fmt: skip
        """Compile the epoch (and evaluation) programs for these shapes now, so the epochs time only themselves."""
        signature = (
            jax.tree.structure(state), tuple((a.shape, a.dtype) for a in data), static,
            None if validation is None else (tuple((a.shape, a.dtype) for a in validation[0]), validation[2]),
        )  # fmt: skip
        if signature in self._compiled:
            return
        self._epoch.lower(state, rng_key, epoch, data, arrays, static=static).compile()
        if validation is not None:
            self._evaluate.lower(state, rng_key, validation[0], validation[1], static=validation[2]).compile()
        self._compiled.add(signature)

    def fit(
        self,
        rng_key: jax.Array,
        *data: jax.Array,
        num_epochs: int | None = None,
        progress_bar: bool = True,
        init_state: SVIState | None = None,
        init_params: dict[str, jax.Array] | None = None,
        initial_epoch: int = 0,
        validation_data: tuple | None = None,
        validation_freq: int = 1,
        early_stopping: EarlyStopping | None = None,
        checkpoints: Checkpoints | None = None,
        resume: bool = False,
        **kwargs: Any,
    ) -> FitResult:
        """Train up to epoch ``num_epochs``; the arguments and the result are those of :func:`npvi.fit`."""
        _check_keras_names(self.svi.model, kwargs)
        if num_epochs is None:
            raise TypeError(f"fit needs num_epochs=, the number of passes over the data: {FIT_CALL}")
        check_rng_key("fit", rng_key, FIT_CALL)
        num_epochs = _check_positive_int("fit", "num_epochs", num_epochs)
        validation_freq = _check_positive_int("fit", "validation_freq", validation_freq)
        initial_epoch = self._check_initial_epoch(initial_epoch, num_epochs, init_state)
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"fit: early_stopping must be an npvi.EarlyStopping, got {type(early_stopping).__name__}")
        if early_stopping is not None and early_stopping.monitor == VAL_LOG_LIKELIHOOD and validation_data is None:
            raise ValueError(
                f"fit: early_stopping monitors {VAL_LOG_LIKELIHOOD!r}, which needs validation_data=(x_val, y_val); "
                "or monitor the training loss: npvi.EarlyStopping(monitor='loss')"
            )
        if checkpoints is not None and not isinstance(checkpoints, Checkpoints):
            raise TypeError(f"fit: checkpoints must be an npvi.Checkpoints, got {type(checkpoints).__name__}")
        if resume and checkpoints is None:
            raise ValueError("fit: resume=True continues from checkpoints=npvi.Checkpoints(directory); none given")

        data, arrays, static = self._prepare(data, kwargs)
        validation = None if validation_data is None else self._prepare_validation(validation_data, kwargs)
        rng_key = self._replicate(rng_key)
        validation_key = jax.random.fold_in(rng_key, VALIDATION_STREAM)
        num_data = data[0].shape[0]
        layers = [] if checkpoints is None else _describable_layers(self.svi.model, data, static.rebuild(arrays))

        started = time.perf_counter()
        run = _Run.fresh(initial_epoch, validation is not None)
        state = None
        if checkpoints is not None:
            checkpoints.remove_temporaries()
            latest = checkpoints.latest()
            if latest is not None and not resume:
                raise ValueError(
                    f"fit: {str(checkpoints.directory)!r} already holds checkpoints (epochs {checkpoints.epochs()}); "
                    "pass resume=True to continue that run, or give an empty directory"
                )
            if latest is not None:
                if init_state is not None or initial_epoch:
                    raise ValueError(
                        "fit: resume=True continues from the newest checkpoint; init_state and initial_epoch "
                        "cannot say where to start as well"
                    )
                state, run = self._resume(latest, data, arrays, static, rng_key, init_params, validation is not None)
                if run.epoch > num_epochs:
                    raise ValueError(
                        f"fit: the newest checkpoint, {str(latest)!r}, is after epoch {run.epoch}, past "
                        f"num_epochs={num_epochs}; ask for num_epochs >= {run.epoch}"
                    )
        if state is None:
            state = self._run_init(rng_key, data, init_params, arrays, static) if init_state is None else init_state
            state = self._replicate(state)
        bar = tqdm(total=num_epochs, initial=run.epoch, disable=not progress_bar, desc="fit: compiling",
                   unit="epoch")  # fmt: skip
        if run.stopped_epoch is None and run.epoch < num_epochs:
            self._compile_ahead(state, rng_key, run.epoch + 1, data, arrays, static, validation)
        bar.set_description_str(f"fit (compiled in {time.perf_counter() - started:.1f} s)", refresh=False)
        bar.unpause()  # the bar's clock starts now: its rate and time left are the epochs' alone

        try:
            state = self._run_epochs(
                bar, run, state, rng_key, validation_key, num_epochs, data, arrays, static, validation,
                validation_freq, early_stopping, checkpoints, layers,
            )  # fmt: skip
        finally:
            bar.close()
        if checkpoints is not None and run.saved_epoch != run.epoch:
            self._checkpoint(checkpoints, run, state, layers, rng_key, num_data)
        return self._result(run, state, early_stopping)

    def _resume(self, latest: Any, data: tuple, arrays: list, static: Static, rng_key: jax.Array,
                init_params: dict | None, validating: bool) -> tuple[SVIState, _Run]:  # fmt: skip
        """The state and progress saved in the checkpoint ``latest``, for this run."""
        like = self._run_init(rng_key, data, init_params, arrays, static)
        resumed = checkpointing.resume(
            latest, like, num_data=data[0].shape[0], batch_size=self.batch_size, rng_key=rng_key
        )
        history = _Run.fresh(0, validating).history
        history.update({name: list(values) for name, values in resumed.history.items()})
        run = _Run(resumed.epoch, [resumed.losses], history, resumed.progress)
        run.best_state = None if resumed.best_state is None else self._replicate(resumed.best_state)
        run.saved_epoch = resumed.epoch
        run.stopped_epoch = resumed.epoch if resumed.stopped else None
        return self._replicate(resumed.state), run

    def _check_initial_epoch(self, initial_epoch: Any, num_epochs: int, init_state: SVIState | None) -> int:
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int | np.integer) or initial_epoch < 0:
            raise ValueError(f"fit: initial_epoch must be a non-negative int, got {initial_epoch!r}")
        if initial_epoch and init_state is None:
            raise ValueError(
                f"fit: initial_epoch={initial_epoch} continues a run from its state after that epoch; pass it as "
                "init_state= (npvi.load_state reads a saved one)"
            )
        if initial_epoch >= num_epochs:
            raise ValueError(
                f"fit: initial_epoch={initial_epoch} leaves no epoch to run up to num_epochs={num_epochs} "
                "(num_epochs is the last epoch, as in Keras)"
            )
        return int(initial_epoch)

    def _run_epochs(
        self,
        bar: tqdm,
        run: _Run,
        state: SVIState,
        rng_key: jax.Array,
        validation_key: jax.Array,
        num_epochs: int,
        data: tuple,
        arrays: list,
        static: Static,
        validation: tuple | None,
        validation_freq: int,
        early_stopping: EarlyStopping | None,
        checkpoints: Checkpoints | None,
        layers: list,
    ) -> SVIState:
        """The epochs after ``run.epoch``, up to ``num_epochs`` or early stopping; returns the last state."""
        warned = False
        num_data = data[0].shape[0]
        while run.stopped_epoch is None and run.epoch < num_epochs:
            epoch = run.epoch + 1
            new_state, epoch_losses, mean_loss = self._epoch(state, rng_key, epoch, data, arrays, static=static)
            mean_loss = float(mean_loss)
            if not math.isfinite(mean_loss):
                if not self.stable_update:
                    self._diverged(run, state, epoch, epoch_losses, mean_loss, early_stopping, checkpoints, layers,
                                   rng_key, num_data)  # fmt: skip
                if not warned:  # stable_update keeps the state finite and goes on, as NumPyro's does
                    warnings.warn(f"fit: the mean loss of epoch {epoch} is {mean_loss}", RuntimeWarning, stacklevel=3)
                    warned = True
            state = new_state
            run.epoch = epoch
            run.losses.append(np.asarray(epoch_losses))
            run.history["epoch"].append(epoch)
            run.history["loss"].append(mean_loss)
            postfix = f"ELBO {-mean_loss:.4g}"
            checked = None
            if validation is not None and epoch % validation_freq == 0:
                score = float(self._evaluate(state, validation_key, validation[0], validation[1],
                                             static=validation[2]))  # fmt: skip
                run.history["val_epoch"].append(epoch)
                run.history[VAL_LOG_LIKELIHOOD].append(score)
                postfix += f", val LL {score:.4g}"
                checked = score
            if early_stopping is not None:
                value = mean_loss if early_stopping.monitor == "loss" else checked
                if value is not None:
                    run.progress, improved = early_stopping.update(run.progress, epoch, value)
                    if improved and early_stopping.restore_best_weights:
                        run.best_state = state
                    if early_stopping.should_stop(run.progress, epoch):
                        run.stopped_epoch = epoch
            if checkpoints is not None and (epoch % checkpoints.every == 0 or run.stopped_epoch is not None):
                self._checkpoint(checkpoints, run, state, layers, rng_key, num_data)
            bar.set_postfix_str(postfix, refresh=False)
            bar.update()
        return state

    def _diverged(self, run: _Run, state: SVIState, epoch: int, epoch_losses: jax.Array, mean_loss: float,
                  early_stopping: EarlyStopping | None, checkpoints: Checkpoints | None, layers: list,
                  rng_key: jax.Array, num_data: int) -> None:  # fmt: skip
        """Raise :class:`DivergenceError` with the last finite state kept (and checkpointed, if checkpointing)."""
        if checkpoints is not None and run.saved_epoch != run.epoch:
            self._checkpoint(checkpoints, run, state, layers, rng_key, num_data)
        losses = np.asarray(epoch_losses)
        step = int(np.argmin(np.isfinite(losses))) + 1
        total_step = len(run.all_losses()) + step
        kept = f"the state after epoch {run.epoch}" if run.epoch else "the initial state"
        saved = f", and saved in {str(checkpoints.path(run.epoch))!r}" if checkpoints is not None else ""
        raise DivergenceError(
            f"fit: the loss is {losses[step - 1]} at step {step} of epoch {epoch} (step {total_step} of the run); "
            f"training stopped there. {kept.capitalize()}, the last with a finite loss, is in error.result"
            f"{saved}. Lower the learning rate (say tenfold), or look for extreme values in the data and the "
            "priors",
            epoch=epoch,
            step=step,
            result=self._result(run, state, early_stopping),
        )

    def _checkpoint(self, checkpoints: Checkpoints, run: _Run, state: SVIState, layers: list, rng_key: jax.Array,
                    num_data: int) -> None:  # fmt: skip
        training, arrays = checkpointing.run_record(
            epoch=run.epoch, num_data=num_data, batch_size=self.batch_size, rng_key=rng_key, progress=run.progress,
            losses=run.all_losses(), history=run.history_arrays(), stopped=run.stopped_epoch is not None,
        )  # fmt: skip
        returned = run.best_state if run.best_state is not None else state  # the params fit would return now
        checkpoints.write(
            checkpoints.path(run.epoch), layers=layers, params=self.svi.get_params(returned), state=state,
            epoch=run.epoch, training=training, arrays=arrays, best_state=run.best_state,
        )  # fmt: skip
        checkpoints.prune()
        run.saved_epoch = run.epoch

    def _result(self, run: _Run, state: SVIState, early_stopping: EarlyStopping | None) -> FitResult:
        if early_stopping is not None and early_stopping.restore_best_weights and run.best_state is not None:
            state = run.best_state
        # device_put, not jnp.asarray: asarray compiles a small program for every new number of steps.
        losses = jax.device_put(run.all_losses())
        return FitResult.of(
            self.svi.get_params(state), state, losses, history=run.history_arrays(), epoch=run.epoch,
            best_epoch=None if early_stopping is None else run.progress.best_epoch, stopped_epoch=run.stopped_epoch,
        )  # fmt: skip


def fit(
    svi: SVI,
    rng_key: jax.Array,
    *data: jax.Array,
    num_epochs: int | None = None,
    batch_size: int | None = None,
    validation_data: tuple | None = None,
    validation_freq: int = 1,
    validation_samples: int = 32,
    early_stopping: EarlyStopping | None = None,
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
    shuffle: bool = True,
    progress_bar: bool = True,
    stable_update: bool = False,
    kl_schedule: Callable[[jax.Array], jax.Array] | None = None,
    check_scale: bool = True,
    init_state: SVIState | None = None,
    init_params: dict[str, jax.Array] | None = None,
    initial_epoch: int = 0,
    mesh: Mesh | str | None = None,
    data_axis: str = "data",
    **kwargs: Any,
) -> FitResult:
    r"""Train ``svi`` for ``num_epochs`` passes over minibatches of ``data``.

    Like :meth:`numpyro.infer.SVI.run`, but in epochs of minibatches, and like Keras'
    ``fit(x, y, epochs=..., batch_size=...)`` the counts are keywords: ``num_epochs``
    counts passes over the data, not steps.

    * every epoch draws a permutation of the ``N`` examples from ``rng_key``
      (``shuffle=False`` keeps their order) and cuts it into
      ``N // batch_size`` minibatches; the last ``N % batch_size`` examples of
      the permutation sit that epoch out (another permutation, other examples), so
      every step has the same shape and compiles once;
    * one epoch is one jitted :func:`jax.lax.scan` of ``svi.update``, and with a
      :class:`~npvi.MeanFieldGuide` ``svi.init`` (on the first minibatch, key
      ``split(rng_key)[0]``) is one compiled program too; both compile before the first
      epoch, and the progress bar (``progress_bar=False`` switches it off) says how long
      that took apart from the epochs, with the mean ELBO estimate of the last epoch;
    * the model (and guide) are called as
      ``model(*minibatch, num_data=N, **kwargs)``, where ``minibatch`` is the
      same rows of every array in ``data``; with minibatches, every observed site
      must carry the scale ``N / batch_size`` (the likelihood in
      ``numpyro.plate("data", num_data, subsample_size=x.shape[0])``), or ``fit``
      raises ``ValueError`` before training; ``check_scale=False`` turns the check
      off for a model that scales its likelihood another way;
    * ``validation_data=(x_val, y_val)`` scores held-out data after every
      ``validation_freq``-th epoch (epochs ``k``, ``2k``, ... as in Keras; a check depends on
      the epoch's number only, so a resumed run checks where the whole run would): the mean log predictive density per
      example over ``validation_samples`` posterior draws (:mod:`npvi.evaluation`; the
      same draws' keys at every check), one kept program, recorded in the history as
      ``"val_log_likelihood"``;
    * ``early_stopping=npvi.EarlyStopping(patience=...)`` stops when the monitored score
      (``"val_log_likelihood"``, or the training ``"loss"``) has not improved for
      ``patience`` epochs, and returns the best epoch's state (``restore_best_weights``);
    * ``checkpoints=npvi.Checkpoints(directory, every=k, keep=n)`` writes the whole state
      after every ``k``-th epoch and after the last, atomically, keeping the newest ``n``;
      ``resume=True`` continues from the newest one (or starts, if there is none), and the
      resumed run's numbers are those of a run never interrupted, bit for bit;
      ``init_state`` with ``initial_epoch=k`` (the state after epoch ``k``, e.g. from
      :func:`npvi.load_state`) does the same by hand: the epochs run are ``k + 1`` to
      ``num_epochs``, as Keras' ``initial_epoch``;
    * an epoch whose mean loss is NaN or infinite stops training with
      :class:`DivergenceError`, which says the epoch and step, suggests a lower learning
      rate, and holds the last finite state in ``error.result`` (and in a checkpoint, if
      checkpointing); with ``stable_update=True``, whose steps keep the state finite, a
      :class:`RuntimeWarning` is given once instead and training goes on, as
      :meth:`~numpyro.infer.SVI.run` does;
    * ``kl_schedule``, an optax-style ``step -> kl_weight`` (e.g.
      ``optax.linear_schedule(0.0, 1.0, 1000)``), anneals :class:`npvi.ELBO`'s KL
      weight over the steps, counted from 0 at epoch 1;
    * ``mesh`` (a :class:`jax.sharding.Mesh` with an axis named ``data_axis``, or
      ``"all"`` for every device) trains data-parallel: each minibatch is split over
      the devices of ``data_axis`` and the params are replicated, with the losses of
      one device (see :class:`Trainer` and :doc:`scaling`); ``mesh=None``, the
      default, is one device.

    Keras' names for these (``epochs``, ``verbose``, ``callbacks``, ``validation_split``)
    get a ``TypeError`` that says npvi's. Other keyword arguments go to the model.

    ``fit(svi, ...)`` is ``npvi.Trainer(svi, batch_size=..., ...).fit(...)``: it
    compiles its programs for this call. To train the same ``svi`` again without
    compiling (another run, more epochs from ``init_state``), keep a :class:`Trainer`
    and call its :meth:`~Trainer.fit`.

    Returns a :class:`FitResult`: NumPyro's :class:`~numpyro.infer.svi.SVIRunResult`
    with the final (or best) ``params`` and ``state`` and the ``losses`` of every step,
    shape ``((num_epochs - initial_epoch) * (N // batch_size),)`` (a run resumed from
    checkpoints: of every step since epoch 1), plus the per-epoch ``history``.

    >>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None, num_data=None):
    ...     mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    ...     with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (120, 3))
    >>> y = x @ jnp.array([1.0, -2.0, 0.5])
    >>> svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    >>> result = npvi.fit(svi, jax.random.PRNGKey(0), x[:100], y[:100], num_epochs=5, batch_size=32,
    ...                   validation_data=(x[100:], y[100:]), progress_bar=False)
    >>> result.losses.shape, sorted(result.history)
    ((15,), ['epoch', 'loss', 'val_epoch', 'val_log_likelihood'])
    """
    if isinstance(svi, SVI):
        _check_keras_names(svi.model, kwargs)
    if batch_size is None:
        raise TypeError(f"fit needs batch_size=, the rows of one minibatch: {FIT_CALL}")
    trainer = Trainer(
        svi,
        batch_size=batch_size,
        shuffle=shuffle,
        stable_update=stable_update,
        kl_schedule=kl_schedule,
        check_scale=check_scale,
        validation_samples=validation_samples,
        mesh=mesh,
        data_axis=data_axis,
    )
    return trainer.fit(
        rng_key,
        *data,
        num_epochs=num_epochs,
        progress_bar=progress_bar,
        init_state=init_state,
        init_params=init_params,
        initial_epoch=initial_epoch,
        validation_data=validation_data,
        validation_freq=validation_freq,
        early_stopping=early_stopping,
        checkpoints=checkpoints,
        resume=resume,
        **kwargs,
    )
