"""Variational posterior families for the weights of npvi layers.

A posterior family is a small frozen dataclass: it says how to create the
variational parameters inside a guide and which distribution they define. The
parameter names are stable and documented: for a site ``"l1.kernel"``,

* :class:`MeanFieldNormal` creates ``"l1.kernel.loc"`` and
  ``"l1.kernel.untransformed_scale"``;
* :class:`PointMass` creates ``"l1.kernel.loc"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro
from numpyro import distributions as dist


def softplus_scale(untransformed_scale: jax.Array) -> jax.Array:
    r"""TFP's positive scale :math:`\sigma = \operatorname{softplus}(u) + \varepsilon_{\text{dtype}}`.

    >>> round(float(softplus_scale(jnp.float32(-3.0))), 4)
    0.0486
    """
    return jax.nn.softplus(untransformed_scale) + jnp.finfo(jnp.result_type(untransformed_scale)).eps


def inverse_softplus_scale(scale: float, dtype) -> float:
    """The :math:`u` with :func:`softplus_scale` ``(u) = scale``: the inverse softplus of ``scale - eps``.

    >>> round(inverse_softplus_scale(0.1, jnp.float32), 4)
    -2.2522
    """
    target = scale - float(jnp.finfo(dtype).eps)
    if not target > 0:
        raise ValueError(f"a scale must be larger than the dtype's eps ({float(jnp.finfo(dtype).eps)}), got {scale!r}")
    return math.log(math.expm1(target))


def _normal_init(mean: float, stddev: float, shape: tuple[int, ...], dtype):
    def init(rng_key: jax.Array) -> jax.Array:
        return mean + stddev * jax.random.normal(rng_key, shape, dtype)

    return init


@dataclass(frozen=True)
class MeanFieldNormal:
    r"""Independent Normal over every weight, TFP's ``default_mean_field_normal_fn``.

    .. math::
        q(w) = \mathcal{N}(\mu, \sigma^2), \quad
        \sigma = \operatorname{softplus}(u) + \varepsilon_{\text{dtype}}

    with :math:`\mu \sim \mathcal{N}(\text{loc_mean}, \text{loc_stddev}^2)` and
    :math:`u \sim \mathcal{N}(\text{untransformed_scale_mean}, \text{untransformed_scale_stddev}^2)`
    at initialisation. The defaults (0, 0.1, -3, 0.1) are TFP's, so the initial
    scale is about 0.0486.

    >>> MeanFieldNormal().untransformed_scale_mean
    -3.0
    """

    loc_mean: float = 0.0
    loc_stddev: float = 0.1
    untransformed_scale_mean: float = -3.0
    untransformed_scale_stddev: float = 0.1

    def __call__(self, site: str, shape: tuple[int, ...], dtype) -> dist.Distribution:
        """Create the parameters (inside a guide) and return ``q``."""
        loc = numpyro.param(f"{site}.loc", _normal_init(self.loc_mean, self.loc_stddev, shape, dtype))
        untransformed_scale = numpyro.param(
            f"{site}.untransformed_scale",
            _normal_init(self.untransformed_scale_mean, self.untransformed_scale_stddev, shape, dtype),
        )
        return dist.Normal(loc, softplus_scale(untransformed_scale)).to_event(len(shape))


@dataclass(frozen=True)
class PointMass:
    r"""A point estimate :math:`q(w) = \delta(w - \mu)`; MAP for a weight with a prior.

    ``loc`` starts from :math:`\mathcal{N}(\text{loc_mean}, \text{loc_stddev}^2)`.
    Its KL term is :math:`-\log p(\mu)`. Flipout and local reparameterization
    need a Normal posterior and refuse it with a ``TypeError``.

    >>> PointMass().loc_stddev
    0.1
    """

    loc_mean: float = 0.0
    loc_stddev: float = 0.1

    def __call__(self, site: str, shape: tuple[int, ...], dtype) -> dist.Distribution:
        """Create the parameter (inside a guide) and return ``q``."""
        loc = numpyro.param(f"{site}.loc", _normal_init(self.loc_mean, self.loc_stddev, shape, dtype))
        return dist.Delta(loc, event_dim=len(shape))


Posterior = MeanFieldNormal | PointMass
