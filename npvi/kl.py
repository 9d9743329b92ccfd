r"""The KL term of one layer weight, as chosen by the layer.

* ``"exact"``: :math:`\mathrm{KL}(q \| p)` in closed form through
  :func:`numpyro.distributions.kl_divergence`. Pairs without a closed form
  (Normal against Laplace or StudentT, say) raise a ``TypeError`` that says to
  use ``"mc"``; npvi never swaps estimators silently.
* ``"mc"``: the one-sample Monte Carlo estimate :math:`\log q(w) - \log p(w)` at
  the weight draw :math:`w \sim q` of this step. It works under every estimator,
  Flipout and local reparameterization included.
* a callable ``(q, p, w) -> scalar``, like TFP's ``kernel_divergence_fn``.

The result is summed to a scalar.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro import distributions as dist

from npvi.layers import KLChoice
from npvi.validation import base_distribution


def exact_kl(q: dist.Distribution, p: dist.Distribution, owner: str, setting: str, instead: str) -> jax.Array:
    """``numpyro.distributions.kl_divergence(q, p)``, or a ``TypeError`` naming the pair.

    ``owner`` and ``setting`` say who asked for the closed form and how; ``instead``
    is the setting to use when NumPyro has no closed form for the pair.
    """
    try:
        return dist.kl_divergence(q, p)
    except NotImplementedError:
        pair = f"KL({type(base_distribution(q)).__name__} || {type(base_distribution(p)).__name__})"
        wrapped = f"{type(q).__name__} || {type(p).__name__}"
        raise TypeError(
            f"{owner}: {setting} needs a closed-form {pair} (as {wrapped}), which NumPyro does not have; "
            f"use {instead}"
        ) from None


def kl_term(
    layer: str, what: str, choice: KLChoice, q: dist.Distribution, p: dist.Distribution, value: jax.Array
) -> jax.Array:
    """KL contribution of one weight site: ``choice`` applied to ``(q, p, value)``.

    >>> import jax.numpy as jnp, numpyro.distributions as dist
    >>> q = dist.Normal(jnp.zeros(3), 0.5).to_event(1)
    >>> p = dist.Normal(0.0, 1.0).expand([3]).to_event(1)
    >>> round(float(kl_term("l1", "kernel_kl", "exact", q, p, jnp.zeros(3))), 4)
    0.9544
    """
    if choice == "exact":
        kl = exact_kl(q, p, f"layer {layer!r}", f"{what}='exact'", f"{what}='mc' or a callable")
    elif choice == "mc":
        kl = q.log_prob(value) - p.log_prob(value)
    else:
        kl = choice(q, p, value)
    return jnp.sum(kl)
