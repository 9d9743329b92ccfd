r"""Held-out scores of a fit: the predictive log-likelihood of validation data.

For validation data :math:`(x_i, y_i)_{i=1}^{n}` and :math:`S` posterior draws
:math:`W_s \sim q_\phi`, the mean log predictive density per example is

.. math::

    \widehat{\mathrm{LL}} = \frac{1}{n} \sum_{i=1}^{n}
        \log \frac{1}{S} \sum_{s=1}^{S} p(y_i \mid x_i, W_s),

summed over the model's observed sites (the UCI benchmarks' "test log-likelihood").
Higher is better; unlike the ELBO it holds no KL term, so it is comparable across
priors, posterior families and training-set sizes. Each draw runs the model with the
drawn weights substituted (:func:`npvi.predictive.traced_draw`), so the layers use
one network per draw, with no estimator noise. The draws come ``chunk_size`` at a
time from ``split(rng_key, num_samples)`` (:func:`npvi.predictive.chunked_draws`), so
memory stays bounded and the chunking never changes the number.

:class:`npvi.Trainer` keeps this program compiled (``validation_data=`` in
:func:`npvi.fit`, and :meth:`npvi.Trainer.evaluate`), so a check every epoch compiles
nothing after the first.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from numpyro.infer.svi import SVI, SVIState

from npvi.predictive import chunked_draws, traced_draw
from npvi.tracing import Static

#: The name of the held-out score in a fit's history and for :class:`npvi.EarlyStopping`.
VAL_LOG_LIKELIHOOD = "val_log_likelihood"


def observed_log_likelihoods(trace: dict[str, dict[str, Any]]) -> dict[str, jax.Array]:
    """``{site: log p(value)}`` of every observed site of a model trace (factors aside), unscaled."""
    return {
        name: site["fn"].log_prob(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and site["is_observed"] and not site["infer"].get("is_auxiliary")
    }


def mean_log_predictive_density(log_likelihoods: dict[str, jax.Array], num_examples: int) -> jax.Array:
    r""":math:`\frac{1}{n}\sum_i \log \frac{1}{S}\sum_s p_{s,i}` from ``{site: (S, ...) log-likelihoods}``."""
    total = jnp.zeros((), jnp.float32)
    for values in log_likelihoods.values():
        num_samples = values.shape[0]
        total = total + jnp.sum(logsumexp(values, axis=0) - math.log(num_samples))
    return total / num_examples


def log_likelihood_program(
    svi: SVI,
    num_samples: int,
    chunk_size: int,
    state_or_params: SVIState | dict[str, jax.Array],
    rng_key: jax.Array,
    data: tuple[jax.Array, ...],
    arrays: list,
    *,
    static: Static,
) -> jax.Array:
    """The mean log predictive density of ``data`` (``model(*data, **kwargs)``), one compiled program.

    ``state_or_params`` is an :class:`~numpyro.infer.svi.SVIState` (its params are read
    inside the program) or a params dict.
    """
    kwargs = static.rebuild(arrays)
    if isinstance(state_or_params, SVIState):
        params = svi.get_params(state_or_params)
    else:
        params = state_or_params
    model, guide = svi.model, svi.guide

    def draw(key: jax.Array) -> dict[str, jax.Array]:
        _, trace = traced_draw(model, guide, params, key, *data, **kwargs)
        found = observed_log_likelihoods(trace)
        if not found:
            raise ValueError(
                "validation: the model has no observed site for the validation data; pass them as for training, "
                "e.g. validation_data=(x_val, y_val)"
            )
        return found

    draws = chunked_draws(draw, rng_key, num_samples, chunk_size)
    return mean_log_predictive_density(draws, data[0].shape[0])


def checked_samples(owner: str, num_samples: Any) -> int:
    """``num_samples`` for a validation score: a positive int."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"{owner}: validation_samples must be a positive int, got {num_samples!r}")
    return num_samples


def chunk_for(num_samples: int) -> int:
    """The draws run at once for a validation score: all of them, up to 100 (as :class:`npvi.Predictive`)."""
    return min(num_samples, 100)

