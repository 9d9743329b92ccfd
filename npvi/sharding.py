r"""Data parallelism with JAX's own sharding: which mesh, what is sharded, where the data live.

:func:`npvi.fit` (and :class:`npvi.Trainer`) and :class:`npvi.Predictive` take
``mesh=`` and ``data_axis=``: a :class:`jax.sharding.Mesh` with an axis named
``data_axis`` (``"data"`` unless told), or ``"all"`` for a one-axis mesh over
:func:`jax.devices`. The training step is then the same program with two
placements written into it:

* every minibatch is sharded over the data axis,
  ``NamedSharding(mesh, P(data_axis))`` on its first (example) dimension, so each of
  the :math:`n` devices of that axis holds :math:`B / n` of its rows;
* the variational parameters, the optimizer state and the keys are replicated,
  ``NamedSharding(mesh, P())``.

XLA's SPMD partitioner turns the sums over the minibatch (the likelihood, and with it
the gradient) into per-device partial sums and one all-reduce, so every device holds
the same gradient and takes the same optimizer step. The numbers are those of one
device up to the order of those sums.

Host data are placed once per call by :func:`place_data`: an array whose length
divides over the data axis is sharded over its examples (each device keeps
:math:`N / n` rows), any other is replicated (each device keeps all :math:`N` rows;
trim or pad the data to a multiple of :math:`n` to shard it). Arrays that are
already on the mesh stay where they are. Across processes, each process holds
its share and :func:`global_data` assembles the global arrays
(:func:`jax.make_array_from_process_local_data`); :func:`process_indices` says
which rows a process holds.

A mesh whose axes are ``Explicit`` (the default of :func:`jax.make_mesh` in JAX
0.10) is used as the same devices and axis names with ``Auto`` axes: npvi's
programs place data with sharding constraints and let the partitioner propagate
them, which NumPyro's models need (their operations carry no sharding of their own).

>>> import jax, numpy as np
>>> mesh = resolve_mesh("fit", "all", "data")
>>> mesh.axis_names, mesh.shape["data"] == jax.device_count()
(('data',), True)
>>> four = jax.sharding.AbstractMesh((4,), ("data",))  # the shape of a mesh of 4 devices
>>> check_batch_divides("fit", 30, four, "data")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: fit: batch_size 30 does not divide over the 4 devices ...; use a multiple of 4, e.g. 28 or 32
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

#: What ``mesh=`` takes besides a :class:`~jax.sharding.Mesh`: one axis over every device.
ALL = "all"


def resolve_mesh(owner: str, mesh: Mesh | str | None, data_axis: str) -> Mesh | None:
    """The mesh that ``mesh=`` names (``None``, ``"all"`` or a mesh with an axis ``data_axis``), with ``Auto`` axes.

    ``"all"`` is ``Mesh(jax.devices(), (data_axis,))``. A mesh without an axis named
    ``data_axis`` is a ``ValueError`` that names the axes it has.
    """
    if mesh is None:
        return None
    if not isinstance(data_axis, str):
        raise TypeError(f"{owner}: data_axis must be the name of a mesh axis (a str), got {data_axis!r}")
    if isinstance(mesh, str):
        if mesh != ALL:
            raise ValueError(f"{owner}: mesh must be a jax.sharding.Mesh, {ALL!r} or None, got {mesh!r}")
        return Mesh(np.array(jax.devices()), (data_axis,))
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{owner}: mesh must be a jax.sharding.Mesh, {ALL!r} or None, got {type(mesh).__name__}")
    if data_axis not in mesh.axis_names:
        raise ValueError(
            f"{owner}: the mesh has no axis named {data_axis!r} to shard the data over; its axes are "
            f"{tuple(mesh.axis_names)} (sizes {dict(mesh.shape)}). Pass data_axis= one of them, or build the "
            f"mesh with a {data_axis!r} axis, e.g. jax.make_mesh((jax.device_count(),), ({data_axis!r},))"
        )
    if all(kind == AxisType.Auto for kind in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def axis_size(mesh: Mesh, data_axis: str) -> int:
    """The number of devices along ``data_axis``."""
    return int(mesh.shape[data_axis])


def check_batch_divides(owner: str, batch_size: int, mesh: Mesh, data_axis: str, what: str = "batch_size") -> None:
    """``ValueError`` unless ``batch_size`` splits evenly over the devices of ``data_axis``, naming sizes that do."""
    n = axis_size(mesh, data_axis)
    if batch_size % n == 0:
        return
    below, above = batch_size // n * n, (batch_size // n + 1) * n
    examples = f"{below} or {above}" if below else f"{above}"
    raise ValueError(
        f"{owner}: {what} {batch_size} does not divide over the {n} devices of mesh axis {data_axis!r}; "
        f"use a multiple of {n}, e.g. {examples}"
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device of the mesh holds the whole array: ``NamedSharding(mesh, P())``."""
    return NamedSharding(mesh, PartitionSpec())


def examples_sharding(mesh: Mesh, data_axis: str) -> NamedSharding:
    """The first dimension split over ``data_axis``, the rest whole: ``NamedSharding(mesh, P(data_axis))``."""
    return NamedSharding(mesh, PartitionSpec(data_axis))


def _auto_typed(value: jax.Array) -> bool:
    """False for an array placed on a mesh with ``Explicit`` axes (its sharding is part of its type)."""
    sharding = value.sharding
    return not isinstance(sharding, NamedSharding) or all(kind == AxisType.Auto for kind in sharding.mesh.axis_types)


def _on_mesh(value: Any, sharding: NamedSharding) -> bool:
    return isinstance(value, jax.Array) and value.sharding.is_equivalent_to(sharding, value.ndim) and _auto_typed(value)


def place(value: Any, sharding: NamedSharding) -> jax.Array:
    """``value`` (an array, a key, a number) with ``sharding``; a no-op when it has it already.

    Across processes a host value (or an array on this process's devices) must be the
    same in every process: :func:`jax.device_put` checks that it is.
    """
    if _on_mesh(value, sharding):
        return value
    if jax.process_count() > 1 and isinstance(value, jax.Array) and value.is_fully_addressable and value.committed:
        # A process-local array: hand its value over as host data, which device_put places on the global mesh.
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(value)
            return jax.random.wrap_key_data(place(np.asarray(jax.random.key_data(value)), sharding), impl=impl)
        value = np.asarray(value)
    return jax.device_put(value, sharding)


def is_array(value: Any) -> bool:
    """A JAX or NumPy array (what npvi's programs take as arguments; other values are static)."""
    return isinstance(value, jax.Array | np.ndarray)


def place_tree(tree: Any, sharding: NamedSharding) -> Any:
    """:func:`place` on every array leaf of a pytree; other leaves (numbers, strings) stay as they are."""
    return jax.tree_util.tree_map(lambda leaf: place(leaf, sharding) if is_array(leaf) else leaf, tree)


def data_sharding(mesh: Mesh, data_axis: str, shape: tuple[int, ...]) -> NamedSharding:
    """Where :func:`place_data` puts an array of ``shape``: examples sharded if their count divides, else replicated."""
    if len(shape) >= 1 and shape[0] % axis_size(mesh, data_axis) == 0:
        return examples_sharding(mesh, data_axis)
    return replicated(mesh)


def place_data(mesh: Mesh, *data: Any, data_axis: str = "data") -> tuple[jax.Array, ...]:
    """Place data arrays on the mesh once: sharded over their examples where the length divides, else replicated.

    An array already on the mesh's devices (a global array from :func:`global_data`, or
    the result of an earlier call) keeps its placement: nothing is copied.

    >>> import jax, numpy as np
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    >>> (x,) = place_data(mesh, np.ones((8, 3)))
    >>> x.sharding.spec
    P('data',)
    """
    mesh = resolve_mesh("place_data", mesh, data_axis)
    placed = []
    for array in data:
        on_mesh = isinstance(array, jax.Array) and array.sharding.device_set == set(mesh.devices.flat)
        if on_mesh and _auto_typed(array):
            placed.append(array)  # on the mesh already, however it is split
        elif on_mesh and isinstance(array.sharding, NamedSharding):  # the same split, on the mesh's Auto twin
            placed.append(place(array, NamedSharding(mesh, array.sharding.spec)))
        else:
            placed.append(place(array, data_sharding(mesh, data_axis, np.shape(array))))
    return tuple(placed)


def process_indices(mesh: Mesh, num_data: int, data_axis: str = "data") -> np.ndarray:
    """The rows of an ``num_data``-example array that this process holds when it is sharded over ``data_axis``.

    In the order :func:`global_data` (and :func:`jax.make_array_from_process_local_data`)
    expects them: load ``x[process_indices(mesh, len(x))]`` in each process, and the
    global array is ``x`` itself. With :func:`jax.devices` in their usual order these
    are one contiguous block per process, process 0 first.
    """
    mesh = resolve_mesh("process_indices", mesh, data_axis)
    sharding = examples_sharding(mesh, data_axis)
    if num_data % axis_size(mesh, data_axis):
        check_batch_divides("process_indices", num_data, mesh, data_axis, what="the number of examples")
    indices = sharding.addressable_devices_indices_map((num_data,)).values()
    return np.concatenate([np.arange(*bounds) for bounds in sorted({index[0].indices(num_data) for index in indices})])


def global_data(mesh: Mesh, *local_data: Any, data_axis: str = "data") -> tuple[jax.Array, ...]:
    """Global arrays from each process's share of the examples (``jax.make_array_from_process_local_data``).

    Every process calls it with its own rows (those of :func:`process_indices`), all of
    the same length; the result is one array over all processes, sharded over
    ``data_axis``, that :func:`npvi.fit` trains on as if it held the concatenated data.
    In one process it is :func:`place_data` of arrays whose length divides.
    """
    sharding = examples_sharding(resolve_mesh("global_data", mesh, data_axis), data_axis)
    return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(array)) for array in local_data)


def local_rows(owner: str, array: Any) -> Any:
    """The rows of ``array`` this process holds (the array itself unless it spans processes), for checks on values.

    A global array must then be split over its first dimension only (as
    :func:`global_data` makes it); its rows here are this process's, in order.
    """
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return array
    blocks = {}
    for shard in array.addressable_shards:
        bounds = [s.indices(size) for s, size in zip(shard.index, array.shape, strict=False)]
        if any(b != (0, size, 1) for b, size in zip(bounds[1:], array.shape[1:], strict=True)):
            raise ValueError(
                f"{owner}: a data array that spans processes must be split over its first (example) dimension "
                f"only, got the sharding {array.sharding}; make it with npvi.sharding.global_data"
            )
        blocks.setdefault(bounds[0] if bounds else (0, 1, 1), shard.data)
    return (
        np.concatenate([np.asarray(blocks[key]) for key in sorted(blocks)])
        if array.ndim
        else np.asarray(next(iter(blocks.values())))
    )
