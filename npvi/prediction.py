r"""What Keras' ``model.predict`` gives, for a Bayesian network: the predictive summary of one site.

For each posterior draw :math:`W_s \sim q`, :math:`s = 1..S`, the model's likelihood at the
predicted site is a distribution :math:`p(y \mid x, W_s)`; :func:`npvi.predict` (and
:meth:`npvi.Predictive.predict`) summarise those distributions, not samples of :math:`y`:

* a ``Categorical`` likelihood gives its class probabilities :math:`p_s`, and the summary is
  :func:`npvi.uncertainty.classification_summary` of them: :math:`\bar p = \frac1S \sum_s p_s`
  and the entropy split; a ``Bernoulli`` gives the two classes :math:`(1 - p_s, p_s)`;
* any other likelihood gives its mean :math:`\mu_s` and variance :math:`\sigma_s^2`, and the
  summary is the mean and standard deviation of the predictive mixture, by the law of total
  variance,

  .. math::

      \bar\mu = \frac1S \sum_s \mu_s, \qquad
      \sigma^2 = \underbrace{\frac1S \sum_s \sigma_s^2}_{\text{aleatoric}}
      + \underbrace{\frac1S \sum_s (\mu_s - \bar\mu)^2}_{\text{epistemic}}.

:func:`median_model` is the point-estimate network: the model with every latent site fixed at
the guide's posterior median (``guide.median(params)``: each weight's ``loc``), so the network is
deterministic; ``npvi.predict(..., point_estimate=True)`` summarises it the same way (one
"draw", from a guide with a point mass at the medians: the mutual information, or the
epistemic part, is 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from numpyro import distributions as dist
from numpyro import handlers

from npvi.guides import MeanFieldGuide
from npvi.uncertainty import ClassificationSummary, RegressionSummary, classification_summary
from npvi.validation import base_distribution

Trace = dict[str, dict[str, Any]]


def target_site(guide_trace: Trace, model_trace: Trace, site: str | None) -> str:
    """The site to summarise: ``site``, or the model's one sample site that the guide does not sample."""
    predicted = [name for name, s in model_trace.items() if s["type"] == "sample" and name not in guide_trace]
    if site is None:
        if len(predicted) != 1:
            raise ValueError(
                f"predict: the model has {len(predicted)} predicted sites for these inputs ({predicted}); "
                "name the one to summarise with site='...'"
            )
        site = predicted[0]
    if site not in predicted:
        raise ValueError(f"predict: site {site!r} is not a predicted sample site of the model; those are {predicted}")
    if model_trace[site]["is_observed"]:
        raise ValueError(
            f"predict: the site {site!r} is observed in this call (its value was passed as an argument); "
            "predict from the inputs alone, predict(model, guide, params, x, rng_key=key) without y"
        )
    return site


def site_moments(fn: dist.Distribution) -> dict[str, jax.Array]:
    """``{"probs": (..., K)}`` for a Categorical or Bernoulli likelihood, else ``{"mean", "variance"}``."""
    base = base_distribution(fn)
    if isinstance(base, dist.CategoricalProbs | dist.CategoricalLogits):
        probs = base.probs
        return {"probs": jnp.broadcast_to(probs, fn.shape() + probs.shape[-1:])}
    if isinstance(base, dist.BernoulliProbs | dist.BernoulliLogits):
        p = jnp.broadcast_to(base.probs, fn.shape())
        return {"probs": jnp.stack([1.0 - p, p], axis=-1)}
    return {"mean": jnp.asarray(fn.mean), "variance": jnp.asarray(fn.variance)}


def summarize(moments: dict[str, jax.Array]) -> RegressionSummary | ClassificationSummary:
    """The predictive summary of per-draw moments stacked on axis 0 (see the module docstring)."""
    if "probs" in moments:
        return classification_summary(moments["probs"])
    mean = moments["mean"].mean(axis=0)
    variance = moments["variance"].mean(axis=0) + moments["mean"].var(axis=0)
    return RegressionSummary(mean, jnp.sqrt(variance))


def _medians(guide: Callable[..., Any], params: dict[str, jax.Array], args: tuple, kwargs: dict) -> dict[str, Any]:
    if not callable(getattr(guide, "median", None)):
        raise TypeError(f"the guide ({type(guide).__name__}) has no median(params) method for a point estimate")
    if isinstance(guide, MeanFieldGuide):
        guide.setup_from_params(params, *args, **kwargs)
    return guide.median(params)


def median_guide(guide: Callable[..., Any], params: dict[str, jax.Array]) -> Callable[..., Any]:
    """A guide with a point mass at ``guide.median(params)`` on every latent site (for ``point_estimate=True``)."""

    def point_guide(*args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        medians = _medians(guide, params, args, kwargs)
        return {name: numpyro.sample(name, dist.Delta(v, event_dim=jnp.ndim(v))) for name, v in medians.items()}

    return point_guide


def median_model(
    model: Callable[..., Any], guide: Callable[..., Any], params: dict[str, jax.Array]
) -> Callable[..., Any]:
    r"""The model with every latent site at the guide's posterior median: the point-estimate network.

    ``guide.median(params)`` (each weight's posterior ``loc``, :math:`T(\mu)` for other latents;
    NumPyro's autoguides have the same method) is substituted into the model together with the
    params, so no weight is drawn and no estimator noise is added. The result is a NumPyro model
    with the model's arguments: call it under ``handlers.seed`` for its return value, or give it to
    :func:`npvi.predict` (``point_estimate=True`` does) or :class:`numpyro.infer.Predictive`. A
    :class:`~npvi.MeanFieldGuide` made anew for loaded params is set up from the inputs
    (:meth:`~npvi.MeanFieldGuide.setup_from_params`).

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro import handlers
    >>> import npvi
    >>> def model(x, y=None):
    ...     mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)
    ...     return mu
    >>> params = {"out.kernel.loc": jnp.array([[2.0], [-1.0]]), "out.kernel.untransformed_scale": jnp.zeros((2, 1)),
    ...           "out.bias": jnp.array([0.5])}
    >>> net = npvi.median_model(model, npvi.MeanFieldGuide(model), params)
    >>> handlers.seed(net, 0)(jnp.array([[1.0, 1.0], [0.0, 2.0]])).tolist()  # x @ loc + bias, every call
    [1.5, -1.5]
    """
    if not callable(getattr(guide, "median", None)):
        raise TypeError(f"median_model: the guide ({type(guide).__name__}) has no median(params) method")

    def point_model(*args: Any, **kwargs: Any) -> Any:
        medians = _medians(guide, params, args, kwargs)
        return handlers.substitute(handlers.substitute(model, data=params), data=medians)(*args, **kwargs)

    return point_model
