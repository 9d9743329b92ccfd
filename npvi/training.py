r"""A minibatch training loop that runs each epoch on device.

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
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.svi import SVI, SVIRunResult, SVIState
from tqdm import tqdm  # the text bar: tqdm.auto warns in Jupyter kernels without ipywidgets

from npvi.guides import MeanFieldGuide
from npvi.tracing import Static, partition
from npvi.validation import check_finite

#: Keyword through which training tells the model the size of the full dataset.
NUM_DATA = "num_data"


def _accepts_num_data(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and some callables have no signature
        return True
    return any(p.name == NUM_DATA or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _check_positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


def _check_data(data: tuple[Any, ...], batch_size: int) -> int:
    if not data:
        raise ValueError("fit needs at least one data array (e.g. fit(svi, key, epochs, x, y, ...)), got none")
    lengths = []
    for position, array in enumerate(data):
        if not hasattr(array, "shape") or len(array.shape) == 0:
            raise TypeError(
                f"fit: data argument {position} must be an array with the examples on axis 0, "
                f"got {type(array).__name__} with shape {getattr(array, 'shape', None)}"
            )
        check_finite("fit", f"data argument {position}", array)
        lengths.append(int(array.shape[0]))
    if len(set(lengths)) != 1:
        raise ValueError(f"fit: every data array must have the same length on axis 0, got lengths {lengths}")
    num_data = lengths[0]
    if batch_size > num_data:
        raise ValueError(f"fit: batch_size {batch_size} is larger than the data ({num_data} examples)")
    return num_data


def _init_program(
    svi: SVI,
    batch_size: int,
    rng_key: jax.Array,
    data: tuple[jax.Array, ...],
    init_params: dict | None,
    arrays: list,
    *,
    static: Static,
) -> SVIState:
    """``svi.init(split(rng_key)[0], *first minibatch, init_params=..., **kwargs)``."""
    kwargs = static.rebuild(arrays)
    batch = tuple(array[:batch_size] for array in data)
    return svi.init(jax.random.split(rng_key)[0], *batch, init_params=init_params, **kwargs)


def _epoch_program(
    update: Callable,
    batch_size: int,
    shuffle: bool,
    state: SVIState,
    rng_key: jax.Array,
    epoch: jax.Array,
    data: tuple[jax.Array, ...],
    arrays: list,
    *,
    static: Static,
) -> tuple[SVIState, jax.Array, jax.Array]:
    """One epoch: its rows from ``fold_in(split(rng_key)[1], epoch)``, then ``update`` on each minibatch."""
    kwargs = static.rebuild(arrays)
    num_data = data[0].shape[0]
    num_batches = num_data // batch_size
    key = jax.random.fold_in(jax.random.split(rng_key)[1], epoch)
    order = jax.random.permutation(key, num_data) if shuffle else jnp.arange(num_data)
    rows = order[: num_batches * batch_size].reshape(num_batches, batch_size)

    def step(state: SVIState, batch: jax.Array) -> tuple[SVIState, jax.Array]:
        return update(state, *(array[batch] for array in data), **kwargs)

    state, losses = jax.lax.scan(step, state, rows)
    return state, losses, jnp.mean(losses)


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
    * :meth:`fit` runs :meth:`init` and then the epochs.

    The programs belong to the trainer: calling it again with data of the same shapes
    and the same non-array keyword arguments compiles nothing, and dropping the trainer
    frees them. An epoch's key depends only on ``rng_key`` and the epoch's number, so
    the first ``k`` epochs of a longer run are those of a run of ``k`` epochs, bit for
    bit.

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
    >>> trainer = npvi.Trainer(svi, batch_size=32)
    >>> first = trainer.fit(jax.random.PRNGKey(0), 5, x, y, progress_bar=False)
    >>> more = trainer.fit(jax.random.PRNGKey(1), 5, x, y, init_state=first.state, progress_bar=False)
    >>> more.losses.shape  # 5 epochs of 3 steps, on the programs the first fit compiled
    (15,)
    """

    def __init__(self, svi: SVI, *, batch_size: int, shuffle: bool = True, stable_update: bool = False) -> None:
        if not isinstance(svi, SVI):
            raise TypeError(f"Trainer: expected a numpyro.infer.SVI, got {type(svi).__name__}")
        self.svi = svi
        self.batch_size = _check_positive_int("fit", "batch_size", batch_size)
        self.shuffle = bool(shuffle)
        self.stable_update = bool(stable_update)
        self._init = (
            jax.jit(functools.partial(_init_program, svi, self.batch_size), static_argnames=("static",))
            if isinstance(svi.guide, MeanFieldGuide)
            else None
        )
        update = svi.stable_update if stable_update else svi.update
        self._epoch = jax.jit(
            functools.partial(_epoch_program, update, self.batch_size, self.shuffle), static_argnames=("static",)
        )

    def _prepare(self, data: tuple, kwargs: dict[str, Any]) -> tuple[tuple[jax.Array, ...], list, Static]:
        """Check the data and the model, and split the keyword arguments (with ``num_data``) for the programs."""
        num_data = _check_data(data, self.batch_size)
        if NUM_DATA in kwargs:
            raise TypeError(f"fit passes {NUM_DATA}= itself (the length of the data, {num_data}); do not pass it")
        if not _accepts_num_data(self.svi.model):
            raise TypeError(
                f"fit calls the model as model(*minibatch, {NUM_DATA}=N), but the model does not take a "
                f"{NUM_DATA!r} keyword; add `{NUM_DATA}=None` to its signature and use "
                f"numpyro.plate('data', {NUM_DATA}, subsample_size=x.shape[0]) around the likelihood"
            )
        arrays, static = partition({**kwargs, NUM_DATA: num_data})
        return tuple(jnp.asarray(array) for array in data), arrays, static

    def init(
        self, rng_key: jax.Array, *data: jax.Array, init_params: dict[str, jax.Array] | None = None, **kwargs: Any
    ) -> SVIState:
        """``svi.init`` on the first minibatch (rows ``0:batch_size``) with the key ``split(rng_key)[0]``."""
        data, arrays, static = self._prepare(data, kwargs)
        return self._run_init(rng_key, data, init_params, arrays, static)

    def _run_init(self, rng_key: jax.Array, data: tuple, init_params: dict | None, arrays: list, static: Static):
        if self._init is not None:
            return self._init(rng_key, data, init_params, arrays, static=static)
        return _init_program(self.svi, self.batch_size, rng_key, data, init_params, arrays, static=static)

    def epoch(
        self, state: SVIState, rng_key: jax.Array, epoch: int, *data: jax.Array, **kwargs: Any
    ) -> tuple[SVIState, jax.Array]:
        """One pass over the data: the new state and the loss of each of its ``N // batch_size`` steps."""
        data, arrays, static = self._prepare(data, kwargs)
        state, losses, _ = self._epoch(state, rng_key, epoch, data, arrays, static=static)
        return state, losses

    def fit(
        self,
        rng_key: jax.Array,
        num_epochs: int,
        *data: jax.Array,
        progress_bar: bool = True,
        init_state: SVIState | None = None,
        init_params: dict[str, jax.Array] | None = None,
        **kwargs: Any,
    ) -> SVIRunResult:
        """Train for ``num_epochs`` epochs; the arguments and the result are those of :func:`npvi.fit`."""
        num_epochs = _check_positive_int("fit", "num_epochs", num_epochs)
        data, arrays, static = self._prepare(data, kwargs)
        state = self._run_init(rng_key, data, init_params, arrays, static) if init_state is None else init_state
        losses = []
        warned = False
        epochs = tqdm(range(1, num_epochs + 1), disable=not progress_bar, desc="fit", unit="epoch")
        for epoch in epochs:
            state, epoch_losses, mean_loss = self._epoch(state, rng_key, epoch, data, arrays, static=static)
            losses.append(epoch_losses)
            mean_loss = float(mean_loss)
            epochs.set_postfix_str(f"ELBO {-mean_loss:.4g}", refresh=False)
            if not math.isfinite(mean_loss) and not warned:
                warnings.warn(f"fit: the mean loss of epoch {epoch} is {mean_loss}", RuntimeWarning, stacklevel=2)
                warned = True
        losses = jnp.asarray(np.concatenate([np.asarray(epoch_losses) for epoch_losses in losses]))
        return SVIRunResult(self.svi.get_params(state), state, losses)


def fit(
    svi: SVI,
    rng_key: jax.Array,
    num_epochs: int,
    *data: jax.Array,
    batch_size: int,
    shuffle: bool = True,
    progress_bar: bool = True,
    stable_update: bool = False,
    init_state: SVIState | None = None,
    init_params: dict[str, jax.Array] | None = None,
    **kwargs: Any,
) -> SVIRunResult:
    r"""Train ``svi`` for ``num_epochs`` passes over minibatches of ``data``.

    Like :meth:`numpyro.infer.SVI.run`, but in epochs of minibatches (``num_epochs``
    counts passes over the data, not steps):

    * every epoch draws a permutation of the ``N`` examples from ``rng_key``
      (``shuffle=False`` keeps their order) and cuts it into
      ``N // batch_size`` minibatches; the last ``N % batch_size`` examples of
      the permutation are left out of that epoch, so every step has the same
      shape and compiles once;
    * one epoch is one jitted :func:`jax.lax.scan` of ``svi.update``, and with a
      :class:`~npvi.MeanFieldGuide` ``svi.init`` (on the first minibatch, key
      ``split(rng_key)[0]``) is one compiled program too;
    * the model (and guide) are called as
      ``model(*minibatch, num_data=N, **kwargs)``, where ``minibatch`` is the
      same rows of every array in ``data``;
    * a progress bar (``progress_bar=False`` switches it off) shows the mean
      ELBO estimate of the last epoch; a non-finite epoch loss gives a
      :class:`RuntimeWarning` once, and training goes on as
      :meth:`~numpyro.infer.SVI.run` does.

    ``fit(svi, ...)`` is ``npvi.Trainer(svi, batch_size=..., shuffle=...,
    stable_update=...).fit(...)``: it compiles its programs for this call. To train
    the same ``svi`` again without compiling (another run, more epochs from
    ``init_state``), keep a :class:`Trainer` and call its :meth:`~Trainer.fit`.

    Returns :class:`numpyro.infer.svi.SVIRunResult` with the final ``params``
    and ``state`` and the ``losses`` of every step, shape
    ``(num_epochs * (N // batch_size),)``.

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
    >>> result = npvi.fit(svi, jax.random.PRNGKey(0), 5, x, y, batch_size=32, progress_bar=False)
    >>> result.losses.shape
    (15,)
    """
    trainer = Trainer(svi, batch_size=batch_size, shuffle=shuffle, stable_update=stable_update)
    return trainer.fit(
        rng_key, num_epochs, *data, progress_bar=progress_bar, init_state=init_state, init_params=init_params, **kwargs
    )
