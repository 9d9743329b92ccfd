"""An ELBO that honours each npvi layer's KL choice."""

from __future__ import annotations

import copy
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.handlers import replay, seed
from numpyro.infer.elbo import ELBO as _NumPyroELBO
from numpyro.infer.util import compute_log_probs
from numpyro.util import check_model_guide_match

from npvi.handlers import LINEAR_MESSAGE
from npvi.kl import kl_term
from npvi.validation import is_concrete


def check_kl_weight(kl_weight: Any) -> float | jax.Array:
    """``kl_weight`` if it is a finite, non-negative number or array (a traced array is taken as it is).

    >>> check_kl_weight(0.5)
    0.5
    >>> check_kl_weight("0.5")
    Traceback (most recent call last):
    ...
    TypeError: npvi.ELBO: kl_weight must be a finite non-negative number or a JAX array, got str '0.5'
    """
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, int | float | np.number | np.ndarray | jax.Array):
        raise TypeError(
            "npvi.ELBO: kl_weight must be a finite non-negative number or a JAX array, "
            f"got {type(kl_weight).__name__} {kl_weight!r}"
        )
    if is_concrete(kl_weight):
        value = np.asarray(kl_weight)
        if value.dtype.kind not in "iuf":
            raise TypeError(f"npvi.ELBO: kl_weight must be a real number or array, got dtype {value.dtype}")
        if not (np.all(np.isfinite(value)) and np.all(value >= 0)):
            raise ValueError(f"npvi.ELBO: kl_weight must be finite and non-negative, got {value.tolist()!r}")
    return kl_weight


def _layer_weights(model_trace: dict) -> dict[str, tuple[str, str, Any]]:
    """``{weight site: (layer name, "kernel_kl" | "bias_kl", choice)}`` for every layer run."""
    weights = {}
    for site in model_trace.values():
        if site["type"] == LINEAR_MESSAGE:
            layer = site["kwargs"]["layer"]
            weights[layer.kernel_site] = (layer.name, layer.kernel_kl_argument, layer.kernel_kl)
            if layer.use_bias and layer.bias_prior is not None:
                weights[layer.bias_site] = (layer.name, layer.bias_kl_argument, layer.bias_kl)
    return weights


class ELBO(_NumPyroELBO):
    r"""The evidence lower bound with per-layer KL terms.

    .. math::
        \mathcal{L} = \sum_{\text{obs}} s \log p(y \mid \cdot)
        - \beta \Big[ \sum_{\text{layer weights}} s\, \mathrm{KL}(q \| p)
        + \sum_{\text{other latents}} s\,(\log q(z) - \log p(z)) \Big]

    where :math:`s` is each model site's scale (``plate`` subsampling gives the
    likelihood :math:`N/B`; global weights outside the data plate keep 1, so their
    KL is counted once per step) and :math:`\beta` is ``kl_weight``. Each layer's
    :math:`\mathrm{KL}` follows its ``kernel_kl`` / ``bias_kl`` (see
    :func:`npvi.kl.kl_term`); other latent sites use the Monte Carlo term, as
    :class:`~numpyro.infer.Trace_ELBO` does. ``loss`` returns :math:`-\mathcal{L}`
    averaged over ``num_particles`` draws.

    ``kl_weight`` may be a traced array, so an annealing schedule can build the
    ELBO inside a jitted step; see the user guide.

    >>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None):
    ...     mu = npvi.DenseReparameterization(1, name="l1")(x)[..., 0]
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO(num_particles=4))
    >>> result = svi.run(jax.random.PRNGKey(0), 10, jnp.ones((8, 2)), jnp.ones(8), progress_bar=False)
    >>> result.losses.shape
    (10,)
    """

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        kl_weight: float | jax.Array = 1.0,
    ) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.kl_weight = check_kl_weight(kl_weight)

    def with_kl_weight(self, kl_weight: float | jax.Array) -> ELBO:
        """A copy of this ELBO with another ``kl_weight`` (a traced array too, for a schedule in a jitted step)."""
        annealed = copy.copy(self)
        annealed.kl_weight = check_kl_weight(kl_weight)
        return annealed

    def loss_with_mutable_state(
        self,
        rng_key: jax.Array,
        param_map: dict[str, jax.Array],
        model,
        guide,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Negative ELBO and the values of ``numpyro.mutable`` sites."""

        def single_particle_elbo(rng_key: jax.Array):
            model_seed, guide_seed = random.split(rng_key)
            guide_log_probs, guide_trace = compute_log_probs(seed(guide, guide_seed), args, kwargs, param_map)
            mutable = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "mutable"}
            params = {**param_map, **mutable}
            model_log_probs, model_trace = compute_log_probs(
                replay(seed(model, model_seed), guide_trace), args, kwargs, params
            )
            check_model_guide_match(model_trace, guide_trace)  # NumPyro's own checks, as its ELBOs run them
            mutable.update({n: s["value"] for n, s in model_trace.items() if s["type"] == "mutable"})
            elbo = self._elbo(model_trace, guide_trace, model_log_probs, guide_log_probs)
            return elbo, (mutable or None)

        if self.num_particles == 1:
            elbo, mutable = single_particle_elbo(rng_key)
            return {"loss": -elbo, "mutable_state": mutable}
        elbos, mutable = self.vectorize_particles_fn(
            single_particle_elbo, random.split(rng_key, self.num_particles)
        )
        return {"loss": -jnp.mean(elbos), "mutable_state": mutable}

    def _elbo(self, model_trace: dict, guide_trace: dict, model_log_probs: dict, guide_log_probs: dict) -> jax.Array:
        """Log-likelihood minus ``kl_weight`` times the KL terms; the log probs are scaled and summed per site."""
        weights = _layer_weights(model_trace)
        log_likelihood = jnp.zeros(())
        kl = jnp.zeros(())
        for name, site in model_trace.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                log_likelihood = log_likelihood + model_log_probs[name]
            elif name in weights and name in guide_trace:
                layer, what, choice = weights[name]
                scale = 1.0 if site["scale"] is None else site["scale"]
                q = guide_trace[name]["fn"]
                kl = kl + scale * kl_term(layer, what, choice, q, site["fn"], site["value"])
            else:
                kl = kl - model_log_probs[name]
        for name, site in guide_trace.items():
            if site["type"] == "sample" and not site["is_observed"] and name not in weights:
                kl = kl + guide_log_probs[name]
        return log_likelihood - self.kl_weight * kl
