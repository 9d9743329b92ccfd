r"""Posterior predictive draws whose memory does not grow with ``num_samples``.

NumPyro's :class:`~numpyro.infer.Predictive` with a guide first draws all
``num_samples`` posterior samples of every latent site and only then runs the
model, so its peak memory is ``num_samples`` times the parameter count (NumPyro
issue 1503). For a network that is the weights, over and over. Here each
posterior draw :math:`W_s \sim q` is used and dropped inside the same compiled
step: ``chunk_size`` draws run in parallel (:func:`jax.vmap`) and the chunks run
one after another (:func:`jax.lax.map`), so the peak memory is about
``chunk_size`` weight copies plus the requested outputs.

Each draw runs the model with the drawn weights substituted, so the network is
one function sample :math:`f_{W_s}` for all inputs (no estimator noise), as in
NumPyro's ``Predictive``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from numpyro import handlers

from npvi.tracing import jit_once, split_arrays

Trace = dict[str, dict[str, Any]]


def _check_count(owner: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def traced_draw(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    params: dict[str, jax.Array],
    rng_key: jax.Array,
    *args: Any,
    **kwargs: Any,
) -> tuple[Trace, Trace]:
    """One posterior draw: the guide's trace, and the model's trace with the guide's latents substituted."""
    guide_key, model_key = jax.random.split(rng_key)
    guide_trace = handlers.trace(handlers.seed(handlers.substitute(guide, data=params), guide_key)).get_trace(
        *args, **kwargs
    )
    latents = {
        name: site["value"]
        for name, site in guide_trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    model = handlers.substitute(handlers.substitute(model, data=params), data=latents)
    model_trace = handlers.trace(handlers.seed(model, model_key)).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def _is_set_up(guide: Callable[..., Any]) -> bool:
    """Whether the guide has already built its own prototype (it has run once), so needs no concrete call."""
    return getattr(guide, "weight_sites", None) is not None or getattr(guide, "prototype_trace", None) is not None


def build_prototype(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    params: dict[str, jax.Array],
    rng_key: jax.Array,
    *args: Any,
    **kwargs: Any,
) -> tuple[Trace, Trace]:
    """One draw's traces, to read the sites' names, types, shapes and observed values from.

    A guide that has run before (after ``svi.init`` or training) is traced abstractly
    (:func:`jax.eval_shape` over the key and params): no computation runs, so a fresh process does
    not pay the eager compile of every op (seconds for a small network). Latent values
    in the returned traces are then abstract; the data, closed over, stay concrete. A
    guide that has never run gets one eager draw, so it can build its prototype from
    concrete values.
    """
    with handlers.block():
        if not _is_set_up(guide):
            return traced_draw(model, guide, params, rng_key, *args, **kwargs)
        traces = []
        # Concrete params would make NumPyro validate the posteriors' arguments eagerly.
        jax.eval_shape(
            lambda key, params: traces.append(traced_draw(model, guide, params, key, *args, **kwargs)), rng_key, params
        )
        return traces[0]


def chunked_program(
    draw: Callable[[jax.Array, Any], dict[str, jax.Array]], inputs: Any, num_samples: int, chunk_size: int
) -> tuple[Callable[[jax.Array, list[jax.Array]], dict[str, jax.Array]], list[jax.Array]]:
    """The jitted ``run(rng_key, arrays)`` that stacks ``draw`` over ``num_samples`` keys, ``chunk_size`` at a time.

    The keys are ``jax.random.split(rng_key, num_samples)``, padded to whole chunks
    and mapped with :func:`jax.lax.map` over chunks of :func:`jax.vmap`; all of it,
    the key split included, is one program (eager key ops would each compile). The
    array leaves of ``inputs`` (params, data) are returned as ``arrays``, to enter
    the program as arguments rather than as constants baked into it; other leaves
    (``None``, ints) stay static.
    """
    arrays, rebuild = split_arrays(inputs)
    chunk_size = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk_size)

    @jit_once
    def run(rng_key: jax.Array, arrays: list[jax.Array]) -> dict[str, jax.Array]:
        rebuilt = rebuild(arrays)
        keys = jax.random.split(rng_key, num_samples)
        padded = jnp.concatenate([keys, keys[: num_chunks * chunk_size - num_samples]])
        chunks = padded.reshape((num_chunks, chunk_size) + keys.shape[1:])
        stacked = jax.lax.map(jax.vmap(lambda key: draw(key, rebuilt)), chunks)
        return {name: value.reshape((-1,) + value.shape[2:])[:num_samples] for name, value in stacked.items()}

    return run, arrays


def chunked_map(
    draw: Callable[[jax.Array, Any], dict[str, jax.Array]],
    rng_key: jax.Array,
    num_samples: int,
    chunk_size: int,
    inputs: Any,
) -> dict[str, jax.Array]:
    """Stack ``draw(key, inputs)`` over ``num_samples`` keys, ``chunk_size`` keys at a time.

    The keys are ``jax.random.split(rng_key, num_samples)`` whatever the chunk
    size, so ``chunk_size`` changes the memory, never the numbers.
    """
    run, arrays = chunked_program(draw, inputs, num_samples, chunk_size)
    return run(rng_key, arrays)


class Predictive:
    r"""Draw ``num_samples`` posterior predictive samples, ``chunk_size`` at a time.

    The same call as :class:`numpyro.infer.Predictive` with a guide; returns
    ``{site: array of shape (num_samples, ...)}``. With ``return_sites=None``
    it returns the model's sample sites that the guide does not sample (the
    predictions) and its deterministic sites; name latent sites in
    ``return_sites`` to get their posterior draws too.

    For each draw :math:`s`: :math:`W_s \sim q_\phi`, then the model runs with
    :math:`W_s` substituted, so a site ``y`` returns
    :math:`y_s \sim p(y \mid x, W_s)`. Memory: about ``chunk_size`` copies of
    the latents plus the outputs, whatever ``num_samples`` is.

    >>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None):
    ...     mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)
    >>> x = jnp.ones((5, 3))
    >>> guide = npvi.MeanFieldGuide(model)
    >>> state = SVI(model, guide, optax.adam(1e-2), npvi.ELBO()).init(jax.random.PRNGKey(0), x, jnp.zeros(5))
    >>> predictive = npvi.Predictive(model, guide, state.optim_state[1][0], num_samples=250, chunk_size=100)
    >>> predictive(jax.random.PRNGKey(1), x)["y"].shape
    (250, 5)
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        params: dict[str, jax.Array],
        num_samples: int,
        *,
        chunk_size: int = 100,
        return_sites: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.guide = guide
        self.params = params
        self.num_samples = _check_count("Predictive", "num_samples", num_samples)
        self.chunk_size = _check_count("Predictive", "chunk_size", chunk_size)
        self.return_sites = None if return_sites is None else list(return_sites)

    def _sites(self, guide_trace: Trace, model_trace: Trace) -> list[str]:
        if self.return_sites is None:
            return [
                name
                for name, site in model_trace.items()
                if (site["type"] == "sample" and name not in guide_trace) or site["type"] == "deterministic"
            ]
        missing = [name for name in self.return_sites if name not in model_trace]
        if missing:
            known = sorted(n for n, s in model_trace.items() if s["type"] in ("sample", "deterministic"))
            raise ValueError(f"Predictive: return_sites {missing} are not sites of the model; its sites are {known}")
        return self.return_sites

    def __call__(self, rng_key: jax.Array, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Draw ``{site: (num_samples, ...)}`` for the model inputs ``args, kwargs``."""
        prototype = build_prototype(self.model, self.guide, self.params, rng_key, *args, **kwargs)
        sites = self._sites(*prototype)

        def draw(key: jax.Array, inputs: Any) -> dict[str, jax.Array]:
            params, args, kwargs = inputs
            _, model_trace = traced_draw(self.model, self.guide, params, key, *args, **kwargs)
            return {name: jnp.asarray(model_trace[name]["value"]) for name in sites}

        return chunked_map(draw, rng_key, self.num_samples, self.chunk_size, (self.params, args, kwargs))
