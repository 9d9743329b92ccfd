"""Peak memory of one forward + backward pass of a single wide layer, from XLA.

Measure: ``jax.jit(f).lower(...).compile().memory_analysis()``, taking
argument + output + temp bytes (``alias`` bytes subtracted: they are counted in
both arguments and outputs). That is the memory the compiled program needs at
its peak on this backend, without running it. ``f`` is the gradient of the loss
with respect to the parameters of a layer of ``in_features -> units`` at the
given batch, with a Normal likelihood on the layer's output:

* npvi: ``npvi.ELBO().loss`` of a one-layer model through ``MeanFieldGuide``
  (so the guide's draws, the KL and the estimator are all in it);
* plain JAX: the same estimator written by hand (``steps.plain_layer``, closed-form KL),
  which separates what the estimator itself needs from what npvi adds;
* deterministic: ``x @ W + b`` with the same likelihood (the floor).

Materialising per-example weights would need batch * in * units floats
(4096 * 2048 * 2048 * 4 bytes = 64 GiB here), so the ratio to the deterministic
layer shows at once whether an estimator does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from steps import ESTIMATORS, plain_kl, plain_layer

import npvi


def _bytes(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {
        "argument": int(m.argument_size_in_bytes),
        "output": int(m.output_size_in_bytes),
        "temp": int(m.temp_size_in_bytes),
        "alias": int(m.alias_size_in_bytes),
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def one_layer_model(layer_cls):
    def model(x, y):
        out = layer_cls(y.shape[-1], name="l1")(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)

    return model


def npvi_grad_memory(estimator: str, batch: int, n_in: int, units: int) -> dict[str, int]:
    x = jax.ShapeDtypeStruct((batch, n_in), jnp.float32)
    y = jax.ShapeDtypeStruct((batch, units), jnp.float32)
    model = one_layer_model(ESTIMATORS[estimator])
    guide = npvi.MeanFieldGuide(model)
    # The params of the guide and of the model (the layer's bias), as SVI keeps them, so that
    # none is created inside the measured program. The traces run on concrete zeros (no compile).
    params = {}
    for program in (guide, model):
        with numpyro.handlers.seed(rng_seed=0):
            site_trace = numpyro.handlers.trace(program).get_trace(jnp.zeros(x.shape), jnp.zeros(y.shape))
        params.update(
            {k: jax.ShapeDtypeStruct(v["value"].shape, v["value"].dtype) for k, v in site_trace.items()
             if v["type"] == "param"}  # fmt: skip
        )

    def grad(params, key, x, y):
        return jax.grad(lambda p: npvi.ELBO().loss(key, p, model, guide, x, y))(params)

    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return _bytes(jax.jit(grad).lower(params, key, x, y).compile())


def plain_grad_memory(estimator: str, batch: int, n_in: int, units: int) -> dict[str, int]:
    def loss(p, key, x, y):
        noise_key, layer_key = jax.random.split(key)
        eps = jax.random.normal(noise_key, p["loc"].shape, p["loc"].dtype)
        out = plain_layer(estimator, layer_key, eps, x, p)
        return -jnp.sum(jax.scipy.stats.norm.logpdf(y, out, 1.0)) + plain_kl({"l1": p})

    weight = jax.ShapeDtypeStruct((n_in, units), jnp.float32)
    params = {"loc": weight, "u": weight, "bias": jax.ShapeDtypeStruct((units,), jnp.float32)}
    x = jax.ShapeDtypeStruct((batch, n_in), jnp.float32)
    y = jax.ShapeDtypeStruct((batch, units), jnp.float32)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return _bytes(jax.jit(jax.grad(loss)).lower(params, key, x, y).compile())


def deterministic_grad_memory(batch: int, n_in: int, units: int) -> dict[str, int]:
    def loss(params, x, y):
        out = x @ params["w"] + params["b"]
        return -jnp.sum(jax.scipy.stats.norm.logpdf(y, out, 1.0))

    params = {
        "w": jax.ShapeDtypeStruct((n_in, units), jnp.float32),
        "b": jax.ShapeDtypeStruct((units,), jnp.float32),
    }
    x = jax.ShapeDtypeStruct((batch, n_in), jnp.float32)
    y = jax.ShapeDtypeStruct((batch, units), jnp.float32)
    return _bytes(jax.jit(jax.grad(loss)).lower(params, x, y).compile())


def measure(
    batch: int = 4096,
    n_in: int = 2048,
    units: int = 2048,
    estimators=("local_reparameterization", "flipout", "reparameterization"),
) -> dict:
    """``{"deterministic": bytes, estimator: bytes, "plain " + estimator: bytes, ...}`` and the per-example figure."""
    result = {
        "batch": batch,
        "in": n_in,
        "units": units,
        "deterministic": deterministic_grad_memory(batch, n_in, units),
    }
    for estimator in estimators:
        result[estimator] = npvi_grad_memory(estimator, batch, n_in, units)
        result[f"plain {estimator}"] = plain_grad_memory(estimator, batch, n_in, units)
    result["per_example_weights_bytes"] = batch * n_in * units * 4
    return result
