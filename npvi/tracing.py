"""Hand NumPyro code to JAX's tracing: model arguments split into traced arrays and a static rest,
and static metadata read from an abstract trace.

A compiled program takes the model's arrays (data, parameters) as arguments, so that one
program serves every call with arrays of the same shapes; everything else in the model's
arguments (``None``, an int ``num_data`` that sizes a plate, a string) is static: part of the
program's identity, as :func:`jax.jit`'s ``static_argnames`` are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

T = TypeVar("T")


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray)


class Static:
    """The non-array part of a pytree: its structure and its other leaves; hashable, so a ``jit`` static argument.

    >>> arrays, static = partition(((np.ones(2), None), {"num_data": 5}))
    >>> len(arrays), static.rebuild([np.zeros(2)])
    (1, ((array([0., 0.]), None), {'num_data': 5}))
    >>> static == partition(((np.ones(3), None), {"num_data": 5}))[1]
    True
    """

    def __init__(self, treedef: Any, leaves: tuple[Any, ...]) -> None:
        self.treedef = treedef
        self.leaves = leaves  # None where an array goes
        try:
            self._hash = hash((treedef, leaves))
        except TypeError:
            unhashable = [type(leaf).__name__ for leaf in leaves if not _hashable(leaf)]
            raise TypeError(
                f"the model's arguments must be arrays or hashable values (None, numbers, strings, tuples); "
                f"got unhashable {unhashable}. Pass arrays for data, and hashable settings for the rest"
            ) from None

    def rebuild(self, arrays: list[Any]) -> Any:
        """The original pytree with ``arrays`` (traced or not) back in their places."""
        it = iter(arrays)
        return self.treedef.unflatten([next(it) if leaf is _ARRAY else leaf for leaf in self.leaves])

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and self.treedef == other.treedef and self.leaves == other.leaves


class _ArraySlot:
    """Marks where an array leaf goes (hashable, equal only to itself)."""

    def __repr__(self) -> str:
        return "<array>"


_ARRAY = _ArraySlot()


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def partition(tree: Any) -> tuple[list[jax.Array], Static]:
    """The array leaves of ``tree`` (JAX or NumPy arrays), and the :class:`Static` rest that rebuilds it."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays = [leaf for leaf in leaves if _is_array(leaf)]
    return arrays, Static(treedef, tuple(_ARRAY if _is_array(leaf) else leaf for leaf in leaves))


@jax.tree_util.register_static
class _Box:
    """A pytree with no leaves: whatever it holds passes through :func:`jax.eval_shape` as static data."""

    def __init__(self, value: Any) -> None:
        self.value = value


def eval_static(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` run abstractly under :func:`jax.eval_shape`: no operation is computed, nothing compiles.

    ``fn`` returns static metadata only (site names, shapes, dtypes, layer settings), never
    an array: a value computed inside would be a tracer of a finished trace. ``args`` (pytrees
    of arrays) enter as abstract values; arrays that ``fn`` closes over instead stay concrete
    when nothing computes on them (observed data passed to a site unchanged, say), so checks
    on their values can run.

    >>> import jax.numpy as jnp
    >>> eval_static(lambda a: (a @ jnp.ones((3, 4))).shape, jnp.ones((2, 3)))
    (2, 4)
    """
    return jax.eval_shape(lambda *a: _Box(fn(*a)), *args).value
