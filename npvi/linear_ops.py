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
:class:`Cast` runs any of them in another dtype (mixed precision, :class:`npvi.handlers.mixed_precision`).

>>> import jax.numpy as jnp
>>> op = Convolution(strides=(1, 1), padding="SAME", dilation=(1, 1), channels_last=True)
>>> op(jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))).shape
(2, 5, 5, 4)
>>> op.sign_shapes((2, 5, 5, 3), (2, 5, 5, 4))
((2, 1, 1, 3), (2, 1, 1, 4))
"""

from __future__ import annotations

import functools
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

    def astype(self, dtype: Any) -> OneHotRows:
        """The same rows with their values in ``dtype`` (as :class:`Cast` casts an input)."""
        return OneHotRows(self.ids, self.values.astype(dtype), self.num_classes)


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


@dataclass(frozen=True)
class Cast:
    """``op`` computed in ``dtype``: ``x`` and the kernel cast to ``dtype`` before the op, its output after it.

    What :class:`npvi.handlers.mixed_precision` gives the estimators. The output is ``dtype`` even
    where the op's own dtype rules promote (a converted network's layer with a float32 zero bias).
    The bias is added in float32 (at least) and the sum rounded to ``dtype``, so its gradient, a sum
    over the batch, is summed in float32 too; a posterior family that computes part of its output
    outside the op still gets an output in ``dtype``, since every estimator ends in ``add_bias``.
    What the estimators form before calling the op (Flipout's ``W - mu``, local reparameterization's
    ``sigma^2``) is computed in its operands' dtypes, float32 for float32 parameters, and rounded once.

    In float16 (largest number 65504) the op's gradient is computed on a scaled cotangent
    (:func:`_float16_op`): a kernel's gradient, a sum over the batch of an ELBO scaled by
    ``N / batch_size``, overflows float16 otherwise.

    >>> import jax.numpy as jnp
    >>> op = Cast(DENSE, jnp.bfloat16)
    >>> out = op.add_bias(op(jnp.ones((2, 3)), jnp.ones((3, 4))), jnp.ones(4))
    >>> out.dtype, out[0, 0].item(), underlying(op) is DENSE
    (dtype(bfloat16), 4.0, True)
    """

    op: LinearOp
    dtype: Any

    def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        if jnp.dtype(self.dtype) == jnp.float16 and isinstance(x, jax.Array):
            return _float16_op(self.op, x, kernel)
        return self.op(x.astype(self.dtype), kernel.astype(self.dtype)).astype(self.dtype)

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array:
        if bias is None:
            return out.astype(self.dtype)
        wide = jnp.promote_types(jnp.result_type(bias), jnp.float32)
        return self.op.add_bias(out.astype(wide), bias.astype(wide)).astype(self.dtype)

    def sign_shapes(self, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        return self.op.sign_shapes(x_shape, out_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _float16_op(op: LinearOp, x: jax.Array, kernel: jax.Array) -> jax.Array:
    r"""``op(x, kernel)`` in float16, whose gradient is taken on a cotangent scaled to a maximum in [1, 2).

    Loss scaling without a state (Keras' ``LossScaleOptimizer`` keeps one, and skips a step that
    overflows): with :math:`g` the output's cotangent and :math:`s = 2^{\lfloor \log_2 \max|g|
    \rfloor}`, the backward pass computes the op's gradients in float16 from :math:`g / s` and
    multiplies them by :math:`s` in float32. A power of two scales exactly; the kernel's gradient
    (float32, as the kernel) then overflows only where a sum over the batch of :math:`|x|` exceeds
    65504, and a cotangent element is lost only below :math:`2^{-24}` of the largest. The input's
    gradient is in the input's dtype, so a float16 input's gradient above 65504 still overflows.
    """
    return op(x.astype(jnp.float16), kernel.astype(jnp.float16)).astype(jnp.float16)


def _float16_op_fwd(op: LinearOp, x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple]:
    return _float16_op(op, x, kernel), (x, kernel)


def _float16_op_bwd(op: LinearOp, residuals: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    _, vjp = jax.vjp(lambda a, w: op(a, w).astype(jnp.float16), x.astype(jnp.float16), kernel.astype(jnp.float16))
    g = g.astype(jnp.float32)
    peak = jnp.max(jnp.abs(g))
    scale = jnp.where(peak > 0, jnp.exp2(jnp.floor(jnp.log2(jnp.where(peak > 0, peak, 1.0)))), 1.0)
    grad_x, grad_kernel = vjp((g / scale).astype(jnp.float16))
    return (
        (grad_x.astype(jnp.float32) * scale).astype(x.dtype),
        (grad_kernel.astype(jnp.float32) * scale).astype(kernel.dtype),
    )


_float16_op.defvjp(_float16_op_fwd, _float16_op_bwd)


def underlying(op: LinearOp) -> LinearOp:
    """The op a :class:`Cast` computes in another dtype, else ``op`` (for checks of the op's type)."""
    return op.op if isinstance(op, Cast) else op


DENSE = Dense()
EMBEDDING = Embedding()
