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

With ``mesh=`` (see :mod:`npvi.sharding`) the same program runs over several
devices: ``shard="draws"`` spreads each chunk of draws over the mesh's data axis,
``shard="inputs"`` spreads the examples of the inputs; the keys, and so the numbers,
are those of one device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro import handlers

from npvi.guides import MeanFieldGuide
from npvi.prediction import median_guide, site_moments, summarize, target_site
from npvi.sharding import axis_size, examples_sharding, is_array, place, place_tree, replicated, resolve_mesh
from npvi.tracing import Static, partition
from npvi.uncertainty import ClassificationSummary, RegressionSummary
from npvi.validation import check_numeric, check_rng_key, warn_if_not_finite

#: The hint of the warning for params with NaN in them.
NAN_PARAMS_HINT = "did the fit diverge? npvi.fit stops with DivergenceError there; train with a lower learning rate"

#: What ``Predictive(shard=...)`` spreads over the mesh.
SHARD_CHOICES = ("draws", "inputs")

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
    """One posterior draw: the guide's trace, and the model's trace with the guide's latents substituted.

    A :class:`~npvi.MeanFieldGuide` not yet set up (made anew for loaded params) is set up from
    ``params`` and these inputs first (:meth:`~npvi.MeanFieldGuide.setup_from_params`).
    """
    if isinstance(guide, MeanFieldGuide):
        guide.setup_from_params(params, *args, **kwargs)
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
    missing = sorted(
        name for trace in (guide_trace, model_trace) for name, site in trace.items()
        if site["type"] == "param" and name not in params
    )  # fmt: skip
    if missing:
        raise ValueError(
            f"the parameters {missing} are not in params: the guide or the model asked for them, so they would "
            "start from their initial values. Pass the trained params (svi.get_params(state), or npvi.load's), "
            "for the model and guide they were trained with"
        )
    return guide_trace, model_trace


def chunked_draws(
    draw: Callable[[jax.Array], dict[str, jax.Array]],
    rng_key: jax.Array,
    num_samples: int,
    chunk_size: int,
    *,
    spread: tuple[Mesh, str] | None = None,
) -> dict[str, jax.Array]:
    """Stack ``draw(key)`` over ``jax.random.split(rng_key, num_samples)``, ``chunk_size`` keys at a time.

    The keys are padded to whole chunks and mapped with :func:`jax.lax.map` over chunks
    of :func:`jax.vmap`, so the memory is about ``chunk_size`` draws' worth whatever
    ``num_samples`` is. The keys do not depend on ``chunk_size``, so neither do the
    numbers (up to the order of floating-point sums). A pure function: call it inside
    a compiled program.

    ``spread=(mesh, axis)`` splits every chunk over the ``n`` devices of ``axis``
    (``chunk_size`` is rounded up to a multiple of ``n``; each device runs its
    ``chunk_size / n`` draws), and the draws are gathered onto every device at the
    end (replicated); the keys, and so the draws, stay the same.
    """
    chunk_size = min(chunk_size, num_samples)
    if spread is not None:
        n = axis_size(*spread)
        chunk_size = -(-chunk_size // n) * n
    num_chunks = -(-num_samples // chunk_size)
    keys = jax.random.split(rng_key, num_samples)
    if spread is None:
        padded = jnp.concatenate([keys, keys[: num_chunks * chunk_size - num_samples]])
        chunks = padded.reshape((num_chunks, chunk_size) + keys.shape[1:])
        stacked = jax.lax.map(jax.vmap(draw), chunks)
    else:
        padded = keys[jnp.arange(num_chunks * chunk_size) % num_samples]  # pads with repeats, discarded below
        chunks = padded.reshape((num_chunks, chunk_size) + keys.shape[1:])
        spread_draws = NamedSharding(spread[0], PartitionSpec(spread[1]))

        def spread_chunk(chunk: jax.Array) -> dict[str, jax.Array]:
            chunk = jax.lax.with_sharding_constraint(chunk, spread_draws)
            return jax.lax.with_sharding_constraint(jax.vmap(draw)(chunk), spread_draws)

        chunks = jax.lax.with_sharding_constraint(chunks, NamedSharding(spread[0], PartitionSpec(None, spread[1])))
        stacked = jax.lax.map(spread_chunk, chunks)
    draws = {name: value.reshape((-1,) + value.shape[2:])[:num_samples] for name, value in stacked.items()}
    if spread is not None:  # gathered once at the end, onto every device
        draws = jax.lax.with_sharding_constraint(draws, NamedSharding(spread[0], PartitionSpec()))
    return draws


def _predictions(guide_trace: Trace, model_trace: Trace, return_sites: tuple[str, ...] | None) -> list[str]:
    """The sites a :class:`Predictive` returns: those named, or the predictions and deterministic sites.

    Refuses a site whose value was passed in (an observation): its "draws" would be the data.
    """
    if return_sites is None:
        sites = [
            name
            for name, site in model_trace.items()
            if (site["type"] == "sample" and name not in guide_trace) or site["type"] == "deterministic"
        ]
    else:
        missing = [name for name in return_sites if name not in model_trace]
        if missing:
            known = sorted(n for n, s in model_trace.items() if s["type"] in ("sample", "deterministic"))
            raise ValueError(f"Predictive: return_sites {missing} are not sites of the model; its sites are {known}")
        sites = list(return_sites)
    observed = [name for name in sites if model_trace[name]["type"] == "sample" and model_trace[name]["is_observed"]]
    if observed:
        raise ValueError(
            f"Predictive: the site(s) {observed} are observed in this call (their values were passed as arguments), "
            "so their draws would be the observations themselves. Predict from the inputs alone, "
            "predictive(rng_key, x) without y; for log-likelihoods of observed data use npvi.to_inference_data"
        )
    return sites


def _site_values(return_sites: tuple[str, ...] | None, guide_trace: Trace, model_trace: Trace) -> dict[str, jax.Array]:
    """One draw of a :class:`Predictive` call: the values of its sites."""
    sites = _predictions(guide_trace, model_trace, return_sites)
    return {name: jnp.asarray(model_trace[name]["value"]) for name in sites}


def _site_moments(site: str | None, guide_trace: Trace, model_trace: Trace) -> dict[str, jax.Array]:
    """One draw of :meth:`Predictive.predict`: the moments of the predicted site's distribution."""
    return site_moments(model_trace[target_site(guide_trace, model_trace, site)]["fn"])


def _predictive_program(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    select: Callable[[Trace, Trace], dict[str, jax.Array]],
    num_samples: int,
    chunk_size: int,
    rng_key: jax.Array,
    params: dict[str, jax.Array],
    arrays: list[jax.Array],
    *,
    static: Static,
    spread: tuple[Mesh, str, str] | None = None,
) -> dict[str, jax.Array]:
    """``select(guide_trace, model_trace)`` of every draw, stacked.

    ``spread=(mesh, data_axis, shard)``: the draws (``"draws"``) or the positional inputs (``"inputs"``) split.
    """
    args, kwargs = static.rebuild(arrays)
    if spread is not None and spread[2] == "inputs":
        examples = NamedSharding(spread[0], PartitionSpec(spread[1]))
        args = tuple(
            jax.lax.with_sharding_constraint(arg, examples) if isinstance(arg, jax.Array) and arg.ndim else arg
            for arg in args
        )

    def draw(key: jax.Array) -> dict[str, jax.Array]:
        return select(*traced_draw(model, guide, params, key, *args, **kwargs))

    draws_spread = spread[:2] if spread is not None and spread[2] == "draws" else None
    return chunked_draws(draw, rng_key, num_samples, chunk_size, spread=draws_spread)


def _summary_program(*args: Any, **kwargs: Any) -> RegressionSummary | ClassificationSummary:
    return summarize(_predictive_program(*args, **kwargs))


class Predictive:
    r"""Draw ``num_samples`` posterior predictive samples, ``chunk_size`` at a time.

    The same call as :class:`numpyro.infer.Predictive` with a guide; returns
    ``{site: array of shape (num_samples, ...)}``. With ``return_sites=None``
    it returns the model's sample sites that the guide does not sample (the
    predictions) and its deterministic sites; name latent sites in
    ``return_sites`` to get their posterior draws too. Call it with the inputs
    alone: an observation passed in (``predictive(key, x, y)``) is a ``ValueError``,
    since its "draws" would be the data (NumPyro's ``Predictive`` returns them so).
    :meth:`predict` gives the predictive summary instead of the draws, and a
    :class:`~npvi.MeanFieldGuide` made anew for loaded params needs no call on data.

    For each draw :math:`s`: :math:`W_s \sim q_\phi`, then the model runs with
    :math:`W_s` substituted, so a site ``y`` returns
    :math:`y_s \sim p(y \mid x, W_s)`. Memory: about ``chunk_size`` copies of
    the latents plus the outputs, whatever ``num_samples`` is. The draws come from
    ``jax.random.split(rng_key, num_samples)``, so ``chunk_size`` never changes them.

    All the draws are one compiled program, which the ``Predictive`` keeps: a later
    call with inputs of the same shapes (and the same non-array arguments) reuses it.
    The params and the inputs are the program's arguments, not constants inside it.

    Over several devices (``mesh=``, a :class:`jax.sharding.Mesh` with an axis named
    ``data_axis``, or ``"all"``; see :mod:`npvi.sharding`) the params are replicated and

    * ``shard="draws"`` (the default) splits each chunk of draws over the devices of
      ``data_axis``: ``chunk_size`` is rounded up to a multiple of their number ``n``,
      and each device holds ``chunk_size / n`` draws at a time. The outputs are
      gathered at the end and come back replicated (every device, and every process,
      holds them all);
    * ``shard="inputs"`` splits the examples (first axis) of every positional array
      argument over the devices, so each device runs every draw on ``1 / n`` of the
      inputs; their length must be a multiple of ``n`` (``ValueError`` otherwise).
      Keyword arguments are replicated. The outputs stay where the partitioner leaves
      them: a per-example site comes back split over its example axis (across
      processes, gather it with
      ``jax.experimental.multihost_utils.process_allgather``).

    Either way each draw comes from the same key of ``split(rng_key, num_samples)``,
    so the numbers are those of one device up to the order of floating-point sums.

    >>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None):
    ...     mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)
    >>> x = jnp.ones((5, 3))
    >>> guide = npvi.MeanFieldGuide(model)
    >>> svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    >>> params = svi.get_params(svi.init(jax.random.PRNGKey(0), x, jnp.zeros(5)))
    >>> predictive = npvi.Predictive(model, guide, params, num_samples=250, chunk_size=100)
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
        mesh: Mesh | str | None = None,
        data_axis: str = "data",
        shard: str = "draws",
    ) -> None:
        self.model = model
        self.guide = guide
        self.num_samples = _check_count("Predictive", "num_samples", num_samples)
        self.chunk_size = _check_count("Predictive", "chunk_size", chunk_size)
        self.return_sites = None if return_sites is None else list(return_sites)
        if shard not in SHARD_CHOICES:
            raise ValueError(f"Predictive: shard must be one of {SHARD_CHOICES}, got {shard!r}")
        self.mesh = resolve_mesh("Predictive", mesh, data_axis)
        self.data_axis = data_axis
        self.shard = shard
        self._replicated = None if self.mesh is None else replicated(self.mesh)
        warn_if_not_finite("Predictive", "params", params, NAN_PARAMS_HINT)
        self.params = self._replicate(params)  # placed once on the mesh
        self._program = self._compiled(_predictive_program, functools.partial(_site_values, self._return_sites()))
        self._summary_programs: dict[str | None, Callable[..., Any]] = {}  # by site, made on the first predict

    def _return_sites(self) -> tuple[str, ...] | None:
        return None if self.return_sites is None else tuple(self.return_sites)

    def _compiled(self, program: Callable[..., Any], select: Callable[..., Any]) -> Callable[..., Any]:
        program = functools.partial(program, self.model, self.guide, select, self.num_samples, self.chunk_size)
        if self.mesh is not None:
            program = functools.partial(program, spread=(self.mesh, self.data_axis, self.shard))
        return jax.jit(program, static_argnames=("static",))

    def _replicate(self, tree: Any) -> Any:
        return tree if self._replicated is None else place_tree(tree, self._replicated)

    def _place_input(self, position: int, arg: Any) -> Any:
        """A positional array split over its examples (``shard="inputs"``); anything else replicated."""
        if not is_array(arg) or not np.ndim(arg):
            return self._replicate(arg)
        n, length = axis_size(self.mesh, self.data_axis), np.shape(arg)[0]
        if length % n:
            raise ValueError(
                f"Predictive: shard='inputs' splits the {length} examples of argument {position} over the {n} "
                f"devices of mesh axis {self.data_axis!r}, but {length} is not a multiple of {n}; pad the inputs "
                f"to {-(-length // n) * n} examples, or use shard='draws'"
            )
        return place(arg, examples_sharding(self.mesh, self.data_axis))

    def __call__(self, rng_key: jax.Array, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Draw ``{site: (num_samples, ...)}`` for the model inputs ``args, kwargs``."""
        check_rng_key("Predictive", rng_key, "predictive(rng_key, x)")
        return self._run(self._program, rng_key, args, kwargs)

    def predict(
        self, rng_key: jax.Array, *args: Any, site: str | None = None, **kwargs: Any
    ) -> RegressionSummary | ClassificationSummary:
        """The predictive summary of ``site`` (default: the model's one predicted site) for the inputs.

        Mean class probabilities and their entropy split for a ``Categorical`` or ``Bernoulli``
        likelihood, else the predictive mean and standard deviation (law of total variance); see
        :mod:`npvi.prediction`. One compiled program per site, kept like the draws' program.
        """
        check_rng_key("Predictive.predict", rng_key, "predictive.predict(rng_key, x)")
        if site not in self._summary_programs:
            self._summary_programs[site] = self._compiled(_summary_program, functools.partial(_site_moments, site))
        return self._run(self._summary_programs[site], rng_key, args, kwargs)

    def _run(self, program: Callable[..., Any], rng_key: jax.Array, args: tuple, kwargs: dict) -> Any:
        for what, value in [*enumerate(args), *kwargs.items()]:
            check_numeric("Predictive", f"argument {what!r}", value)
        if self.mesh is not None:
            rng_key, kwargs = self._replicate((rng_key, kwargs))
            if self.shard == "inputs":
                args = tuple(self._place_input(position, arg) for position, arg in enumerate(args))
            else:
                args = self._replicate(args)
        arrays, static = partition((args, kwargs))
        return program(rng_key, self._replicate(self.params), arrays, static=static)


def predict(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    params: dict[str, jax.Array],
    *args: Any,
    rng_key: jax.Array,
    num_samples: int = 100,
    chunk_size: int = 100,
    site: str | None = None,
    point_estimate: bool = False,
    **kwargs: Any,
) -> RegressionSummary | ClassificationSummary:
    r"""Keras' ``model.predict`` for a Bayesian network: the predictive summary in one call.

    ``num_samples`` posterior draws, ``chunk_size`` at a time (as :class:`Predictive`), and
    for ``site`` (default: the model's one predicted site) a
    :class:`~npvi.uncertainty.ClassificationSummary` (``Categorical``, ``Bernoulli``: mean
    class probabilities ``.probs`` and the entropy split) or a
    :class:`~npvi.uncertainty.RegressionSummary` (``.mean`` and ``.std`` of the predictive
    mixture); the maths is in :mod:`npvi.prediction`. ``point_estimate=True`` summarises the
    posterior-median network (:func:`npvi.median_model`) instead: one deterministic network, its
    likelihood's own probabilities or mean and standard deviation. For repeated calls keep a
    ``Predictive`` and call its :meth:`Predictive.predict` (one kept program).

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> import npvi
    >>> def model(x, y=None):
    ...     logits = npvi.DenseFlipout(3, name="out")(x)
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Categorical(logits=logits), obs=y)
    >>> params = {"out.kernel.loc": jnp.zeros((2, 3)), "out.kernel.untransformed_scale": jnp.full((2, 3), -5.0),
    ...           "out.bias": jnp.array([0.0, 1.0, 2.0])}
    >>> summary = npvi.predict(model, npvi.MeanFieldGuide(model), params, jnp.ones((4, 2)),
    ...                        rng_key=jax.random.PRNGKey(0))
    >>> summary.probs.shape, summary.probs.sum(-1).round(5).tolist()
    ((4, 3), [1.0, 1.0, 1.0, 1.0])
    """
    if point_estimate:
        guide = median_guide(guide, params)
        num_samples = chunk_size = 1
    predictive = Predictive(model, guide, params, num_samples, chunk_size=chunk_size)
    return predictive.predict(rng_key, *args, site=site, **kwargs)
