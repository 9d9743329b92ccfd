r"""ArviZ :class:`~arviz.InferenceData` from an SVI fit.

``az.from_numpyro`` only takes MCMC. :func:`to_inference_data` draws from the
trained guide instead, ``chunk_size`` draws at a time (see
:mod:`npvi.predictive`), and for each draw :math:`W_s \sim q_\phi` records

* ``posterior``: the latent sites and the deterministic sites;
* ``posterior_predictive``: :math:`y_s \sim p(y \mid x, W_s)` at every observed site;
* ``log_likelihood``: :math:`\log p(y_i \mid x_i, W_s)` per observation, which
  :func:`arviz.loo` and :func:`arviz.waic` need, stored as float64 (below);
* ``observed_data``: the observed values;

as one chain of ``num_samples`` draws. Layer weights get named dimensions:
``"<layer>_in"`` and ``"<layer>_units"`` for a dense layer;
``"<layer>_kernel_height"`` (``_depth``, ``_width`` as the rank asks),
``"<layer>_in"`` and ``"<layer>_filters"`` for a convolution. Sites inside a
plate get the plate's name as the dimension.

**A precise log-likelihood.** A well-fitted classifier gives many points a
probability within float32's rounding of 1. NumPyro's ``Categorical(logits=l)``
computes :math:`\log p_y = l_y - \operatorname{logsumexp}_j l_j`, and for
:math:`p_y > 1 - 6 \cdot 10^{-8}` the float32 subtraction cancels to exactly 0;
a point with 0 in every draw gives PSIS constant weights, and ``az.loo`` NaN or
infinite Pareto :math:`k`. NumPyro's ``Bernoulli(logits=l)``,
:math:`-(\max(l, 0) + \log(1 + e^{-|l|}) - y l)`, cancels the same way for
:math:`y = 1` and a large positive :math:`l`. For ``CategoricalLogits`` and
``BernoulliLogits``, also inside the ``ExpandedDistribution`` and ``Independent``
that plates and ``.to_event`` wrap them in, :func:`to_inference_data` computes
instead, with :math:`d_j = l_j - l_y`,

.. math::

    \log p_y = -\operatorname{softplus}\bigl(\operatorname{logsumexp}_{j \ne y} d_j\bigr),
    \qquad
    \log p(y \mid l) = -\operatorname{softplus}\bigl((1 - 2y)\, l\bigr),

which keep float32's relative precision for :math:`1 - p_y` down to about
:math:`10^{-38}` (float32's smallest normal number), since
:math:`\operatorname{softplus}(s) = \log(1 + e^s) \approx e^s` for very negative
:math:`s`. Every other distribution's log-likelihood is its own ``log_prob``.
The ``log_likelihood`` group is stored as float64, so that ArviZ's PSIS arithmetic
on it runs in float64; the other groups keep the dtypes of the draws (float32
unless JAX's x64 mode is on).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from npvi.handlers import LINEAR_MESSAGE
from npvi.predictive import NAN_PARAMS_HINT, Trace, chunked_draws, traced_draw
from npvi.tracing import Static, eval_static, partition
from npvi.validation import check_rng_key, warn_if_not_finite

if TYPE_CHECKING:
    import arviz as az


def _import_arviz():
    with warnings.catch_warnings():
        # ArviZ 0.x announces its 1.0 refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _precise_log_prob(fn: Any, value: jax.Array) -> jax.Array | None:
    """``fn.log_prob(value)`` without float32's cancellation near probability 1, or None where ``fn`` has no such form.

    Knows ``CategoricalLogits``, ``BernoulliLogits``, and either inside ``ExpandedDistribution`` or
    ``Independent`` (what plates and ``.to_event`` build); see the module docstring for the formulas.
    """
    dist = numpyro.distributions
    if isinstance(fn, dist.CategoricalLogits):
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(value), fn.batch_shape)
        logits = jnp.broadcast_to(fn.logits, batch_shape + jnp.shape(fn.logits)[-1:])
        index = jnp.broadcast_to(jnp.expand_dims(value, -1), batch_shape + (1,))
        difference = logits - jnp.take_along_axis(logits, index, -1)  # d_j = l_j - l_y
        others = jnp.where(jnp.arange(logits.shape[-1]) == index, -jnp.inf, difference)  # d_y masked out
        return -jax.nn.softplus(jax.nn.logsumexp(others, axis=-1))
    if isinstance(fn, dist.BernoulliLogits):
        signed = jnp.where(value == 1, -fn.logits, fn.logits)  # (1 - 2y) l for y in {0, 1}
        return jnp.where((value == 0) | (value == 1), -jax.nn.softplus(signed), fn.log_prob(value))
    if isinstance(fn, dist.ExpandedDistribution):
        base = _precise_log_prob(fn.base_dist, value)
        if base is None:
            return None
        sample_shape = jnp.shape(value)[: max(jnp.ndim(value) - fn.event_dim, 0)]
        return jnp.broadcast_to(base, jax.lax.broadcast_shapes(fn.batch_shape, sample_shape))
    if isinstance(fn, dist.Independent):
        base = _precise_log_prob(fn.base_dist, value)
        if base is None:
            return None
        return jnp.sum(base, axis=tuple(range(-fn.reinterpreted_batch_ndims, 0)))
    return None


def _log_likelihood(fn: Any, value: jax.Array) -> jax.Array:
    r"""The log-likelihood ``fn.log_prob(value)``, precise near probability 1 for logits-parameterised
    ``Categorical`` and ``Bernoulli``.

    Same values as ``fn.log_prob(value)`` up to float rounding, except where a class is so likely
    that NumPyro's form rounds :math:`\log p_y` to exactly 0 (see the module docstring).

    >>> import jax.numpy as jnp, numpyro.distributions as dist
    >>> fn, y = dist.Categorical(logits=jnp.array([20.0, 0.0, 0.0])), jnp.array(0)
    >>> print(f"{float(fn.log_prob(y)):.4g} {float(_log_likelihood(fn, y)):.4g}")  # exact: -log(1 + 2 exp(-20))
    0 -4.122e-09
    """
    precise = _precise_log_prob(fn, value)
    return fn.log_prob(value) if precise is None else precise


def _layer_dims(model_trace: Trace) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Named dims of every layer weight site, and each layer's estimator."""
    dims, estimators = {}, {}
    for site in model_trace.values():
        if site["type"] != LINEAR_MESSAGE:
            continue
        layer = site["kwargs"]["layer"]
        estimators[layer.name] = site["kwargs"]["estimator"] or layer.default_estimator
        dims.update(layer.weight_dims())
    return dims, estimators


def _plate_dims(name: str, site: dict[str, Any]) -> list[str]:
    """Dims of a site's value: plate names where plates are, ``"<site>_dim_<i>"`` elsewhere."""
    ndim = jnp.ndim(site["value"])
    dims = [f"{name}_dim_{i}" for i in range(ndim)]
    event_dim = site["fn"].event_dim if site["type"] == "sample" else 0
    for frame in site["cond_indep_stack"]:
        position = ndim - event_dim + frame.dim
        if 0 <= position < ndim:
            dims[position] = frame.name
    return dims


@dataclass(frozen=True)
class _Structure:
    """What the InferenceData's layout needs to know of the model, read from an abstract trace."""

    posterior_sites: list[str]
    observed_sites: list[str]
    dims: dict[str, list[str]]
    estimators: dict[str, str]


def _structure(
    guide_trace: Trace,
    model_trace: Trace,
    var_names: Sequence[str] | None,
    include_weights: bool,
) -> _Structure:
    weight_dims, estimators = _layer_dims(model_trace)
    candidates = [
        name
        for name, site in model_trace.items()
        if (site["type"] == "sample" and name in guide_trace and not site["is_observed"])
        or site["type"] == "deterministic"
    ]
    if var_names is not None:
        missing = [name for name in var_names if name not in candidates]
        if missing:
            raise ValueError(
                f"to_inference_data: var_names {missing} are not latent or deterministic sites of the model; "
                f"those are {candidates}"
            )
        posterior_sites = list(var_names)
    else:
        posterior_sites = [name for name in candidates if include_weights or name not in weight_dims]
    observed_sites = [n for n, s in model_trace.items() if s["type"] == "sample" and s["is_observed"]]
    dims = {name: _plate_dims(name, model_trace[name]) for name in posterior_sites + observed_sites}
    dims.update({name: d for name, d in weight_dims.items() if name in dims})
    return _Structure(posterior_sites, observed_sites, dims, estimators)


def _draw_program(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    structure: _Structure,
    num_samples: int,
    chunk_size: int,
    rng_key: jax.Array,
    params: dict[str, jax.Array],
    arrays: list[jax.Array],
    *,
    static: Static,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Every draw's posterior, predictive and log-likelihood values, and the observed data: one program."""
    args, kwargs = static.rebuild(arrays)

    def draw(key: jax.Array) -> dict[str, jax.Array]:
        trace_key, predictive_key = jax.random.split(key)
        _, trace = traced_draw(model, guide, params, trace_key, *args, **kwargs)
        values = {f"posterior/{name}": trace[name]["value"] for name in structure.posterior_sites}
        keys = jax.random.split(predictive_key, len(structure.observed_sites))
        for name, key in zip(structure.observed_sites, keys, strict=True):
            site = trace[name]
            values[f"posterior_predictive/{name}"] = site["fn"].sample(key)
            values[f"log_likelihood/{name}"] = _log_likelihood(site["fn"], site["value"])
        return values

    _, trace = traced_draw(model, guide, params, rng_key, *args, **kwargs)
    observed = {name: trace[name]["value"] for name in structure.observed_sites}
    return chunked_draws(draw, rng_key, num_samples, chunk_size), observed


def to_inference_data(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    params: dict[str, jax.Array],
    *args: Any,
    rng_key: jax.Array,
    num_samples: int = 500,
    chunk_size: int = 100,
    var_names: Sequence[str] | None = None,
    include_weights: bool = True,
    coords: dict[str, Any] | None = None,
    dims: dict[str, list[str]] | None = None,
    **kwargs: Any,
) -> az.InferenceData:
    """Draw from the trained guide and collect an :class:`arviz.InferenceData`.

    Call it with the model's inputs *and* observations (``*args, **kwargs`` as
    for the model), e.g. ``to_inference_data(model, guide, params, x, y,
    rng_key=key)``. ``var_names`` keeps only the named posterior sites;
    ``include_weights=False`` leaves out the layer weights (big nets), keeping
    the other latents and the deterministic sites. ``coords`` and ``dims`` are
    passed on to :func:`arviz.from_dict` and override the automatic dims.

    The attributes of the InferenceData and of each group record the npvi and
    NumPyro versions, the estimator of each layer, and the number of draws.

    >>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None):
    ...     mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> x, y = jnp.ones((6, 2)), jnp.zeros(6)
    >>> guide = npvi.MeanFieldGuide(model)
    >>> svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    >>> result = svi.run(jax.random.PRNGKey(0), 10, x, y, progress_bar=False)
    >>> idata = npvi.to_inference_data(model, guide, result.params, x, y, rng_key=jax.random.PRNGKey(1),
    ...                                num_samples=20)
    >>> idata.log_likelihood["y"].dims, idata.posterior["out.kernel"].shape
    (('chain', 'draw', 'data'), (1, 20, 2, 1))
    """
    arviz = _import_arviz()
    from npvi import __version__

    check_rng_key("to_inference_data", rng_key, "to_inference_data(model, guide, params, x, y, rng_key=key)")
    warn_if_not_finite("to_inference_data", "params", params, NAN_PARAMS_HINT)

    structure = eval_static(
        lambda params: _structure(
            *traced_draw(model, guide, params, rng_key, *args, **kwargs), var_names, include_weights
        ),
        params,
    )
    if not structure.observed_sites:
        raise ValueError(
            "to_inference_data: the model has no observed site for these arguments; pass the observations "
            "as for training (e.g. to_inference_data(model, guide, params, x, y, rng_key=key))"
        )
    arrays, static = partition((args, kwargs))
    program = functools.partial(_draw_program, model, guide, structure, num_samples, chunk_size)
    draws, observed = jax.jit(program, static_argnames=("static",))(rng_key, params, arrays, static=static)
    groups: dict[str, dict[str, np.ndarray]] = {"posterior": {}, "posterior_predictive": {}, "log_likelihood": {}}
    for path, value in draws.items():
        group, name = path.split("/", 1)
        value = np.asarray(value, dtype=np.float64 if group == "log_likelihood" else None)
        groups[group][name] = value[None]  # one chain; float64 log-likelihoods for ArviZ's PSIS
    observed = {name: np.asarray(value) for name, value in observed.items()}
    all_dims = {**structure.dims, **(dims or {})}
    estimators = structure.estimators
    attrs = {
        "npvi_version": __version__,
        "inference_library": "numpyro",
        "inference_library_version": numpyro.__version__,
        "estimator": ", ".join(f"{layer}: {estimator}" for layer, estimator in estimators.items()),
        "num_samples": num_samples,
    }
    idata = arviz.from_dict(
        posterior=groups["posterior"],
        posterior_predictive=groups["posterior_predictive"],
        log_likelihood=groups["log_likelihood"],
        observed_data=observed,
        coords=coords,
        dims=all_dims,
        attrs=attrs,
    )
    for group in idata.groups():  # as az.from_numpyro does, so each group read alone says where it came from
        idata[group].attrs.update(attrs)
    return idata
