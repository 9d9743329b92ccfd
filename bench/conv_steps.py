"""The convolution benchmark's training steps (issue 14), all on one LeNet-5-like CNN and one minibatch.

Model: 28x28x1 inputs (channels last), two 5x5 "SAME" convolutions of 6 and 16 filters with
ReLU, each followed by a 2x2 max-pool, then dense layers 120-84-10 (ReLU between them); batch
128, softmax likelihood scaled for N = 60000 examples, Adam(1e-3) from optax, float32. Every
layer is Bayesian with one estimator (npvi's defaults: N(0, 1) priors, TFP's mean-field
Normal posterior, point-estimate biases, exact KL).

* ``npvi_step``: ``jax.jit(SVI(model, npvi.MeanFieldGuide(model), optax.adam, npvi.ELBO()).update)``
  with ``npvi.Conv2D*`` and ``npvi.Dense*`` layers of one estimator;
* ``plain_step``: the same math by hand in plain JAX (``jax.lax.conv_general_dilated``, a
  params dict, closed-form KL), started from npvi's initial parameters and key: it draws the
  numbers npvi draws and computes npvi's loss exactly (``tests/test_bench.py`` checks it);
* ``deterministic_step``: the same CNN with plain weights, plain JAX + optax: the floor.

Each returns a :class:`timing.Variant` whose carry ends with the loss. The hand-written
pieces of ``steps.py`` (``sigma``, ``plain_kl``, ``log_likelihood``, ``make_update``) are reused.
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
from steps import DTYPE, LR, SHORT, log_likelihood, loss_variant, plain_kl, sigma, svi_variant
from timing import Variant

import npvi
from npvi.estimators import rademacher_signs  # pure JAX: the same sign draw as npvi

ESTIMATORS = ("reparameterization", "flipout", "local_reparameterization")
CONV_LAYERS = {
    "reparameterization": npvi.Conv2DReparameterization,
    "local_reparameterization": npvi.Conv2DLocalReparameterization,
    "flipout": npvi.Conv2DFlipout,
}
DENSE_LAYERS = {
    "reparameterization": npvi.DenseReparameterization,
    "local_reparameterization": npvi.DenseLocalReparameterization,
    "flipout": npvi.DenseFlipout,
}
DIMENSIONS = ("NHWC", "HWIO", "NHWC")  # channels last, TF's kernel layout (as npvi's Convolution)


@dataclass(frozen=True)
class ConvProblem:
    """Image shape, convolution filters, kernel size, dense sizes, minibatch and dataset size."""

    image: tuple[int, int, int] = (28, 28, 1)
    filters: tuple[int, ...] = (6, 16)
    kernel: int = 5
    dense: tuple[int, ...] = (120, 84, 10)
    batch: int = 128
    n: int = 60_000

    @property
    def conv_names(self) -> tuple[str, ...]:
        return tuple(f"c{i + 1}" for i in range(len(self.filters)))

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(f"d{i + 1}" for i in range(len(self.dense)))

    @property
    def names(self) -> tuple[str, ...]:
        return self.conv_names + self.dense_names

    @property
    def classes(self) -> int:
        return self.dense[-1]

    def flat_features(self) -> int:
        """Features after the last pooling (each 2x2 pool halves height and width, rounding down)."""
        height, width, _ = self.image
        for _ in self.filters:
            height, width = height // 2, width // 2
        return height * width * self.filters[-1]

    def kernel_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every layer's kernel shape (TF layout), in the network's order."""
        ins = (self.image[-1], *self.filters[:-1])
        shapes = {
            name: (self.kernel, self.kernel, n_in, n_out)
            for name, n_in, n_out in zip(self.conv_names, ins, self.filters, strict=True)
        }
        ins = (self.flat_features(), *self.dense[:-1])
        for name, n_in, n_out in zip(self.dense_names, ins, self.dense, strict=True):
            shapes[name] = (n_in, n_out)
        return shapes

    def describe(self) -> str:
        conv = ", ".join(f"conv {self.kernel}x{self.kernel}x{f}" for f in self.filters)
        return (
            f"CNN {'x'.join(map(str, self.image))} -> {conv} (SAME, ReLU, 2x2 max-pool each) -> dense "
            f"{'-'.join(map(str, self.dense))}, batch {self.batch}, N {self.n}, adam({LR}), float32"
        )

    def batch_data(self, seed: int = 0) -> tuple[jax.Array, jax.Array]:
        """One fixed random minibatch (x ~ N(0, 1) images, random labels); the plate scales it by N / B."""
        kx, ky = jax.random.split(jax.random.PRNGKey(seed))
        x = jax.random.normal(kx, (self.batch, *self.image), DTYPE)
        y = jax.random.randint(ky, (self.batch,), 0, self.classes)
        return x, y


def max_pool(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 over the spatial axes of a channels-last batch."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 "SAME" convolution, channels last, kernel ``(h, w, in, out)``."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DIMENSIONS)


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel``: the dense layers' operation."""
    return x @ kernel


def cnn_forward(problem: ConvProblem, layer: Callable[[str, jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """The CNN's logits; ``layer(name, h)`` returns a layer's pre-activation (conv or dense alike)."""
    h = x
    for name in problem.conv_names:
        h = max_pool(jax.nn.relu(layer(name, h)))
    h = h.reshape(h.shape[0], -1)
    for i, name in enumerate(problem.dense_names):
        h = layer(name, h)
        if i < len(problem.dense_names) - 1:
            h = jax.nn.relu(h)
    return h


# --------------------------------------------------------------------------- npvi


def npvi_model(problem: ConvProblem, estimator: str) -> Callable[[jax.Array, jax.Array], None]:
    """The CNN as a NumPyro model of npvi layers, all with ``estimator``, and the scaled likelihood."""
    conv_cls, dense_cls = CONV_LAYERS[estimator], DENSE_LAYERS[estimator]

    def model(x: jax.Array, y: jax.Array) -> None:
        h = x
        for name, filters in zip(problem.conv_names, problem.filters, strict=True):
            h = max_pool(conv_cls(filters, problem.kernel, padding="SAME", activation=jax.nn.relu, name=name)(h))
        h = h.reshape(h.shape[0], -1)
        for i, (name, units) in enumerate(zip(problem.dense_names, problem.dense, strict=True)):
            last = i == len(problem.dense) - 1
            h = dense_cls(units, activation=None if last else jax.nn.relu, name=name)(h)
        with numpyro.plate("data", problem.n, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=h), obs=y)

    return model


def npvi_svi(problem: ConvProblem, estimator: str, x, y, seed: int = 0):
    """``(svi, state)``: npvi's SVI object and its initial state."""
    model = npvi_model(problem, estimator)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(LR), npvi.ELBO())
    return svi, svi.init(jax.random.PRNGKey(seed), x, y)


def npvi_step(problem: ConvProblem, estimator: str, x, y, seed: int = 0) -> tuple[Variant, SVI, object]:
    """``(variant, svi, initial state)``: the Variant steps ``jax.jit(svi.update)``."""
    svi, state = npvi_svi(problem, estimator, x, y, seed)

    return svi_variant(f"npvi {SHORT[estimator]}", svi, state, x, y), svi, state


# --------------------------------------------------------------------------- plain JAX


def params_from_npvi(problem: ConvProblem, npvi_params: dict) -> dict[str, dict[str, jax.Array]]:
    """The plain-JAX params dict holding npvi's values (so both start identical)."""
    return {
        name: {
            "loc": npvi_params[f"{name}.kernel.loc"],
            "u": npvi_params[f"{name}.kernel.untransformed_scale"],
            "bias": npvi_params[f"{name}.bias"],
        }
        for name in problem.names
    }


def sign_shapes(x: jax.Array, out_channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Flipout's sign shapes: per element for a dense layer, per example and channel for a convolution."""
    if x.ndim == 2:
        return x.shape, (x.shape[0], out_channels)
    ones = (1,) * (x.ndim - 2)
    return (x.shape[0], *ones, x.shape[-1]), (x.shape[0], *ones, out_channels)


def plain_layer(estimator: str, key: jax.Array | None, eps: jax.Array, x: jax.Array, p: dict) -> jax.Array:
    """One Bayesian layer, dense or convolutional (by the kernel's rank); ``eps`` is its N(0, 1) weight noise."""
    op = conv if p["loc"].ndim > 2 else dense
    mu, s = p["loc"], sigma(p["u"])
    if estimator == "reparameterization":
        return op(x, mu + eps * s) + p["bias"]
    if estimator == "local_reparameterization":
        mean = op(x, mu)
        var = op(x * x, s * s)
        positive = var > 0
        std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1)), 0)
        return mean + std * jax.random.normal(key, mean.shape, mean.dtype) + p["bias"]
    s_in, s_out = rademacher_signs(key, *sign_shapes(x, mu.shape[-1]), dtype=x.dtype)
    return op(x, mu) + op(x * s_in, eps * s) * s_out + p["bias"]


def draw_keys(problem: ConvProblem, estimator: str, key: jax.Array, params: dict) -> tuple[dict, dict]:
    """``(eps, layer_keys)``, split in the order NumPyro's handlers split npvi.ELBO's step key.

    The ELBO splits the key into (model, guide) keys; the guide takes one key per kernel
    draw; the model takes one per kernel site (the replayed draw) and one per LRT/Flipout
    layer (max-pooling and flattening draw nothing). So from the same key the plain step
    draws npvi's numbers.
    """
    model_key, guide_key = jax.random.split(key)
    eps, layer_keys = {}, {}
    for name in problem.names:
        guide_key, draw_key = jax.random.split(guide_key)
        eps[name] = jax.random.normal(draw_key, params[name]["loc"].shape, DTYPE)
    for name in problem.names:
        model_key, _ = jax.random.split(model_key)  # the replayed kernel site
        layer_keys[name] = None
        if estimator != "reparameterization":
            model_key, layer_keys[name] = jax.random.split(model_key)
    return eps, layer_keys


def plain_loss(problem: ConvProblem, estimator: str, layer_fn: Callable = plain_layer):
    """The negative ELBO by hand; same params and key give npvi's loss.

    ``layer_fn`` (default :func:`plain_layer`) computes one layer; the LRT analysis of
    ``conv.py`` passes variants of it.
    """

    def loss(params, key, x, y):
        eps, layer_keys = draw_keys(problem, estimator, key, params)

        def layer(name, h):
            return layer_fn(estimator, layer_keys[name], eps[name], h, params[name])

        logits = cnn_forward(problem, layer, x)
        return -(log_likelihood(problem.n, logits, y) - plain_kl(params))

    return loss


def plain_step(problem: ConvProblem, estimator: str, svi: SVI, state, x, y) -> Variant:
    """The plain-JAX step, from npvi's initial params and PRNG key: it draws what npvi draws."""
    params = params_from_npvi(problem, svi.get_params(state))
    return loss_variant(f"plain JAX {SHORT[estimator]}", plain_loss(problem, estimator), params, x, y, state.rng_key)


# --------------------------------------------------------------------------- deterministic floor


def deterministic_params(problem: ConvProblem, seed: int = 0) -> dict[str, dict[str, jax.Array]]:
    """Kernels ~ N(0, 0.1^2), zero biases (as ``steps.deterministic_params``)."""
    shapes = problem.kernel_shapes()
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    return {
        name: {"w": 0.1 * jax.random.normal(k, shape, DTYPE), "bias": jnp.zeros(shape[-1:], DTYPE)}
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def deterministic_loss(problem: ConvProblem):
    """``(params, key, x, y) -> NLL`` of the deterministic CNN (the key is unused)."""

    def layer(params, name, h):
        p = params[name]
        return (conv if p["w"].ndim > 2 else dense)(h, p["w"]) + p["bias"]

    def loss(params, key, x, y):
        del key
        logits = cnn_forward(problem, lambda name, h: layer(params, name, h), x)
        return -log_likelihood(problem.n, logits, y)

    return loss


def deterministic_step(problem: ConvProblem, x, y) -> Variant:
    """The deterministic CNN's Adam step in plain JAX: the floor."""
    params = deterministic_params(problem)
    return loss_variant("deterministic CNN (plain JAX)", deterministic_loss(problem), params, x, y)


# --------------------------------------------------------------------------- LRT, taken apart (conv.py's analysis)


def grouped_mean_variance(x: jax.Array, loc: jax.Array, variance: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(conv(x, loc), conv(x * x, variance))`` as one grouped convolution (``feature_group_count=2``).

    The input is ``[x, x * x]`` along channels and the kernel ``[loc, variance]`` along
    filters; group 0 gives the mean, group 1 the variance: the same numbers as two calls.
    """
    both = jax.lax.conv_general_dilated(
        jnp.concatenate([x, x * x], axis=-1),
        jnp.concatenate([loc, variance], axis=-1),
        (1, 1),
        "SAME",
        dimension_numbers=DIMENSIONS,
        feature_group_count=2,
    )
    return tuple(jnp.split(both, 2, axis=-1))


def lrt_layer(*, channel_noise: bool = False, take_sqrt: bool = True, grouped: bool = False) -> Callable:
    """A variant of :func:`plain_layer`'s LRT, for ``plain_loss(..., layer_fn=...)``.

    * ``channel_noise``: one N(0, 1) draw per output channel, broadcast over examples and
      positions, instead of one per output element (timing only: not the estimator);
    * ``take_sqrt=False``: the variance stands in for the standard deviation (timing only);
    * ``grouped``: convolutions compute mean and variance in one grouped convolution
      (:func:`grouped_mean_variance`): the same loss, another program.
    """

    def layer(estimator: str, key: jax.Array, eps: jax.Array, x: jax.Array, p: dict) -> jax.Array:
        del estimator, eps  # LRT draws no weights
        mu, s = p["loc"], sigma(p["u"])
        if grouped and mu.ndim > 2:
            mean, var = grouped_mean_variance(x, mu, s * s)
        else:
            op = conv if mu.ndim > 2 else dense
            mean, var = op(x, mu), op(x * x, s * s)
        std = var
        if take_sqrt:
            positive = var > 0
            std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1)), 0)
        noise = jax.random.normal(key, mean.shape[-1:] if channel_noise else mean.shape, mean.dtype)
        return mean + std * noise + p["bias"]

    return layer


LRT_ABLATIONS = {
    "LRT, noise per channel only": {"channel_noise": True},
    "LRT, no sqrt": {"take_sqrt": False},
    "LRT, one grouped conv": {"grouped": True},  # slow on XLA's CPU backend: conv.py runs it with --grouped only
}


def lrt_ablation_step(problem: ConvProblem, label: str, params: dict, key: jax.Array, x, y) -> Variant:
    """The plain-JAX LRT step with one piece changed (``LRT_ABLATIONS[label]``), from the same params and key."""
    loss = plain_loss(problem, "local_reparameterization", lrt_layer(**LRT_ABLATIONS[label]))
    return loss_variant(f"plain JAX {label}", loss, params, x, y, key)
