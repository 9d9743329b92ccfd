r"""The guide that owns the variational posteriors of a model built from npvi layers.

On its first call, :class:`MeanFieldGuide` reads the model's structure from an abstract trace
(:func:`npvi.tracing.eval_static`: nothing is computed) and places

* the layer's posterior family on every layer weight (TFP's mean-field Normal by default);
* a mean-field Normal in unconstrained space on every other latent site (a noise scale, a
  hierarchical prior scale), mapped to the site's support by ``biject_to(support)``, as
  NumPyro's ``AutoNormal`` does.

Every parameter is named ``"<site>.<part>"``: ``"l1.kernel.loc"``,
``"l1.kernel.untransformed_scale"``, ``"sigma.loc"``, ``"sigma.untransformed_scale"``. The
guide keeps no traced state, so ``svi.init``, ``svi.update`` and the guide itself trace under
:func:`jax.jit` and :func:`jax.vmap` from the first call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from numpyro import distributions as dist
from numpyro import handlers
from numpyro.distributions import biject_to, constraints
from numpyro.infer.initialization import init_to_median
from numpyro.infer.util import helpful_support_errors

from npvi.handlers import LINEAR_MESSAGE
from npvi.layers import POSTERIOR_KEY
from npvi.posteriors import Posterior, inverse_softplus_scale, softplus_scale
from npvi.tracing import eval_static
from npvi.validation import check_observed, is_concrete

Trace = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class _Weight:
    """A layer weight: its site, the layer's posterior family and tensor fn, the weight's shape."""

    name: str
    posterior: Posterior
    tensor_fn: Callable[[dist.Distribution], jax.Array] | None
    shape: tuple[int, ...]
    dtype: Any


@dataclass(frozen=True)
class _Latent:
    """Any other latent site: the shape of its value, its support, and the plates it sits in."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    event_dim: int
    support: constraints.Constraint
    plates: tuple[Any, ...]  # NumPyro's CondIndepStackFrame(name, dim, size)

    def transform(self) -> dist.transforms.Transform:
        """``biject_to(support)``: unconstrained space to the site's support."""
        return biject_to(self.support)

    def unconstrained_event_dim(self) -> int:
        """The guide's event dim in unconstrained space (a simplex of K values has K - 1 there)."""
        unconstrained = self.transform().inverse_shape(self.shape)
        return self.event_dim + len(unconstrained) - len(self.shape)


@dataclass(frozen=True)
class Sites:
    """What :class:`MeanFieldGuide` reads from the model: layer weights and other latents, in the model's order."""

    weights: tuple[_Weight, ...]
    latents: tuple[_Latent, ...]


def _has_traced_values(support: constraints.Constraint) -> bool:
    return not all(is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(support))


def _latent(name: str, site: dict[str, Any], full_sizes: dict[str, int]) -> _Latent:
    subsampled = [frame.name for frame in site["cond_indep_stack"] if frame.size != full_sizes.get(frame.name)]
    if subsampled:
        raise ValueError(
            f"MeanFieldGuide: the latent site {name!r} sits in the subsampled plate(s) {subsampled}, so it has one "
            "value per example, but a minibatch's plate indices do not say which examples it holds (npvi.fit "
            "chooses the rows); give the site a global value (outside the data plate), or use a guide of your own"
        )
    support = site["fn"].support
    with helpful_support_errors(site):  # e.g. a discrete site: NumPyro's own message
        biject_to(support)
    if _has_traced_values(support):
        raise ValueError(
            f"MeanFieldGuide: the support of latent site {name!r} ({support}) depends on values computed in the "
            "model, but the guide needs it fixed; give the site a support with constant bounds"
        )
    return _Latent(
        name,
        tuple(jnp.shape(site["value"])),
        jnp.result_type(site["value"]),
        site["fn"].event_dim,
        support,
        tuple(site["cond_indep_stack"]),
    )


def _sites_from_trace(trace: Trace, trained: Callable[[str], bool] | None = None) -> Sites:
    """The layer weights and other latent sites of a model trace; checks concrete observed data (NaN, support).

    ``trained(name)`` false for a latent site: the site was observed in training, and is left out.
    """
    full_sizes = {name: site["args"][0] for name, site in trace.items() if site["type"] == "plate"}
    weights, seen = [], set()
    for site in trace.values():
        if site["type"] == LINEAR_MESSAGE:
            for name, posterior, tensor_fn in site["kwargs"]["layer"].variational_weights():
                if name in seen:  # a converted network's layer called twice (shared weights)
                    continue
                seen.add(name)
                value = trace[name]["value"]
                weights.append(_Weight(name, posterior, tensor_fn, tuple(jnp.shape(value)), jnp.result_type(value)))
    check_observed(trace)
    weight_names = {weight.name for weight in weights}
    latents = [
        _latent(name, site, full_sizes)
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"] and name not in weight_names
        and (trained is None or trained(name))
    ]
    return Sites(tuple(weights), tuple(latents))


class _InitialLocations:
    """The unconstrained initial locations of the other latents, computed on the first request.

    One prior run of the model with ``init_loc_fn`` at those sites (as NumPyro's
    ``initialize_model`` does, so a hierarchical site starts from its parents' initial
    values), then ``biject_to(support).inv``. The guide asks only while it creates its
    parameters, in ``svi.init``; afterwards the parameters are substituted and this never runs.
    """

    def __init__(self, model: Callable, init_loc_fn: Callable, sites: Sites, args: tuple, kwargs: dict) -> None:
        self.model, self.init_loc_fn, self.args, self.kwargs = model, init_loc_fn, args, kwargs
        self.latents = {latent.name: latent for latent in sites.latents}
        self.locs: dict[str, jax.Array] | None = None

    def __call__(self, name: str, rng_key: jax.Array) -> jax.Array:
        if self.locs is None:
            self.locs = self._compute(rng_key)
        return self.locs[name]

    def _compute(self, rng_key: jax.Array) -> dict[str, jax.Array]:
        def init_value(site: dict[str, Any]) -> jax.Array | None:
            return self.init_loc_fn(site) if site["name"] in self.latents else None

        model = handlers.substitute(handlers.seed(self.model, rng_key), substitute_fn=init_value)
        with handlers.block():
            trace = handlers.trace(model).get_trace(*self.args, **self.kwargs)
        return {name: latent.transform().inv(trace[name]["value"]) for name, latent in self.latents.items()}


class MeanFieldGuide:
    r"""Mean-field guide for models built from npvi layers.

    * Every npvi layer weight site (``"<layer>.kernel"``, and ``"<layer>.bias"``
      when it has a prior) gets the layer's posterior family; by default TFP's
      independent Normal, :math:`\sigma = \operatorname{softplus}(u) + \varepsilon`,
      with parameters ``"<site>.loc"`` and ``"<site>.untransformed_scale"``.
    * Every other latent site :math:`z` (an observation-noise scale, a hierarchical
      prior scale) gets the same family in unconstrained space,
      :math:`z = T(\zeta)`, :math:`\zeta \sim \mathcal{N}(\mu, \sigma^2)` with
      :math:`T` = ``biject_to(support)``, parameters ``"<site>.loc"`` and
      ``"<site>.untransformed_scale"``: NumPyro's ``AutoNormal`` with npvi's names.
      :math:`\mu` starts at :math:`T^{-1}` of ``init_loc_fn``'s value (a
      :mod:`numpyro.infer.initialization` strategy; default ``init_to_median``) and
      :math:`\sigma` at ``init_scale``.

    Latent sites inside a plate get one posterior per plate element; a latent in a
    *subsampled* plate (one value per example of a minibatch) raises ``ValueError``,
    since the plate's indices do not say which examples a minibatch holds.

    The posterior is passed to the model through the weight site's ``infer``
    dict, which is how Flipout and local reparameterization see :math:`\mu` and
    :math:`\sigma` during SVI. Its first call (``svi.init``) reads the model's sites
    from an abstract trace (no computation) and keeps them (:attr:`sites`): as with
    NumPyro's autoguides, a site observed then stays observed, so later calls
    without the observations (prediction) still treat it as data. Nothing traced is
    kept, so the guide traces under ``jit`` and ``vmap`` from its first call. The
    first call also checks the observed data where they are concrete: NaN, and values
    outside their distribution's support (a label of 10 for ten classes).

    >>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None):
    ...     mu = npvi.DenseFlipout(1, name="l1")(x)[..., 0]
    ...     sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
    >>> guide = npvi.MeanFieldGuide(model)
    >>> svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    >>> state = jax.jit(svi.init)(jax.random.PRNGKey(0), jnp.ones((4, 2)), jnp.zeros(4))
    >>> sorted(svi.get_params(state))
    ['l1.bias', 'l1.kernel.loc', 'l1.kernel.untransformed_scale', 'sigma.loc', 'sigma.untransformed_scale']
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
    ) -> None:
        if not (isinstance(init_scale, int | float) and not isinstance(init_scale, bool) and init_scale > 0):
            raise ValueError(f"MeanFieldGuide: init_scale must be a positive number, got {init_scale!r}")
        self.model = model
        self.init_loc_fn = init_loc_fn
        self.init_scale = float(init_scale)
        self.sites: Sites | None = None

    def read_sites(self, *args: Any, **kwargs: Any) -> Sites:
        """The model's layer weights and other latents for these arguments, from an abstract trace."""
        return self._read_sites(args, kwargs)

    def _read_sites(self, args: tuple, kwargs: dict, trained: Callable[[str], bool] | None = None) -> Sites:
        def read() -> Sites:
            with handlers.block():
                trace = handlers.trace(handlers.seed(self.model, rng_seed=0)).get_trace(*args, **kwargs)
            return _sites_from_trace(trace, trained)

        return eval_static(read)

    def setup_from_params(self, params: dict[str, jax.Array], *args: Any, **kwargs: Any) -> Sites:
        """Set a new guide up for trained ``params`` from the inputs alone, without the observations.

        What a guide made anew for saved params (after :func:`npvi.load`) needs before it predicts.
        The guide gives every latent site it owns a ``"<site>.loc"`` parameter, so a latent site of
        the model (for these arguments) with none in ``params`` was observed in training, and stays
        observed. A guide already set up (by ``svi.init`` or an earlier call) is left as it is.
        :class:`npvi.Predictive`, :func:`npvi.predict`, :func:`npvi.median_model` and
        :func:`npvi.to_inference_data` call it for you.

        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> import npvi
        >>> def model(x, y=None):
        ...     mu = npvi.DenseFlipout(1, name="l1")(x)[..., 0]
        ...     with numpyro.plate("data", x.shape[0]):
        ...         numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)
        >>> params = {"l1.kernel.loc": jnp.zeros((2, 1)), "l1.kernel.untransformed_scale": jnp.zeros((2, 1)),
        ...           "l1.bias": jnp.zeros(1)}
        >>> guide = npvi.MeanFieldGuide(model)
        >>> sites = guide.setup_from_params(params, jnp.ones((4, 2)))  # x only: y was observed
        >>> [w.name for w in sites.weights], [latent.name for latent in sites.latents]
        (['l1.kernel'], [])
        """
        if self.sites is None:
            self.sites = self._read_sites(args, kwargs, trained=lambda name: f"{name}.loc" in params)
        return self.sites

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Sample every latent site from the posterior; returns ``{site: value}``."""
        if self.sites is None:
            self.sites = self.read_sites(*args, **kwargs)
        sites = self.sites
        values = {}
        for weight in sites.weights:
            q = weight.posterior(weight.name, weight.shape, weight.dtype)
            fixed = {} if weight.tensor_fn is None else {weight.name: weight.tensor_fn(q)}
            with handlers.substitute(data=fixed):
                values[weight.name] = numpyro.sample(weight.name, q, infer={POSTERIOR_KEY: q})
        initial_locations = _InitialLocations(self.model, self.init_loc_fn, sites, args, kwargs)
        for latent in sites.latents:
            values[latent.name] = self._sample_latent(latent, initial_locations)
        return values

    def _sample_latent(self, latent: _Latent, initial_locations: _InitialLocations) -> jax.Array:
        transform = latent.transform()
        event_dim = latent.unconstrained_event_dim()
        shape = transform.inverse_shape(latent.shape)
        with ExitStack() as stack:
            for frame in latent.plates:
                stack.enter_context(numpyro.plate(frame.name, frame.size, dim=frame.dim))
            loc = numpyro.param(
                f"{latent.name}.loc", lambda key: initial_locations(latent.name, key), event_dim=event_dim
            )
            u = numpyro.param(
                f"{latent.name}.untransformed_scale",
                jnp.full(shape, inverse_softplus_scale(self.init_scale, latent.dtype), latent.dtype),
                event_dim=event_dim,
            )
            q = dist.Normal(loc, softplus_scale(u)).to_event(event_dim)
            if not isinstance(transform, dist.transforms.IdentityTransform):
                q = dist.TransformedDistribution(q, transform)
            return numpyro.sample(latent.name, q)

    def sample_posterior(
        self,
        rng_key: jax.Array,
        params: dict[str, jax.Array],
        *args: Any,
        sample_shape: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> dict[str, jax.Array]:
        """Draw ``sample_shape`` posterior samples of every latent site, as AutoGuides do."""

        def draw(key: jax.Array) -> dict[str, jax.Array]:
            return handlers.substitute(handlers.seed(self, key), data=params)(*args, **kwargs)

        samples = jax.vmap(draw)(jax.random.split(rng_key, math.prod(sample_shape)))
        return {k: v.reshape(tuple(sample_shape) + v.shape[1:]) for k, v in samples.items()}

    def median(self, params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Posterior median of every latent site: each weight posterior's ``loc``, ``T(loc)`` for the others."""
        if self.sites is None:
            raise RuntimeError("the guide has not been run yet; call svi.init or the guide first")
        medians = {weight.name: params[f"{weight.name}.loc"] for weight in self.sites.weights}
        medians.update({latent.name: latent.transform()(params[f"{latent.name}.loc"]) for latent in self.sites.latents})
        return medians
