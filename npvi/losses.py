r"""Keras-compatible Kullback-Leibler loss (``tf.keras.losses.KLDivergence``).

Both inputs are probability vectors along the last axis. Keras clips both to
:math:`[\epsilon, 1]` with :math:`\epsilon = 10^{-7}` and computes, per sample,

.. math::
    \ell(y, \hat y) = \sum_{k} y_k \log \frac{y_k}{\hat y_k}.

:class:`KLDivergence` then weights and reduces the per-sample losses as Keras does.
Everything here is pure JAX, so it is jittable and differentiable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: Keras' ``backend.epsilon()``: both inputs are clipped to ``[EPSILON, 1]``.
EPSILON = 1e-7

#: The accepted ``reduction`` strings; ``"auto"`` is Keras 2's spelling of ``"sum_over_batch_size"``.
REDUCTIONS = ("sum_over_batch_size", "auto", "sum", "none", "mean_with_sample_weight")


def _as_float(value: Any) -> jax.Array:
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    return value


def kl_divergence(y_true: Any, y_pred: Any) -> jax.Array:
    r"""Per-sample KL loss :math:`\sum_k y_k \log(y_k / \hat y_k)` over the last axis.

    ``y_true`` is cast to ``y_pred``'s dtype (a non-float ``y_pred`` becomes JAX's
    default float), both are clipped to :math:`[10^{-7}, 1]`, and the result has the
    inputs' shape without the last axis. Like ``tf.keras.losses.kl_divergence``.

    >>> round(float(kl_divergence([.4, .9, .2], [.5, .8, .12])), 6)
    0.118912
    >>> kl_divergence([[0, 1], [0, 0]], [[0.6, 0.4], [0.4, 0.6]]).shape
    (2,)
    """
    y_pred = _as_float(y_pred)
    y_true = jnp.asarray(y_true).astype(y_pred.dtype)
    y_true = jnp.clip(y_true, EPSILON, 1.0)
    y_pred = jnp.clip(y_pred, EPSILON, 1.0)
    return jnp.sum(y_true * jnp.log(y_true / y_pred), axis=-1)


def _check_reduction(reduction: Any) -> str:
    if reduction is None:
        return "none"
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)} (or None for 'none'), got {reduction!r}")
    return reduction


def broadcast_sample_weight(sample_weight: Any, loss_shape: tuple[int, ...], dtype) -> jax.Array:
    """``sample_weight`` shaped to broadcast against per-sample losses of ``loss_shape``.

    Accepted, as in Keras: a scalar; a ``[batch]`` vector (one weight per sample,
    spread over any further loss axes); a shape with one extra trailing axis of size
    1 (``[batch, 1]`` against ``[batch]``), which is squeezed; any shape that
    broadcasts to ``loss_shape`` without enlarging it. Anything else is a
    ``ValueError`` naming both shapes.

    >>> broadcast_sample_weight([0.8, 0.2], (2, 3), jnp.float32).shape
    (2, 1)
    """
    weight = jnp.asarray(sample_weight, dtype=dtype)
    shape = tuple(weight.shape)
    if weight.ndim == 0:
        return weight
    if len(loss_shape) >= 1 and shape == (loss_shape[0],):
        return weight.reshape(shape + (1,) * (len(loss_shape) - 1))
    if weight.ndim == len(loss_shape) + 1 and shape[-1] == 1:
        weight, shape = weight[..., 0], shape[:-1]
    try:
        fits = np.broadcast_shapes(shape, loss_shape) == tuple(loss_shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"sample_weight has shape {tuple(jnp.shape(sample_weight))}, but the per-sample loss has shape "
            f"{tuple(loss_shape)}; expected a scalar, a [batch] vector of length "
            f"{loss_shape[0] if loss_shape else 'batch'}, or a shape that broadcasts to {tuple(loss_shape)}"
        )
    return weight


def reduce_loss(losses: jax.Array, sample_weight: Any = None, reduction: str = "sum_over_batch_size") -> jax.Array:
    r"""Weight per-sample ``losses`` and reduce them the Keras way.

    With :math:`w` broadcast to the loss shape (all ones when ``sample_weight`` is
    None) and :math:`n` the number of loss elements:

    * ``"sum_over_batch_size"`` / ``"auto"``: :math:`\sum w \ell / n`, even with weights;
    * ``"sum"``: :math:`\sum w \ell`;
    * ``"none"``: :math:`w \ell`, unreduced;
    * ``"mean_with_sample_weight"``: :math:`\sum w \ell / \sum w` (0 when :math:`\sum w = 0`).

    >>> float(reduce_loss(jnp.array([1.0, 3.0]), jnp.array([1.0, 0.0]), "mean_with_sample_weight"))
    1.0
    """
    reduction = _check_reduction(reduction)
    losses = jnp.asarray(losses)
    if sample_weight is None:
        weighted = losses
        weight_total = jnp.asarray(losses.size, losses.dtype)
    else:
        weight = broadcast_sample_weight(sample_weight, tuple(losses.shape), losses.dtype)
        weighted = losses * weight
        weight_total = jnp.sum(jnp.broadcast_to(weight, losses.shape))
    if reduction == "none":
        return weighted
    total = jnp.sum(weighted)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight":
        divisor = weight_total
    else:
        divisor = jnp.asarray(losses.size, losses.dtype)
    safe = jnp.where(divisor == 0, jnp.ones_like(divisor), divisor)
    return jnp.where(divisor == 0, jnp.zeros_like(total), total / safe)


class KLDivergence:
    r"""Keras' ``KLDivergence`` loss: :func:`kl_divergence` per sample, then a reduction.

    ``reduction`` is one of ``"sum_over_batch_size"`` (the default; ``"auto"`` is
    Keras 2's name for it), ``"sum"``, ``"none"`` or Keras 3's
    ``"mean_with_sample_weight"``; see :func:`reduce_loss`. The example is the
    Keras documentation's, which prints 0.458, 0.366 and 0.916 (the middle one is
    0.36652, shown truncated; TF's doctest checker allows 1e-3):

    >>> y_true = [[0, 1], [0, 0]]
    >>> y_pred = [[0.6, 0.4], [0.4, 0.6]]
    >>> round(float(KLDivergence()(y_true, y_pred)), 5)
    0.45814
    >>> round(float(KLDivergence()(y_true, y_pred, sample_weight=[0.8, 0.2])), 5)
    0.36652
    >>> round(float(KLDivergence(reduction="sum")(y_true, y_pred)), 5)
    0.91629
    >>> KLDivergence.from_config(KLDivergence(reduction="sum").get_config()).reduction
    'sum'
    """

    def __init__(self, reduction: str | None = "sum_over_batch_size", name: str = "kl_divergence") -> None:
        _check_reduction(reduction)
        if not isinstance(name, str):
            raise TypeError(f"KLDivergence: name must be a str, got {type(name).__name__}")
        self.reduction = reduction
        self.name = name

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> jax.Array:
        """Weighted, reduced loss; shape ``[batch, d0, .. dN-1]`` for ``"none"``, else scalar."""
        return reduce_loss(kl_divergence(y_true, y_pred), sample_weight, self.reduction)

    def __repr__(self) -> str:
        return f"KLDivergence(reduction={self.reduction!r}, name={self.name!r})"

    def get_config(self) -> dict[str, Any]:
        """``{"reduction": ..., "name": ...}``: plain strings, JSON-safe."""
        return {"reduction": self.reduction, "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KLDivergence:
        """Rebuild the loss from :meth:`get_config`'s output."""
        if not isinstance(config, dict):
            raise TypeError(f"KLDivergence.from_config expects a dict, got {type(config).__name__}")
        unknown = sorted(set(config) - {"reduction", "name"})
        if unknown:
            raise ValueError(f"KLDivergence.from_config: unknown keys {unknown}; expected 'reduction' and 'name'")
        return cls(**config)
