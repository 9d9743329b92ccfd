"""Run Python-heavy NumPyro code under :func:`jax.jit` with only the arrays as traced arguments.

Eager JAX compiles every new operation on its first use, so tracing a model
eagerly (as guide prototypes and ``svi.init`` do) costs seconds of op-by-op
compilation. One :func:`jax.jit` of the whole trace compiles a single program
instead. Model arguments mix arrays with static values (``None``, an int
``num_data`` that sizes a plate), so only the array leaves may become tracers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def split_arrays(tree: Any) -> tuple[list[jax.Array], Callable[[list[jax.Array]], Any]]:
    """The array leaves of ``tree``, and ``rebuild(arrays)`` that puts (traced) arrays back in their place.

    >>> arrays, rebuild = split_arrays(((np.ones(2), None), {"num_data": 5}))
    >>> len(arrays), rebuild([np.zeros(2)])
    (1, ((array([0., 0.]), None), {'num_data': 5}))
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_array = [isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves]

    def rebuild(arrays: list[jax.Array]) -> Any:
        it = iter(arrays)
        return treedef.unflatten([next(it) if array else leaf for leaf, array in zip(leaves, is_array, strict=True)])

    return [leaf for leaf, array in zip(leaves, is_array, strict=True) if array], rebuild


def jit_once(fun: Callable) -> Callable:
    """:func:`jax.jit` for a program that runs once per call but does real work (a batch of predictive draws).

    On the CPU, XLA's default LLVM optimisation level (3) spends most of such a
    program's compile time: the digits demo's predictive program compiles in 6.6 s
    at level 3 and 1.5 s at level 2, and runs as fast (0.20 s against 0.21 s). Hot
    training steps keep the default, where level 3 ran a few percent faster.
    Other backends keep their defaults.
    """
    return jit_at_cpu_level(fun, 2)


def jit_setup(fun: Callable) -> Callable:
    """:func:`jax.jit` for a set-up program whose run time is negligible (an init, a prototype, a key split).

    Such a program is mostly random-number hashing and traced-then-discarded model
    code; on the CPU, XLA's lowest optimisation level (0) compiles the digits demo's
    ``svi.init`` in 0.86 s instead of 1.2 s (level 2), and it runs in 5 ms instead of
    2.5 ms. Keys come out bit for bit the same at every level; floats from
    transcendental functions may not (AutoNormal's initial locations moved by 3e-6
    relative, so its setup keeps :func:`jit_once`). Other backends keep their defaults.
    """
    return jit_at_cpu_level(fun, 0)


def jit_at_cpu_level(fun: Callable, level: int) -> Callable:
    """:func:`jax.jit` with XLA's CPU optimisation ``level`` (0-3) on the CPU; other backends keep their defaults."""
    if jax.default_backend() != "cpu":
        return jax.jit(fun)
    return jax.jit(fun, compiler_options={"xla_backend_optimization_level": level})
