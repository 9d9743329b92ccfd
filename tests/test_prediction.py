"""npvi.predict, Predictive.predict and npvi.median_model: the summaries equal the draws they summarise, the
point-estimate network is x @ loc + bias, a guide made anew predicts, bad calls and NaN params are reported."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import fixed_params

import npvi

X = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
KEY = jax.random.PRNGKey(3)


def classifier(x, y=None):
    logits = npvi.DenseFlipout(3, name="l1")(x)
    numpyro.deterministic("logits", logits)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


def regressor(x, y=None):
    mu = npvi.DenseReparameterization(3, name="l1")(x)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("mu", mu)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma).to_event(1), obs=y)


def binary(x, y=None):
    logits = npvi.DenseFlipout(3, name="l1")(x)[..., 0]
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def test_predict_gives_the_mean_probabilities_of_the_same_draws_as_predictive():
    """Every guide here is made anew (as after npvi.load): no call on data first."""
    params = fixed_params()
    summary = npvi.predict(classifier, npvi.MeanFieldGuide(classifier), params, X, rng_key=KEY, num_samples=40,
                           chunk_size=16)  # fmt: skip
    logits = npvi.Predictive(classifier, npvi.MeanFieldGuide(classifier), params, 40)(KEY, X)["logits"]
    expected = npvi.classification_summary(jax.nn.softmax(logits, axis=-1))
    np.testing.assert_allclose(summary.probs, expected.probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(summary.mutual_information, expected.mutual_information, rtol=1e-4, atol=1e-6)
    assert float(summary.mutual_information.min()) > 0  # the draws disagree: untransformed scale -1


def test_predict_gives_the_mixture_mean_and_std_by_the_law_of_total_variance():
    params = {**fixed_params(), "sigma.loc": jnp.log(jnp.array(0.5)), "sigma.untransformed_scale": jnp.array(-2.0)}
    predictive = npvi.Predictive(regressor, npvi.MeanFieldGuide(regressor), params, 60, chunk_size=25)
    summary = predictive.predict(KEY, X)
    draws = npvi.Predictive(regressor, npvi.MeanFieldGuide(regressor), params, 60, return_sites=["mu", "sigma"])(
        KEY, X
    )
    mu, sigma = np.asarray(draws["mu"], np.float64), np.asarray(draws["sigma"], np.float64)
    expected_var = (sigma**2).mean(0) + mu.var(0)  # sigma is one scalar per draw
    np.testing.assert_allclose(summary.mean, mu.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(summary.std, np.sqrt(expected_var), rtol=1e-5)
    assert summary.mean.shape == summary.std.shape == (6, 3)


def test_bernoulli_gives_two_classes_and_the_point_estimate_is_the_median_network():
    params = fixed_params()
    two = npvi.predict(binary, npvi.MeanFieldGuide(binary), params, X, rng_key=KEY, num_samples=8)
    assert two.probs.shape == (6, 2)
    np.testing.assert_allclose(two.probs.sum(-1), 1.0, rtol=1e-6)
    point = npvi.predict(classifier, npvi.MeanFieldGuide(classifier), params, X, rng_key=KEY, point_estimate=True)
    logits = X @ params["l1.kernel.loc"] + params["l1.bias"]
    np.testing.assert_allclose(point.probs, jax.nn.softmax(logits, -1), rtol=1e-5)
    np.testing.assert_array_equal(point.mutual_information, 0.0)  # one network: no epistemic part
    net = npvi.median_model(classifier, npvi.MeanFieldGuide(classifier), params)
    trace = numpyro.handlers.trace(numpyro.handlers.seed(net, 0)).get_trace(X)
    np.testing.assert_allclose(trace["logits"]["value"], logits, rtol=1e-5, atol=1e-6)
    again = numpyro.handlers.trace(numpyro.handlers.seed(net, 1)).get_trace(X)  # no weight noise, whatever the key
    np.testing.assert_array_equal(again["logits"]["value"], trace["logits"]["value"])


def test_a_saved_and_loaded_model_predicts_without_calling_its_guide_on_data(tmp_path):
    params = fixed_params()
    npvi.save(tmp_path / "model.npz", [], params)
    loaded = npvi.load(tmp_path / "model.npz").params
    summary = npvi.predict(classifier, npvi.MeanFieldGuide(classifier), loaded, X, rng_key=KEY, num_samples=10)
    reference = npvi.predict(classifier, npvi.MeanFieldGuide(classifier), params, X, rng_key=KEY, num_samples=10)
    np.testing.assert_array_equal(summary.probs, reference.probs)


def test_predict_names_the_site_and_refuses_observations():
    params = fixed_params()
    guide = npvi.MeanFieldGuide(classifier)
    with pytest.raises(ValueError, match=r"site 'y' is observed in this call.*without y"):
        npvi.predict(classifier, guide, params, X, jnp.zeros(6, jnp.int32), rng_key=KEY, num_samples=2)
    with pytest.raises(ValueError, match=r"site 'logits' is not a predicted sample site of the model; those are \['y"):
        npvi.predict(classifier, guide, params, X, rng_key=KEY, num_samples=2, site="logits")

    def two_heads(x):
        h = npvi.DenseFlipout(3, name="l1")(x)
        numpyro.sample("a", dist.Normal(h, 1.0).to_event(2))
        numpyro.sample("b", dist.Normal(h, 1.0).to_event(2))

    two_params = {**params, **{f"{s}.{p}": jnp.zeros((6, 3)) for s in "ab" for p in ("loc", "untransformed_scale")}}
    with pytest.raises(ValueError, match=r"the model has 0 predicted sites"):  # a and b belong to the guide here
        npvi.predict(two_heads, npvi.MeanFieldGuide(two_heads), two_params, X, rng_key=KEY, num_samples=2)
    with pytest.raises(ValueError, match=r"the model has 2 predicted sites for these inputs \(\['a', 'b'\]\); name"):
        npvi.predict(two_heads, npvi.MeanFieldGuide(two_heads), params, X, rng_key=KEY, num_samples=2)
    with pytest.raises(TypeError, match=r"Predictive.predict: rng_key must be a JAX PRNG key, got the int 0"):
        npvi.predict(classifier, guide, params, X, rng_key=0)
    with pytest.raises(TypeError, match=r"Predictive: rng_key must be a JAX PRNG key, got the int 0"):
        npvi.Predictive(classifier, guide, params, 2)(0, X)


def test_nan_params_and_nan_draws_warn():
    params = {**fixed_params(), "l1.bias": jnp.array([0.0, jnp.nan, 0.0])}
    with pytest.warns(RuntimeWarning, match=r"Predictive: params hold non-finite .* \[.l1.bias.\].*DivergenceError"):
        npvi.Predictive(classifier, npvi.MeanFieldGuide(classifier), params, 2)
    with pytest.warns(RuntimeWarning, match=r"to_inference_data: params hold non-finite values .* in \['l1.bias'\]"):
        npvi.to_inference_data(classifier, npvi.MeanFieldGuide(classifier), params, X, jnp.zeros(6, jnp.int32),
                               rng_key=KEY, num_samples=2)  # fmt: skip
    with pytest.warns(RuntimeWarning, match=r"regression_summary: draws hold non-finite values \(NaN or infinity\);"):
        npvi.regression_summary(jnp.array([[1.0, jnp.nan]]))
    with pytest.warns(RuntimeWarning, match=r"classification_summary: probs hold non-finite values"):
        npvi.classification_summary(jnp.array([[[jnp.nan, 1.0]]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite params and draws: no warning
        npvi.Predictive(classifier, npvi.MeanFieldGuide(classifier), fixed_params(), 2)
        npvi.regression_summary(jnp.ones((2, 3)))
