"""npvi.Predictive: shapes, same draws whatever the chunks and calls, one compile per input shapes,
bounded memory, the predictive moments, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import count_compiles, fixed_params, one_layer_model

import npvi
from npvi.predictive import chunked_draws

X = jax.random.normal(jax.random.PRNGKey(0), (6, 4))


@pytest.fixture(scope="module")
def fitted():
    """A one-layer Flipout model with known posterior params; the guide has seen the data."""
    model = one_layer_model(npvi.DenseFlipout)
    guide = npvi.MeanFieldGuide(model)
    params = fixed_params()
    numpyro.handlers.seed(numpyro.handlers.substitute(guide, data=params), 0)(X, jnp.zeros((6, 3)))
    return model, guide, params


def test_default_sites_are_predictions_and_deterministics(fitted):
    model, guide, params = fitted
    draws = npvi.Predictive(model, guide, params, num_samples=7)(jax.random.PRNGKey(1), X)
    assert sorted(draws) == ["out"]  # no y without observations, no weights
    assert draws["out"].shape == (7, 6, 3)
    with_kernel = npvi.Predictive(model, guide, params, 7, return_sites=["l1.kernel", "out"])(jax.random.PRNGKey(1), X)
    assert with_kernel["l1.kernel"].shape == (7, 4, 3)
    # each draw is one network: out = x @ W_s + b for the very W_s returned
    np.testing.assert_allclose(
        with_kernel["out"], X @ with_kernel["l1.kernel"] + params["l1.bias"], rtol=1e-5, atol=1e-5
    )


def test_chunk_size_changes_memory_not_numbers(fitted):
    model, guide, params = fitted
    key = jax.random.PRNGKey(2)
    draws = [npvi.Predictive(model, guide, params, 50, chunk_size=c)(key, X)["out"] for c in (7, 50, 100)]
    np.testing.assert_allclose(draws[0], draws[1], rtol=1e-6)
    np.testing.assert_allclose(draws[0], draws[2], rtol=1e-6)
    other = npvi.Predictive(model, guide, params, 50)(jax.random.PRNGKey(3), X)["out"]
    assert not np.allclose(draws[0], other)


def test_a_predictive_compiles_once_per_input_shapes_and_draws_the_same_each_call(fitted):
    model, guide, params = fitted
    predictive = npvi.Predictive(model, guide, params, 20, chunk_size=8)
    key, other_key, other_x = jax.random.PRNGKey(5), jax.random.PRNGKey(6), X + 1.0
    with count_compiles() as first:
        draws = predictive(key, X)["out"]
    with count_compiles() as again:
        repeats = [predictive(key, X)["out"] for _ in range(2)]
        other = predictive(other_key, other_x)["out"]  # another key and other values, the same shapes
    assert len(first) >= 1 and again == []
    for repeat in repeats:
        np.testing.assert_array_equal(repeat, draws)
    assert not np.allclose(other, draws)
    with count_compiles() as new_shape:
        assert predictive(key, X[:3])["out"].shape == (20, 3, 3)
    assert len(new_shape) >= 1
    np.testing.assert_array_equal(predictive(key, X)["out"], draws)  # the first program is still there


def test_predictive_moments_match_the_posterior(fitted):
    """Mean x@mu+b and variance (x*x)@sigma^2 per output; 4000 draws, 5 standard errors."""
    model, guide, params = fitted
    num = 4000
    out = npvi.Predictive(model, guide, params, num, chunk_size=500)(jax.random.PRNGKey(4), X)["out"]
    loc, sigma = params["l1.kernel.loc"], jax.nn.softplus(params["l1.kernel.untransformed_scale"]) + 1e-7
    mean, var = X @ loc + params["l1.bias"], (X * X) @ sigma**2
    summary = npvi.regression_summary(out)
    np.testing.assert_array_less(jnp.abs(summary.mean - mean), 5 * jnp.sqrt(var / num))
    # the variance of a sample variance of Normals is 2 var^2 / (num - 1)
    np.testing.assert_array_less(jnp.abs(summary.std**2 - var), 5 * jnp.sqrt(2 * var**2 / (num - 1)))


def test_peak_memory_does_not_grow_with_the_number_of_draws():
    """A draw that builds a 250k-float weight: the compiled program's scratch memory is per chunk."""
    weights = jnp.ones((500, 500))

    def temp_bytes(num_chunks, chunk=10):
        def run(key, w):
            return chunked_draws(lambda k: {"out": (w + jax.random.normal(k, w.shape)).sum(0)}, key,
                                 num_chunks * chunk, chunk)  # fmt: skip

        compiled = jax.jit(run).lower(jax.random.PRNGKey(0), weights).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(5), temp_bytes(100)  # 50 and 1000 draws
    assert large <= small * 1.05 + 4 * 1000 * 500  # at most the extra outputs
    assert large < 1000 * weights.size * 4 / 10  # far below materialising every draw's weights


def test_bad_arguments(fitted):
    model, guide, params = fitted
    with pytest.raises(ValueError, match="num_samples must be a positive int, got 0"):
        npvi.Predictive(model, guide, params, 0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got -1"):
        npvi.Predictive(model, guide, params, 10, chunk_size=-1)
    with pytest.raises(ValueError, match=r"return_sites \['nope'\] are not sites of the model"):
        npvi.Predictive(model, guide, params, 10, return_sites=["nope"])(jax.random.PRNGKey(0), X)


def test_observed_data_passed_to_a_predictive_call_is_refused(fitted):
    """NumPyro's Predictive would return the observations as the draws (std 0); npvi says so instead."""
    model, guide, params = fitted
    for return_sites in (None, ["y"]):
        with pytest.raises(ValueError, match=r"site\(s\) \['y'\] are observed in this call.*predictive\(rng_key, x\)"):
            predictive = npvi.Predictive(model, guide, params, 3, return_sites=return_sites)
            predictive(jax.random.PRNGKey(0), X, jnp.ones((6, 3)))
    assert sorted(npvi.Predictive(model, guide, params, 3)(jax.random.PRNGKey(0), X)) == ["out"]  # inputs alone


def test_other_latents_come_from_the_guide():
    def model(x, y=None):
        mu = npvi.DenseReparameterization(1, name="l1")(x)[..., 0]
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    guide = npvi.MeanFieldGuide(model)
    params = {
        "l1.kernel.loc": jnp.zeros((4, 1)),
        "l1.kernel.untransformed_scale": jnp.full((4, 1), -10.0),
        "l1.bias": jnp.zeros(1),
        "sigma.loc": jnp.log(jnp.array(0.5)),
        "sigma.untransformed_scale": jnp.log(jnp.array(1e-4)),  # softplus(u) is about exp(u) for u << 0
    }
    # A guide made anew for these params (as after npvi.load) is never called on data: "y" has no "y.loc" in
    # params, so Predictive's guide set-up keeps it observed, and "sigma" is the guide's.
    draws = npvi.Predictive(model, guide, params, 2000, return_sites=["sigma", "y"])(jax.random.PRNGKey(0), X)
    np.testing.assert_allclose(draws["sigma"], 0.5, rtol=1e-3)
    # y ~ N(0, 0.5): 12000 values, standard error of the std about 0.5 / sqrt(2 * 12000)
    assert abs(float(draws["y"].std()) - 0.5) < 5 * 0.5 / np.sqrt(2 * draws["y"].size)


def test_a_new_guide_predicts_from_the_inputs_alone_as_a_guide_that_saw_the_data():
    """After npvi.load a guide is made anew: "y" has no "y.loc" in params, so it stays observed (not latent)."""

    def model(x, y=None):
        mu = npvi.DenseFlipout(3, name="l1")(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)

    fresh = npvi.Predictive(model, npvi.MeanFieldGuide(model), fixed_params(), 3)(jax.random.PRNGKey(0), X)
    guide = npvi.MeanFieldGuide(model)
    numpyro.handlers.seed(guide, 0)(X, jnp.zeros((6, 3)))  # as svi.init does: y is observed
    seen = npvi.Predictive(model, guide, fixed_params(), 3)(jax.random.PRNGKey(0), X)
    assert fresh["y"].shape == (3, 6, 3)
    np.testing.assert_array_equal(fresh["y"], seen["y"])
    without_bias = {k: v for k, v in fixed_params().items() if k != "l1.bias"}
    with pytest.raises(ValueError, match=r"\['l1.bias'\] are not in params.*trained params"):
        npvi.Predictive(model, npvi.MeanFieldGuide(model), without_bias, 3)(jax.random.PRNGKey(0), X)
