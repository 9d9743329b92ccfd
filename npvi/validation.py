"""Trace-time checks that turn bad input into clear errors instead of NaN losses.

Every message names the layer, what was expected and what was seen.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as dist
from numpyro.distributions import constraints


def is_concrete(value: Any) -> bool:
    """True when ``value`` holds numbers now (not a JAX tracer inside jit/vmap/grad)."""
    return not isinstance(value, jax.core.Tracer)


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
    """:func:`check_finite` and :func:`check_support` on every observed site of a model trace (factors aside)."""
    for name, site in trace.items():
        if site["type"] == "sample" and site["is_observed"] and not site["infer"].get("is_auxiliary"):
            check_finite(f"site {name!r}", "the observed data", site["value"])
            check_support(f"site {name!r}", site["fn"], site["value"])


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
