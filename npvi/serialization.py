"""JSON descriptions of distributions, posteriors and activations, and the registry of layer classes.

Everything is described by a registered name and plain parameters, never by
pickled or marshalled code (TFP issues 128 and 325), so a config survives
``json.dumps``/``json.loads`` and a new Python or JAX version:

* a distribution: ``{"type": "Normal", "loc": 0.0, "scale": 1.0}``; wrappers nest,
  ``{"type": "Independent", "base_dist": {...}, "reinterpreted_batch_ndims": 1}``
  and ``{"type": "ExpandedDistribution", "base_dist": {...}, "batch_shape": [2]}``;
* a posterior family: ``{"type": "MeanFieldNormal", "loc_mean": 0.0, ...}``;
* an activation: a name such as ``"relu"`` for a ``jax.nn`` function, or ``None``.

Array parameters become nested lists (``tolist``; float32 values survive the trip
through JSON's float64 text exactly). Anything without a registered description
(a lambda, a user-defined callable, an unregistered distribution) is a
``TypeError`` that names it. :func:`register_distribution` and
:func:`register_activation` add to the registries.

>>> import json, numpyro.distributions as dist
>>> d = dist.Normal(0.0, 1.0).expand([2]).to_event(1)
>>> description = describe_distribution(d)
>>> description["type"], description["base_dist"]["type"]
('Independent', 'ExpandedDistribution')
>>> restored = distribution_from_description(json.loads(json.dumps(description)))
>>> restored.event_shape
(2,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as dist

from npvi.families import LowRankNormal, MatrixVariateNormal
from npvi.posteriors import MeanFieldNormal, PointMass, PosteriorFamily

# ---------------------------------------------------------------- distributions

_DISTRIBUTIONS: dict[str, tuple[type, tuple[str, ...]]] = {}


def register_distribution(cls: type, params: tuple[str, ...], name: str | None = None) -> None:
    """Describe instances of exactly ``cls`` by ``name`` (default ``cls.__name__``) and ``params``.

    ``params`` are the constructor arguments, read back as attributes of the instance.

    The built-in registrations are Normal, Laplace, StudentT, Cauchy and
    MultivariateNormal (``loc``, ``scale_tril``), e.g.

    >>> describe_distribution(dist.StudentT(3.0, 0.0, 2.0))
    {'type': 'StudentT', 'df': 3.0, 'loc': 0.0, 'scale': 2.0}
    """
    if not (isinstance(cls, type) and issubclass(cls, dist.Distribution)):
        raise TypeError(f"register_distribution expects a numpyro Distribution class, got {cls!r}")
    name = name or cls.__name__
    if name in ("Independent", "ExpandedDistribution"):
        raise ValueError(f"register_distribution: {name!r} is reserved for the wrapper of that name")
    _DISTRIBUTIONS[name] = (cls, tuple(params))


for _cls, _params in (
    (dist.Normal, ("loc", "scale")),
    (dist.Laplace, ("loc", "scale")),
    (dist.StudentT, ("df", "loc", "scale")),
    (dist.Cauchy, ("loc", "scale")),
    (dist.MultivariateNormal, ("loc", "scale_tril")),
):
    register_distribution(_cls, _params)

_WRAPPERS = ("Independent", "ExpandedDistribution")


def _to_json(owner: str, what: str, value: Any) -> Any:
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"{owner}: {what} is a traced array (inside jit/grad/vmap); describe it outside")
    return np.asarray(value).tolist()


def _from_json(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float)) else jnp.asarray(value)


def describe_distribution(d: Any, owner: str = "distribution") -> dict[str, Any]:
    """JSON-safe description of a registered distribution, ``Independent`` or ``ExpandedDistribution``.

    ``owner`` names where ``d`` belongs in error messages (e.g. ``"layer 'l1': kernel_prior"``).
    """
    if type(d) is dist.Independent:
        return {
            "type": "Independent",
            "base_dist": describe_distribution(d.base_dist, owner),
            "reinterpreted_batch_ndims": int(d.reinterpreted_batch_ndims),
        }
    if type(d) is dist.ExpandedDistribution:
        return {
            "type": "ExpandedDistribution",
            "base_dist": describe_distribution(d.base_dist, owner),
            "batch_shape": [int(n) for n in d.batch_shape],
        }
    for name, (cls, params) in _DISTRIBUTIONS.items():
        if type(d) is cls:
            return {"type": name, **{p: _to_json(owner, f"{name}.{p}", getattr(d, p)) for p in params}}
    known = sorted(_DISTRIBUTIONS) + list(_WRAPPERS)
    seen = type(d).__name__ if isinstance(d, dist.Distribution) else f"{type(d).__name__} {d!r}"
    raise TypeError(
        f"{owner}: cannot describe {seen} in a config; npvi describes {known} "
        "(register others with npvi.serialization.register_distribution)"
    )


def _check_keys(owner: str, description: dict, expected: set[str]) -> None:
    unknown, missing = sorted(set(description) - expected), sorted(expected - set(description))
    if unknown or missing:
        raise ValueError(
            f"{owner}: a {description.get('type')!r} description needs keys {sorted(expected)}; "
            f"missing {missing}, unknown {unknown}"
        )


def distribution_from_description(description: dict[str, Any], owner: str = "distribution") -> dist.Distribution:
    """Rebuild a distribution from :func:`describe_distribution`'s output."""
    if not isinstance(description, dict) or "type" not in description:
        raise TypeError(f"{owner}: expected a distribution description {{'type': ...}}, got {description!r}")
    kind = description["type"]
    if kind == "Independent":
        _check_keys(owner, description, {"type", "base_dist", "reinterpreted_batch_ndims"})
        base = distribution_from_description(description["base_dist"], owner)
        return dist.Independent(base, int(description["reinterpreted_batch_ndims"]))
    if kind == "ExpandedDistribution":
        _check_keys(owner, description, {"type", "base_dist", "batch_shape"})
        base = distribution_from_description(description["base_dist"], owner)
        return dist.ExpandedDistribution(base, tuple(int(n) for n in description["batch_shape"]))
    if kind not in _DISTRIBUTIONS:
        raise ValueError(
            f"{owner}: unknown distribution type {kind!r}; expected one of "
            f"{sorted(_DISTRIBUTIONS) + list(_WRAPPERS)}"
        )
    cls, params = _DISTRIBUTIONS[kind]
    _check_keys(owner, description, {"type", *params})
    return cls(**{p: _from_json(description[p]) for p in params})


# ---------------------------------------------------------------- posteriors

_POSTERIORS: dict[str, type] = {
    "MeanFieldNormal": MeanFieldNormal,
    "PointMass": PointMass,
    "LowRankNormal": LowRankNormal,
    "MatrixVariateNormal": MatrixVariateNormal,
}


def describe_posterior(posterior: Any, owner: str = "posterior") -> dict[str, Any]:
    """``{"type": "MeanFieldNormal", <its fields>}`` for an npvi posterior family.

    >>> describe_posterior(PointMass())
    {'type': 'PointMass', 'loc_mean': 0.0, 'loc_stddev': 0.1}
    """
    for name, cls in _POSTERIORS.items():
        if type(posterior) is cls:
            fields = {f.name: _to_json(owner, f.name, getattr(posterior, f.name)) for f in dataclasses.fields(cls)}
            return {"type": name, **fields}
    raise TypeError(f"{owner}: cannot describe {type(posterior).__name__}; expected one of {sorted(_POSTERIORS)}")


def posterior_from_description(description: dict[str, Any], owner: str = "posterior") -> PosteriorFamily:
    """Rebuild a posterior family from :func:`describe_posterior`'s output."""
    if not isinstance(description, dict) or description.get("type") not in _POSTERIORS:
        raise ValueError(
            f"{owner}: expected a posterior description with 'type' one of {sorted(_POSTERIORS)}, "
            f"got {description!r}"
        )
    cls = _POSTERIORS[description["type"]]
    _check_keys(owner, description, {"type", *(f.name for f in dataclasses.fields(cls))})
    return cls(**{k: v for k, v in description.items() if k != "type"})


# ---------------------------------------------------------------- activations

_ACTIVATIONS: dict[str, Callable] = {}


def register_activation(name: str, fn: Callable) -> None:
    """Let ``fn`` appear in configs as ``name``; the first name registered for ``fn`` is the one written.

    >>> "relu" in activation_names()
    True
    """
    if not isinstance(name, str) or not callable(fn):
        raise TypeError(f"register_activation expects (str, callable), got ({name!r}, {fn!r})")
    _ACTIVATIONS[name] = fn


for _name in (
    "relu", "relu6", "tanh", "sigmoid", "softplus", "gelu", "elu", "silu", "swish", "selu", "celu",
    "leaky_relu", "log_sigmoid", "softmax", "log_softmax", "soft_sign", "hard_tanh", "hard_sigmoid",
    "hard_silu", "hard_swish", "mish", "sparse_plus", "squareplus", "identity",
):  # fmt: skip
    if hasattr(jax.nn, _name):
        register_activation(_name, getattr(jax.nn, _name))


def activation_names() -> list[str]:
    """The registered activation names."""
    return sorted(_ACTIVATIONS)


def describe_activation(fn: Callable | None, owner: str = "activation") -> str | None:
    """The registered name of ``fn`` (``None`` stays ``None``).

    >>> describe_activation(jax.nn.relu), describe_activation(None)
    ('relu', None)
    """
    if fn is None:
        return None
    for name, registered in _ACTIVATIONS.items():
        if fn is registered:
            return name
    label = getattr(fn, "__name__", None) or repr(fn)
    raise TypeError(
        f"{owner}: cannot describe the callable {label!r} in a config; use None or a registered "
        f"jax.nn function ({', '.join(activation_names())}), or register it with "
        "npvi.serialization.register_activation"
    )


def activation_from_name(name: str | None, owner: str = "activation") -> Callable | None:
    """The activation function registered as ``name`` (``None`` stays ``None``)."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        raise ValueError(f"{owner}: unknown activation {name!r}; expected None or one of {activation_names()}")
    return _ACTIVATIONS[name]


# ---------------------------------------------------------------- layer classes

_LAYER_CLASSES: dict[str, type] = {}


def register_layer_class(cls: type) -> type:
    """Let :func:`deserialize_layer` (and so :func:`npvi.load`) rebuild layers of ``cls`` by its name.

    npvi's layer classes register themselves when they are defined; ``cls`` needs
    ``get_config()`` and a classmethod ``from_config(config)``. Returns ``cls``, so it
    works as a class decorator.

    >>> "DenseFlipout" in layer_class_names()
    True
    """
    if not (isinstance(cls, type) and callable(getattr(cls, "from_config", None)) and hasattr(cls, "get_config")):
        raise TypeError(f"register_layer_class expects a class with get_config and from_config, got {cls!r}")
    _LAYER_CLASSES[cls.__name__] = cls
    return cls


def layer_class_names() -> list[str]:
    """The names of the registered layer classes."""
    return sorted(_LAYER_CLASSES)


def serialize_layer(layer: Any) -> dict[str, Any]:
    """``{"class_name": "DenseFlipout", "config": layer.get_config()}``: enough to rebuild the layer.

    >>> import npvi
    >>> serialize_layer(npvi.DenseFlipout(2, name="l1"))["class_name"]
    'DenseFlipout'
    """
    name = type(layer).__name__
    if _LAYER_CLASSES.get(name) is not type(layer):
        raise TypeError(f"serialize_layer expects an npvi layer (one of {layer_class_names()}), got {name}")
    return {"class_name": name, "config": layer.get_config()}


def deserialize_layer(serialized: dict[str, Any]) -> Any:
    """Rebuild a layer from :func:`serialize_layer`'s output."""
    if not isinstance(serialized, dict) or set(serialized) != {"class_name", "config"}:
        raise ValueError(f"expected a serialized layer {{'class_name': ..., 'config': ...}}, got {serialized!r}")
    name = serialized["class_name"]
    if name not in _LAYER_CLASSES:
        raise ValueError(f"unknown layer class {name!r}; expected one of {layer_class_names()}")
    return _LAYER_CLASSES[name].from_config(serialized["config"])
