r"""Make a Flax or Equinox network Bayesian: the part every framework shares.

:mod:`npvi.flax_modules` and :mod:`npvi.eqx_modules` describe a network to this module as

* its parameters (:class:`Parameter`: path, shape, dtype, trained value), in NumPyro's
  path names (``"Dense_0.kernel"``, ``"layers.0.kernel"``, ``"layers[0].weight"``);
* its convertible layers (:class:`LayerSpec`): a dense or convolutional layer, its kernel
  and bias paths, and a :class:`ModuleOp` that runs the layer's own computation with another
  kernel and no bias (it is linear in the kernel, which is all the estimators need);
* the paths and types of layers that are linear in a kernel but that npvi cannot convert.

:func:`convert` then creates the sites, in the network's parameter order, as NumPyro's
``random_*_module`` does (``"<name>/<path>"``, the prior ``d.expand(batch_shape).to_event()``):

* a convertible layer whose kernel has a prior becomes a :class:`ModuleLayer`: its kernel (and
  its bias, when the bias has a prior) are latent sites whose posterior the guide passes back,
  and each call of the layer sends an ``npvi_linear`` message, so the estimator (Flipout, local
  reparameterization or reparameterization) is chosen exactly as for npvi's own layers;
* any other parameter with a prior is a plain latent sample site (one draw per batch);
* a parameter with no prior is a point estimate, ``numpyro.param("<name>/<path>")``, starting at
  its trained value.

With ``moped=delta`` each converted weight's posterior starts at the trained weight,
:class:`npvi.posteriors.MopedNormal`: :math:`\mu_0 = w`, :math:`\sigma_0 = \delta |w|`.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from numpyro import distributions as dist

from npvi import estimators
from npvi.embedding import ids_as_rows
from npvi.layers import POSTERIOR_KEY, _check_kl, _sample_site, apply_linear
from npvi.linear_ops import Contraction, add_trailing_bias
from npvi.posteriors import MeanFieldNormal, MopedNormal, Posterior
from npvi.validation import is_concrete

PriorSpec = (
    dist.Distribution
    | Mapping[str, dist.Distribution]
    | Callable[[str, tuple[int, ...]], dist.Distribution | None]
)
Deterministic = Sequence[str] | Callable[[str], bool]


@dataclass(frozen=True)
class Parameter:
    """One parameter of a network: its path (NumPyro's name for it), shape, dtype and trained value."""

    path: str
    shape: tuple[int, ...]
    dtype: Any
    value: Any = None


@dataclass(frozen=True, eq=False)
class ModuleOp:
    """A layer's own computation ``forward(x, W)`` (no bias) as an npvi linear operation.

    ``spatial_axes`` (negative) are the axes of the input and output that share one Flipout sign:
    none for a dense layer, the spatial axes for a convolution. An einsum layer gives its
    equation as ``contraction`` (checked there: every axis of ``x`` in the kernel or the output),
    which adds the bias over the output axes that come from the kernel.
    """

    forward: Callable[[jax.Array, jax.Array], jax.Array]
    spatial_axes: tuple[int, ...] = ()
    contraction: Contraction | None = None  # an Einsum layer: its equation places the bias

    def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return self.forward(x, kernel)

    def add_bias(self, out: jax.Array, bias: jax.Array | None) -> jax.Array:
        if self.contraction is not None:
            return self.contraction.add_kernel_axes_bias(out, bias)
        return add_trailing_bias(out, bias)

    def sign_shapes(self, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        def shared(shape: tuple[int, ...]) -> tuple[int, ...]:
            axes = {len(shape) + axis for axis in self.spatial_axes}
            return tuple(1 if axis in axes else size for axis, size in enumerate(shape))

        return shared(tuple(x_shape)), shared(tuple(out_shape))


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """A convertible layer of a network: its path and type, its kernel and bias paths, its operation."""

    path: str
    type_name: str
    kernel: str
    bias: str | None
    op: ModuleOp
    recurrent: bool = False  # inside a recurrent cell: one estimator key per sequence
    vocabulary: int | None = None  # an embedding: its ids become OneHotRows of this many classes


class ModuleLayer:
    """A converted layer of a Flax or Equinox network, as the guide, the ELBO and the handlers see a layer.

    Calling it sends the layer's ``npvi_linear`` message with the kernel (and bias) drawn by
    :func:`convert`; a layer the network calls twice (shared weights) sends one message per call.
    """

    def __init__(
        self,
        *,
        name: str,
        kernel_site: str,
        bias_site: str | None,
        linear_op: ModuleOp,
        default_estimator: str,
        kernel_posterior: Posterior,
        bias_posterior: Posterior | None,
        bias_prior: dist.Distribution | None,
        kl: Any,
        example_axis: str | None,
        recurrent: bool = False,
        vocabulary: int | None = None,
    ) -> None:
        self.name = name
        self.kernel_site = kernel_site
        self.bias_site = bias_site
        self.linear_op = linear_op
        self.default_estimator = default_estimator
        self.kernel_posterior = kernel_posterior
        self.bias_posterior = bias_posterior
        self.bias_prior = bias_prior
        self.kernel_kl = self.bias_kl = kl
        self.kernel_kl_argument = self.bias_kl_argument = "kl"
        self.use_bias = bias_site is not None
        self.example_axis = example_axis
        self.recurrent = recurrent
        self.vocabulary = vocabulary
        self.sequence_key = _sequence_key() if recurrent else None
        self.kernel: jax.Array | None = None
        self.bias: jax.Array | None = None
        self.kernel_q: dist.Distribution | None = None
        self.calls = 0

    def __repr__(self) -> str:
        return f"ModuleLayer({self.name!r}, estimator={self.default_estimator!r})"

    def variational_weights(self) -> list[tuple[str, Posterior, None]]:
        """``(site, posterior, None)`` of the kernel, and of the bias when it has a prior."""
        weights = [(self.kernel_site, self.kernel_posterior, None)]
        if self.bias_prior is not None:
            weights.append((self.bias_site, self.bias_posterior, None))
        return weights

    def weight_dims(self) -> dict[str, list[str]]:
        """ArviZ dims of the kernel and bias: ``"<site>_dim_<i>"``, as for any other site."""
        dims = {self.kernel_site: [f"{self.kernel_site}_dim_{i}" for i in range(len(jnp.shape(self.kernel)))]}
        if self.bias_site is not None:
            dims[self.bias_site] = [f"{self.bias_site}_dim_{i}" for i in range(len(jnp.shape(self.bias)))]
        return dims

    def attend(self, query: jax.Array) -> jax.Array:
        """An embedding's ``query @ E.T`` (Flax's ``Embed.attend``, tied output weights) with the drawn table."""
        if self.vocabulary is None:
            raise AttributeError(f"layer {self.name!r} is not an embedding; only an embedding has attend()")
        return jnp.dot(query, self.kernel.T)

    def __call__(self, x: jax.Array, out_sharding: Any = None) -> jax.Array:
        """The layer on ``x``; ``out_sharding`` (NNX's keyword, which its attention passes) must be None."""
        if out_sharding is not None:
            raise ValueError(
                f"layer {self.name!r}: a converted layer takes no out_sharding (got {out_sharding!r}); shard the "
                "data with npvi.fit(..., mesh=...) instead"
            )
        name = self.name if self.calls == 0 else f"{self.name}#{self.calls}"
        self.calls += 1
        # An embedding's ids are one-hot rows to the estimators (npvi.linear_ops.Embedding): no one-hot array.
        x = jnp.asarray(x) if self.vocabulary is None else ids_as_rows(self.name, x, self.vocabulary, min_rank=0)
        return apply_linear(self, name, x, self.kernel, self.bias, self.kernel_q)


def _sequence_key() -> jax.Array | None:
    """One key for every time step of a recurrent cell's layer, drawn when the network is made (None unseeded).

    Flipout's signs then depend on the example, not on the time step, so each sequence sees one
    weight draw through all its steps, as Edward2's ``LSTMCellFlipout`` does; a key drawn per call
    would be a new weight at every step, and could not be drawn inside a ``lax.scan`` anyway.
    """
    with warnings.catch_warnings():  # outside a seed handler: None, and the estimator says so when it needs it
        warnings.simplefilter("ignore", UserWarning)
        return numpyro.prng_key()


def check_options(owner: str, name: Any, estimator: Any, moped: Any, kl: Any) -> None:
    """The keywords every ``random_*_module`` shares; ``TypeError``/``ValueError`` naming ``owner``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{owner}: name must be a non-empty string, got {name!r}")
    if estimator not in estimators.ESTIMATORS:
        raise ValueError(f"{owner}: estimator must be one of {list(estimators.ESTIMATORS)}, got {estimator!r}")
    if moped is not None and (
        isinstance(moped, bool) or not isinstance(moped, numbers.Real) or not float(moped) > 0
    ):
        raise ValueError(f"{owner}: moped must be None or a positive number (a relative scale: 0.1), got {moped!r}")
    _check_kl(name, "kl", kl)


def child_path(path: str, name: str) -> str:
    """``"<path>.<name>"``, or ``name`` at the root (NumPyro's parameter names)."""
    return f"{path}.{name}" if path else name


def _matches(path: str, entry: str) -> bool:
    return path == entry or path.startswith(entry + ".") or path.startswith(entry + "[")


class _Priors:
    """NumPyro's prior argument (one distribution, a dict by parameter path, or a callable) and ``deterministic``."""

    def __init__(self, owner: str, prior: PriorSpec, deterministic: Deterministic, paths: list[str]) -> None:
        if not isinstance(prior, dist.Distribution | Mapping) and not callable(prior):
            raise TypeError(
                f"{owner}: prior must be a numpyro distribution, a dict {{parameter path: distribution}} or a "
                f"callable (path, shape) -> distribution, got {type(prior).__name__}"
            )
        if isinstance(prior, Mapping):
            unknown = [key for key in prior if key not in paths]
            if unknown:
                raise ValueError(f"{owner}: the prior names {unknown}, which match no parameter; the network's "
                                 f"parameters are {paths}")  # fmt: skip
        if isinstance(deterministic, str):
            deterministic = [deterministic]
        if not callable(deterministic):
            deterministic = list(deterministic)
            unknown = [entry for entry in deterministic if not any(_matches(path, entry) for path in paths)]
            if unknown:
                raise ValueError(f"{owner}: deterministic names {unknown}, which match no layer or parameter; the "
                                 f"network's parameters are {paths}")  # fmt: skip
        self.owner = owner
        self.prior = prior
        self.deterministic = deterministic

    def __call__(self, path: str, shape: tuple[int, ...]) -> dist.Distribution | None:
        """The prior of one parameter as a site distribution (all of its dims an event), or None."""
        if callable(self.deterministic):
            if self.deterministic(path):
                return None
        elif any(_matches(path, entry) for entry in self.deterministic):
            return None
        if isinstance(self.prior, Mapping):
            d = self.prior.get(path)
        elif isinstance(self.prior, dist.Distribution):
            d = self.prior
        else:
            d = self.prior(path, shape)
        if d is None:
            return None
        if not isinstance(d, dist.Distribution):
            raise TypeError(f"{self.owner}: the prior of {path!r} must be a numpyro distribution, got {d!r}")
        batch_shape = tuple(shape[: len(shape) - d.event_dim])
        return d.expand(batch_shape).to_event()


def convert(
    owner: str,
    name: str,
    parameters: Sequence[Parameter],
    layers: Sequence[LayerSpec],
    unconvertible: Mapping[str, str],
    prior: PriorSpec,
    *,
    estimator: str,
    moped: float | None,
    deterministic: Deterministic,
    kl: Any,
    example_axis: str | None = None,
    supported: str = "",
    divider: str = "/",
) -> tuple[dict[str, Any], dict[str, ModuleLayer]]:
    """Create the network's sites; returns ``({parameter path: value}, {layer path: ModuleLayer})``.

    ``owner`` names the calling function in errors; ``supported`` lists the layer types it converts.
    """
    paths = [parameter.path for parameter in parameters]
    priors = _Priors(owner, prior, deterministic, paths)
    by_path = {parameter.path: parameter for parameter in parameters}
    site_priors = {parameter.path: priors(parameter.path, parameter.shape) for parameter in parameters}
    if estimator != estimators.REPARAMETERIZATION:
        for path, type_name in unconvertible.items():
            with_prior = [p for p in paths if (not path or _matches(p, path)) and site_priors[p] is not None]
            if with_prior:
                way_out = f"leave it deterministic (deterministic=[{path!r}]) or " if path else ""
                raise ValueError(
                    f"{owner}: layer {path or name!r} is a {type_name}, which npvi cannot convert to {estimator} (it "
                    f"converts {supported}), but {with_prior} have a prior; {way_out}use "
                    "estimator='reparameterization'"
                )
    if not layers:  # after the layers it cannot convert, whose message says why
        raise ValueError(f"{owner}: the network has no layer npvi can make Bayesian ({supported}); "
                         f"its parameters are {paths}")  # fmt: skip
    converted = {spec.kernel: spec for spec in layers if site_priors[spec.kernel] is not None}
    recurrent = [spec.path for spec in converted.values() if spec.recurrent]
    if recurrent and estimator == estimators.LOCAL_REPARAMETERIZATION:
        raise ValueError(
            f"{owner}: the layers {recurrent} are inside recurrent cells, where local reparameterization would draw "
            "new outputs, so in effect a new weight, at every time step; use estimator='flipout' (one weight draw per "
            "sequence) or 'reparameterization', or keep the cells deterministic"
        )
    converted_biases = {spec.bias: spec for spec in converted.values() if spec.bias is not None}
    values: dict[str, Any] = {}
    modules: dict[str, ModuleLayer] = {}

    def site(path: str) -> str:
        return f"{name}{divider}{path}"

    def posterior(path: str) -> Posterior:
        if moped is None:
            return MeanFieldNormal()
        trained = by_path[path].value
        if trained is None:
            raise ValueError(f"{owner}: moped needs the trained weights, but {path!r} has none (give params=)")
        if not is_concrete(trained):
            raise ValueError(
                f"{owner}: moped needs the trained weights as arrays, but {path!r} is computed inside the model; "
                "build (and train) the module outside the model and use it there, as NumPyro's "
                "random_*_module expects"
            )
        return MopedNormal(trained, float(moped))

    for parameter in parameters:
        path, d = parameter.path, site_priors[parameter.path]
        if path in converted_biases:
            continue  # sampled with its kernel
        if path in converted:
            spec = converted[path]
            layer_name = site(spec.path) if spec.path else name  # the network is one layer
            bias_prior = None if spec.bias is None else site_priors[spec.bias]
            layer = ModuleLayer(
                name=layer_name,
                kernel_site=site(spec.kernel),
                bias_site=None if spec.bias is None else site(spec.bias),
                linear_op=spec.op,
                default_estimator=estimator,
                kernel_posterior=posterior(spec.kernel),
                bias_posterior=None if bias_prior is None else posterior(spec.bias),
                bias_prior=bias_prior,
                kl=kl,
                example_axis=example_axis,
                recurrent=spec.recurrent,
                vocabulary=spec.vocabulary,
            )
            kernel_msg = _sample_site(layer_name, layer.kernel_site, d)
            layer.kernel, layer.kernel_q = kernel_msg["value"], kernel_msg["infer"].get(POSTERIOR_KEY)
            if spec.bias is not None:
                layer.bias = (
                    _point(layer.bias_site, by_path[spec.bias])
                    if bias_prior is None
                    else _sample_site(layer_name, layer.bias_site, bias_prior)["value"]
                )
                values[spec.bias] = layer.bias
            values[path] = layer.kernel
            modules[spec.path] = layer
        elif d is not None:
            values[path] = numpyro.sample(site(path), d)
        else:
            values[path] = _point(site(path), parameter)
    return values, modules


def _point(site: str, parameter: Parameter) -> jax.Array:
    if parameter.value is None:
        raise ValueError(f"no starting value for the point estimate {site!r}")
    return numpyro.param(site, parameter.value)
