r"""Variational convolutions over 1, 2 and 3 spatial axes: TFP's ``Convolution*`` layers.

Each layer is an :class:`npvi.layers.LinearVariational` whose operation is
``jax.lax.conv_general_dilated`` (:class:`npvi.linear_ops.Convolution`), so the
guide, the ELBO's per-layer KL, the estimator handlers, ``Predictive``,
``to_inference_data``, configs and ``npvi.save``/``npvi.load`` treat it as they
treat a dense layer. Calling one creates

* ``"<name>.kernel"``: the prior's sample site, event shape
  ``kernel_size + (in_channels, filters)`` (TF's layout, for both data formats);
* ``"<name>.bias"``: shape ``(filters,)``, a point estimate unless ``bias_prior`` is given.

With :math:`q(W) = \mathcal{N}(\mu, \sigma^2)` and :math:`\ast` the convolution:

* reparameterization: :math:`x \ast W + b`, one kernel draw for the batch;
* Flipout: :math:`x \ast \mu + ((x \odot s_\text{in}) \ast \Delta W) \odot s_\text{out} + b`
  with signs one per example and channel (shapes ``(batch, 1, ..., 1, channels)``), so
  example :math:`n` sees the kernel :math:`\mu + \Delta W \odot s_{\text{in},n} s_{\text{out},n}^\top`
  at all its positions;
* local reparameterization:
  :math:`\mathcal{N}(x \ast \mu + b,\ (x \odot x) \ast \sigma^2)`, each output element
  drawn independently. Each element's marginal is exact, but the positions of one
  example share a kernel and so are correlated; this estimator drops that
  covariance (Kingma et al., 2015). Its gradients have low variance,
  but it is not the network's exact predictive distribution.

>>> import jax.numpy as jnp, numpyro
>>> layer = Conv2DFlipout(4, 3, padding="same", activation="relu", name="c1")
>>> with numpyro.handlers.seed(rng_seed=0):
...     layer(jnp.ones((2, 8, 8, 1))).shape
(2, 8, 8, 4)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

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
from npvi.linear_ops import Convolution
from npvi.posteriors import Posterior

PADDINGS = ("VALID", "SAME")
DATA_FORMATS = ("channels_last", "channels_first")
_SPATIAL_NAMES = {1: ("width",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def _tuple(layer: str, what: str, value: Any, rank: int) -> tuple[int, ...]:
    """An int or a sequence of ``rank`` ints, each positive, as a tuple of ``rank`` ints."""
    values = (value,) * rank if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != rank:
        raise ValueError(f"layer {layer!r}: {what} must be a positive int or {rank} of them, got {value!r}")
    return tuple(check_positive_int(layer, what, v) for v in values)


def _choice(layer: str, what: str, value: Any, choices: tuple[str, ...], normal: Callable[[str], str]) -> str:
    if isinstance(value, str) and normal(value) in choices:
        return normal(value)
    raise ValueError(f"layer {layer!r}: {what} must be one of {list(choices)} (any case), got {value!r}")


class ConvVariational(LinearVariational):
    """Shared implementation of the nine convolutional layers; use a subclass."""

    rank: ClassVar[int]
    _CONFIG_KEYS = (
        "filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", *_COMMON_CONFIG_KEYS,
    )  # fmt: skip

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: str = "VALID",
        data_format: str = "channels_last",
        dilation_rate: int | Sequence[int] = 1,
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
        cls = type(self).__name__
        if not hasattr(type(self), "rank"):
            raise TypeError(f"{cls} is abstract; use Conv1D*, Conv2D* or Conv3D* (e.g. Conv2DFlipout)")
        check_layer_name(cls, name, f"{filters!r}, kernel_size={kernel_size!r}")
        self.filters = check_positive_int(name, "filters", filters)
        self.kernel_size = _tuple(name, "kernel_size", kernel_size, self.rank)
        self.strides = _tuple(name, "strides", strides, self.rank)
        self.dilation_rate = _tuple(name, "dilation_rate", dilation_rate, self.rank)
        self.padding = _choice(name, "padding", padding, PADDINGS, str.upper)
        self.data_format = _choice(name, "data_format", data_format, DATA_FORMATS, str.lower)
        super().__init__(
            activation=activation, name=name, kernel_prior=kernel_prior, bias_prior=bias_prior,
            kernel_posterior=kernel_posterior, bias_posterior=bias_posterior, kernel_kl=kernel_kl,
            bias_kl=bias_kl, use_bias=use_bias, kernel_posterior_tensor_fn=kernel_posterior_tensor_fn,
            bias_posterior_tensor_fn=bias_posterior_tensor_fn, activity_regularizer=activity_regularizer,
        )  # fmt: skip

    @property
    def linear_op(self) -> Convolution:
        """The layer's convolution, ``op(x, W)``."""
        return Convolution(self.strides, self.padding, self.dilation_rate, self.data_format == "channels_last")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.filters}, kernel_size={self.kernel_size}, name={self.name!r})"

    def _own_config(self) -> dict[str, Any]:
        return {
            "filters": int(self.filters),
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": list(self.dilation_rate),
        }

    def _layout(self) -> str:
        spatial = ", ".join(_SPATIAL_NAMES[self.rank])
        if self.data_format == "channels_last":
            return f"(batch, {spatial}, channels)"
        return f"(batch, channels, {spatial})"

    def _spatial_and_channels(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        if self.data_format == "channels_last":
            return tuple(shape[1:-1]), shape[-1]
        return tuple(shape[2:]), shape[1]

    def _check_rank(self, x: jax.Array) -> None:
        if x.ndim != self.rank + 2:
            raise ValueError(
                f"layer {self.name!r}: expected inputs of rank {self.rank + 2}, {self._layout()} "
                f"for {self.data_format}; got shape {x.shape}"
            )
        spatial, channels = self._spatial_and_channels(x.shape)
        if channels == 0 or 0 in spatial or x.shape[0] == 0:
            raise ValueError(f"layer {self.name!r}: inputs of shape {x.shape} {self._layout()} have an empty axis")
        if self.padding == "VALID":
            reach = tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation_rate, strict=True))
            if any(r > s for r, s in zip(reach, spatial, strict=True)):
                raise ValueError(
                    f"layer {self.name!r}: with padding='VALID' the kernel spans {reach} (kernel_size "
                    f"{self.kernel_size}, dilation_rate {self.dilation_rate}), larger than the input's "
                    f"spatial shape {spatial}; use padding='SAME' or larger inputs"
                )

    def _kernel_shape(self, x: jax.Array) -> tuple[int, ...]:
        return (*self.kernel_size, self._spatial_and_channels(x.shape)[1], self.filters)

    def _bias_shape(self) -> tuple[int, ...]:
        return (self.filters,)

    def _kernel_dim_names(self) -> list[str]:
        return [*(f"{self.name}_kernel_{axis}" for axis in _SPATIAL_NAMES[self.rank]), f"{self.name}_in"]

    def _out_dim_name(self) -> str:
        return f"{self.name}_filters"


class Conv1DReparameterization(ConvVariational):
    """1-D convolution, reparameterization estimator (TFP's ``Convolution1DReparameterization``).

    One kernel draw shared by the batch; see :mod:`npvi.conv` for the maths.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv1DReparameterization(2, 3, name="c")(jnp.ones((4, 10, 1))).shape
    (4, 8, 2)
    """

    rank = 1
    default_estimator = estimators.REPARAMETERIZATION


class Conv2DReparameterization(ConvVariational):
    """2-D convolution, reparameterization estimator (TFP's ``Convolution2DReparameterization``).

    One kernel draw shared by the batch; see :mod:`npvi.conv` for the maths.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv2DReparameterization(2, (3, 3), strides=2, name="c")(jnp.ones((4, 9, 9, 1))).shape
    (4, 4, 4, 2)
    """

    rank = 2
    default_estimator = estimators.REPARAMETERIZATION


class Conv3DReparameterization(ConvVariational):
    """3-D convolution, reparameterization estimator (TFP's ``Convolution3DReparameterization``).

    One kernel draw shared by the batch; see :mod:`npvi.conv` for the maths.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv3DReparameterization(2, 3, padding="same", name="c")(jnp.ones((1, 5, 5, 5, 1))).shape
    (1, 5, 5, 5, 2)
    """

    rank = 3
    default_estimator = estimators.REPARAMETERIZATION


class Conv1DFlipout(ConvVariational):
    """1-D convolution, Flipout estimator (TFP's ``Convolution1DFlipout``).

    Signs one per example and channel; see :mod:`npvi.conv` for the maths.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv1DFlipout(2, 3, dilation_rate=2, name="c")(jnp.ones((4, 10, 1))).shape
    (4, 6, 2)
    """

    rank = 1
    default_estimator = estimators.FLIPOUT


class Conv2DFlipout(ConvVariational):
    """2-D convolution, Flipout estimator (TFP's ``Convolution2DFlipout``).

    Signs one per example and channel; see :mod:`npvi.conv` for the maths.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv2DFlipout(6, 5, padding="SAME", name="c")(jnp.ones((4, 28, 28, 1))).shape
    (4, 28, 28, 6)
    """

    rank = 2
    default_estimator = estimators.FLIPOUT


class Conv3DFlipout(ConvVariational):
    """3-D convolution, Flipout estimator (TFP's ``Convolution3DFlipout``).

    Signs one per example and channel; see :mod:`npvi.conv` for the maths.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv3DFlipout(2, 3, data_format="channels_first", name="c")(jnp.ones((1, 1, 5, 5, 5))).shape
    (1, 2, 3, 3, 3)
    """

    rank = 3
    default_estimator = estimators.FLIPOUT


class Conv1DLocalReparameterization(ConvVariational):
    """1-D convolution, local reparameterization (no TFP counterpart).

    Each output element drawn independently; exact marginals, but the covariance
    between positions of one example is dropped (see :mod:`npvi.conv`).

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv1DLocalReparameterization(2, 3, name="c")(jnp.ones((4, 10, 1))).shape
    (4, 8, 2)
    """

    rank = 1
    default_estimator = estimators.LOCAL_REPARAMETERIZATION


class Conv2DLocalReparameterization(ConvVariational):
    """2-D convolution, local reparameterization (no TFP counterpart).

    Each output element drawn independently; exact marginals, but the covariance
    between positions of one example is dropped (see :mod:`npvi.conv`).

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv2DLocalReparameterization(2, 3, name="c")(jnp.ones((4, 8, 8, 1))).shape
    (4, 6, 6, 2)
    """

    rank = 2
    default_estimator = estimators.LOCAL_REPARAMETERIZATION


class Conv3DLocalReparameterization(ConvVariational):
    """3-D convolution, local reparameterization (no TFP counterpart).

    Each output element drawn independently; exact marginals, but the covariance
    between positions of one example is dropped (see :mod:`npvi.conv`).

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     Conv3DLocalReparameterization(2, 3, name="c")(jnp.ones((1, 5, 5, 5, 1))).shape
    (1, 3, 3, 3, 2)
    """

    rank = 3
    default_estimator = estimators.LOCAL_REPARAMETERIZATION


# TFP's names, so that code ported from TFP reads the same.
Convolution1DReparameterization = Conv1DReparameterization
Convolution2DReparameterization = Conv2DReparameterization
Convolution3DReparameterization = Conv3DReparameterization
Convolution1DFlipout = Conv1DFlipout
Convolution2DFlipout = Conv2DFlipout
Convolution3DFlipout = Conv3DFlipout
