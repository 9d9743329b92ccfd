"""The three ways a variational linear layer turns its posterior into outputs.

Each function is pure JAX: jittable, vmappable, no per-example weight tensors.
``op`` is any operation linear in the kernel (:mod:`npvi.linear_ops`: a dense
``x @ W`` by default, or a convolution). With a posterior ``q(W) = N(mu, sigma^2)``
and a bias ``b``:

* reparameterization: one draw ``W ~ q`` shared by the whole batch,
  ``out = op(x, W) + b``.
* local reparameterization (Kingma et al., 2015): every output element drawn
  independently, ``out ~ N(op(x, mu) + b, op(x * x, sigma^2))``. For a dense layer
  that is the exact distribution of each example's pre-activations; for a
  convolution each element's marginal is exact, but the covariance between
  positions of one example (which share the kernel) is dropped.
* Flipout (Wen et al., 2018): with the shared perturbation ``dW = W - mu`` and
  random signs ``s_in``, ``s_out`` in the op's sign shapes,
  ``out = op(x, mu) + op(x * s_in, dW) * s_out + b``. For a convolution the signs
  are one per example and channel, so example ``n`` sees exactly the kernel
  ``mu + dW * outer(s_in[n], s_out[n])`` at every position.

All three have the same mean ``op(x, mu) + b`` and variance ``op(x * x, sigma^2)``
per output element; LRT and Flipout decorrelate the examples of a batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from npvi.linear_ops import DENSE, LinearOp

REPARAMETERIZATION = "reparameterization"
LOCAL_REPARAMETERIZATION = "local_reparameterization"
FLIPOUT = "flipout"
ESTIMATORS = (REPARAMETERIZATION, LOCAL_REPARAMETERIZATION, FLIPOUT)


def reparameterization(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, op: LinearOp = DENSE
) -> jax.Array:
    """``op(x, kernel) + bias`` with one kernel draw shared by the batch.

    >>> import jax.numpy as jnp
    >>> reparameterization(jnp.ones((2, 3)), jnp.ones((3, 4))).shape
    (2, 4)
    """
    return op.add_bias(op(x, kernel), bias)


def local_reparameterization(
    rng_key: jax.Array,
    x: jax.Array,
    loc: jax.Array,
    scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    op: LinearOp = DENSE,
) -> jax.Array:
    """Sample each output element from ``N(op(x, loc) + b, op(x * x, scale^2))`` independently.

    Where the variance is exactly 0 (an all-zero input row) the standard deviation
    is 0 with a zero gradient, instead of ``sqrt``'s ``inf * 0 = NaN``. The noise is
    drawn in float32 (at least) and rounded to the output's dtype, so that in a lower
    compute dtype (:class:`npvi.handlers.mixed_precision`) a key gives the float32
    draws, rounded.

    >>> import jax, jax.numpy as jnp
    >>> out = local_reparameterization(jax.random.PRNGKey(0), jnp.zeros((2, 3)),
    ...                                jnp.ones((3, 4)), jnp.ones((3, 4)))
    >>> out.tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    mean = op(x, loc)
    std = safe_sqrt(op(x * x, scale * scale))
    noise = jax.random.normal(rng_key, mean.shape, _at_least_float32(mean.dtype)).astype(mean.dtype)
    return op.add_bias(mean + std * noise, bias)


def _at_least_float32(dtype):
    """``dtype``, or float32 for a narrower float (bfloat16, float16)."""
    return jnp.promote_types(dtype, jnp.float32)


def safe_sqrt(variance: jax.Array) -> jax.Array:
    """``sqrt`` with a zero gradient (not ``inf * 0 = NaN``) where the variance is exactly 0.

    A narrower float (bfloat16, float16) is taken in float32 and the result rounded back:
    a float16 variance below float16's smallest normal number (6.1e-5, reached when the
    scales' squares underflow) is a subnormal there, which some hardware flushes to zero
    inside ``sqrt`` (``sqrt(0)`` after a ``> 0`` test: an infinite gradient), but is a
    normal float32 number, whose square root has the finite gradient
    ``1 / (2 sqrt(v)) <= 1 / (2 sqrt(2^-24)) = 2048``.

    >>> import jax, jax.numpy as jnp
    >>> float(jax.grad(safe_sqrt)(jnp.float32(0.0))), float(safe_sqrt(jnp.float32(4.0)))
    (0.0, 2.0)
    >>> float(jax.grad(safe_sqrt)(jnp.float16(2.0**-24)))  # float16's smallest subnormal
    2048.0
    """
    dtype = jnp.result_type(variance)
    variance = jnp.asarray(variance, _at_least_float32(dtype))
    positive = variance > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1)), 0).astype(dtype)


def flipout(
    rng_key: jax.Array,
    x: jax.Array,
    loc: jax.Array,
    perturbation: jax.Array,
    bias: jax.Array | None = None,
    *,
    op: LinearOp = DENSE,
) -> jax.Array:
    """Flipout: ``op(x, loc) + op(x * s_in, dW) * s_out + b`` with Rademacher signs.

    ``perturbation`` is the shared ``dW = W - loc``; the signs (shaped by
    ``op.sign_shapes``) make the perturbation pseudo-independent per example at
    about twice the cost of the plain operation.

    >>> import jax, jax.numpy as jnp
    >>> flipout(jax.random.PRNGKey(0), jnp.ones((2, 3)), jnp.ones((3, 4)),
    ...         jnp.zeros((3, 4))).tolist()
    [[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]
    """
    mean = op(x, loc)
    in_shape, out_shape = op.sign_shapes(x.shape, mean.shape)
    sign_in, sign_out = rademacher_signs(rng_key, in_shape, out_shape, dtype=mean.dtype)
    out = mean + op(x * sign_in, perturbation) * sign_out
    return op.add_bias(out, bias)


def rademacher_signs(
    rng_key: jax.Array, *shapes: tuple[int, ...], dtype=jnp.float32
) -> tuple[jax.Array, ...]:
    """Independent fair random signs (+1 or -1), one array per shape, from one key.

    Every sign is one bit of ``jax.random.bits``: a 32-bit word gives 32 signs, where
    ``jax.random.rademacher`` spends a whole word (a full threefry output) on each
    sign. All shapes share one draw, so XLA runs one random-number loop, not one per
    array. The bits of threefry's output are independent and uniform, so the signs are.

    >>> import jax, jax.numpy as jnp
    >>> a, b = rademacher_signs(jax.random.PRNGKey(0), (2, 3), (4,))
    >>> a.shape, b.shape, bool(jnp.all(jnp.abs(a) == 1)), a.dtype
    ((2, 3), (4,), True, dtype('float32'))
    """
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(sizes)
    words = jax.random.bits(rng_key, (-(-total // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    signs = 1 - 2 * bits.reshape(-1)[:total].astype(dtype)
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(signs[start : start + size].reshape(shape))
        start += size
    return tuple(out)
