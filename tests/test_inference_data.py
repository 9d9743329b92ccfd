"""npvi.to_inference_data: groups, shapes, named dims, pointwise log-likelihood, and ArviZ's own functions."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import npvi

matplotlib.use("Agg")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

N, D, DRAWS = 30, 2, 80


def model(x, y=None, num_data=None):
    h = npvi.DenseFlipout(4, activation=jax.nn.tanh, name="hidden")(x)
    mu = npvi.DenseLocalReparameterization(1, name="output")(h)[..., 0]
    numpyro.deterministic("mu", mu)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


@pytest.fixture(scope="module")
def fitted():
    x = jax.random.normal(jax.random.PRNGKey(0), (N, D))
    y = jnp.sin(x[:, 0]) + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (N,))
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(2e-2), npvi.ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(2), x, y, num_epochs=100, batch_size=10, progress_bar=False)
    idata = npvi.to_inference_data(model, guide, result.params, x, y, rng_key=jax.random.PRNGKey(3), num_samples=DRAWS)
    return x, y, guide, result.params, idata


def test_groups_shapes_and_named_dims(fitted):
    x, y, _, _, idata = fitted
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
    post = idata.posterior
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == DRAWS
    assert post["hidden.kernel"].dims == ("chain", "draw", "hidden_in", "hidden_units")
    assert post["hidden.kernel"].shape == (1, DRAWS, D, 4)
    assert post["output.kernel"].dims == ("chain", "draw", "output_in", "output_units")
    assert post["sigma"].dims == ("chain", "draw")
    assert post["mu"].shape == (1, DRAWS, N)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.posterior_predictive["y"].shape == (1, DRAWS, N)
    np.testing.assert_array_equal(idata.observed_data["y"].values, np.asarray(y))
    assert idata.posterior.attrs["npvi_version"] == npvi.__version__
    assert idata.posterior.attrs["estimator"] == "hidden: flipout, output: local_reparameterization"


def test_log_likelihood_is_pointwise_under_the_same_draw(fitted):
    """log p(y_i | W_s) from the file equals Normal(mu_si, sigma_s).log_prob(y_i) of the posterior draws."""
    _, y, _, _, idata = fitted
    mu, sigma = idata.posterior["mu"].values[0], idata.posterior["sigma"].values[0]
    expected = dist.Normal(mu, sigma[:, None]).log_prob(np.asarray(y))
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], expected, rtol=1e-5, atol=1e-5)


def test_posterior_predictive_spreads_like_the_likelihood(fitted):
    """y_rep - mu over 80 x 30 draws has the spread of sigma (5 standard errors of a std)."""
    _, _, _, _, idata = fitted
    residual = idata.posterior_predictive["y"].values[0] - idata.posterior["mu"].values[0]
    scale = float(np.sqrt(np.mean(idata.posterior["sigma"].values ** 2)))
    assert abs(residual.std() - scale) < 5 * scale / np.sqrt(2 * residual.size)


def test_arviz_functions_accept_it(fitted, tmp_path):
    _, _, _, _, idata = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k and one-chain warnings are ArviZ's diagnostics
        loo, waic = az.loo(idata, pointwise=True), az.waic(idata)
        summary = az.summary(idata, var_names=["sigma"])
        az.plot_posterior(idata, var_names=["sigma"])
        az.plot_ppc(idata, num_pp_samples=20)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == N and loo.n_samples == DRAWS
    assert np.isfinite(waic.elpd_waic)
    assert 0 < summary.loc["sigma", "mean"] < 1
    path = idata.to_netcdf(str(tmp_path / "idata.nc"))
    again = az.from_netcdf(path)
    np.testing.assert_array_equal(again.log_likelihood["y"].values, idata.log_likelihood["y"].values)
    assert again.posterior.attrs["npvi_version"] == npvi.__version__
    assert again.attrs["estimator"] == idata.attrs["estimator"]


def test_weights_can_be_left_out_or_chosen(fitted):
    x, y, guide, params, _ = fitted
    key = jax.random.PRNGKey(4)
    light = npvi.to_inference_data(model, guide, params, x, y, rng_key=key, num_samples=5, include_weights=False)
    assert sorted(light.posterior.data_vars) == ["mu", "sigma"]
    chosen = npvi.to_inference_data(model, guide, params, x, y, rng_key=key, num_samples=5, var_names=["output.kernel"])
    assert sorted(chosen.posterior.data_vars) == ["output.kernel"]
    assert "log_likelihood" in chosen.groups()
    with pytest.raises(ValueError, match=r"var_names \['nope'\] are not latent or deterministic sites"):
        npvi.to_inference_data(model, guide, params, x, y, rng_key=key, num_samples=5, var_names=["nope"])


def test_same_key_same_draws_and_observations_are_required(fitted):
    x, y, guide, params, _ = fitted
    a, b = (
        npvi.to_inference_data(model, guide, params, x, y, rng_key=jax.random.PRNGKey(5), num_samples=5)
        for _ in range(2)
    )
    np.testing.assert_array_equal(a.posterior["sigma"].values, b.posterior["sigma"].values)
    with pytest.raises(ValueError, match="no observed site"):
        npvi.to_inference_data(model, guide, params, x, rng_key=jax.random.PRNGKey(5), num_samples=5)


def classifier(x, y=None, b=None, num_data=None):
    logits = npvi.DenseReparameterization(3, name="out")(x)
    numpyro.deterministic("logits", logits)
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)  # CategoricalLogits, as the plate leaves it
        numpyro.sample("y_event", dist.Categorical(logits=logits[:, None]).to_event(1), obs=y[:, None])  # Independent
        numpyro.sample("b", dist.Bernoulli(logits=logits[:, 0]), obs=b)


def test_log_likelihood_keeps_its_precision_when_a_class_is_almost_certain():
    """Example 0's labelled class has p = 1 - 2e-9, where NumPyro's float32 l_y - logsumexp(l) is exactly 0."""
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    y, b = jnp.array([0, 2, 1, 0]), jnp.array([1.0, 0.0, 1.0, 0.0])
    params = {  # logits x @ loc + bias: example 0 gets (20, 0, 0)
        "out.kernel.loc": jnp.array([[20.0, 0.0, 0.0], [-1.0, 2.0, 3.0]]),
        "out.kernel.untransformed_scale": jnp.full((2, 3), -6.0),
        "out.bias": jnp.zeros(3),
    }
    guide = npvi.MeanFieldGuide(classifier)
    idata = npvi.to_inference_data(classifier, guide, params, x, y, b, rng_key=jax.random.PRNGKey(6), num_samples=4)
    logits = idata.posterior["logits"].values[0].astype(np.float64)  # the float32 logits of each draw
    d = logits - np.take_along_axis(logits, np.asarray(y)[None, :, None], -1)  # exact in float64
    reference = -np.log1p(np.where(np.arange(3) == np.asarray(y)[:, None], 0.0, np.exp(d)).sum(-1))
    bernoulli = -np.log1p(np.exp(np.where(np.asarray(b) == 1, -1.0, 1.0) * logits[..., 0]))
    # NumPyro's float32 forms cancel to exactly 0 here (Bernoulli's max(l, 0) + log1p(exp(-|l|)) - y l too).
    assert float(dist.Categorical(logits=jnp.array([20.0, 0.0, 0.0])).log_prob(0)) == 0.0
    assert float(dist.Bernoulli(logits=20.0).log_prob(1.0)) == 0.0
    # npvi's only float32 roundings: d_j = l_j - l_y (half an ulp of |d_j| < 32: 9.5e-7 absolute, which moves
    # -softplus(logsumexp d) by at most 9.5e-7 of itself, as softplus' slope is below softplus), and a few float32
    # ulps (6e-8 each) in exp, logsumexp and softplus: rtol 1e-5 leaves a margin of about 5.
    for name, expected in [("y", reference), ("y_event", reference), ("b", bernoulli)]:
        stored = idata.log_likelihood[name]
        assert stored.dtype == np.float64 and stored.shape == (1, 4, 4)
        np.testing.assert_allclose(stored.values[0], expected, rtol=1e-5)
    assert np.all(idata.log_likelihood["y"].values[0, :, 0] != 0.0)  # about -4.1e-9 in every draw
    assert np.all(idata.log_likelihood["b"].values[0, :, 0] != 0.0)  # about -2.1e-9
    assert idata.posterior["logits"].dtype == np.float32  # the other groups keep their dtypes
