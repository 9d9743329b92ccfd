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

A new layer type needs one such class (``__call__``, ``add_bias``, ``sign_shapes``).

>>> import jax.numpy as jnp
>>> op = Convolution(strides=(1, 1), padding="SAME", dilation=(1, 1), channels_last=True)
>>> op(jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))).shape
(2, 5, 5, 4)
>>> op.sign_shapes((2, 5, 5, 3), (2, 5, 5, 4))
((2, 1, 1, 3), (2, 1, 1, 4))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


class LinearOp(Protocol):
    """What an estimator needs of a layer's operation."""

    def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array: ...

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array: ...

    def sign_shapes(self, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]: ...


@dataclass(frozen=True)
class Dense:
    """``x @ W``: the operation of the dense layers."""

    def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return x @ kernel

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array:
        return out if bias is None else out + bias

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


DENSE = Dense()
