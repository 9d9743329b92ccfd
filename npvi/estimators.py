"""The three ways a variational dense layer turns its posterior into outputs.

Each function is pure JAX: jittable, vmappable, no per-example weight tensors.
With ``x`` of shape ``(..., in)``, a posterior ``q(W) = N(mu, sigma^2)`` of shape
``(in, units)`` and a bias ``b``:

* reparameterization: one draw ``W ~ q`` shared by the whole batch,
  ``out = x @ W + b``.
* local reparameterization (Kingma et al., 2015): an independent pre-activation
  per example and unit, ``out ~ N(x @ mu + b, (x * x) @ sigma^2)``.
* Flipout (Wen et al., 2018): with the shared perturbation ``dW = W - mu`` and
  random signs ``s_in`` (shaped like ``x``) and ``s_out`` (shaped like the output),
  ``out = x @ mu + ((x * s_in) @ dW) * s_out + b``.

All three have the same per-example mean ``x @ mu + b`` and variance
``(x * x) @ sigma^2``; LRT and Flipout decorrelate the examples of a batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

REPARAMETERIZATION = "reparameterization"
LOCAL_REPARAMETERIZATION = "local_reparameterization"
FLIPOUT = "flipout"
ESTIMATORS = (REPARAMETERIZATION, LOCAL_REPARAMETERIZATION, FLIPOUT)


def _add_bias(out: jax.Array, bias: jax.Array | None) -> jax.Array:
    return out if bias is None else out + bias


def reparameterization(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """``x @ kernel + bias`` with one kernel draw shared by the batch.

    >>> import jax.numpy as jnp
    >>> reparameterization(jnp.ones((2, 3)), jnp.ones((3, 4))).shape
    (2, 4)
    """
    return _add_bias(x @ kernel, bias)


def local_reparameterization(
    rng_key: jax.Array,
    x: jax.Array,
    loc: jax.Array,
    scale: jax.Array,
    bias: jax.Array | None = None,
) -> jax.Array:
    """Sample pre-activations ``N(x @ loc + b, (x*x) @ scale^2)`` independently per example.

    Where the variance is exactly 0 (an all-zero input row) the standard deviation
    is 0 with a zero gradient, instead of ``sqrt``'s ``inf * 0 = NaN``.

    >>> import jax, jax.numpy as jnp
    >>> out = local_reparameterization(jax.random.PRNGKey(0), jnp.zeros((2, 3)),
    ...                                jnp.ones((3, 4)), jnp.ones((3, 4)))
    >>> out.tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    mean = x @ loc
    variance = (x * x) @ (scale * scale)
    positive = variance > 0
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1)), 0)
    noise = jax.random.normal(rng_key, mean.shape, mean.dtype)
    return _add_bias(mean + std * noise, bias)


def flipout(
    rng_key: jax.Array,
    x: jax.Array,
    loc: jax.Array,
    perturbation: jax.Array,
    bias: jax.Array | None = None,
) -> jax.Array:
    """Flipout: ``x @ loc + ((x * s_in) @ dW) * s_out + b`` with Rademacher signs.

    ``perturbation`` is the shared ``dW = W - loc``; the signs make the
    perturbation pseudo-independent per example at about twice the cost of a
    plain dense layer.

    >>> import jax, jax.numpy as jnp
    >>> flipout(jax.random.PRNGKey(0), jnp.ones((2, 3)), jnp.ones((3, 4)),
    ...         jnp.zeros((3, 4))).tolist()
    [[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]
    """
    out_shape = x.shape[:-1] + (loc.shape[-1],)
    sign_in, sign_out = rademacher_signs(rng_key, x.shape, out_shape, dtype=x.dtype)
    out = x @ loc + ((x * sign_in) @ perturbation) * sign_out
    return _add_bias(out, bias)


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
