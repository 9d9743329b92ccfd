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

With ``mesh=`` the batch of :math:`B` rows is split over the devices and the sum
over it becomes per-device partial sums and one all-reduce; :math:`N`, :math:`B`
and the KL are those of the whole minibatch, so :math:`\mathcal{L}` is unchanged.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
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

from npvi.elbo import ELBO
from npvi.guides import MeanFieldGuide
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
from npvi.validation import check_finite, check_numeric, check_observed, is_concrete

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
        raise ValueError(
            "fit needs at least one data array (e.g. fit(svi, key, x, y, num_epochs=..., batch_size=...)), got none"
        )
    lengths = []
    for position, array in enumerate(data):
        if isinstance(array, int | float) and not isinstance(array, bool):
            raise TypeError(
                f"fit: data argument {position} is the number {array!r}, not an array; the counts are keywords: "
                f"fit(svi, key, x, y, num_epochs=..., batch_size=...)"
            )
        if not hasattr(array, "shape") or len(array.shape) == 0:
            raise TypeError(
                f"fit: data argument {position} must be an array with the examples on axis 0, "
                f"got {type(array).__name__} with shape {getattr(array, 'shape', None)}"
            )
        check_numeric("fit", f"data argument {position}", array)
        check_finite("fit", f"data argument {position}", local_rows("fit", array))
        lengths.append(int(array.shape[0]))
    if len(set(lengths)) != 1:
        raise ValueError(f"fit: every data array must have the same length on axis 0, got lengths {lengths}")
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


def _observed_scales(model: Callable[..., Any], batch: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``{observed site: its scale}`` for one minibatch, from an abstract trace; factors are left out."""

    def read(batch: tuple) -> dict[str, Any]:
        with handlers.block():
            trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*batch, **kwargs)
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

    Step ``t`` of the run (counted from 0 over the epochs of one call) uses
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
    >>> trainer = npvi.Trainer(svi, batch_size=32, kl_schedule=optax.linear_schedule(0.0, 1.0, 10))
    >>> first = trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=5, progress_bar=False)
    >>> more = trainer.fit(jax.random.PRNGKey(1), x, y, num_epochs=5, init_state=first.state, progress_bar=False)
    >>> more.losses.shape  # 5 epochs of 3 steps, on the programs the first fit compiled
    (15,)
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
        self.mesh = resolve_mesh("fit", mesh, data_axis)
        self.data_axis = data_axis
        self._checked: set[tuple] = set()  # data shapes and settings whose data and scales were checked
        init = functools.partial(_init_program, svi, self.batch_size)
        epoch = functools.partial(_epoch_program, svi, self.stable_update, self.batch_size, self.shuffle, kl_schedule)
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

    def _replicate(self, tree: Any) -> Any:
        """``tree`` replicated over the mesh (placed once; a no-op where it is already); as it is without a mesh."""
        return tree if self._replicated is None else place_tree(tree, self._replicated)

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
        kwargs = {**kwargs, NUM_DATA: num_data}
        arrays, static = partition(kwargs)
        if self.mesh is None:
            data = tuple(jnp.asarray(array) for array in data)
        else:  # placed once per call: sharded over the examples where their number divides, else replicated
            data = place_data(self.mesh, *data, data_axis=self.data_axis)
            arrays = self._replicate(arrays)
        shapes = tuple((array.shape, array.dtype) for array in data)
        if (shapes, static) not in self._checked:
            local = tuple(local_rows("fit", array) for array in data)  # each process checks the rows it holds
            _check_observed_data(self.svi.model, local, kwargs)
            if self.check_scale and self.batch_size < num_data:
                batch = tuple(jax.ShapeDtypeStruct((self.batch_size, *array.shape[1:]), array.dtype) for array in data)
                _check_scales(_observed_scales(self.svi.model, batch, kwargs), num_data, self.batch_size)
            self._checked.add((shapes, static))
        return data, arrays, static

    def init(
        self, rng_key: jax.Array, *data: jax.Array, init_params: dict[str, jax.Array] | None = None, **kwargs: Any
    ) -> SVIState:
        """``svi.init`` on the first minibatch (rows ``0:batch_size``) with the key ``split(rng_key)[0]``."""
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
        data, arrays, static = self._prepare(data, kwargs)
        state, rng_key = self._replicate((state, rng_key))
        state, losses, _ = self._epoch(state, rng_key, epoch, data, arrays, static=static)
        return state, losses

    def fit(
        self,
        rng_key: jax.Array,
        *data: jax.Array,
        num_epochs: int,
        progress_bar: bool = True,
        init_state: SVIState | None = None,
        init_params: dict[str, jax.Array] | None = None,
        **kwargs: Any,
    ) -> SVIRunResult:
        """Train for ``num_epochs`` epochs; the arguments and the result are those of :func:`npvi.fit`."""
        num_epochs = _check_positive_int("fit", "num_epochs", num_epochs)
        data, arrays, static = self._prepare(data, kwargs)
        rng_key = self._replicate(rng_key)
        state = self._run_init(rng_key, data, init_params, arrays, static) if init_state is None else init_state
        state = self._replicate(state)
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
        # device_put, not jnp.asarray: asarray compiles a small program for every new number of steps.
        losses = jax.device_put(np.concatenate([np.asarray(epoch_losses) for epoch_losses in losses]))
        return SVIRunResult(self.svi.get_params(state), state, losses)


def fit(
    svi: SVI,
    rng_key: jax.Array,
    *data: jax.Array,
    num_epochs: int,
    batch_size: int,
    shuffle: bool = True,
    progress_bar: bool = True,
    stable_update: bool = False,
    kl_schedule: Callable[[jax.Array], jax.Array] | None = None,
    check_scale: bool = True,
    init_state: SVIState | None = None,
    init_params: dict[str, jax.Array] | None = None,
    mesh: Mesh | str | None = None,
    data_axis: str = "data",
    **kwargs: Any,
) -> SVIRunResult:
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
      ``split(rng_key)[0]``) is one compiled program too;
    * the model (and guide) are called as
      ``model(*minibatch, num_data=N, **kwargs)``, where ``minibatch`` is the
      same rows of every array in ``data``; with minibatches, every observed site
      must carry the scale ``N / batch_size`` (the likelihood in
      ``numpyro.plate("data", num_data, subsample_size=x.shape[0])``), or ``fit``
      raises ``ValueError`` before training; ``check_scale=False`` turns the check
      off for a model that scales its likelihood another way;
    * ``kl_schedule``, an optax-style ``step -> kl_weight`` (e.g.
      ``optax.linear_schedule(0.0, 1.0, 1000)``), anneals :class:`npvi.ELBO`'s KL
      weight over the steps of this call, counted from 0;
    * a progress bar (``progress_bar=False`` switches it off) shows the mean
      ELBO estimate of the last epoch; a non-finite epoch loss gives a
      :class:`RuntimeWarning` once, and training goes on as
      :meth:`~numpyro.infer.SVI.run` does;
    * ``mesh`` (a :class:`jax.sharding.Mesh` with an axis named ``data_axis``, or
      ``"all"`` for every device) trains data-parallel: each minibatch is split over
      the devices of ``data_axis`` and the params are replicated, with the losses of
      one device (see :class:`Trainer` and :doc:`scaling`); ``mesh=None``, the
      default, is one device.

    ``fit(svi, ...)`` is ``npvi.Trainer(svi, batch_size=..., ...).fit(...)``: it
    compiles its programs for this call. To train the same ``svi`` again without
    compiling (another run, more epochs from ``init_state``), keep a :class:`Trainer`
    and call its :meth:`~Trainer.fit`.

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
    >>> result = npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=5, batch_size=32, progress_bar=False)
    >>> result.losses.shape
    (15,)
    """
    trainer = Trainer(
        svi,
        batch_size=batch_size,
        shuffle=shuffle,
        stable_update=stable_update,
        kl_schedule=kl_schedule,
        check_scale=check_scale,
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
        **kwargs,
    )
