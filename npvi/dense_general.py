r"""Variational dense layers over several axes: Flax's ``DenseGeneral`` / ``LinearGeneral``.

``DenseGeneral*(features, axis=-1)`` contracts the trailing input axes ``axis`` with a kernel
of shape ``in_shape + features`` (:class:`npvi.linear_ops.Contraction`), the layer of
attention's query, key, value and output projections:

.. math::

    \text{out}_{\dots f} = \sum_{i} x_{\dots i} W_{i f} + b_f,
    \qquad i \in \text{in\_shape},\ f \in \text{features}.

Calling one creates ``"<name>.kernel"`` (event shape ``in_shape + features``) and
``"<name>.bias"`` (shape ``features``, a point estimate unless ``bias_prior`` is given). The
three estimators act as on a dense layer: one draw for the batch (reparameterization), each
output element drawn from its exact marginal (local reparameterization; the outputs of one
example are independent given :math:`x`, as for a dense layer), or Flipout with one sign per
element of :math:`x` and of the output. Every axis before ``axis`` is a batch axis: a sequence
``(batch, time, features)`` gets Flipout signs per example and position, as a dense layer does.

>>> import jax.numpy as jnp, numpyro
>>> import npvi
>>> heads = npvi.DenseGeneralFlipout((4, 8), name="query")  # 4 heads of 8 features each
>>> with numpyro.handlers.seed(rng_seed=0):
...     heads(jnp.ones((2, 5, 16))).shape
(2, 5, 4, 8)
>>> merge = npvi.DenseGeneralFlipout(16, axis=(-2, -1), name="out")
>>> with numpyro.handlers.seed(rng_seed=0):
...     merge(jnp.ones((2, 5, 4, 8))).shape
(2, 5, 16)
"""

from __future__ import annotations

import numbers
import string
from collections.abc import Callable, Sequence
from typing import Any

import jax
from numpyro import distributions as dist

from npvi import estimators
from npvi.layers import (
    _COMMON_CONFIG_KEYS,
    KLChoice,
    LinearVariational,
    Prior,
    check_layer_name,
    check_positive_int,
)
from npvi.linear_ops import Contraction
from npvi.posteriors import Posterior


def _ints(layer: str, what: str, value: Any, check: Callable[[str, str, Any], int] | None = None) -> tuple[int, ...]:
    values = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"layer {layer!r}: {what} must be an int or a non-empty sequence of ints, got {value!r}")
    out = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise ValueError(f"layer {layer!r}: {what} must be an int or a non-empty sequence of ints, got {value!r}")
        out.append(check(layer, what, item) if check else int(item))
    return tuple(out)


class DenseGeneralVariational(LinearVariational):
    """Shared implementation of the three ``DenseGeneral`` layers; use a subclass."""

    _CONFIG_KEYS = ("features", "axis", *_COMMON_CONFIG_KEYS)

    def __init__(
        self,
        features: int | Sequence[int],
        *,
        axis: int | Sequence[int] = -1,
        activation: str | Callable[[jax.Array], jax.Array] | None = None,
        name: str | None = None,
        kernel_prior: Prior | None = None,
        bias_prior: Prior | None = None,
        kernel_posterior: Posterior | None = None,
        bias_posterior: Posterior | None = None,
        kernel_kl: KLChoice = "exact",
        bias_kl: KLChoice = "exact",
        use_bias: bool = True,
        kernel_posterior_tensor_fn: Callable[[dist.Distribution], jax.Array] | None = None,
        bias_posterior_tensor_fn: Callable[[dist.Distribution], jax.Array] | None = None,
        activity_regularizer: Callable[[jax.Array], jax.Array] | None = None,
    ) -> None:
        check_layer_name(type(self).__name__, name, repr(features))
        self.features = _ints(name, "features", features, check_positive_int)
        self.axis = _ints(name, "axis", axis)
        if len(set(self.axis)) != len(self.axis):
            raise ValueError(f"layer {name!r}: axis {self.axis} names an axis twice")
        super().__init__(
            activation=activation, name=name, kernel_prior=kernel_prior, bias_prior=bias_prior,
            kernel_posterior=kernel_posterior, bias_posterior=bias_posterior, kernel_kl=kernel_kl,
            bias_kl=bias_kl, use_bias=use_bias, kernel_posterior_tensor_fn=kernel_posterior_tensor_fn,
            bias_posterior_tensor_fn=bias_posterior_tensor_fn, activity_regularizer=activity_regularizer,
        )  # fmt: skip

    @property
    def linear_op(self) -> Contraction:
        """``x``'s last ``len(axis)`` axes contracted with the kernel's first ones, e.g. ``"...ab,abf->...f"``."""
        letters = string.ascii_letters
        inputs = letters[: len(self.axis)]
        outputs = letters[len(self.axis) : len(self.axis) + len(self.features)]
        return Contraction(f"...{inputs},{inputs}{outputs}->...{outputs}")

    def __repr__(self) -> str:
        features = self.features[0] if len(self.features) == 1 else self.features
        return f"{type(self).__name__}({features}, axis={self.axis}, name={self.name!r})"

    def _own_config(self) -> dict[str, Any]:
        return {"features": list(self.features), "axis": list(self.axis)}

    def _check_rank(self, x: jax.Array) -> None:
        count = len(self.axis)
        if x.ndim < count + 1:
            raise ValueError(
                f"layer {self.name!r}: axis={self.axis} needs inputs of rank >= {count + 1} (batch axes, then the "
                f"{count} contracted), got shape {x.shape}"
            )
        resolved = sorted(a % x.ndim if -x.ndim <= a < x.ndim else a for a in self.axis)
        if resolved != list(range(x.ndim - count, x.ndim)):
            which = "the last axis" if count == 1 else f"the last {count} axes"
            raise ValueError(
                f"layer {self.name!r}: axis={self.axis} must be {which} of the inputs (shape {x.shape}), e.g. "
                f"axis={tuple(range(-count, 0)) if count > 1 else -1}; move the contracted axes last with jnp.moveaxis"
            )
        if 0 in x.shape[-count:]:
            raise ValueError(f"layer {self.name!r}: the contracted axes of inputs of shape {x.shape} are empty")

    def _kernel_shape(self, x: jax.Array) -> tuple[int, ...]:
        return (*x.shape[x.ndim - len(self.axis) :], *self.features)

    def _bias_shape(self) -> tuple[int, ...]:
        return self.features

    def weight_dims(self) -> dict[str, list[str]]:
        """Named dims of the kernel and bias (``to_inference_data`` uses them)."""
        inputs = [f"{self.name}_in{i}" for i in range(len(self.axis))]
        outputs = [f"{self.name}_features{i}" for i in range(len(self.features))]
        if len(self.axis) == 1:
            inputs = [f"{self.name}_in"]
        if len(self.features) == 1:
            outputs = [f"{self.name}_features"]
        return {self.kernel_site: [*inputs, *outputs], self.bias_site: outputs}


class DenseGeneralReparameterization(DenseGeneralVariational):
    r"""``DenseGeneral`` with the reparameterization estimator: one kernel draw for the batch.

    >>> import jax.numpy as jnp, numpyro
    >>> layer = DenseGeneralReparameterization((2, 3), name="proj")
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     layer(jnp.ones((5, 4))).shape
    (5, 2, 3)
    """

    default_estimator = estimators.REPARAMETERIZATION


class DenseGeneralLocalReparameterization(DenseGeneralVariational):
    r"""``DenseGeneral`` with local reparameterization: each output element from its exact marginal.

    :math:`\text{out} \sim \mathcal{N}(\sum_i x_i \mu_{i f} + b_f,\ \sum_i x_i^2 \sigma^2_{i f})`.

    >>> import jax.numpy as jnp, numpyro
    >>> layer = DenseGeneralLocalReparameterization(3, axis=(-2, -1), name="proj")
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     layer(jnp.ones((5, 2, 4))).shape
    (5, 3)
    """

    default_estimator = estimators.LOCAL_REPARAMETERIZATION


class DenseGeneralFlipout(DenseGeneralVariational):
    r"""``DenseGeneral`` with Flipout: signs per element of the input and of the output.

    :math:`\text{out} = x \cdot \mu + ((x \odot s_\text{in}) \cdot \Delta W) \odot s_\text{out} + b`,
    where :math:`\cdot` contracts the ``axis`` axes.

    >>> import jax.numpy as jnp, numpyro
    >>> layer = DenseGeneralFlipout((2, 3), name="proj")
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     layer(jnp.ones((5, 4))).shape
    (5, 2, 3)
    """

    default_estimator = estimators.FLIPOUT
