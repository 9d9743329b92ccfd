"""Trace-time checks that turn bad input into clear errors instead of NaN losses.

Every message names the layer, what was expected and what was seen.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as dist
from numpyro.distributions import constraints


def is_concrete(value: Any) -> bool:
    """True when ``value`` holds numbers now (not a JAX tracer inside jit/vmap/grad)."""
    return not isinstance(value, jax.core.Tracer)


def check_positive_number(owner: str, what: str, value: Any) -> float:
    """``value`` as a float if it is a positive finite number (not a bool), else a ``ValueError`` naming it.

    >>> check_positive_number("MatrixVariateNormal", "init_scale", 0.0)
    Traceback (most recent call last):
    ...
    ValueError: MatrixVariateNormal: init_scale must be a positive finite number, got 0.0
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{owner}: {what} must be a positive finite number, got {value!r}")
    return float(value)


def check_numeric(owner: str, what: str, value: Any) -> None:
    """Raise ``TypeError`` for an array of strings, objects or other non-numbers (its values are not printed).

    >>> check_numeric("fit", "data argument 1", np.array(["cat", "dog"]))
    Traceback (most recent call last):
    ...
    TypeError: fit: data argument 1 must hold numbers (bool, int or float), got an array of dtype <U3
    """
    dtype = getattr(value, "dtype", None)
    if dtype is not None and np.dtype(dtype).kind not in "biufc":
        raise TypeError(f"{owner}: {what} must hold numbers (bool, int or float), got an array of dtype {dtype}")


def check_support(owner: str, fn: dist.Distribution, value: Any) -> None:
    """Check concrete observed data against the support of their distribution ``fn``.

    ``ValueError`` names how many values fall outside the support and shows one;
    ``TypeError`` for values of a dtype the distribution cannot score (float labels for a
    ``Categorical``). Data computed inside a trace, or a support that depends on traced
    parameters, cannot be checked here and pass.
    """
    if not is_concrete(value) or not all(is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(fn.support)):
        return
    array = np.asarray(value)
    with jax.ensure_compile_time_eval():  # concrete values inside a trace: check them now
        inside = np.asarray(fn.support(value))
    if not inside.all():
        position = tuple(int(i) for i in np.argwhere(~inside)[0])
        example = np.asarray(array[position]).tolist()
        raise ValueError(
            f"{owner}: {int((~inside).sum())} of the {inside.size} observed values are outside the support of "
            f"{type(base_distribution(fn)).__name__} ({fn.support}), e.g. {example!r} at index {position}"
        )
    if fn.support.is_discrete and array.dtype.kind == "f":
        try:
            fn.log_prob(value)
        except (TypeError, IndexError):
            raise TypeError(
                f"{owner}: the observed data are {array.dtype}, but {type(base_distribution(fn)).__name__} "
                "needs integer values; pass them as integers, e.g. y.astype(jnp.int32)"
            ) from None


def check_observed(trace: dict[str, dict[str, Any]]) -> None:
    """Check every observed site of a model trace (factors aside): finite, of a shape it scores once, in its support.

    :func:`check_finite`, then :func:`check_one_hot_labels` and :func:`check_observed_shape`
    (shapes only, so they run on traced values too), then :func:`check_support`.
    """
    for name, site in trace.items():
        if site["type"] == "sample" and site["is_observed"] and not site["infer"].get("is_auxiliary"):
            check_finite(f"site {name!r}", "the observed data", site["value"])
            check_one_hot_labels(name, site["fn"], site["value"])
            check_observed_shape(name, site)
            check_support(f"site {name!r}", site["fn"], site["value"])


def check_one_hot_labels(name: str, fn: dist.Distribution, value: Any) -> None:
    """``ValueError`` for labels of shape ``(..., K)`` given to a ``Categorical`` of ``K`` classes (one-hot labels).

    A ``Categorical`` scores class indices of its batch shape; one-hot rows (Keras'
    ``categorical_crossentropy`` habit) would broadcast against it instead.

    >>> check_one_hot_labels("y", dist.Categorical(logits=jnp.zeros((4, 3))), jnp.eye(3)[jnp.array([0, 1, 2, 0])])
    Traceback (most recent call last):
    ...
    ValueError: site 'y': the observed labels have shape (4, 3), one row of 3 values per example, but Categorical \
takes one class index per example, shape (4,). For one-hot labels pass y.argmax(-1) (as integers), or use \
dist.OneHotCategorical
    """
    base = base_distribution(fn)
    if not isinstance(base, dist.CategoricalLogits | dist.CategoricalProbs):
        return
    num_classes = jnp.shape(base.logits if isinstance(base, dist.CategoricalLogits) else base.probs)[-1]
    shape, batch = tuple(jnp.shape(value)), tuple(fn.batch_shape)
    if len(shape) == len(batch) + 1 and shape[-1] == num_classes and shape[:-1] == batch:
        raise ValueError(
            f"site {name!r}: the observed labels have shape {shape}, one row of {num_classes} values per example, "
            f"but {type(base).__name__.removesuffix('Logits').removesuffix('Probs')} takes one class index per "
            f"example, shape {batch}. For one-hot labels pass y.argmax(-1) (as integers), or use "
            "dist.OneHotCategorical"
        )


def check_observed_shape(name: str, site: dict[str, Any]) -> None:
    """``ValueError`` when an observed value inside a plate broadcasts against its distribution's batch shape.

    The log-likelihood of a site has the shape ``broadcast(value batch shape, fn.batch_shape)``.
    When that is larger than the value's own batch shape, each observation is scored more than
    once: ``y`` of shape ``(n, 1)`` against predictions of shape ``(n,)`` gives an ``(n, n)``
    log-likelihood, every target against every prediction, and training fits a constant
    without a word. Sites outside any plate are left alone.

    >>> site = {"fn": dist.Normal(jnp.zeros(4), 1.0), "value": jnp.zeros((4, 1)), "cond_indep_stack": ["data"]}
    >>> check_observed_shape("y", site)
    Traceback (most recent call last):
    ...
    ValueError: site 'y': the observed value has shape (4, 1), but its Normal has batch shape (4,), so \
log_prob broadcasts them to (4, 4) and scores each of the 4 observations 4 times. Give both the same shape: \
drop the value's extra axis (y[:, 0] for targets of shape (n, 1)), or the prediction's (mu[..., 0] for a \
network output of shape (n, 1))
    """
    if not site["cond_indep_stack"]:
        return
    fn = site["fn"]
    shape = tuple(jnp.shape(site["value"]))
    event_ndim = len(fn.event_shape)
    value_batch = shape[: len(shape) - event_ndim]
    try:
        scored = tuple(np.broadcast_shapes(value_batch, tuple(fn.batch_shape)))
    except ValueError:
        return  # shapes that do not broadcast at all: NumPyro's own error says so
    if scored == value_batch:
        return
    times = math.prod(scored) // max(math.prod(value_batch), 1)
    raise ValueError(
        f"site {name!r}: the observed value has shape {shape}, but its {type(base_distribution(fn)).__name__} has "
        f"batch shape {tuple(fn.batch_shape)}, so log_prob broadcasts them to {scored} and scores each of the "
        f"{math.prod(value_batch)} observations {times} times. Give both the same shape: drop the value's extra "
        "axis (y[:, 0] for targets of shape (n, 1)), or the prediction's (mu[..., 0] for a network output of "
        "shape (n, 1))"
    )


def check_rng_key(owner: str, key: Any, call: str) -> None:
    """``TypeError`` unless ``key`` is a JAX PRNG key (``jax.random.key(0)`` or the raw ``jax.random.PRNGKey(0)``).

    ``call`` shows the expected call, e.g. ``"fit(svi, rng_key, x, y, num_epochs=..., batch_size=...)"``:
    a key left out shifts every argument by one, and the data end up where the key goes.

    >>> check_rng_key("fit", 0, "fit(svi, rng_key, x, y, ...)")
    Traceback (most recent call last):
    ...
    TypeError: fit: rng_key must be a JAX PRNG key, got the int 0; use jax.random.PRNGKey(0) (or jax.random.key(0))
    """
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        raise TypeError(
            f"{owner}: rng_key must be a JAX PRNG key, got the int {key}; use jax.random.PRNGKey({key}) "
            f"(or jax.random.key({key}))"
        )
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
    elif dtype is not None and np.dtype(dtype) == np.uint32 and len(shape) == 1 and shape[0] in (2, 4):
        return  # a raw key: threefry (2 words) or rbg (4 words)
    seen = f"a {dtype} array of shape {shape}" if dtype is not None else f"{type(key).__name__}"
    raise TypeError(
        f"{owner}: rng_key must be one JAX PRNG key (jax.random.PRNGKey(0) or jax.random.key(0)), got {seen}; "
        f"the call is {call}"
    )


def check_array_like(owner: str, what: str, value: Any) -> None:
    """``TypeError`` for a pandas ``DataFrame`` (its columns may hold several dtypes): pass its values instead.

    A ``Series`` or any array with one ``dtype`` passes.
    """
    if hasattr(value, "columns") and hasattr(value, "to_numpy") and not hasattr(value, "dtype"):
        rows, columns = getattr(value, "shape", ("?", "?"))
        raise TypeError(
            f"{owner}: {what} is a {type(value).__module__.split('.')[0]} {type(value).__name__} "
            f"({rows} rows x {columns} columns); pass its values as one array, e.g. df.to_numpy(dtype='float32')"
        )


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    """Whether each array is free of NaN and infinity: one program (one compile) for the whole list."""
    return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


def warn_if_not_finite(owner: str, what: str, tree: Any, hint: str = "") -> bool:
    """Warn (``RuntimeWarning``) when a concrete floating array of ``tree`` holds NaN or infinity; True if it did.

    For results that are still usable in part (params of a diverged fit, draws with a NaN
    column): a warning, not an error. Tracers are skipped (nothing to look at inside ``jit``).

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_not_finite("Predictive", "params", {"w": jnp.array([1.0, jnp.nan])})
    True
    >>> print(caught[0].message)
    Predictive: params hold non-finite values (NaN or infinity) in ['w']; what is computed from them is NaN too
    """
    checked = [
        (jax.tree_util.keystr(path, simple=True, separator="."), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if is_concrete(leaf) and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    with jax.ensure_compile_time_eval():  # concrete arrays stay concrete inside a caller's jit
        finite = np.asarray(_all_finite([leaf for _, leaf in checked])) if checked else []
    paths = [path for (path, _), ok in zip(checked, finite, strict=True) if not ok]
    if paths:
        where = "" if paths == [""] else f" in {paths}"
        message = f"{owner}: {what} hold non-finite values (NaN or infinity){where}; what is computed from them is NaN"
        message += " too"
        warnings.warn(message + (f"; {hint}" if hint else ""), RuntimeWarning, stacklevel=3)
    return bool(paths)


def check_finite(owner: str, what: str, value: Any) -> None:
    """Raise ``ValueError`` if a concrete array holds NaN or infinity.

    ``owner`` names where the array belongs, e.g. ``"layer 'l1'"`` or ``"site 'y'"``.
    """
    if not is_concrete(value) or not jnp.issubdtype(jnp.result_type(value), jnp.inexact):
        return
    finite = np.isfinite(np.asarray(value))
    if not finite.all():
        raise ValueError(
            f"{owner}: {what} must be finite, but {finite.size - int(finite.sum())} of its "
            f"{finite.size} values are NaN or infinite"
        )


def base_distribution(d: dist.Distribution) -> dist.Distribution:
    """Strip ``Independent`` and ``ExpandedDistribution`` wrappers."""
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    return d


def check_distribution_args(layer: str, what: str, d: dist.Distribution) -> None:
    """Check a distribution's concrete parameters against its ``arg_constraints``.

    NumPyro validates parameters at construction unless ``validate_args=False``
    (or validation is switched off); this catches such priors, which would
    otherwise surface as a NaN loss.
    """
    base = base_distribution(d)
    for param, constraint in base.arg_constraints.items():
        if constraints.is_dependent(constraint) or param not in vars(base):
            continue
        value = getattr(base, param)
        if not is_concrete(value):
            continue
        with jax.ensure_compile_time_eval():  # concrete values inside a trace: check them now, as NumPyro does
            valid = constraint(value)
        if not np.all(np.asarray(valid)):
            raise ValueError(
                f"layer {layer!r}: {what} {type(base).__name__} needs a valid {param} "
                f"(expected {constraint}), got {np.asarray(value).tolist()!r}"
            )


def broadcast_to_event(
    layer: str, what: str, d: dist.Distribution, shape: tuple[int, ...]
) -> dist.Distribution:
    """Return ``d`` with batch shape ``()`` and event shape ``shape``.

    ``d.batch_shape + d.event_shape`` must broadcast to ``shape`` with the event
    dimensions matching exactly; ``Normal(0, 1)`` becomes an ``(in, units)``
    independent Normal and a per-unit scale vector broadcasts along the inputs.
    """
    if not isinstance(d, dist.Distribution):
        raise TypeError(
            f"layer {layer!r}: {what} must be a numpyro Distribution or a callable "
            f"(name, shape, dtype) -> Distribution, got {type(d).__name__}"
        )
    event_ndim = len(d.event_shape)
    batch_target = shape[: len(shape) - event_ndim]
    seen = tuple(d.batch_shape) + tuple(d.event_shape)
    if event_ndim > len(shape) or tuple(d.event_shape) != shape[len(shape) - event_ndim :]:
        raise ValueError(
            f"layer {layer!r}: {what} has shape {seen} (event shape {tuple(d.event_shape)}), "
            f"which does not broadcast to the weight shape {shape}"
        )
    try:
        np.broadcast_shapes(tuple(d.batch_shape), batch_target)
        ok = len(d.batch_shape) <= len(batch_target) and np.broadcast_shapes(
            tuple(d.batch_shape), batch_target
        ) == batch_target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"layer {layer!r}: {what} has shape {seen}, which does not broadcast to "
            f"the weight shape {shape}"
        )
    if tuple(d.batch_shape) != batch_target:
        d = d.expand(batch_target)
    return d.to_event(len(batch_target)) if batch_target else d
