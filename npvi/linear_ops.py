"""The linear operations ``op(x, W)`` that npvi's layers apply, one small class each.

Every estimator in :mod:`npvi.estimators` needs only that ``op`` is linear in the
kernel ``W``; an op also says how a bias broadcasts onto its output and which shape
Flipout's random signs take:

* :class:`Dense`: ``x @ W`` for ``x`` of shape ``(..., in)`` and ``W`` of shape
  ``(in, units)``; the signs are one per element of ``x`` and of the output.
* :class:`Convolution`: ``jax.lax.conv_general_dilated`` over 1, 2 or 3 spatial axes,
  with TF's kernel layout ``kernel_size + (in_channels, filters)``; the signs are one
  per example and channel, broadcast over the spatial positions (as TFP's
  ``Convolution*Flipout``), so every example sees one kernel sample at all its
  positions.
* :class:`Contraction`: ``jnp.einsum(equation, x, W)`` for any two-operand equation
  (Flax's ``DenseGeneral``/``LinearGeneral``, ``Einsum``); the signs are one per element
  of ``x`` and of the output, as for :class:`Dense`.
* :class:`Embedding`: a lookup ``W[ids]``, which is ``one_hot(ids) @ W``. Its input is
  :class:`OneHotRows`, the one-hot rows held as their ids and one value per row, so that
  ``x * x`` and ``x * s_in`` stay lookups and no ``(..., vocabulary)`` array is made; the
  input signs are one per id (the one sign of each one-hot row that is not multiplied by 0).

A new layer type needs one such class (``__call__``, ``add_bias``, ``sign_shapes``).

>>> import jax.numpy as jnp
>>> op = Convolution(strides=(1, 1), padding="SAME", dilation=(1, 1), channels_last=True)
>>> op(jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))).shape
(2, 5, 5, 4)
>>> op.sign_shapes((2, 5, 5, 3), (2, 5, 5, 4))
((2, 1, 1, 3), (2, 1, 1, 4))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


class LinearOp(Protocol):
    """What an estimator needs of a layer's operation."""

    def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array: ...

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array: ...

    def sign_shapes(self, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]: ...


def add_trailing_bias(out: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``out + bias`` with NumPy broadcasting (the bias on the output's trailing axes), or ``out`` without one."""
    return out if bias is None else out + bias


@dataclass(frozen=True)
class Dense:
    """``x @ W``: the operation of the dense layers."""

    def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return x @ kernel

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array:
        return add_trailing_bias(out, bias)

    def sign_shapes(self, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        return tuple(x_shape), tuple(out_shape)


@dataclass(frozen=True)
class Convolution:
    """An N-D convolution (``jax.lax.conv_general_dilated``) with a TF-layout kernel.

    ``x`` is ``(batch, *spatial, channels)`` when ``channels_last`` and
    ``(batch, channels, *spatial)`` otherwise; the kernel is always
    ``kernel_size + (in_channels, filters)``, as in TF for both data formats.
    """

    strides: tuple[int, ...]
    padding: str
    dilation: tuple[int, ...]
    channels_last: bool

    @property
    def rank(self) -> int:
        return len(self.strides)

    @property
    def channel_axis(self) -> int:
        return -1 if self.channels_last else 1

    def dimension_numbers(self) -> tuple[str, str, str]:
        spatial = _SPATIAL[self.rank]
        data = f"N{spatial}C" if self.channels_last else f"NC{spatial}"
        return data, f"{spatial}IO", data

    def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        dtype = jnp.result_type(x, kernel)
        return jax.lax.conv_general_dilated(
            x.astype(dtype),
            kernel.astype(dtype),
            window_strides=self.strides,
            padding=self.padding,
            rhs_dilation=self.dilation,
            dimension_numbers=self.dimension_numbers(),
        )

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array:
        if bias is None:
            return out
        return out + (bias if self.channels_last else bias.reshape(bias.shape + (1,) * self.rank))

    def sign_shapes(self, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        def per_channel(shape):
            kept = [0, len(shape) - 1 if self.channels_last else 1]
            return tuple(size if axis in kept else 1 for axis, size in enumerate(shape))

        return per_channel(x_shape), per_channel(out_shape)


_EQUATION = re.compile(r"^(\.\.\.)?([a-zA-Z]*),([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]*)$")


@dataclass(frozen=True)
class Contraction:
    """``jnp.einsum(equation, x, W)``: any contraction linear in the kernel.

    ``equation`` has two operands and an explicit output, e.g. ``"...d,dhk->...hk"``
    (a dense layer onto heads) or ``"...hk,hkd->...d"`` (heads back onto features);
    ``x``'s batch axes are the ``...``. The bias is added with NumPy broadcasting onto the
    output's trailing axes. Local reparameterization's ``op(x * x, sigma^2)`` is each output
    element's exact variance only if every index of ``x`` is in the kernel or the output (no
    axis of ``x`` is summed on its own), so other equations are refused here.

    >>> op = Contraction("...d,dhk->...hk")
    >>> op(jnp.ones((2, 3)), jnp.ones((3, 4, 5))).shape
    (2, 4, 5)
    """

    equation: str

    def __post_init__(self) -> None:
        match = _EQUATION.match(self.equation.replace(" ", ""))
        if match is None:
            raise ValueError(
                f"Contraction: expected an einsum equation with two operands and an explicit output, such as "
                f"'...d,dk->...k', got {self.equation!r}"
            )
        ellipsis_in, x_axes, kernel_axes, ellipsis_out, out_axes = match.groups()
        if bool(ellipsis_in) != bool(ellipsis_out):
            raise ValueError(f"Contraction {self.equation!r}: the batch axes '...' must be on both x and the output")
        summed_alone = sorted(set(x_axes) - set(kernel_axes) - set(out_axes))
        if summed_alone:
            raise ValueError(
                f"Contraction {self.equation!r}: the axes {summed_alone} of x are summed without the kernel; sum "
                "them before the layer (the estimators need every axis of x in the kernel or the output)"
            )

    def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jnp.einsum(self.equation, x, kernel)

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array:
        return add_trailing_bias(out, bias)

    def add_kernel_axes_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array:
        """``out + bias`` for a bias over the output axes that come from the kernel, in their order (Flax's Einsum).

        >>> op = Contraction("bd,dk->kb")
        >>> op.add_kernel_axes_bias(jnp.zeros((3, 2)), jnp.arange(3.0)).tolist()
        [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]
        """
        if bias is None:
            return out
        _, _, kernel_axes, _, out_axes = _EQUATION.match(self.equation.replace(" ", "")).groups()
        sizes = iter(jnp.shape(bias))
        trailing = [next(sizes) if axis in kernel_axes else 1 for axis in out_axes]
        return out + jnp.reshape(bias, [1] * (jnp.ndim(out) - len(out_axes)) + trailing)

    def sign_shapes(self, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        return tuple(x_shape), tuple(out_shape)


@dataclass(frozen=True)
class OneHotRows:
    """One-hot rows ``values[..., None] * one_hot(ids, num_classes)``, held without the one-hot.

    What :class:`Embedding` takes as ``x``. It supports what the estimators do to an input:
    ``rows * rows`` (the same ids; the values square), and ``rows * signs`` with signs of
    shape ``ids.shape + (1,)`` (one per row, from :meth:`Embedding.sign_shapes`).

    >>> rows = OneHotRows(jnp.array([2, 0]), jnp.ones(2), num_classes=3)
    >>> rows.shape, (rows * jnp.array([[-1.0], [1.0]])).values.tolist()
    ((2, 3), [-1.0, 1.0])
    """

    ids: jax.Array
    values: jax.Array
    num_classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.ids.shape, self.num_classes)

    @property
    def ndim(self) -> int:
        return self.ids.ndim + 1

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    def __mul__(self, other: Any) -> OneHotRows:
        if isinstance(other, OneHotRows):
            if other.ids is not self.ids:
                raise TypeError("OneHotRows: only rows of the same ids multiply (x * x)")
            return OneHotRows(self.ids, self.values * other.values, self.num_classes)
        other = jnp.asarray(other)
        if other.shape != (*self.ids.shape, 1):
            raise TypeError(
                f"OneHotRows: multiply by one value per row, shape {(*self.ids.shape, 1)}, got shape {other.shape}"
            )
        return OneHotRows(self.ids, self.values * other[..., 0], self.num_classes)

    __rmul__ = __mul__


@dataclass(frozen=True)
class Embedding:
    """A lookup ``x @ W`` for one-hot ``x`` (:class:`OneHotRows`): ``values[..., None] * W[ids]``.

    The kernel is ``(vocabulary, features)``; the output is ``ids.shape + (features,)``. A
    row of ``x`` has one non-zero element, so Flipout's input signs ``s_in`` (one per element
    of ``x``) reach the output only through that element: one sign per id, shape
    ``ids.shape + (1,)``, which has the same distribution and needs no ``(..., vocabulary)``
    array. The output signs are one per output element, as for :class:`Dense`.

    >>> op = Embedding()
    >>> rows = OneHotRows(jnp.array([[1, 0, 1]]), jnp.ones((1, 3)), num_classes=2)
    >>> op(rows, jnp.array([[0.0, 1.0], [2.0, 3.0]])).tolist()
    [[[2.0, 3.0], [0.0, 1.0], [2.0, 3.0]]]
    >>> op.sign_shapes(rows.shape, (1, 3, 2))
    ((1, 3, 1), (1, 3, 2))
    """

    def __call__(self, x: OneHotRows, kernel: jax.Array) -> jax.Array:
        if not isinstance(x, OneHotRows):
            raise TypeError(f"Embedding: x must be npvi.linear_ops.OneHotRows, got {type(x).__name__}")
        rows = jnp.take(kernel, x.ids, axis=0)
        return x.values[..., None].astype(rows.dtype) * rows

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array:
        return add_trailing_bias(out, bias)

    def sign_shapes(self, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        return (*tuple(x_shape)[:-1], 1), tuple(out_shape)


DENSE = Dense()
EMBEDDING = Embedding()
