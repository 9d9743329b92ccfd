"""The guide that owns the variational posteriors of npvi layers."""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

import jax
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_median
from numpyro.primitives import Messenger

from npvi.auto_normal import UNTRACEABLE, set_up_auto_normal
from npvi.handlers import DENSE_MESSAGE
from npvi.layers import POSTERIOR_KEY, DenseVariational
from npvi.tracing import jit_setup, split_arrays
from npvi.validation import check_finite, is_concrete

Trace = dict[str, dict[str, Any]]


class _WeightSite:
    """A layer weight the guide places a posterior on."""

    def __init__(self, layer: DenseVariational, part: str, shape: tuple[int, ...], dtype) -> None:
        self.layer, self.part, self.shape, self.dtype = layer, part, shape, dtype
        self.posterior = layer.kernel_posterior if part == "kernel" else layer.bias_posterior
        self.tensor_fn = (
            layer.kernel_posterior_tensor_fn if part == "kernel" else layer.bias_posterior_tensor_fn
        )


class NeedsConcreteSetup(RuntimeError):
    """The guide's first call ran under ``jit``/``vmap``, but AutoNormal must set its other latents up eagerly."""


def _other_latents(trace: Trace, weight_sites: Container[str]) -> list[str]:
    """The latent sample sites that are not npvi layer weights: AutoNormal's part of the guide."""
    return [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"] and name not in weight_sites
    ]


class _Frozen(Messenger):
    """Give the named layer sites (weights, bias params, outputs) fixed values, and hide them from handlers outside.

    AutoNormal's setup runs the model several times (and, if it cannot be
    compiled, op by op); with the layers frozen at the prototype's values it skips
    the network's operations but sees the same values at every other site.
    """

    def __init__(self, fn: Callable[..., Any], values: dict[str, jax.Array]) -> None:
        self.values = values
        super().__init__(fn)

    def process_message(self, msg) -> None:
        if msg["type"] in ("sample", "param", DENSE_MESSAGE) and msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["stop"] = True


class MeanFieldGuide:
    r"""Mean-field guide for models built from npvi layers.

    * Every npvi layer weight site (``"<layer>.kernel"``, and ``"<layer>.bias"``
      when it has a prior) gets the layer's posterior family; by default TFP's
      independent Normal, :math:`\sigma = \operatorname{softplus}(u) + \varepsilon`,
      with parameters ``"<site>.loc"`` and ``"<site>.untransformed_scale"``.
    * Every other latent site (an observation-noise scale, a hierarchical prior
      scale) is handled by NumPyro's :class:`~numpyro.infer.autoguide.AutoNormal`,
      with its parameter names ``"<site>_auto_loc"`` and ``"<site>_auto_scale"``.

    The posterior is passed to the model through the weight site's ``infer``
    dict, which is how Flipout and local reparameterization see :math:`\mu` and
    :math:`\sigma` during SVI.

    On its first call the guide traces the model once (a prototype, as
    NumPyro's autoguides do) and checks the observed data for NaN.

    >>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None):
    ...     mu = npvi.DenseFlipout(1, name="l1")(x)[..., 0]
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)
    >>> guide = npvi.MeanFieldGuide(model)
    >>> svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    >>> state = svi.init(jax.random.PRNGKey(0), jnp.ones((4, 2)), jnp.zeros(4))
    >>> sorted(svi.get_params(state))
    ['l1.bias', 'l1.kernel.loc', 'l1.kernel.untransformed_scale']
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
    ) -> None:
        self.model = model
        self.init_loc_fn = init_loc_fn
        self.init_scale = init_scale
        self.weight_sites: dict[str, _WeightSite] | None = None
        self._other_sites: AutoNormal | None = None

    def _setup(self, rng_key: jax.Array | None, *args: Any, **kwargs: Any) -> None:
        rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
        prototype, values = self._prototype(rng_key, args, kwargs)
        weight_sites = {}
        for site in prototype.values():
            if site["type"] == DENSE_MESSAGE:
                layer = site["kwargs"]["layer"]
                parts = ["kernel"] + (["bias"] if layer.use_bias and layer.bias_prior is not None else [])
                for part in parts:
                    name = f"{layer.name}.{part}"
                    value = prototype[name]["value"]
                    weight_sites[name] = _WeightSite(layer, part, tuple(value.shape), value.dtype)
            elif site["type"] == "sample" and site["is_observed"]:
                check_finite(f"site {site['name']!r}", "the observed data", values[site["name"]])
        others = _other_latents(prototype, weight_sites)
        if others:
            if not is_concrete(rng_key):
                raise NeedsConcreteSetup(
                    f"MeanFieldGuide: the first call of the guide runs under jit or vmap, but the latent sites "
                    f"{others} use NumPyro's AutoNormal, whose setup needs concrete values; call svi.init "
                    "(or the guide) outside jit first"
                )
            frozen = {name: value for name, value in values.items() if not prototype[name].get("is_observed")}
            self._other_sites = set_up_auto_normal(
                _Frozen(self.model, frozen),
                rng_key,
                args,
                kwargs,
                init_loc_fn=self.init_loc_fn,
                init_scale=self.init_scale,
            )
        self.weight_sites = weight_sites

    def _prototype(self, rng_key: jax.Array, args: tuple, kwargs: dict) -> tuple[Trace, dict[str, jax.Array]]:
        """One prior run of the model: its trace, for the sites' structure, and the values AutoNormal needs.

        With a concrete key the run is one compiled program (the model eagerly
        costs an op-by-op compile of every operation: seconds for a small network)
        and the values come back concrete: the observed data, and, when there are
        latents for AutoNormal, the layers' weights and outputs. A model that cannot
        be traced under ``jit`` (Python control flow on values) runs eagerly.
        """

        def run(key: jax.Array, args: tuple, kwargs: dict) -> tuple[Trace, dict[str, jax.Array]]:
            with handlers.block():
                trace = handlers.trace(handlers.seed(self.model, key)).get_trace(*args, **kwargs)
            keep = {name for name, site in trace.items() if site["type"] == "sample" and site["is_observed"]}
            layers = [name for name, site in trace.items() if site["type"] == DENSE_MESSAGE]
            weights = {f"{layer}.{part}" for layer in layers for part in ("kernel", "bias")}
            if _other_latents(trace, weights):
                keep |= {*layers, *(weights & trace.keys())}
            return trace, {name: trace[name]["value"] for name in keep}

        if not is_concrete(rng_key) or jax.config.jax_check_tracer_leaks:  # the compiled run keeps its trace
            return run(rng_key, args, kwargs)
        arrays, rebuild = split_arrays((args, kwargs))
        traces = []

        def compiled(key: jax.Array, arrays: list[jax.Array]) -> dict[str, jax.Array]:
            trace, values = run(key, *rebuild(arrays))
            traces.append(trace)
            return values

        try:
            values = jit_setup(compiled)(rng_key, arrays)
        except UNTRACEABLE:
            return run(rng_key, args, kwargs)
        return traces[0], values

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Sample every latent site from the posterior; returns ``{site: value}``."""
        # Drawn on every call, so the first call (which also builds the prototype)
        # draws the same keys for the sample sites as every later call.
        setup_key = numpyro.prng_key()
        if self.weight_sites is None:
            self._setup(setup_key, *args, **kwargs)
        values = {}
        for name, site in self.weight_sites.items():
            q = site.posterior(name, site.shape, site.dtype)
            fixed = {} if site.tensor_fn is None else {name: site.tensor_fn(q)}
            with handlers.substitute(data=fixed):
                values[name] = numpyro.sample(name, q, infer={POSTERIOR_KEY: q})
        if self._other_sites is not None:
            values.update(self._other_sites(*args, **kwargs))
        return values

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
            guide = handlers.substitute(handlers.seed(self, key), data=params)
            return guide(*args, **kwargs)

        if self.weight_sites is None:  # build the prototype outside vmap, from concrete values
            with handlers.substitute(data=params):
                self._setup(rng_key, *args, **kwargs)
        num = int(np.prod(sample_shape))
        samples = jax.vmap(draw)(jax.random.split(rng_key, num))
        return {k: v.reshape(tuple(sample_shape) + v.shape[1:]) for k, v in samples.items()}

    def median(self, params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Posterior median of every latent site (the ``loc`` of each weight posterior)."""
        if self.weight_sites is None:
            raise RuntimeError("the guide has not been run yet; call svi.init or the guide first")
        medians = {name: params[f"{name}.loc"] for name in self.weight_sites}
        if self._other_sites is not None:
            # AutoNormal's median also has the model's deterministic sites, computed from the prototype's weights.
            others = self._other_sites.median(params)
            medians.update({name: value for name, value in others.items() if f"{name}_auto_loc" in params})
        return medians
