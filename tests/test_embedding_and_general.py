"""Issue 24, item 1: the general contraction (``DenseGeneral*``) and the embedding (``Embedding*``) under the
three estimators. Each output element has the exact mean and variance of its weights' posterior, Flipout and
local reparameterization decorrelate identical examples, a ``DenseGeneral`` over one axis is the dense layer,
an embedding never builds a one-hot array, and bad input is refused with the layer's name."""

from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import quick_xla_context, svi_traces
from numpyro.infer import SVI

import npvi
from npvi.linear_ops import Contraction

pytestmark = pytest.mark.usefixtures("quick_xla")  # the time is compiling small programs
M = 4000  # draws per estimator: a mean's standard error is sd / 63, a variance's is 2.2% of it
EPS = jnp.finfo(jnp.float32).eps
ESTIMATORS = ("Reparameterization", "LocalReparameterization", "Flipout")


def layer_model(cls, *args, **kwargs):
    def model(x):
        numpyro.deterministic("out", getattr(npvi, cls)(*args, name="l", **kwargs)(x))

    return model


def draws_of(model, params, x, m=M):
    guide = npvi.MeanFieldGuide(model)
    one = lambda key: svi_traces(model, guide, params, key, x)[0]["out"]["value"]  # noqa: E731
    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(11), m)))


def known_posterior(kernel_shape, bias_shape=None, key=3):
    kl, kb = jax.random.split(jax.random.PRNGKey(key))
    untransformed = jnp.linspace(-2.0, 0.0, math.prod(kernel_shape)).reshape(kernel_shape)  # sds 0.13 to 0.69
    params = {"l.kernel.loc": 0.5 * jax.random.normal(kl, kernel_shape), "l.kernel.untransformed_scale": untransformed}
    if bias_shape is not None:
        params["l.bias"] = 0.1 * jax.random.normal(kb, bias_shape)
    sigma = jax.nn.softplus(params["l.kernel.untransformed_scale"]) + EPS
    return params, params["l.kernel.loc"], sigma


def assert_exact_moments(out, mean, var):
    assert out.shape[1:] == mean.shape
    assert np.all(np.abs(out.mean(0) - mean) < 5 * np.sqrt(var / M))
    rel_var = out.var(0, ddof=1) / var
    assert np.all(np.abs(rel_var - 1) < 5 * np.sqrt(2 / (M - 1))), (rel_var.min(), rel_var.max())


def corr(a, b):
    a, b = a.reshape(M, -1), b.reshape(M, -1)
    return np.array([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])])


# --- DenseGeneral -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def general_setting():
    """Three (2, 4) examples (the first two identical) onto (2, 3) features: kernel (2, 4, 2, 3)."""
    x = jax.random.normal(jax.random.PRNGKey(5), (3, 2, 4))
    x = x.at[1].set(x[0])
    params, loc, sigma = known_posterior((2, 4, 2, 3), (2, 3))
    mean = jnp.tensordot(x, loc, 2) + params["l.bias"]
    var = jnp.tensordot(x * x, sigma**2, 2)
    with quick_xla_context():
        draws = {e: draws_of(layer_model(f"DenseGeneral{e}", (2, 3), axis=(-2, -1)), params, x) for e in ESTIMATORS}
    return mean, var, draws


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_dense_general_outputs_have_the_exact_mean_and_variance(general_setting, estimator):
    mean, var, draws = general_setting
    assert_exact_moments(draws[estimator], np.asarray(mean), np.asarray(var))


def test_dense_general_flipout_and_lrt_decorrelate_identical_examples(general_setting):
    *_, draws = general_setting
    np.testing.assert_allclose(corr(draws["Reparameterization"][:, 0], draws["Reparameterization"][:, 1]), 1, atol=1e-5)
    for estimator in ("LocalReparameterization", "Flipout"):
        across = corr(draws[estimator][:, 0], draws[estimator][:, 1])
        assert np.all(np.abs(across) < 5 / np.sqrt(M)), (estimator, across)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_dense_general_over_the_last_axis_is_the_dense_layer(estimator):
    """Same sites, the same draws from the same key, the same log density: only the op's spelling differs."""
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    params, _, _ = known_posterior((4, 3), (3,))
    general, dense = layer_model(f"DenseGeneral{estimator}", 3), layer_model(f"Dense{estimator}", 3)
    traces = [svi_traces(m, npvi.MeanFieldGuide(m), params, jax.random.PRNGKey(1), x)[0] for m in (general, dense)]
    assert traces[0].keys() == traces[1].keys()
    np.testing.assert_allclose(traces[0]["out"]["value"], traces[1]["out"]["value"], rtol=1e-5, atol=1e-6)
    kernel = [t["l.kernel"] for t in traces]
    np.testing.assert_allclose(*(k["fn"].log_prob(k["value"]) for k in kernel))


def test_dense_general_reparameterization_contracts_the_drawn_kernel():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4))
    model = layer_model("DenseGeneralReparameterization", (2, 3))
    params, _, _ = known_posterior((4, 2, 3), (2, 3))
    trace = svi_traces(model, npvi.MeanFieldGuide(model), params, jax.random.PRNGKey(1), x)[0]
    assert trace["l.kernel"]["fn"].event_shape == (4, 2, 3)
    expected = jnp.einsum("btd,dhk->bthk", x, trace["l.kernel"]["value"]) + params["l.bias"]
    np.testing.assert_allclose(trace["out"]["value"], expected, rtol=1e-5, atol=1e-6)


def test_dense_general_refuses_what_it_cannot_contract():
    x = jnp.ones((2, 3, 4))
    cases = {
        re.escape("axis=(0,) must be the last axis of the inputs (shape (2, 3, 4)), e.g. axis=-1; move"): dict(axis=0),
        re.escape("axis=(-3, -2) must be the last 2 axes of the inputs (shape (2, 3, 4)), e.g. axis=(-2, -1)"): dict(
            axis=(-3, -2)
        ),
        r"axis=\(-4, -3, -2, -1\) needs inputs of rank >= 5": dict(axis=(-4, -3, -2, -1)),
    }
    for message, kwargs in cases.items():
        with numpyro.handlers.seed(rng_seed=0), pytest.raises(ValueError, match=f"layer 'g': {message}"):
            npvi.DenseGeneralFlipout(2, name="g", **kwargs)(x)
    with pytest.raises(ValueError, match="layer 'g': axis .* names an axis twice"):
        npvi.DenseGeneralFlipout(2, axis=(-1, -1), name="g")
    with pytest.raises(ValueError, match="layer 'g': features must be a positive int, got 0"):
        npvi.DenseGeneralFlipout((2, 0), name="g")
    with pytest.raises(ValueError, match=r"axes \['j'\] of x are summed without the kernel"):
        Contraction("...ij,ik->...k")
    with pytest.raises(ValueError, match="two operands and an explicit output"):
        Contraction("ij,jk")


def test_low_rank_local_reparameterization_refuses_a_general_contraction():
    """Its one z per example is read off the output's leading axes, which only a dense or conv op guarantees."""
    model = layer_model("DenseGeneralLocalReparameterization", (2, 3), kernel_posterior=npvi.LowRankNormal(rank=1))
    guide = npvi.MeanFieldGuide(model)
    with pytest.raises(TypeError, match="LowRankNormal: local reparameterization needs a dense or convolutional"):
        numpyro.infer.SVI(model, guide, optax.sgd(0.0), npvi.ELBO()).init(jax.random.PRNGKey(0), jnp.ones((2, 4)))


# --- Embedding ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_setting():
    """Three sequences of 4 ids (the first two identical, id 7 twice in each), vocabulary 10, 3 features."""
    ids = jnp.array([[7, 2, 7, 0], [7, 2, 7, 0], [9, 9, 1, 3]])
    params, loc, sigma = known_posterior((10, 3))
    with quick_xla_context():
        draws = {e: draws_of(layer_model(f"Embedding{e}", 10, 3), params, ids) for e in ESTIMATORS}
    return loc[ids], (sigma**2)[ids], draws


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_embedding_outputs_have_the_exact_mean_and_variance(embedding_setting, estimator):
    mean, var, draws = embedding_setting
    assert_exact_moments(draws[estimator], np.asarray(mean), np.asarray(var))


def test_which_embedding_outputs_each_estimator_correlates(embedding_setting):
    """One table for the batch under reparameterization; every position its own under Flipout and LRT."""
    *_, draws = embedding_setting
    rep = draws["Reparameterization"]
    np.testing.assert_allclose(corr(rep[:, 0], rep[:, 1]), 1, atol=1e-5)  # identical examples
    np.testing.assert_allclose(corr(rep[:, 0, 0], rep[:, 0, 2]), 1, atol=1e-5)  # id 7 twice in one example
    for estimator in ("LocalReparameterization", "Flipout"):
        out = draws[estimator]
        for a, b in ((out[:, 0], out[:, 1]), (out[:, 0, 0], out[:, 0, 2]), (out[:, 2, 0], out[:, 2, 1])):
            assert np.all(np.abs(corr(a, b)) < 5 / np.sqrt(M)), estimator


def test_embedding_reparameterization_looks_up_the_drawn_table():
    ids = jnp.array([[3, 1], [0, 3]])
    model = layer_model("EmbeddingReparameterization", 5, 2)
    params, _, _ = known_posterior((5, 2))
    trace = svi_traces(model, npvi.MeanFieldGuide(model), params, jax.random.PRNGKey(1), ids)[0]
    np.testing.assert_array_equal(trace["out"]["value"], trace["l.kernel"]["value"][ids])
    assert "l.bias" not in trace  # no bias by default, as in Keras


def _shapes(jaxpr):
    for eqn in jaxpr.eqns:
        yield from (tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _shapes(inner)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_an_embedding_step_never_builds_a_one_hot_array(estimator):
    """An SVI step for a vocabulary of 1000: arrays with a vocabulary axis are table-sized, none (batch, seq, vocab)."""
    vocab, features = 1000, 4

    def model(ids, y=None):
        h = getattr(npvi, f"Embedding{estimator}")(vocab, features, name="e")(ids)
        with numpyro.plate("data", ids.shape[0]):
            numpyro.sample("y", dist.Normal(h.sum((-2, -1)), 1.0), obs=y)

    ids, y = jnp.zeros((8, 5), jnp.int32), jnp.zeros(8)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.sgd(0.1), npvi.ELBO())
    state = svi.init(jax.random.PRNGKey(0), ids, y)
    jaxpr = jax.make_jaxpr(lambda s: svi.update(s, ids, y))(state).jaxpr
    with_vocabulary = {shape for shape in _shapes(jaxpr) if vocab in shape}
    assert (vocab, features) in with_vocabulary
    assert max(math.prod(shape) for shape in with_vocabulary) == vocab * features, with_vocabulary  # not 8 * 5 * 1000


def test_embedding_refuses_what_is_not_an_id():
    layer = npvi.EmbeddingFlipout(10, 3, name="tok")
    with numpyro.handlers.seed(rng_seed=0):
        with pytest.raises(TypeError, match=r"layer 'tok': expected integer ids in \[0, 10\), got dtype float32"):
            layer(jnp.ones((2, 3)))
        with pytest.raises(ValueError, match=r"layer 'tok': ids must be in \[0, 10\) .*got ids from -1 to 10"):
            layer(jnp.array([[-1, 10]]))
        with pytest.raises(ValueError, match=r"layer 'tok': expected ids of rank >= 1 \(batch, ...\), got shape \(\)"):
            layer(jnp.array(3))
    with pytest.raises(ValueError, match="layer 'tok': output_dim must be a positive int, got 0"):
        npvi.EmbeddingFlipout(10, 0, name="tok")


# --- Both ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [npvi.DenseGeneralFlipout((4, 2), axis=(-2, -1), name="g", kernel_prior=dist.Laplace(0.0, 2.0)),
     npvi.EmbeddingLocalReparameterization(30, 5, name="e", use_bias=True)],  # fmt: skip
    ids=lambda layer: type(layer).__name__,
)
def test_configs_round_trip_through_json(layer):
    config = json.loads(json.dumps(npvi.serialization.serialize_layer(layer)))
    rebuilt = npvi.serialization.deserialize_layer(config)
    assert type(rebuilt) is type(layer) and rebuilt.get_config() == layer.get_config()


def test_a_sequence_model_of_both_trains():
    """Embedding → DenseGeneral over (time, features) → dense, through npvi.fit and npvi.Predictive."""

    def model(ids, y=None, num_data=None):
        e = npvi.EmbeddingFlipout(20, 4, name="e")(ids)
        h = npvi.DenseGeneralLocalReparameterization(8, axis=(-2, -1), activation="tanh", name="g")(e)
        mu = numpyro.deterministic("mu", npvi.DenseFlipout(1, name="o")(h)[..., 0])
        with numpyro.plate("data", num_data or ids.shape[0], subsample_size=ids.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)

    ids = jax.random.randint(jax.random.PRNGKey(0), (64, 5), 0, 20)
    y = jnp.sin(ids.sum(-1) / 10.0)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(1), ids, y, num_epochs=60, batch_size=16, progress_bar=False)
    assert np.isfinite(result.history["loss"]).all()
    mu = npvi.Predictive(model, svi.guide, result.params, 20, return_sites=["mu"])(jax.random.PRNGKey(2), ids)["mu"]
    assert mu.shape == (20, 64)
    rmse = float(jnp.sqrt(jnp.mean((mu.mean(0) - y) ** 2)))
    assert rmse < 0.5 * float(y.std()), (rmse, float(y.std()))  # it learned the sum's sine, not a constant


# Flax's Embed and Equinox's Embedding, converted by random_*_module: npvi's embedding op on their ids.
VOCAB, FEATURES = 6, 3


def converted_embedding(kind, numpyro_module=None):
    """``net(ids)``: the framework's embedding alone, made Bayesian by npvi (or by NumPyro's function)."""
    import equinox as eqx
    import flax.linen as linen
    from flax import nnx

    convert, prior = numpyro_module or npvi, dist.Normal(0.0, 1.0)
    if kind == "linen":
        return convert.random_flax_module("net", linen.Embed(VOCAB, FEATURES), prior, jnp.zeros((1, 2), jnp.int32))
    if kind == "nnx":
        return convert.random_nnx_module("net", nnx.Embed(VOCAB, FEATURES, rngs=nnx.Rngs(0)), prior)
    net = convert.random_eqx_module("net", eqx.nn.Embedding(VOCAB, FEATURES, key=jax.random.PRNGKey(0)), prior)
    return net if numpyro_module is None else jax.vmap(net)


def converted_model(kind, **kwargs):
    def model(ids):
        numpyro.deterministic("out", converted_embedding(kind, **kwargs)(ids))

    return model


@pytest.mark.parametrize("kind", ["linen", "nnx", "eqx"])
def test_a_converted_embedding_is_numpyros_under_reparameterization_and_exact_under_flipout(kind):
    from numpyro.contrib import module as numpyro_module
    from numpyro.infer.util import log_density

    ids = jnp.array([1, 4, 4, 0, 5])  # eqx maps over the ids; Flax takes them as they are
    reference, model = converted_model(kind, numpyro_module=numpyro_module), converted_model(kind)
    ref_trace = numpyro.handlers.trace(numpyro.handlers.seed(reference, 0)).get_trace(ids)
    table = ref_trace["net/embedding" if kind != "eqx" else "net/weight"]["value"]
    values = {k: v["value"] for k, v in ref_trace.items() if v["type"] == "sample"}
    reparameterized = npvi.handlers.reparameterization(model)
    np.testing.assert_allclose(log_density(reparameterized, (ids,), {}, values)[0],
                               log_density(reference, (ids,), {}, values)[0], rtol=1e-6)  # fmt: skip
    out = numpyro.handlers.substitute(numpyro.handlers.seed(reparameterized, 0), data=values)
    np.testing.assert_array_equal(numpyro.handlers.trace(out).get_trace(ids)["out"]["value"], table[ids])
    # Flipout: each output element N(mu[id], sigma^2[id]) exactly, as npvi's own embedding.
    site = "net/embedding" if kind != "eqx" else "net/weight"
    params, mu, sigma = known_posterior((VOCAB, FEATURES))
    params = {f"{site}.{k}": params[f"l.kernel.{k}"] for k in ("loc", "untransformed_scale")}
    assert_exact_moments(draws_of(npvi.handlers.flipout(model), params, ids), mu[ids], sigma[ids] ** 2)


def test_a_converted_embedding_checks_its_ids_and_attends_with_the_drawn_table():
    from flax import nnx

    with pytest.raises(TypeError, match=r"layer 'net': expected integer ids in \[0, 6\), got dtype float32"):
        numpyro.handlers.seed(converted_model("nnx"), 0)(jnp.ones(3))
    with pytest.raises(ValueError, match=r"layer 'net': ids must be in \[0, 6\).*from 0 to 6"):
        numpyro.handlers.seed(converted_model("linen"), 0)(jnp.array([0, 6]))

    class Tied(nnx.Module):  # output logits with the embedding's own table (weight tying)
        def __init__(self):
            self.embed = nnx.Embed(VOCAB, FEATURES, rngs=nnx.Rngs(0))

        def __call__(self, ids):
            return self.embed.attend(self.embed(ids))

    def tied(ids):
        numpyro.deterministic("out", npvi.random_nnx_module("net", Tied(), dist.Normal(0.0, 1.0))(ids))

    run = numpyro.handlers.trace(numpyro.handlers.seed(npvi.handlers.reparameterization(tied), 0)).get_trace(
        jnp.array([2, 3])
    )
    table = run["net/embed.embedding"]["value"]
    np.testing.assert_allclose(run["out"]["value"], table[jnp.array([2, 3])] @ table.T, rtol=1e-6)


def test_a_converted_linen_embedding_step_never_builds_a_one_hot_array():
    import flax.linen as linen

    vocab = 1000

    def model(ids, y=None):
        net = npvi.random_flax_module("net", linen.Embed(vocab, 4), dist.Normal(0.0, 1.0), ids[:1])
        with numpyro.plate("data", ids.shape[0]):
            numpyro.sample("y", dist.Normal(net(ids).sum((-2, -1)), 1.0), obs=y)

    ids, y = jnp.zeros((8, 5), jnp.int32), jnp.zeros(8)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.sgd(0.1), npvi.ELBO())
    state = svi.init(jax.random.PRNGKey(0), ids, y)
    with_vocabulary = {s for s in _shapes(jax.make_jaxpr(lambda s: svi.update(s, ids, y))(state).jaxpr) if vocab in s}
    assert max(math.prod(shape) for shape in with_vocabulary) == vocab * 4, with_vocabulary


# Flax's Einsum (Linen, NNX), converted: the module's own einsum, its bias on the kernel's output axes.
def converted_einsum(kind, equation="abc,cde->abde", numpyro_module=None):
    import flax.linen as linen
    from flax import nnx

    convert, prior = numpyro_module or npvi, dist.Normal(0.0, 1.0)
    kernels_only = (lambda path, shape: prior if path.endswith("kernel") else None) if numpyro_module is None else prior
    if kind == "linen":
        module = linen.Einsum((3, 2, 4), equation)
        return convert.random_flax_module("net", module, kernels_only, input_shape=(1, 5, 3))
    module = nnx.Einsum(equation, (3, 2, 4), (2, 4), rngs=nnx.Rngs(0))
    return convert.random_nnx_module("net", module, kernels_only)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_a_converted_einsum_has_the_exact_moments_under_each_estimator(kind):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 3))

    def model(x):
        numpyro.deterministic("out", converted_einsum(kind)(x))

    guide = npvi.MeanFieldGuide(model)
    from conftest import init_params

    params = init_params(model, guide, x)
    known, mu, sigma = known_posterior((3, 2, 4))
    params.update({f"net/kernel.{k}": known[f"l.kernel.{k}"] for k in ("loc", "untransformed_scale")})
    bias = params["net/bias"] = jnp.arange(8.0).reshape(2, 4)  # on the output axes d, e (Flax's rule)
    mean = jnp.einsum("abc,cde->abde", x, mu) + bias
    var = jnp.einsum("abc,cde->abde", x * x, sigma**2)
    for handler in (npvi.handlers.flipout, npvi.handlers.local_reparameterization):
        assert_exact_moments(draws_of(handler(model), params, x), mean, var)


def test_an_einsum_npvi_cannot_make_bayesian_says_why():
    import flax.linen as linen

    x = jnp.ones((2, 5, 3))
    summed = linen.Einsum((3, 4), "abc,cd->ad")  # b is summed without the kernel
    with pytest.raises(ValueError, match=r"Einsum \(Contraction 'abc,cd->ad': the axes \['b'\] of x are summed"):
        numpyro.handlers.seed(lambda: npvi.random_flax_module(
            "net", summed, dist.Normal(0.0, 1.0), input_shape=(1, 5, 3))(x), 0)()  # fmt: skip

    class CallTime(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Einsum((3, 4), None)(x, "abc,cd->abd")

    with pytest.raises(ValueError, match="einsum_str given at call time"):
        numpyro.handlers.seed(lambda: npvi.random_flax_module(
            "net", CallTime(), dist.Normal(0.0, 1.0), input_shape=(1, 5, 3))(x), 0)()  # fmt: skip
