r"""Make an Equinox network Bayesian: :func:`random_eqx_module`.

It mirrors NumPyro's :func:`~numpyro.contrib.module.random_eqx_module`: the same arguments first,
the same sample-site names (``"<name>/<key path>"``, ``"net/layers[0].weight"``) and priors. Every
``eqx.nn.Linear``, ``eqx.nn.Conv`` (1-D, 2-D, 3-D) and ``eqx.nn.Embedding`` whose weight has a
prior becomes an npvi layer (an embedding with npvi's embedding op), so Flipout (the default) or
local reparameterization acts on it (see :mod:`npvi.networks`).
So do the ``weight_ih`` and ``weight_hh`` of ``eqx.nn.LSTMCell`` and ``eqx.nn.GRUCell``: the cell
only computes ``weight @ x`` with them, so an object whose ``@`` is the converted layer takes
their place and the cell's own code runs; they draw their Flipout key once per model run (one
weight per sequence), and local reparameterization is refused for them.

An Equinox network maps one example; a batch goes through ``jax.vmap``. Flipout and local
reparameterization draw fresh noise per example, so npvi does the ``vmap`` itself, with the axis
name :data:`EXAMPLE_AXIS`, and each converted layer folds the example's index into its key. The
callable it returns therefore takes a batch: ``net(x)``, not ``jax.vmap(net)(x)``.

Equinox is an optional extra: ``pip install 'npvi[equinox]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from npvi.estimators import FLIPOUT
from npvi.linear_ops import EMBEDDING
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

#: The ``jax.vmap`` axis name over the examples of a batch, which converted Equinox layers read.
EXAMPLE_AXIS = "npvi_example"


def _import(owner: str) -> Any:
    try:
        import equinox
    except ImportError as error:
        raise ImportError(f"{owner} needs Equinox, an optional extra of npvi: pip install 'npvi[equinox]'") from error
    return equinox


def _name(path: tuple[Any, ...]) -> str:
    """NumPyro's name for a key path: ``jax.tree_util.keystr`` without its leading dot."""
    name = jax.tree_util.keystr(path)
    return name[1:] if name.startswith(".") else name


def _forward(eqx: Any, layer: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The Equinox layer's own call on one example, with another weight and a zero bias."""

    def forward(x: jax.Array, weight: jax.Array) -> jax.Array:
        if layer.bias is None:
            return eqx.tree_at(lambda m: m.weight, layer, weight)(x)
        plain = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, jnp.zeros_like(layer.bias)))
        return plain(x)

    return forward


@dataclass(frozen=True, eq=False)
class _Kernel:
    """A recurrent cell's ``weight_ih`` or ``weight_hh`` whose ``W @ x`` is the converted layer's call.

    Equinox's ``LSTMCell`` and ``GRUCell`` hold their kernels as arrays and only multiply them
    (``self.weight_ih @ input``), so with this in their place the cell's own code runs unchanged.
    """

    layer: Any

    def __matmul__(self, x: jax.Array) -> jax.Array:
        return self.layer(x)


def _matvec(x: jax.Array, weight: jax.Array) -> jax.Array:
    return weight @ x


def random_eqx_module(
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
    r"""An Equinox network with priors on its parameters and npvi's estimators on its layers.

    NumPyro's :func:`~numpyro.contrib.module.random_eqx_module` with the same ``name``,
    ``nn_module``, ``prior`` and ``scope_divider``; the sites are ``"<name>/<key path>"``. Every
    ``eqx.nn.Linear`` and ``eqx.nn.Conv`` whose weight has a prior becomes an npvi layer under
    ``estimator``, and so do the kernels of ``eqx.nn.LSTMCell`` and ``eqx.nn.GRUCell`` (layers
    ``"<cell>.ih"`` and ``"<cell>.hh"``, one weight draw per sequence); the module's other inexact
    arrays are point estimates starting at their values.
    ``moped``, ``deterministic`` and ``kl`` are :func:`npvi.random_flax_module`'s.

    Returns ``net(*batch, **kwargs)``: the network mapped over axis 0 of every positional argument
    (``jax.vmap`` with ``axis_name=EXAMPLE_AXIS``); keyword arguments are shared by the batch.

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> import equinox as eqx
    >>> import npvi
    >>> mlp = eqx.nn.MLP(3, 1, width_size=8, depth=1, key=jax.random.PRNGKey(0))
    >>> def model(x):
    ...     return npvi.random_eqx_module("mlp", mlp, dist.Normal(0, 1))(x)
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     model(jnp.ones((4, 3))).shape
    (4, 1)
    """
    owner = f"npvi.random_eqx_module({name!r})"
    eqx = _import(owner)
    check_options(owner, name, estimator, moped, kl)
    if not isinstance(nn_module, eqx.Module):
        raise TypeError(f"{owner}: nn_module must be an equinox.Module, got {type(nn_module).__name__}")
    params, static = eqx.partition(nn_module, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    parameters = [Parameter(_name(path), tuple(jnp.shape(v)), jnp.result_type(v), v) for path, v in leaves]

    def is_layer(node: Any) -> bool:  # subclasses too: their own call is what runs
        return isinstance(node, eqx.nn.Linear | eqx.nn.Conv | eqx.nn.Embedding)

    def is_cell(node: Any) -> bool:
        return isinstance(node, eqx.nn.LSTMCell | eqx.nn.GRUCell)

    layers, unconvertible, order = [], {}, []
    for path, node in jax.tree_util.tree_flatten_with_path(nn_module, is_leaf=is_layer)[0]:
        if isinstance(node, eqx.nn.Embedding):  # a lookup: npvi's embedding op, on the id as a one-hot row
            layers.append(LayerSpec(_name(path), "Embedding", child_path(_name(path), "weight"), None, EMBEDDING,
                                    vocabulary=node.num_embeddings))  # fmt: skip
            order.append(_name(path))
        elif is_layer(node):
            layer_path = _name(path)
            spatial = tuple(range(-node.num_spatial_dims, 0)) if isinstance(node, eqx.nn.Conv) else ()
            bias = child_path(layer_path, "bias") if node.bias is not None else None
            layers.append(LayerSpec(layer_path, type(node).__name__, child_path(layer_path, "weight"), bias,
                                    ModuleOp(_forward(eqx, node), spatial)))  # fmt: skip
            order.append(layer_path)
    cells = []  # the kernels of recurrent cells: ("<cell>.weight_ih", "<cell>.ih"), ...
    for path, node in jax.tree_util.tree_flatten_with_path(nn_module, is_leaf=is_cell)[0]:
        if is_cell(node):
            for weight, short in (("weight_ih", "ih"), ("weight_hh", "hh")):
                kernel, layer_path = child_path(_name(path), weight), child_path(_name(path), short)
                layers.append(LayerSpec(layer_path, type(node).__name__, kernel, None, ModuleOp(_matvec), True))
                cells.append(layer_path)
    for path, node in jax.tree_util.tree_flatten_with_path(
        nn_module, is_leaf=lambda node: isinstance(node, eqx.nn.ConvTranspose)
    )[0]:
        if isinstance(node, eqx.nn.ConvTranspose):
            unconvertible[_name(path)] = f"equinox.nn.{type(node).__name__}"
    values, converted = convert(
        owner, name, parameters, layers, unconvertible, prior,
        estimator=estimator, moped=moped, deterministic=deterministic, kl=kl, example_axis=EXAMPLE_AXIS,
        supported="equinox.nn.Linear, equinox.nn.Conv, equinox.nn.Embedding", divider=scope_divider,
    )  # fmt: skip
    network = eqx.combine(jax.tree_util.tree_unflatten(treedef, [values[_name(path)] for path, _ in leaves]), static)
    kernels = [(path, converted[path]) for path in cells if path in converted]
    if kernels:

        def kernels_of(tree: Any) -> list[Any]:
            nodes = [node for node in jax.tree_util.tree_leaves(tree, is_leaf=is_cell) if is_cell(node)]
            weights = [getattr(node, weight) for node in nodes for weight in ("weight_ih", "weight_hh")]
            return [weight for weight, path in zip(weights, cells, strict=True) if path in converted]

        network = eqx.tree_at(kernels_of, network, [_Kernel(layer) for _, layer in kernels])
    if any(path in converted for path in order):
        proxies = [converted.get(path) for path in order]

        def layers_of(tree: Any) -> list[Any]:
            nodes = [node for node in jax.tree_util.tree_leaves(tree, is_leaf=is_layer) if is_layer(node)]
            return [node for node, proxy in zip(nodes, proxies, strict=True) if proxy is not None]

        if order == [""]:  # the network is one layer
            network = converted[""]
        else:
            network = eqx.tree_at(layers_of, network, [proxy for proxy in proxies if proxy is not None])

    def net(*batch: Any, **kwargs: Any) -> Any:
        try:
            return jax.vmap(lambda *example: network(*example, **kwargs), axis_name=EXAMPLE_AXIS)(*batch)
        except Exception as error:  # most often jax.vmap(net)(x), NumPyro's habit: say so, keep the error
            if hasattr(error, "add_note"):  # Python 3.11+
                error.add_note(f"{owner}: net takes the whole batch and maps the module over its axis 0 itself; "
                               "call net(x), not jax.vmap(net)(x)")  # fmt: skip
            raise

    return net
