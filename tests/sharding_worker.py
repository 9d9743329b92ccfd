"""Run by ``tests/test_sharding.py`` in a fresh interpreter with 8 CPU devices; prints one JSON object.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts, so this
runs as its own process. It trains ``examples/multiprocess_fit.py``'s model (one layer of each
estimator) with ``mesh=None`` and over meshes of 1, 2, 4 and 8 devices, draws from
``npvi.Predictive`` on one device and over 8, and collects the messages of bad input. The test
compares the numbers; this script only records them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from numpyro.infer import SVI

import npvi
from npvi.sharding import place_data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import multiprocess_fit as example  # noqa: E402


def fit_over(mesh, batch_specs: list) -> dict:
    """The example's fit (2 epochs, batch 16 of 64), recording where the model sees its minibatch."""

    def spy_model(x, y=None, num_data=None):
        # At compile time: the rows of the minibatch that each device holds, and on how many devices.
        jax.debug.inspect_array_sharding(
            x, callback=lambda s: batch_specs.append([list(s.shard_shape(x.shape)), len(s.device_set)])
        )
        example.model(x, y, num_data)

    x, y = example.make_data()
    svi = SVI(spy_model, npvi.MeanFieldGuide(spy_model), optax.adam(1e-2), npvi.ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=2, batch_size=example.BATCH_SIZE, mesh=mesh,
                      progress_bar=False)  # fmt: skip
    return {
        "losses": np.asarray(result.losses).tolist(),
        "params": {name: np.asarray(value).tolist() for name, value in result.params.items()},
        "params_placement": sorted(
            {(len(value.sharding.device_set), value.sharding.is_fully_replicated) for value in result.params.values()}
        ),
        "batch_specs": batch_specs,
    }


def ivon_fit(mesh) -> dict:
    """The example's fit with ``npvi.ivon`` in place of Adam: its state (the Hessian estimate ``h``, the momentum,
    the step count) is a pytree beside the params, so on a mesh it is replicated like them."""
    x, y = example.make_data()
    svi = SVI(example.model, npvi.MeanFieldGuide(example.model), npvi.ivon(0.01, ess=example.N), npvi.ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=2, batch_size=example.BATCH_SIZE, mesh=mesh,
                      progress_bar=False)  # fmt: skip
    hessians = [leaf for leaf in jax.tree.leaves(result.state.optim_state) if leaf.ndim and leaf.dtype == np.float32]
    placement = {(len(leaf.sharding.device_set), leaf.sharding.is_fully_replicated) for leaf in hessians}
    return {
        "losses": np.asarray(result.losses).tolist(),
        "params": {name: np.asarray(value).tolist() for name, value in result.params.items()},
        "state_placement": sorted(placement),
    }


def predictive_model(x, y=None):
    out = npvi.DenseFlipout(3, name="l1")(x)
    numpyro.deterministic("out", out)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)


def predictive_draws() -> dict:
    """20 draws in chunks of 6 for 16 inputs: on one device, and over 8 (draws, then inputs) with the same key."""
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
    guide = npvi.MeanFieldGuide(predictive_model)
    k1, k2 = jax.random.split(jax.random.PRNGKey(7))
    params = {
        "l1.kernel.loc": 0.5 * jax.random.normal(k1, (4, 3)),
        "l1.kernel.untransformed_scale": np.full((4, 3), -1.0, np.float32),
        "l1.bias": 0.1 * jax.random.normal(k2, (3,)),
    }
    numpyro.handlers.seed(numpyro.handlers.substitute(guide, data=params), 0)(x, np.zeros((16, 3), np.float32))
    key, result = jax.random.PRNGKey(1), {}
    for shard in (None, "draws", "inputs"):
        kwargs = {} if shard is None else {"mesh": "all", "shard": shard}
        draws = npvi.Predictive(predictive_model, guide, params, 20, chunk_size=6, **kwargs)(key, x)
        result[str(shard)] = {name: np.asarray(value).tolist() for name, value in draws.items()}
        result[f"{shard} shard shape"] = list(draws["y"].sharding.shard_shape(draws["y"].shape))
    try:
        npvi.Predictive(predictive_model, guide, params, 20, mesh="all", shard="inputs")(key, x[:10])
    except ValueError as error:
        result["inputs_error"] = str(error)
    return result


def errors() -> dict:
    """The messages of bad input on a mesh of 4 devices."""
    x, y = example.make_data()
    svi = SVI(example.model, npvi.MeanFieldGuide(example.model), optax.adam(1e-2), npvi.ELBO())
    four = Mesh(np.array(jax.devices()[:4]), ("data",))
    messages = {}
    for name, call in {
        "batch": lambda: npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=30, mesh=four),
        "axis": lambda: npvi.Trainer(svi, batch_size=16, mesh=Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))),
        "lengths": lambda: npvi.fit(svi, jax.random.PRNGKey(0), x, y[:-4], num_epochs=1, batch_size=16, mesh=four),
    }.items():
        try:
            call()
        except ValueError as error:
            messages[name] = str(error)
    return messages


def main() -> None:
    meshes = {str(n): Mesh(np.array(jax.devices()[:n]), ("data",)) for n in (1, 2, 4)}
    meshes["8"] = "all"
    report = {
        "device_count": jax.device_count(),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "fits": {"None": fit_over(None, [])},
    }
    for n, mesh in meshes.items():
        report["fits"][n] = fit_over(mesh, [])
    mesh8 = Mesh(np.array(jax.devices()), ("data",))
    report["placement"] = {
        str(length): str(place_data(mesh8, np.zeros((length, 2), np.float32))[0].sharding.spec) for length in (48, 50)
    }
    (placed,) = place_data(mesh8, np.zeros((48, 2), np.float32))
    report["placement_kept"] = place_data(mesh8, placed)[0] is placed  # already on the mesh: not copied again
    explicit = jax.make_mesh((8,), ("data",))  # Explicit axes: its arrays move to the mesh's Auto twin, same split
    (moved,) = place_data(explicit, jax.device_put(np.zeros((48, 2), np.float32), NamedSharding(explicit, P("data"))))
    report["placement_from_explicit"] = [str(moved.sharding.spec), [t.name for t in moved.sharding.mesh.axis_types]]
    report["ivon"] = {"None": ivon_fit(None), "8": ivon_fit("all")}
    report["predictive"] = predictive_draws()
    report["errors"] = errors()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
