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
