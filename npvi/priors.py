r"""Priors beyond a fixed :math:`\mathcal{N}(0, 1)`: a scale mixture, and priors whose scale is learned.

Each function returns what a layer's ``kernel_prior`` / ``bias_prior`` takes: a NumPyro
distribution, or a callable ``(site, shape, dtype) -> Distribution`` that the layer calls
inside the model (so it may create ``param`` and ``sample`` sites of its own).

* :func:`scale_mixture_prior`: Blundell et al.'s (2015) two-Normal scale mixture.
  No closed-form KL: use ``kernel_kl="mc"``.
* :func:`learned_normal_prior`: :math:`\mathcal{N}(0, s^2)` with :math:`s` a model
  ``param`` (type-II maximum likelihood, "empirical Bayes"), per layer or per unit.
* :func:`hierarchical_normal_prior`: :math:`s` a latent site with its own prior; the
  guide gives it a posterior, as NumPyro's ``AutoNormal`` would.
* :func:`horseshoe_prior`: :math:`w_{ij} \sim \mathcal{N}(0, \tau^2 \lambda_j^2)` with
  half-Cauchy :math:`\tau` (global) and :math:`\lambda_j` (per unit).

The weight's KL stays exact for the last three: given the scale, the prior is a Normal,
and :math:`\mathrm{KL}(q(w) \| p(w \mid s))` is NumPyro's closed form; the scale's own
term (:math:`\log q(s) - \log p(s)`) is Monte Carlo, as for any other latent site.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpyro
from numpyro import distributions as dist
from numpyro.distributions import constraints

from npvi.validation import check_positive_number

PriorFn = Callable[[str, tuple[int, ...], Any], dist.Distribution]
_PER = ("layer", "unit")


def _check_per(what: str, per: Any) -> None:
    if not isinstance(per, str) or per not in _PER:
        raise ValueError(f"{what}: per must be 'layer' or 'unit', got {per!r}")


def _scale_shape(per: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return () if per == "layer" else tuple(shape[-1:])


def scale_mixture_prior(
    mixture_weight: float = 0.5, scale1: float = 1.0, scale2: float = math.exp(-6)
) -> dist.MixtureSameFamily:
    r"""Blundell et al.'s scale-mixture prior, one per weight.

    .. math::
        p(w) = \pi\,\mathcal{N}(w; 0, \sigma_1^2) + (1 - \pi)\,\mathcal{N}(w; 0, \sigma_2^2)

    with :math:`\pi` = ``mixture_weight``, :math:`\sigma_1 > \sigma_2`: a wide component
    and a narrow one at 0. NumPyro's ``MixtureSameFamily``; the layer broadcasts it to
    the weight's shape. KL to it has no closed form, so pair it with ``kernel_kl="mc"``.

    >>> import jax.numpy as jnp
    >>> p = scale_mixture_prior(0.5, 1.0, 0.1)
    >>> round(float(p.log_prob(0.0)), 4)  # log(0.5 N(0; 0, 1) + 0.5 N(0; 0, 0.01))
    0.7858
    """
    pi = check_positive_number("scale_mixture_prior", "mixture_weight", mixture_weight)
    if not pi < 1:
        raise ValueError(f"scale_mixture_prior: mixture_weight must be in (0, 1), got {mixture_weight!r}")
    wide = check_positive_number("scale_mixture_prior", "scale1", scale1)
    narrow = check_positive_number("scale_mixture_prior", "scale2", scale2)
    return dist.MixtureSameFamily(
        dist.Categorical(probs=jnp.array([pi, 1 - pi])), dist.Normal(0.0, jnp.array([wide, narrow]))
    )


def learned_normal_prior(per: str = "layer", init_scale: float = 1.0) -> PriorFn:
    r""":math:`\mathcal{N}(0, s^2)` with the scale :math:`s` learned by type-II maximum likelihood.

    :math:`s` is a positive model ``param`` named ``"<site>.prior_scale"``, one per
    layer weight (``per="layer"``) or one per output unit (``per="unit"``: the last axis
    of the kernel), started at ``init_scale``. SVI maximises the ELBO over it, which
    with an exact KL sets each :math:`s^2` to the mean of :math:`\mu^2 + \sigma^2` it
    covers.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     p = learned_normal_prior("unit", 0.5)("l1.kernel", (3, 4), jnp.float32)
    >>> p.scale.shape
    (4,)
    """
    _check_per("learned_normal_prior", per)
    start = check_positive_number("learned_normal_prior", "init_scale", init_scale)

    def prior(site: str, shape: tuple[int, ...], dtype) -> dist.Normal:
        scale_shape = _scale_shape(per, shape)
        scale = numpyro.param(
            f"{site}.prior_scale", jnp.full(scale_shape, start, dtype), constraint=constraints.positive
        )
        return dist.Normal(jnp.zeros((), dtype), scale)

    return prior


def hierarchical_normal_prior(scale_prior: dist.Distribution | None = None, per: str = "layer") -> PriorFn:
    r""":math:`w \sim \mathcal{N}(0, s^2)` with :math:`s \sim` ``scale_prior`` a latent site.

    The latent is ``"<site>.prior_scale"``, one per layer or per unit (the kernel's last
    axis), with ``scale_prior`` (default ``HalfNormal(1)``) on each. The guide gives it a
    posterior; the weights' KL stays exact given :math:`s`.

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     p = hierarchical_normal_prior(per="unit")("l1.kernel", (3, 4), jnp.float32)
    >>> p.scale.shape
    (4,)
    """
    scale_prior = dist.HalfNormal(1.0) if scale_prior is None else scale_prior
    if not isinstance(scale_prior, dist.Distribution) or scale_prior.event_shape or scale_prior.batch_shape:
        raise TypeError(
            f"hierarchical_normal_prior: scale_prior must be a scalar numpyro distribution, got {scale_prior!r}"
        )
    _check_per("hierarchical_normal_prior", per)

    def prior(site: str, shape: tuple[int, ...], dtype) -> dist.Normal:
        scale_shape = _scale_shape(per, shape)
        scale = numpyro.sample(f"{site}.prior_scale", scale_prior.expand(scale_shape).to_event(len(scale_shape)))
        return dist.Normal(jnp.zeros((), dtype), scale)

    return prior


def horseshoe_prior(global_scale: float = 1.0) -> PriorFn:
    r"""The horseshoe per unit: :math:`w_{ij} \sim \mathcal{N}(0, \tau^2 \lambda_j^2)`.

    :math:`\tau \sim \mathcal{C}^+(0, \text{global_scale})` is ``"<site>.global_scale"``
    and :math:`\lambda_j \sim \mathcal{C}^+(0, 1)`, one per unit (the kernel's last
    axis), is ``"<site>.local_scale"``; a unit whose :math:`\lambda_j` shrinks is pruned
    (Ghosh & Doshi-Velez, 2017).

    >>> import jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     p = horseshoe_prior(0.1)("l1.kernel", (3, 4), jnp.float32)
    >>> p.scale.shape
    (4,)
    """
    tau0 = check_positive_number("horseshoe_prior", "global_scale", global_scale)

    def prior(site: str, shape: tuple[int, ...], dtype) -> dist.Normal:
        tau = numpyro.sample(f"{site}.global_scale", dist.HalfCauchy(tau0))
        lam = numpyro.sample(f"{site}.local_scale", dist.HalfCauchy(1.0).expand(tuple(shape[-1:])).to_event(1))
        return dist.Normal(jnp.zeros((), dtype), tau * lam)

    return prior
