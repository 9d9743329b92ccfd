"""Variational posterior families for the weights of npvi layers, and the protocol they follow.

A posterior family is a small frozen dataclass that the guide, the ELBO and each
estimator ask for what they need (:class:`PosteriorFamily`):

* the guide calls ``family(site, shape, dtype)``, which creates the variational
  parameters and returns the distribution ``q``; the guide samples the weight from it;
* the ELBO asks ``q`` for its KL to the prior (``numpyro.distributions.kl_divergence``,
  an open registry) or its ``log_prob`` (``kernel_kl="mc"``);
* ``family.estimators`` names the estimators it supports; local reparameterization
  asks ``family.local_reparameterization(q, rng_key, x, bias, op)`` for the outputs,
  and Flipout asks ``family.flipout_loc(q)`` for the loc whose perturbation
  ``W - loc`` keeps its distribution under sign flips.

A new family needs nothing changed elsewhere. The parameter names are stable and
documented: for a site ``"l1.kernel"``,

* :class:`MeanFieldNormal` creates ``"l1.kernel.loc"`` and
  ``"l1.kernel.untransformed_scale"``;
* :class:`PointMass` creates ``"l1.kernel.loc"``;
* :mod:`npvi.families` adds low-rank and matrix-variate Gaussians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpyro
from numpyro import distributions as dist

from npvi import estimators
from npvi.linear_ops import LinearOp
from npvi.validation import base_distribution


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


@runtime_checkable
class PosteriorFamily(Protocol):
    """What the guide, the ELBO and the estimators ask of a posterior family.

    ``estimators`` lists the estimators the family supports. A family that lists
    ``"local_reparameterization"`` also has
    ``local_reparameterization(q, rng_key, x, bias, op) -> outputs``, and one that
    lists ``"flipout"`` has ``flipout_loc(q) -> loc``, the loc whose perturbation
    ``W - loc`` keeps its distribution under Flipout's sign flips.

    >>> isinstance(MeanFieldNormal(), PosteriorFamily), PointMass().estimators
    (True, ('reparameterization',))
    """

    estimators: ClassVar[tuple[str, ...]]

    def __call__(self, site: str, shape: tuple[int, ...], dtype) -> dist.Distribution: ...


class _IndependentNormalEstimators:
    """All three estimators for a family whose ``q`` is an independent Normal (``Normal(loc, scale).to_event``)."""

    estimators: ClassVar[tuple[str, ...]] = estimators.ESTIMATORS

    def local_reparameterization(
        self, q: dist.Distribution, rng_key: jax.Array, x: jax.Array, bias: jax.Array | None, op: LinearOp
    ) -> jax.Array:
        """Each output element drawn from ``N(op(x, loc) + b, op(x * x, scale^2))``."""
        base = base_distribution(q)
        return estimators.local_reparameterization(rng_key, x, base.loc, base.scale, bias, op=op)

    def flipout_loc(self, q: dist.Distribution) -> jax.Array:
        """The loc: independent symmetric perturbations keep their distribution under sign flips."""
        return base_distribution(q).loc


def _normal_init(mean: float, stddev: float, shape: tuple[int, ...], dtype):
    def init(rng_key: jax.Array) -> jax.Array:
        return mean + stddev * jax.random.normal(rng_key, shape, dtype)

    return init


@dataclass(frozen=True)
class MeanFieldNormal(_IndependentNormalEstimators):
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
    estimators: ClassVar[tuple[str, ...]] = (estimators.REPARAMETERIZATION,)

    def __call__(self, site: str, shape: tuple[int, ...], dtype) -> dist.Distribution:
        """Create the parameter (inside a guide) and return ``q``."""
        loc = numpyro.param(f"{site}.loc", _normal_init(self.loc_mean, self.loc_stddev, shape, dtype))
        return dist.Delta(loc, event_dim=len(shape))


@dataclass(frozen=True, eq=False)
class MopedNormal(_IndependentNormalEstimators):
    r"""A mean-field Normal started at trained weights :math:`w` (MOPED, Krishnan et al. 2020).

    .. math::
        \mu_0 = w, \qquad \sigma_0 = \delta\,|w|

    so a network converted from a trained deterministic one starts where that network is,
    with a relative uncertainty ``delta`` (0.1 is a usual choice). The
    parameters are :class:`MeanFieldNormal`'s: ``"<site>.loc"`` and
    ``"<site>.untransformed_scale"`` (:math:`\sigma = \operatorname{softplus}(u) +
    \varepsilon`); a weight of exactly 0 starts at the smallest scale, :math:`\varepsilon`.
    ``weights`` must be concrete (the trained arrays, not values computed in a trace).

    >>> import jax.numpy as jnp, numpyro
    >>> q = numpyro.handlers.seed(MopedNormal(jnp.array([1.0, -2.0]), 0.1), 0)("w", (2,), jnp.float32)
    >>> [round(float(s), 4) for s in q.base_dist.scale]
    [0.1, 0.2]
    """

    weights: jax.Array
    delta: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.delta, bool) or not isinstance(self.delta, int | float) or not self.delta > 0:
            raise ValueError(f"MopedNormal: delta must be a positive number, got {self.delta!r}")

    def __call__(self, site: str, shape: tuple[int, ...], dtype) -> dist.Distribution:
        """Create the parameters (inside a guide) and return ``q``."""
        if tuple(jnp.shape(self.weights)) != tuple(shape):
            raise ValueError(
                f"MopedNormal: the trained weights of {site!r} have shape {tuple(jnp.shape(self.weights))}, "
                f"but the site has shape {tuple(shape)}"
            )

        def loc_init(_rng_key: jax.Array) -> jax.Array:
            return jnp.asarray(self.weights, dtype)

        def untransformed_scale_init(_rng_key: jax.Array) -> jax.Array:
            scale = jnp.maximum(self.delta * jnp.abs(jnp.asarray(self.weights, dtype)), jnp.finfo(dtype).tiny)
            return jnp.log(jnp.expm1(scale))

        loc = numpyro.param(f"{site}.loc", loc_init)
        untransformed_scale = numpyro.param(f"{site}.untransformed_scale", untransformed_scale_init)
        return dist.Normal(loc, softplus_scale(untransformed_scale)).to_event(len(shape))


Posterior = PosteriorFamily
