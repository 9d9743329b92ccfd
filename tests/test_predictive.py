"""npvi.Predictive: shapes, chunk-size invariance, bounded memory, the predictive moments, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import fixed_params, one_layer_model

import npvi
from npvi.predictive import build_prototype, chunked_program

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

    def draw(key, inputs):
        (w,) = inputs
        sample = w + jax.random.normal(key, w.shape)
        return {"out": sample.sum(0)}

    def temp_bytes(num_chunks, chunk=10):
        run, arrays = chunked_program(draw, (weights,), num_chunks * chunk, chunk)
        return run.lower(jax.random.PRNGKey(0), arrays).compile().memory_analysis().temp_size_in_bytes

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


def test_observations_given_stay_observed_as_in_numpyro(fitted):
    model, guide, params = fitted
    y = jnp.ones((6, 3))
    draws = npvi.Predictive(model, guide, params, 3, return_sites=["y"])(jax.random.PRNGKey(0), X, y)
    np.testing.assert_array_equal(draws["y"], jnp.broadcast_to(y, (3, 6, 3)))


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
        "sigma_auto_loc": jnp.log(jnp.array(0.5)),
        "sigma_auto_scale": jnp.array(1e-4),
    }
    # As with NumPyro's autoguides, the guide learns which sites are observed on its first call (SVI's init).
    numpyro.handlers.seed(numpyro.handlers.substitute(guide, data=params), 0)(X, jnp.zeros(6))
    draws = npvi.Predictive(model, guide, params, 2000, return_sites=["sigma", "y"])(jax.random.PRNGKey(0), X)
    np.testing.assert_allclose(draws["sigma"], 0.5, rtol=1e-3)
    # y ~ N(0, 0.5): 12000 values, standard error of the std about 0.5 / sqrt(2 * 12000)
    assert abs(float(draws["y"].std()) - 0.5) < 5 * 0.5 / np.sqrt(2 * draws["y"].size)


def test_prototype_is_abstract_once_the_guide_has_run(fitted):
    """A trained guide's prototype is traced, not run: no eager op-by-op compiles in a fresh process."""
    model, guide, params = fitted
    y = jnp.arange(6.0)[:, None] * jnp.ones((6, 3))
    guide_trace, model_trace = build_prototype(model, guide, params, jax.random.PRNGKey(2), X, y)
    assert isinstance(model_trace["l1.kernel"]["value"], jax.core.Tracer)
    assert model_trace["l1.kernel"]["value"].shape == (4, 3)
    assert model_trace["y"]["is_observed"] and not isinstance(model_trace["y"]["value"], jax.core.Tracer)
    np.testing.assert_array_equal(model_trace["y"]["value"], y)


def test_prototype_of_a_fresh_guide_runs_eagerly_and_sets_it_up():
    model = one_layer_model(npvi.DenseFlipout)
    guide = npvi.MeanFieldGuide(model)
    _, model_trace = build_prototype(model, guide, fixed_params(), jax.random.PRNGKey(2), X, jnp.zeros((6, 3)))
    assert not isinstance(model_trace["l1.kernel"]["value"], jax.core.Tracer)
    assert guide.weight_sites is not None and "l1.kernel" in guide.weight_sites
