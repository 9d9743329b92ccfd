r"""Make a Flax network Bayesian: :func:`random_flax_module` (Linen) and :func:`random_nnx_module` (NNX).

They mirror NumPyro's functions of the same names (:mod:`numpyro.contrib.module`): the same
arguments first, the same sample-site names (``"<name>/<parameter path>"``) and the same priors,
so under reparameterization the model is NumPyro's. What they add: every ``Dense``/``Linear``,
``Conv`` and ``Embed`` layer becomes an npvi layer (an ``Embed`` with npvi's embedding op),
so Flipout (the default) or local reparameterization acts
on it, chosen by ``estimator=`` and by :mod:`npvi.handlers`; ``moped=delta`` starts each converted
weight's posterior at the trained weight (see :mod:`npvi.networks`).

Flax is an optional extra: ``pip install 'npvi[flax]'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpyro

from npvi.estimators import FLIPOUT
from npvi.linear_ops import EMBEDDING, Contraction
from npvi.networks import (
    Deterministic,
    LayerSpec,
    ModuleOp,
    Parameter,
    PriorSpec,
    check_options,
    child_path,
    convert,
)


def _import(owner: str, what: str) -> Any:
    try:
        if what == "nnx":
            from flax import nnx as module
        else:
            from flax import linen as module
    except ImportError as error:
        raise ImportError(f"{owner} needs Flax, an optional extra of npvi: pip install 'npvi[flax]'") from error
    return module


def _path(parts: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in parts)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict of parameters as ``{"a.b.kernel": leaf}``, NumPyro's names."""
    if not isinstance(tree, Mapping):  # dicts, and Flax's FrozenDict
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, child_path(prefix, str(key))))
    return out


def _unflatten_into(tree: Any, values: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(tree, Mapping):
        return values[prefix]
    return {key: _unflatten_into(value, values, child_path(prefix, str(key))) for key, value in tree.items()}


def _parameters(shapes: dict[str, Any], trained: dict[str, Any] | None) -> list[Parameter]:
    return [
        Parameter(path, tuple(shape.shape), shape.dtype, None if trained is None else trained[path])
        for path, shape in shapes.items()
    ]


def _check_trained(owner: str, shapes: dict[str, Any], trained: dict[str, Any]) -> None:
    """``ValueError`` naming the first parameter where the pretrained tree does not fit the module."""
    missing = [path for path in shapes if path not in trained]
    extra = [path for path in trained if path not in shapes]
    if missing or extra:
        raise ValueError(f"{owner}: the pretrained parameters do not fit the module: missing {missing}, "
                         f"unexpected {extra}")  # fmt: skip
    for path, shape in shapes.items():
        if tuple(jnp.shape(trained[path])) != tuple(shape.shape):
            raise ValueError(
                f"{owner}: the pretrained parameter {path!r} has shape {tuple(jnp.shape(trained[path]))}, "
                f"but the module's has shape {tuple(shape.shape)}"
            )


def random_flax_module(
    name: str,
    nn_module: Any,
    prior: PriorSpec,
    *args: Any,
    input_shape: tuple[int, ...] | None = None,
    params: dict[str, Any] | None = None,
    estimator: str = FLIPOUT,
    moped: float | None = None,
    deterministic: Deterministic = (),
    kl: Any = "exact",
    **kwargs: Any,
) -> Callable[..., Any]:
    r"""A Flax Linen network with priors on its parameters and npvi's estimators on its layers.

    NumPyro's :func:`~numpyro.contrib.module.random_flax_module` with the same ``name``,
    ``nn_module``, ``prior``, ``input_shape`` and init ``*args``/``**kwargs``; the sites are
    ``"<name>/<path>"`` (``"net/Dense_0.kernel"``). Every ``nn.Dense``, ``nn.DenseGeneral``, ``nn.Conv``
    and ``nn.Embed`` whose kernel has a prior becomes an npvi layer under ``estimator`` (``"flipout"``,
    ``"local_reparameterization"`` or ``"reparameterization"``; :mod:`npvi.handlers` override
    it). Parameters without a prior are point estimates ``numpyro.param("<name>/<path>")``.
    The layers of a recurrent cell (an ``nn.RNNCellBase``: ``nn.LSTMCell``, ``nn.GRUCell``, ...) draw
    their Flipout key once per model run, so each sequence sees one weight at all its time steps;
    local reparameterization is refused for them (it would be a new weight at every step).

    * ``prior``: one distribution for every parameter, a dict ``{parameter path: distribution}``
      or a callable ``(path, shape) -> distribution or None``, as NumPyro takes it;
    * ``params``: trained parameters to start from (the ``{"params": ...}`` variables or the
      params tree); they start the point estimates and, with ``moped=delta``, the posteriors
      (``loc = w``, ``scale = delta * |w|``);
    * ``deterministic``: layer or parameter paths (or a callable ``path -> bool``) that get no
      prior, whatever ``prior`` says: ``deterministic=["Dense_0"]`` keeps that layer a point
      estimate;
    * ``kl``: each converted weight's KL term in :class:`npvi.ELBO`, ``"exact"`` or ``"mc"``.

    Returns ``net(*args, **kwargs)``, which applies the network to a batch, as NumPyro's does.
    Collections other than ``"params"`` (``batch_stats``) are not supported yet.

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> import flax.linen as nn
    >>> import npvi
    >>> def model(x):
    ...     net = npvi.random_flax_module("net", nn.Dense(2), dist.Normal(0, 1), input_shape=(1, 3))
    ...     return net(x)
    >>> trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(jnp.ones((4, 3)))
    >>> [(k, v["type"]) for k, v in trace.items()]
    [('net/kernel', 'sample'), ('net/bias', 'sample'), ('net', 'npvi_linear')]
    """
    owner = f"npvi.random_flax_module({name!r})"
    nn = _import(owner, "linen")
    check_options(owner, name, estimator, moped, kl)
    if input_shape is None and not args and not kwargs:
        raise ValueError(
            f"{owner}: give input_shape= (or the module's init arguments after prior), also with params=: npvi "
            "initialises the module abstractly to find its layers, as NumPyro's random_flax_module does"
        )
    init_args = (jnp.ones(input_shape),) if input_shape is not None else args
    found: dict[str, Any] = {}
    in_cell: set[str] = set()
    unconvertible: dict[str, str] = {}
    cannot = (nn.ConvTranspose, nn.ConvLocal, nn.OptimizedLSTMCell)

    def record(next_fun, call_args, call_kwargs, context):
        module = context.module
        if context.method_name == "__call__":
            einsum = _contraction(module.einsum_str) if isinstance(module, nn.Einsum) else None
            if isinstance(einsum, str):
                unconvertible.setdefault(_path(module.path), f"flax.linen.Einsum {einsum}")
            elif isinstance(module, cannot) or (isinstance(module, nn.DenseGeneral) and module.batch_dims):
                unconvertible.setdefault(_path(module.path), f"flax.linen.{type(module).__name__}")
            elif isinstance(module, nn.Dense | nn.DenseGeneral | nn.Conv | nn.Embed | nn.Einsum):  # subclasses too
                found.setdefault(_path(module.path), module.clone(parent=None))
                if _inside_cell(nn, module):
                    in_cell.add(_path(module.path))
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda: nn_module.init(jax.random.PRNGKey(0), *init_args, **kwargs))
    others = sorted(set(variables) - {"params"})
    if others:
        raise ValueError(f"{owner}: the module has the variable collections {others} besides 'params' (state such "
                         "as BatchNorm's batch_stats), which npvi does not convert yet")  # fmt: skip
    tree_shapes = variables.get("params", {})
    shapes = _flatten(tree_shapes)
    if params is not None:
        trained = _flatten(params["params"] if set(params) == {"params"} else params)  # variables or the tree
        _check_trained(owner, shapes, trained)
    elif moped is not None:
        raise ValueError(f"{owner}: moped starts the posteriors at trained weights; give them as params=")
    else:  # NumPyro's start: the module's own initialisation
        with warnings.catch_warnings():  # outside a seed handler there is no key: NumPyro's key 0 then
            warnings.simplefilter("ignore", UserWarning)
            rng_key = numpyro.prng_key()
        initial = nn_module.init(jax.random.PRNGKey(0) if rng_key is None else rng_key, *init_args, **kwargs)
        trained = _flatten(initial["params"])
    inside = []  # a converted layer's own computation runs under the interceptor: let it through

    def linen_op(module: Any, spatial_axes: tuple[int, ...], contraction: Any = None) -> ModuleOp:
        plain = module.clone(use_bias=False)

        def forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
            inside.append(True)
            try:
                return plain.apply({"params": {"kernel": kernel}}, x)
            finally:
                inside.pop()

        return ModuleOp(forward, spatial_axes, contraction)

    layers = []
    for path, module in found.items():
        if isinstance(module, nn.Embed):  # a lookup: npvi's embedding op, on the ids as one-hot rows
            spec = LayerSpec(path, "Embed", child_path(path, "embedding"), None, EMBEDDING, path in in_cell,
                             vocabulary=module.num_embeddings)  # fmt: skip
            layers.append(spec)
            continue
        kernel = child_path(path, "kernel")
        spatial = ()
        if isinstance(module, nn.Conv):  # (..., *spatial, channels): one Flipout sign per example and channel
            rank = len(shapes[kernel].shape) - 2
            spatial = tuple(range(-1 - rank, -1))
        bias = child_path(path, "bias") if module.use_bias else None
        contraction = _contraction(module.einsum_str) if isinstance(module, nn.Einsum) else None
        op = linen_op(module, spatial, contraction)
        layers.append(LayerSpec(path, type(module).__name__, kernel, bias, op, path in in_cell))
    values, converted = convert(
        owner, name, _parameters(shapes, trained), layers, unconvertible, prior,
        estimator=estimator, moped=moped, deterministic=deterministic, kl=kl,
        supported="flax.linen.Dense, flax.linen.DenseGeneral (without batch_dims), flax.linen.Conv, flax.linen.Embed, "
                  "flax.linen.Einsum (an equation every axis of whose input is in the kernel or the output)",
    )  # fmt: skip
    tree = _unflatten_into(tree_shapes, values)

    def intercept(next_fun, call_args, call_kwargs, context):
        path = _path(context.module.path)
        if not inside and context.method_name == "__call__" and path in converted:
            return converted[path](*call_args, **call_kwargs)
        return next_fun(*call_args, **call_kwargs)

    def net(*call_args: Any, **call_kwargs: Any) -> Any:
        with nn.intercept_methods(intercept):
            return nn_module.apply({"params": tree}, *call_args, **call_kwargs)

    return net


def _contraction(einsum_str: str | None) -> Contraction | str:
    """An Einsum layer's equation as a :class:`~npvi.linear_ops.Contraction`, or why it cannot be one.

    The estimators need every axis of the input in the kernel or the output (see ``Contraction``);
    an equation given only at call time is not known when the network is converted.
    """
    if einsum_str is None:
        return "(with its einsum_str given at call time: give it to the module instead)"
    try:
        return Contraction(einsum_str.replace(" ", ""))
    except ValueError as error:
        return f"({error})"


def _inside_cell(nn: Any, module: Any) -> bool:
    """Whether a Linen layer belongs to a recurrent cell (an ``nn.RNNCellBase``, such as ``nn.LSTMCell``)."""
    parent = module.parent
    while isinstance(parent, nn.Module):
        if isinstance(parent, nn.RNNCellBase):
            return True
        parent = parent.parent
    return False


def _replace(nnx: Any, root: Any, path: tuple[Any, ...], new: Any) -> Any:
    """Put ``new`` at ``path`` in a freshly merged NNX graph (an attribute or a list item); returns the root."""
    if not path:
        return new
    parent = root
    for part in path[:-1]:
        parent = parent[part] if isinstance(part, int) else getattr(parent, part)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], nnx.static(new))  # a plain callable in place of the layer, in this copy only
    return root


def random_nnx_module(
    name: str,
    nn_module: Any,
    prior: PriorSpec,
    scope_divider: str = "/",
    *,
    estimator: str = FLIPOUT,
    moped: float | None = None,
    deterministic: Deterministic = (),
    kl: Any = "exact",
) -> Callable[..., Any]:
    r"""A Flax NNX network with priors on its parameters and npvi's estimators on its layers.

    NumPyro's :func:`~numpyro.contrib.module.random_nnx_module` with the same ``name``,
    ``nn_module`` (an initialised ``nnx.Module``), ``prior`` and ``scope_divider``; the sites are
    ``"<name>/<path>"`` (``"net/layers.0.kernel"``). Every ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Conv`` and
    ``nnx.Embed`` whose
    kernel has a prior becomes an npvi layer under ``estimator`` (inside a recurrent cell, an
    ``nnx.RNNCellBase``, with one weight draw per sequence, as :func:`random_flax_module`); the
    other ``nnx.Param`` s are point estimates starting at the module's values; other state
    (BatchNorm's running averages, RNG counters) is NumPyro's mutable site ``"<name>$state"``, as
    NumPyro's ``random_nnx_module`` keeps it: SVI carries it, each call writes the new state.
    ``moped=delta`` starts the posteriors at the module's own (trained) weights. The other
    keywords are :func:`random_flax_module`'s.

    Returns ``net(*args, **kwargs)``, which calls a copy of the network, as NumPyro's does.

    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from flax import nnx
    >>> import npvi
    >>> mlp = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 1, rngs=nnx.Rngs(1)))
    >>> def model(x):
    ...     return npvi.random_nnx_module("mlp", mlp, dist.Normal(0, 1), moped=0.1)(x)
    >>> trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(jnp.ones((4, 3)))
    >>> [k for k, v in trace.items() if v["type"] == "sample"]
    ['mlp/layers.0.kernel', 'mlp/layers.0.bias', 'mlp/layers.2.kernel', 'mlp/layers.2.bias']
    """
    owner = f"npvi.random_nnx_module({name!r})"
    nnx = _import(owner, "nnx")
    check_options(owner, name, estimator, moped, kl)
    if not isinstance(nn_module, nnx.Module):
        raise TypeError(f"{owner}: nn_module must be an initialised flax.nnx.Module, got {type(nn_module).__name__}")
    graphdef, params_state, other_state = nnx.split(nn_module, nnx.Param, nnx.Not(nnx.Param))
    params_tree = nnx.to_pure_dict(params_state)
    trained = _flatten(params_tree)
    parameters = [Parameter(path, tuple(jnp.shape(v)), jnp.result_type(v), v) for path, v in trained.items()]
    layers, unconvertible, paths = [], {}, {}
    cannot = (nnx.ConvTranspose,)
    modules = list(nnx.iter_modules(nn_module))
    cells = [parts for parts, module in modules if isinstance(module, nnx.RNNCellBase)]
    for parts, module in modules:
        path = _path(parts)
        recurrent = any(parts[: len(cell)] == cell for cell in cells)
        einsum = _contraction(module.einsum_str) if isinstance(module, nnx.Einsum) else None
        if isinstance(einsum, str):
            unconvertible[path] = f"flax.nnx.Einsum {einsum}"
        elif isinstance(module, cannot) or (isinstance(module, nnx.LinearGeneral) and module.batch_axis):
            unconvertible[path] = f"flax.nnx.{type(module).__name__}"
        elif isinstance(module, nnx.Embed):
            layers.append(LayerSpec(path, "Embed", child_path(path, "embedding"), None, EMBEDDING, recurrent,
                                    vocabulary=module.num_embeddings))  # fmt: skip
            paths[path] = parts
        elif isinstance(module, nnx.Linear | nnx.LinearGeneral | nnx.Conv | nnx.Einsum):  # subclasses too
            layer_def, layer_state = nnx.split(module)
            spatial = ()
            if isinstance(module, nnx.Conv):  # (..., *spatial, channels)
                rank = jnp.ndim(module.kernel[...]) - 2
                spatial = tuple(range(-1 - rank, -1))
            bias = child_path(path, "bias") if module.bias is not None else None
            op = ModuleOp(_nnx_forward(nnx, layer_def, layer_state), spatial, einsum)
            layers.append(LayerSpec(path, type(module).__name__, child_path(path, "kernel"), bias, op, recurrent))
            paths[path] = parts
    values, converted = convert(
        owner, name, parameters, layers, unconvertible, prior,
        estimator=estimator, moped=moped, deterministic=deterministic, kl=kl,
        supported="flax.nnx.Linear, flax.nnx.LinearGeneral (without batch_axis), flax.nnx.Conv, flax.nnx.Embed, "
                  "flax.nnx.Einsum (an equation every axis of whose input is in the kernel or the output)",
        divider=scope_divider,
    )  # fmt: skip
    state = jax.tree.map(lambda leaf: leaf, params_state)
    nnx.replace_by_pure_dict(state, _unflatten_into(params_tree, values))

    # Other state (BatchNorm's running averages, RNG counters) is NumPyro's mutable site "<name>$state", as
    # NumPyro's nnx_module keeps it: SVI carries it from step to step, and each call writes the new state.
    other = nnx.to_pure_dict(other_state)
    holder = numpyro.primitives.mutable(f"{name}$state", {"state": other}) if other else None

    def net(*call_args: Any, **call_kwargs: Any) -> Any:
        current = jax.tree.map(lambda leaf: leaf, other_state)
        if holder is not None:
            nnx.replace_by_pure_dict(current, holder["state"])
        model = nnx.merge(graphdef, state, current, copy=True)
        for path, layer in converted.items():
            model = _replace(nnx, model, paths[path], layer)
        out = model(*call_args, **call_kwargs)
        if holder is not None:
            new_state = nnx.state(model, nnx.Not(nnx.Param))
            holder["state"] = jax.lax.stop_gradient(nnx.to_pure_dict(new_state))
        return out

    return net


def _nnx_forward(nnx: Any, layer_def: Any, layer_state: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The NNX layer's own call with another kernel and a zero bias."""

    def forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
        layer = nnx.merge(layer_def, layer_state, copy=True)
        layer.kernel[...] = kernel
        if layer.bias is not None:
            layer.bias[...] = jnp.zeros_like(layer.bias[...])
        return layer(x)

    return forward
