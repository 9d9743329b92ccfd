"""Recurrent cells of Flax (Linen, NNX) and Equinox made Bayesian: one weight draw per sequence.

The cells' dense layers (Linen and NNX) or kernels (Equinox's ``weight_ih`` and ``weight_hh``) are
converted like any linear layer, but each draws its Flipout key once per model run, so every time
step of a sequence sees the same weight, as Edward2's ``LSTMCellFlipout`` does.
"""

from __future__ import annotations

import equinox as eqx
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import init_params, quick_xla_context, svi_traces
from flax import nnx
from numpyro.contrib import module as numpyro_module
from numpyro.handlers import seed, trace
from numpyro.infer.util import log_density

import npvi

PRIOR = dist.Normal(0.0, 0.5)
KERNELS_ONLY = lambda path, shape: PRIOR if path.endswith(("kernel", "weight", "weight_ih", "weight_hh")) else None  # noqa: E731
FEATURES, HIDDEN, STEPS = 3, 4, 5


@pytest.fixture(scope="module", autouse=True)
def _quick_compiles():
    with quick_xla_context():
        yield


# Over a whole sequence: Linen's and NNX's nn.RNN (a scan), Equinox's cell in a lax.scan.
class LinenRNN(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(1)(linen.RNN(linen.LSTMCell(HIDDEN))(x)[:, -1])[:, 0]


class NnxRNN(nnx.Module):
    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.GRUCell(FEATURES, HIDDEN, rngs=rngs))
        self.out = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(self.rnn(x)[:, -1])[:, 0]


class EqxRNN(eqx.Module):
    cell: eqx.nn.LSTMCell
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.LSTMCell(FEATURES, HIDDEN, key=k1)
        self.out = eqx.nn.Linear(HIDDEN, 1, key=k2)

    def __call__(self, xs):  # one sequence (steps, features)
        zeros = jnp.zeros(HIDDEN)
        (h, _), _ = jax.lax.scan(lambda carry, x: (self.cell(x, carry), None), (zeros, zeros), xs)
        return self.out(h)[0]


# Two calls of one cell on the same carry and input, and two calls of one dense layer, in one run.
class LinenTwice(linen.Module):
    @linen.compact
    def __call__(self, x):
        cell, dense = linen.LSTMCell(HIDDEN), linen.Dense(HIDDEN)
        carry = cell.initialize_carry(jax.random.PRNGKey(0), x.shape)
        return jnp.stack([cell(carry, x)[1], cell(carry, x)[1], dense(x), dense(x)], axis=1)


class NnxTwice(nnx.Module):
    def __init__(self, rngs):
        self.cell = nnx.LSTMCell(FEATURES, HIDDEN, rngs=rngs)
        self.dense = nnx.Linear(FEATURES, HIDDEN, rngs=rngs)

    def __call__(self, x):
        carry = (jnp.zeros((x.shape[0], HIDDEN)), jnp.zeros((x.shape[0], HIDDEN)))
        return jnp.stack([self.cell(carry, x)[1], self.cell(carry, x)[1], self.dense(x), self.dense(x)], axis=1)


class EqxTwice(eqx.Module):
    cell: eqx.nn.GRUCell
    dense: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.GRUCell(FEATURES, HIDDEN, key=k1)
        self.dense = eqx.nn.Linear(FEATURES, HIDDEN, key=k2)

    def __call__(self, x):  # one example
        h = jnp.zeros(HIDDEN)
        return jnp.stack([self.cell(x, h), self.cell(x, h), self.dense(x), self.dense(x)])


def networks(kind):
    """``(npvi's network, NumPyro's network)`` factories: ``f(prior)`` called inside a model."""
    if kind == "linen":
        module, shape = (LinenRNN(), (1, STEPS, FEATURES))
        return (lambda prior, **kw: npvi.random_flax_module("net", module, prior, input_shape=shape, **kw),
                lambda prior: numpyro_module.random_flax_module("net", module, prior, input_shape=shape))  # fmt: skip
    if kind == "nnx":
        module = NnxRNN(nnx.Rngs(0))
        return (lambda prior, **kw: npvi.random_nnx_module("net", module, prior, **kw),
                lambda prior: numpyro_module.random_nnx_module("net", module, prior))  # fmt: skip
    module = EqxRNN(jax.random.PRNGKey(0))
    batched = lambda prior: (lambda x: jax.vmap(numpyro_module.random_eqx_module("net", module, prior))(x))  # noqa: E731
    return lambda prior, **kw: npvi.random_eqx_module("net", module, prior, **kw), batched


def regression_model(network):
    def model(x, y=None, num_data=None):
        mu = numpyro.deterministic("out", network()(x))
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)

    return model


def sequences(n=16, seed=0):
    """Sequences whose target is the mean of their first feature: something an RNN can learn."""
    x = jax.random.normal(jax.random.PRNGKey(seed), (n, STEPS, FEATURES))
    return x, x[:, :, 0].mean(axis=1)


@pytest.mark.parametrize("kind", ["linen", "nnx", "eqx"])
def test_under_reparameterization_a_recurrent_network_is_numpyros(kind):
    npvi_net, numpyro_net = networks(kind)
    x, y = sequences()
    reference = regression_model(lambda: numpyro_net(PRIOR))
    model = npvi.handlers.reparameterization(regression_model(lambda: npvi_net(PRIOR)))

    def latents(m):
        run = trace(seed(m, 1)).get_trace(x, y)
        return {k: jnp.shape(v["value"]) for k, v in run.items() if v["type"] == "sample" and not v["is_observed"]}

    shapes = latents(reference)
    assert latents(model) == shapes
    values = {k: v["value"] for k, v in trace(seed(reference, 1)).get_trace(x, y).items() if k in shapes}
    ref_density = jax.jit(lambda v: log_density(reference, (x, y), {}, v)[0])(values)
    our_density = jax.jit(lambda v: log_density(model, (x, y), {}, v)[0])(values)
    np.testing.assert_allclose(our_density, ref_density, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linen", "nnx", "eqx"])
def test_each_sequence_sees_one_weight_draw_at_every_step_under_flipout(kind):
    module = {"linen": LinenTwice(), "nnx": NnxTwice(nnx.Rngs(0)), "eqx": EqxTwice(jax.random.PRNGKey(0))}[kind]

    def network():
        if kind == "linen":
            return npvi.random_flax_module("net", module, KERNELS_ONLY, input_shape=(1, FEATURES))
        if kind == "nnx":
            return npvi.random_nnx_module("net", module, KERNELS_ONLY)
        return npvi.random_eqx_module("net", module, KERNELS_ONLY)

    def model(x):
        numpyro.deterministic("out", network()(x))

    pair = jnp.ones((2, FEATURES))  # two identical examples
    guide = npvi.MeanFieldGuide(model)
    params = init_params(model, guide, pair)
    params = {k: v + 2.0 if k.endswith("untransformed_scale") else v for k, v in params.items()}

    def outputs(estimator):
        draw = lambda key: svi_traces(getattr(npvi.handlers, estimator)(model), guide, params, key, pair)[0]  # noqa: E731
        return jax.jit(jax.vmap(lambda key: draw(key)["out"]["value"]))(jax.random.split(jax.random.PRNGKey(3), 50))

    out = outputs("flipout")  # (draws, example, [cell, cell again, dense, dense again], hidden)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 1])  # one cell, one weight: the same output
    # Two draws of few signs can agree by chance (3 input and 4 output signs for the dense layer): most differ.
    differ = lambda a, b: np.mean(np.abs(a - b).max(axis=-1) > 1e-3)  # noqa: E731
    assert differ(out[:, :, 2], out[:, :, 3]) > 0.8  # a dense layer: fresh signs at every call
    assert differ(out[:, 0, 0], out[:, 1, 0]) > 0.8  # two sequences: two weights
    assert np.all(out[:, 0, 0].std(axis=0) > 1e-2)  # and a new weight in every draw
    same = outputs("reparameterization")  # the control: one weight for the batch, everywhere
    np.testing.assert_allclose(same[:, 0, 0], same[:, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(same[:, :, 2], same[:, :, 3], rtol=1e-6)
    with pytest.raises(ValueError, match="recurrent cell.*new weight, at every time step"):
        outputs("local_reparameterization")


@pytest.mark.parametrize("kind", ["linen", "nnx", "eqx"])
def test_local_reparameterization_of_a_cell_is_refused_at_conversion(kind):
    npvi_net, _ = networks(kind)
    x, y = sequences(n=2)
    model = regression_model(lambda: npvi_net(PRIOR, estimator="local_reparameterization"))
    with pytest.raises(ValueError, match=r"inside recurrent cells.*estimator='flipout'"):
        seed(model, 0)(x, y)
    # Kept deterministic, the cells are no obstacle: the rest of the network takes LRT.
    cells = {"linen": "LSTMCell_0", "nnx": "rnn", "eqx": "cell"}[kind]
    lrt = regression_model(lambda: npvi_net(PRIOR, estimator="local_reparameterization", deterministic=[cells]))
    assert jnp.shape(trace(seed(lrt, 0)).get_trace(x, y)["out"]["value"]) == (2,)


def test_linens_optimized_lstm_cell_is_named_as_unconvertible():
    class Optimized(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(1)(linen.RNN(linen.OptimizedLSTMCell(HIDDEN))(x)[:, -1])[:, 0]

    model = regression_model(
        lambda: npvi.random_flax_module("net", Optimized(), PRIOR, input_shape=(1, STEPS, FEATURES))
    )
    with pytest.raises(ValueError, match="OptimizedLSTMCell, which npvi cannot convert to flipout"):
        seed(model, 0)(*sequences(n=2))


@pytest.mark.parametrize("kind", ["linen", "nnx", "eqx"])
def test_a_recurrent_network_trains_under_flipout_with_fit(kind):
    npvi_net, _ = networks(kind)
    x, y = sequences(n=64, seed=1)
    model = regression_model(lambda: npvi_net(KERNELS_ONLY))
    svi = numpyro.infer.SVI(model, npvi.MeanFieldGuide(model), optax.adam(3e-2), npvi.ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=20, batch_size=32, progress_bar=False)
    losses = np.asarray(result.losses).reshape(20, -1).mean(axis=1)
    assert np.all(np.isfinite(losses))
    assert losses[-3:].mean() < 0.5 * losses[:3].mean(), (losses[:3], losses[-3:])
