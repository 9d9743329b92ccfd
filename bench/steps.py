"""The training steps that the benchmark compares, all on one model and one minibatch.

Model (issue 5): an MLP (default 784-400-400-10, ReLU), batch 128, softmax likelihood
scaled for N = 60000 examples, Adam(1e-3) from optax, float32, N(0, 1) priors, TFP's
mean-field Normal posterior, point-estimate biases, exact KL.

* ``npvi_step``: ``jax.jit(SVI(model, npvi.MeanFieldGuide(model), optax.adam, npvi.ELBO()).update)``.
* ``plain_step``: the same math by hand (params dict, closed-form KL, ``value_and_grad``,
  ``optax.adam``, all in one ``jax.jit``), started from npvi's initial parameters.
* ``deterministic_step``: plain dense layers of the same sizes, plain JAX + optax: the floor.

Each returns a :class:`timing.Variant` whose carry ends with the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI
from timing import Variant, interleave

import npvi
from npvi.estimators import rademacher_signs  # pure JAX: the same sign draw as npvi

DTYPE = jnp.float32
EPS = float(jnp.finfo(DTYPE).eps)
LR = 1e-3

ESTIMATORS = {
    "reparameterization": npvi.DenseReparameterization,
    "local_reparameterization": npvi.DenseLocalReparameterization,
    "flipout": npvi.DenseFlipout,
}
SHORT = {"reparameterization": "reparam", "local_reparameterization": "LRT", "flipout": "Flipout"}


@dataclass(frozen=True)
class Problem:
    """Network sizes, minibatch size and dataset size."""

    sizes: tuple[int, ...] = (784, 400, 400, 10)
    batch: int = 128
    n: int = 60_000

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"l{i + 1}" for i in range(len(self.sizes) - 1))

    def describe(self) -> str:
        return f"MLP {'-'.join(map(str, self.sizes))}, batch {self.batch}, N {self.n}, adam({LR}), float32"

    def batch_data(self, seed: int = 0) -> tuple[jax.Array, jax.Array]:
        """One fixed random minibatch (x ~ N(0, 1), random labels); the plate scales it by N / B."""
        kx, ky = jax.random.split(jax.random.PRNGKey(seed))
        x = jax.random.normal(kx, (self.batch, self.sizes[0]), DTYPE)
        y = jax.random.randint(ky, (self.batch,), 0, self.sizes[-1])
        return x, y


# --------------------------------------------------------------------------- npvi


def npvi_model(problem: Problem, layer_cls: type) -> Callable[[jax.Array, jax.Array], None]:
    def model(x: jax.Array, y: jax.Array) -> None:
        h = x
        for i, (name, units) in enumerate(zip(problem.names, problem.sizes[1:], strict=True)):
            last = i == len(problem.names) - 1
            h = layer_cls(units, activation=None if last else jax.nn.relu, name=name)(h)
        with numpyro.plate("data", problem.n, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=h), obs=y)

    return model


def npvi_svi(problem: Problem, estimator: str, x, y, seed: int = 0):
    """``(svi, state)``: npvi's SVI object and its initial state."""
    model = npvi_model(problem, ESTIMATORS[estimator])
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(LR), npvi.ELBO())
    return svi, svi.init(jax.random.PRNGKey(seed), x, y)


def npvi_step(problem: Problem, estimator: str, x, y, seed: int = 0) -> tuple[Variant, SVI, object]:
    svi, state = npvi_svi(problem, estimator, x, y, seed)

    return svi_variant(f"npvi {SHORT[estimator]}", svi, state, x, y), svi, state


def svi_variant(label: str, svi: SVI, state, x, y) -> Variant:
    """A Variant that steps ``jax.jit(svi.update)`` from ``state`` on one minibatch, ready for ``compile_ahead``."""

    def advance(carry):
        return variant.update(carry[0], x, y)

    variant = Variant(label, advance, (state, jnp.zeros((), DTYPE)))
    variant.update = jax.jit(svi.update)
    variant.first_args = (state, x, y)
    return variant


def timed_svi_groups(
    groups: list[list[tuple[str, Callable, optax.GradientTransformation]]], x, y, *, blocks: int, steps: int,
    warmup: int,
) -> list[list[Variant]]:
    """Each ``(label, model, optimizer)`` as an SVI Variant from ``PRNGKey(0)``'s init, compiled ahead,
    warmed up, then timed in ``blocks`` interleaved blocks of ``steps`` steps; the Variants, grouped as given."""
    timed = []
    for group in groups:
        variants = []
        for label, model, optimizer in group:
            svi = SVI(model, npvi.MeanFieldGuide(model), optimizer, npvi.ELBO())
            variants.append(svi_variant(label, svi, svi.init(jax.random.PRNGKey(0), x, y), x, y))
        timed.append(variants)
    for v in (v for group in timed for v in group):
        v.compile_ahead()
        v.first_call()
        v.run(warmup)
    interleave(timed, blocks, steps)
    return timed


# --------------------------------------------------------------------------- plain JAX


def sigma(untransformed_scale: jax.Array) -> jax.Array:
    return jax.nn.softplus(untransformed_scale) + EPS


def params_from_npvi(problem: Problem, npvi_params: dict) -> dict[str, dict[str, jax.Array]]:
    """The plain-JAX params dict holding npvi's values (so both start identical)."""
    return {
        name: {
            "loc": npvi_params[f"{name}.kernel.loc"],
            "u": npvi_params[f"{name}.kernel.untransformed_scale"],
            "bias": npvi_params[f"{name}.bias"],
        }
        for name in problem.names
    }


def plain_layer(estimator: str, key: jax.Array, eps: jax.Array, x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    """One layer; ``eps`` is the N(0, 1) weight noise, ``key`` the layer's own key (LRT, Flipout)."""
    mu, s = p["loc"], sigma(p["u"])
    if estimator == "reparameterization":
        return x @ (mu + eps * s) + p["bias"]
    if estimator == "local_reparameterization":
        mean = x @ mu
        var = (x * x) @ (s * s)
        positive = var > 0
        std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1)), 0)
        return mean + std * jax.random.normal(key, mean.shape, mean.dtype) + p["bias"]
    s_in, s_out = rademacher_signs(key, x.shape, x.shape[:-1] + (mu.shape[-1],), dtype=x.dtype)
    return x @ mu + ((x * s_in) @ (eps * s)) * s_out + p["bias"]


def plain_kl(params: dict[str, dict[str, jax.Array]]) -> jax.Array:
    """Closed-form KL(N(mu, sigma^2) || N(0, 1)), summed over every kernel weight."""
    total = jnp.zeros((), DTYPE)
    for p in params.values():
        s = sigma(p["u"])
        total = total + jnp.sum(0.5 * (s * s + p["loc"] * p["loc"] - 1.0) - jnp.log(s))
    return total


def log_likelihood(n: int, logits: jax.Array, y: jax.Array) -> jax.Array:
    """``(N / B) * sum log softmax(logits)[y]``: the minibatch estimate of the full-data term."""
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)
    return (n / logits.shape[0]) * jnp.sum(picked)


def plain_loss(problem: Problem, estimator: str):
    """The negative ELBO by hand; it splits keys in the order NumPyro's handlers do.

    npvi.ELBO splits the step key into (model, guide) keys; the guide takes one key
    per kernel draw; the model takes one per kernel site (the
    replayed draw), one per LRT/Flipout layer and one for the subsampling plate. With
    the same keys the plain step therefore draws the same numbers as npvi, and the
    same params give the same loss (tests/test_bench.py checks this).
    """

    def loss(params, key, x, y):
        model_key, guide_key = jax.random.split(key)
        eps = {}
        for name in problem.names:
            guide_key, draw_key = jax.random.split(guide_key)
            eps[name] = jax.random.normal(draw_key, params[name]["loc"].shape, DTYPE)
        h = x
        for i, name in enumerate(problem.names):
            model_key, _ = jax.random.split(model_key)  # the replayed kernel site
            layer_key = None
            if estimator != "reparameterization":
                model_key, layer_key = jax.random.split(model_key)
            h = plain_layer(estimator, layer_key, eps[name], h, params[name])
            if i < len(problem.names) - 1:
                h = jax.nn.relu(h)
        return -(log_likelihood(problem.n, h, y) - plain_kl(params))

    return loss


def make_update(loss_fn: Callable, optimizer: optax.GradientTransformation):
    """``(params, opt_state, key, x, y) -> (params, opt_state, key, loss)``, not jitted."""

    def update(params, opt_state, key, x, y):
        key, step_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, step_key, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    return update


def loss_variant(label: str, loss_fn: Callable, params, x, y, key: jax.Array | None = None) -> Variant:
    """A Variant of the jitted Adam step of ``loss_fn(params, key, x, y)``, ready for ``compile_ahead``."""
    optimizer = optax.adam(LR)

    def advance(carry):
        return variant.update(*carry[:3], x, y)

    key = jax.random.PRNGKey(1) if key is None else key
    carry = (params, optimizer.init(params), key, jnp.zeros((), DTYPE))
    variant = Variant(label, advance, carry)
    variant.update = jax.jit(make_update(loss_fn, optimizer))
    variant.first_args = (*carry[:3], x, y)
    return variant


def plain_step(problem: Problem, estimator: str, svi: SVI, state, x, y) -> Variant:
    """The plain-JAX step, from npvi's initial params and PRNG key: it draws what npvi draws."""
    params = params_from_npvi(problem, svi.get_params(state))
    return loss_variant(f"plain JAX {SHORT[estimator]}", plain_loss(problem, estimator), params, x, y, state.rng_key)


# --------------------------------------------------------------------------- deterministic floor


def deterministic_params(problem: Problem, seed: int = 0) -> dict[str, dict[str, jax.Array]]:
    keys = jax.random.split(jax.random.PRNGKey(seed), len(problem.names))
    return {
        name: {"w": 0.1 * jax.random.normal(k, (n_in, n_out), DTYPE), "bias": jnp.zeros((n_out,), DTYPE)}
        for k, name, n_in, n_out in zip(keys, problem.names, problem.sizes[:-1], problem.sizes[1:], strict=True)
    }


def deterministic_loss(problem: Problem):
    def loss(params, key, x, y):
        del key
        h = x
        for i, name in enumerate(problem.names):
            h = h @ params[name]["w"] + params[name]["bias"]
            if i < len(problem.names) - 1:
                h = jax.nn.relu(h)
        return -log_likelihood(problem.n, h, y)

    return loss


def deterministic_step(problem: Problem, x, y) -> Variant:
    return loss_variant("deterministic (plain JAX)", deterministic_loss(problem), deterministic_params(problem), x, y)
