r"""A minibatch training loop that runs each epoch on device.

Stepping ``svi.update`` from Python costs one dispatch per minibatch, which
dominates on small datasets. :func:`fit` compiles one epoch (a fresh
permutation of the data, then ``svi.update`` on each minibatch inside a
:func:`jax.lax.scan`) and calls it once per epoch.

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
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.svi import SVI, SVIRunResult
from tqdm import tqdm  # the text bar: tqdm.auto warns in Jupyter kernels without ipywidgets

from npvi.guides import MeanFieldGuide, NeedsConcreteSetup
from npvi.tracing import jit_at_cpu_level, jit_setup, split_arrays
from npvi.validation import check_finite

#: Keyword through which :func:`fit` tells the model the size of the full dataset.
NUM_DATA = "num_data"

#: A run of ``fit`` estimated below this many FLOPs compiles its epoch quickly (see :func:`_for_short_run`).
SHORT_RUN_FLOPS = 1e11

#: Compiled inits and epochs per SVI object, so that repeated fits (notebooks, sweeps) compile once.
_COMPILED: weakref.WeakKeyDictionary[SVI, dict[tuple, Callable]] = weakref.WeakKeyDictionary()


def _accepts_num_data(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and some callables have no signature
        return True
    return any(p.name == NUM_DATA or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    if batch_size > num_data:
        raise ValueError(f"fit: batch_size {batch_size} is larger than the data ({num_data} examples)")
    return num_data


def _compiled_epoch(
    svi: SVI, num_data: int, batch_size: int, shuffle: bool, stable_update: bool, kwargs: dict[str, Any]
) -> Callable[[Any, jax.Array, int, tuple[jax.Array, ...]], tuple[Any, jax.Array, jax.Array]]:
    """One jitted epoch ``(state, rng_key, epoch, data) -> (state, losses, mean loss)``.

    Its shuffle key is ``fold_in(split(rng_key)[1], epoch)``. The data enter as arguments,
    not as constants folded into the compiled program, so a later ``fit`` of the same
    ``svi`` with same-shaped data compiles nothing.
    """
    cache_key = _hashable("epoch", num_data, batch_size, shuffle, stable_update, tuple(sorted(kwargs.items())))
    cached = _COMPILED.setdefault(svi, {})
    if cache_key is not None and cache_key in cached:
        return cached[cache_key]
    update = svi.stable_update if stable_update else svi.update
    num_batches = num_data // batch_size

    @jax.jit
    def run_epoch(
        state: Any, rng_key: jax.Array, epoch: int, data: tuple[jax.Array, ...]
    ) -> tuple[Any, jax.Array, jax.Array]:
        # The epoch's key and mean loss are computed here too: eagerly, each costs an op-by-op compile.
        key = jax.random.fold_in(jax.random.split(rng_key)[1], epoch)
        order = jax.random.permutation(key, num_data) if shuffle else jnp.arange(num_data)
        rows = order[: num_batches * batch_size].reshape(num_batches, batch_size)

        def step(state: Any, batch: jax.Array) -> tuple[Any, jax.Array]:
            return update(state, *(array[batch] for array in data), **kwargs)

        state, losses = jax.lax.scan(step, state, rows)
        return state, losses, jnp.mean(losses)

    if cache_key is not None:
        cached[cache_key] = run_epoch
    return run_epoch


def _for_short_run(svi: SVI, run_epoch: Callable, args: tuple, num_steps: int) -> Callable:
    """``run_epoch``, or for a short run on the CPU the same epoch compiled at XLA's optimisation level 1.

    On the CPU the epoch's compile dominates a short run: level 1 compiles the digits
    demo's epoch in 2.8 s instead of 4.5 s and runs its steps about 15 % slower, a
    loss smaller than the saving while the run is below :data:`SHORT_RUN_FLOPS`.
    XLA's cost analysis of the epoch (its scan body counted once, so about one
    step's FLOPs) times ``num_steps`` estimates the run.
    """
    if jax.default_backend() != "cpu":
        return run_epoch
    try:
        analysis = run_epoch.lower(*args).cost_analysis()  # the trace is cached for the call that follows
    except NotImplementedError:
        return run_epoch
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    if flops is None or flops * num_steps > SHORT_RUN_FLOPS:
        return run_epoch
    cached = _COMPILED.setdefault(svi, {})
    key = ("short run", run_epoch)
    quick = cached.get(key) or jit_at_cpu_level(run_epoch.__wrapped__, 1)
    if any(value is run_epoch for value in cached.values()):  # kept only beside a kept epoch
        cached[key] = quick
    return quick


def _hashable(*parts: Any) -> tuple | None:
    try:
        hash(parts)
    except TypeError:  # e.g. an array among the keyword arguments
        return None
    return parts


def _first_batch(rng_key: jax.Array, data: tuple[jax.Array, ...], batch_size: int) -> tuple[jax.Array, tuple]:
    """The key and minibatch of ``svi.init``: ``split(rng_key)[0]`` and the first ``batch_size`` rows."""
    return jax.random.split(rng_key)[0], tuple(array[:batch_size] for array in data)


def _init(
    svi: SVI, rng_key: jax.Array, data: tuple, batch_size: int, init_params: dict | None, kwargs: dict[str, Any]
) -> Any:
    """``svi.init`` on the first minibatch, compiled as one program for a MeanFieldGuide, which saves seconds.

    A :class:`~npvi.MeanFieldGuide` can set itself up under ``jit`` unless it
    hands latents to AutoNormal, whose setup cannot run inside another ``jit``; then
    the guide sets itself up first (in its own compiled programs, see
    :mod:`npvi.auto_normal`), with the key ``svi.init`` would give it, and the rest
    of init still runs compiled. Other guides (whose setup may keep traced values) run
    ``svi.init`` eagerly as in NumPyro. The compiled init is kept for later fits of ``svi``.
    """
    guide = svi.guide
    if not isinstance(guide, MeanFieldGuide):
        init_key, batch = _first_batch(rng_key, data, batch_size)
        return svi.init(init_key, *batch, init_params=init_params, **kwargs)
    cache_key = _hashable("init", len(data), batch_size, tuple(sorted(kwargs.items()))) if init_params is None else None
    cached = _COMPILED.setdefault(svi, {})
    arrays, rebuild = split_arrays((data, init_params, kwargs))
    compiled = cached.get(cache_key) if cache_key is not None else None
    if compiled is None:

        def init(key: jax.Array, arrays: list[jax.Array]) -> Any:
            data, init_params, kwargs = rebuild(arrays)
            init_key, batch = _first_batch(key, data, batch_size)
            return svi.init(init_key, *batch, init_params=init_params, **kwargs)

        compiled = jit_setup(init)
        if cache_key is not None:
            cached[cache_key] = compiled
    try:
        return compiled(rng_key, arrays)
    except NeedsConcreteSetup:
        guide.weight_sites, guide._other_sites = None, None
    # Only the guide's setup runs outside; the rest of init still compiles and is kept for later fits
    # (1.4 s -> 0.003 s in a later fit of the same svi on the diabetes demo).
    setup_key, batch = jit_setup(functools.partial(_setup_inputs, batch_size=batch_size))(rng_key, data)
    with handlers.block():
        guide._setup(setup_key, *batch, **kwargs)
    return compiled(rng_key, arrays)


def _setup_inputs(rng_key: jax.Array, data: tuple, batch_size: int) -> tuple[jax.Array, tuple]:
    """The guide's setup key in ``svi.init`` (and the first minibatch), computed in one program.

    SVI.init seeds the guide with ``split(init_key, 3)[2]``; the guide's first draw,
    its setup key, is that seed's first split: ``split(seed)[1]``, as in ``handlers.seed``.
    """
    init_key, batch = _first_batch(rng_key, data, batch_size)
    return jax.random.split(jax.random.split(init_key, 3)[2])[1], batch


def fit(
    svi: SVI,
    rng_key: jax.Array,
    num_epochs: int,
    *data: jax.Array,
    batch_size: int,
    shuffle: bool = True,
    progress_bar: bool = True,
    stable_update: bool = False,
    init_state: Any = None,
    init_params: dict[str, jax.Array] | None = None,
    **kwargs: Any,
) -> SVIRunResult:
    r"""Train ``svi`` for ``num_epochs`` passes over minibatches of ``data``.

    Like :meth:`numpyro.infer.SVI.run`, but in epochs of minibatches:

    * every epoch draws a permutation of the ``N`` examples from ``rng_key``
      (``shuffle=False`` keeps their order) and cuts it into
      ``N // batch_size`` minibatches; the last ``N % batch_size`` examples of
      the permutation are left out of that epoch, so every step has the same
      shape and compiles once;
    * one epoch is one jitted :func:`jax.lax.scan` of ``svi.update``;
    * the model (and guide) are called as
      ``model(*minibatch, num_data=N, **kwargs)``, where ``minibatch`` is the
      same rows of every array in ``data``;
    * with a :class:`~npvi.MeanFieldGuide`, ``svi.init`` runs as one compiled
      program too, and the compiled init and epoch are kept for later fits of
      the same ``svi`` with same-shaped data;
    * a progress bar (``progress_bar=False`` switches it off) shows the mean
      ELBO estimate of the last epoch; a non-finite epoch loss gives a
      :class:`RuntimeWarning` once, and training goes on as
      :meth:`~numpyro.infer.SVI.run` does.

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
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int | np.integer) or num_epochs < 1:
        raise ValueError(f"fit: num_epochs must be a positive int, got {num_epochs!r}")
    num_data = _check_data(data, batch_size)
    if NUM_DATA in kwargs:
        raise TypeError(f"fit passes {NUM_DATA}= itself (the length of the data, {num_data}); do not pass it")
    if not _accepts_num_data(svi.model):
        raise TypeError(
            f"fit calls the model as model(*minibatch, {NUM_DATA}=N), but the model does not take a "
            f"{NUM_DATA!r} keyword; add `{NUM_DATA}=None` to its signature and use "
            f"numpyro.plate('data', {NUM_DATA}, subsample_size=x.shape[0]) around the likelihood"
        )
    data = tuple(jnp.asarray(array) for array in data)
    kwargs[NUM_DATA] = num_data
    # init uses split(rng_key)[0] and the epochs split(rng_key)[1], both inside their compiled programs.
    state = _init(svi, rng_key, data, batch_size, init_params, kwargs) if init_state is None else init_state

    run_epoch = _compiled_epoch(svi, num_data, batch_size, shuffle, stable_update, kwargs)
    run_epoch = _for_short_run(svi, run_epoch, (state, rng_key, 1, data), num_epochs * (num_data // batch_size))
    losses = []
    warned = False
    epochs = tqdm(range(1, num_epochs + 1), disable=not progress_bar, desc="fit", unit="epoch")
    for epoch in epochs:
        state, epoch_losses, mean_loss = run_epoch(state, rng_key, epoch, data)
        losses.append(epoch_losses)
        mean_loss = float(mean_loss)
        epochs.set_postfix_str(f"ELBO {-mean_loss:.4g}", refresh=False)
        if not math.isfinite(mean_loss) and not warned:
            warnings.warn(f"fit: the mean loss of epoch {epoch} is {mean_loss}", RuntimeWarning, stacklevel=2)
            warned = True
    # Joined on the host: an eager concatenate would compile.
    losses = jnp.asarray(np.concatenate([np.asarray(epoch_losses) for epoch_losses in losses]))
    return SVIRunResult(svi.get_params(state), state, losses)
