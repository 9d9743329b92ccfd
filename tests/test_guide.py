"""MeanFieldGuide: TFP-default posterior, stable names, other sites, prediction helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from conftest import fixed_params, init_params, one_layer_model
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI, Predictive

import npvi


def big_model(x, y=None):
    h = npvi.DenseFlipout(200, name="l1")(x)
    mu = npvi.DenseFlipout(1, name="l2")(h)[..., 0]
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


X = jnp.ones((4, 50))
Y = jnp.zeros(4)


def test_default_posterior_init_matches_tfp():
    guide = npvi.MeanFieldGuide(big_model)
    params = init_params(big_model, guide, X, Y)
    loc = np.asarray(params["l1.kernel.loc"])
    u = np.asarray(params["l1.kernel.untransformed_scale"])
    assert loc.shape == u.shape == (50, 200)
    n = loc.size  # 10000 values: the sample mean has se 0.001 (loc) and the sd has se ~0.0007
    assert abs(loc.mean()) < 5 * 0.1 / np.sqrt(n) and abs(loc.std() - 0.1) < 0.005
    assert abs(u.mean() + 3) < 5 * 0.1 / np.sqrt(n) and abs(u.std() - 0.1) < 0.005
    scale = jax.nn.softplus(u) + np.finfo(np.float32).eps
    assert abs(float(np.median(scale)) - 0.0486) < 0.0005


def test_parameter_names_are_stable():
    guide = npvi.MeanFieldGuide(big_model)
    params = init_params(big_model, guide, X, Y)
    assert sorted(params) == [
        "l1.bias",
        "l1.kernel.loc",
        "l1.kernel.untransformed_scale",
        "l2.bias",
        "l2.kernel.loc",
        "l2.kernel.untransformed_scale",
        "sigma_auto_loc",
        "sigma_auto_scale",
    ]


def test_guide_posterior_is_an_independent_normal_in_infer():
    guide = npvi.MeanFieldGuide(big_model)
    params = init_params(big_model, guide, X, Y)
    tr = trace(seed(substitute(guide, data=params), 0)).get_trace(X, Y)
    q = tr["l1.kernel"]["fn"]
    assert tr["l1.kernel"]["infer"][npvi.layers.POSTERIOR_KEY] is q
    assert isinstance(q.base_dist, dist.Normal) and q.event_shape == (50, 200)
    np.testing.assert_allclose(q.base_dist.loc, params["l1.kernel.loc"])
    # Other latent sites are AutoNormal's: sigma lives on the positive reals.
    assert tr["sigma"]["value"] > 0


def test_first_and_later_calls_draw_the_same_numbers():
    params = init_params(big_model, npvi.MeanFieldGuide(big_model), X, Y)

    def draw(guide):
        tr = trace(seed(substitute(guide, data=params), 3)).get_trace(X, Y)
        return tr["l1.kernel"]["value"], tr["sigma"]["value"]

    fresh = npvi.MeanFieldGuide(big_model)
    first = draw(fresh)  # builds the prototype
    later = draw(fresh)
    other = draw(npvi.MeanFieldGuide(big_model))
    for a, b, c in zip(first, later, other, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_point_mass_and_custom_init():
    model = one_layer_model(
        npvi.DenseFlipout,
        kernel_posterior=npvi.MeanFieldNormal(loc_stddev=0.0, untransformed_scale_mean=-5.0,
                                              untransformed_scale_stddev=0.0),
    )
    params = init_params(model, npvi.MeanFieldGuide(model), X[:, :4])
    np.testing.assert_array_equal(params["l1.kernel.loc"], 0.0)
    np.testing.assert_array_equal(params["l1.kernel.untransformed_scale"], -5.0)
    model = one_layer_model(npvi.DenseReparameterization, kernel_posterior=npvi.PointMass(loc_mean=1.0, loc_stddev=0.0))
    guide = npvi.MeanFieldGuide(model)
    params = init_params(model, guide, X[:, :4])
    tr = trace(seed(substitute(guide, data=params), 0)).get_trace(X[:, :4])
    np.testing.assert_array_equal(tr["l1.kernel"]["value"], 1.0)  # a point mass draws its loc


def test_predictive_and_sample_posterior_and_median(data):
    x, y = data
    model = one_layer_model(npvi.DenseFlipout)
    guide = npvi.MeanFieldGuide(model)
    result = SVI(model, guide, optax.adam(1e-2), npvi.ELBO()).run(
        jax.random.PRNGKey(0), 50, x, y, progress_bar=False
    )
    draws = Predictive(model, guide=guide, params=result.params, num_samples=30)(jax.random.PRNGKey(1), x)
    assert draws["out"].shape == (30, 16, 3)
    assert draws["out"].std(0).min() > 0  # every draw is a different network
    samples = guide.sample_posterior(jax.random.PRNGKey(2), result.params, x, sample_shape=(5, 2))
    assert samples["l1.kernel"].shape == (5, 2, 4, 3)
    # Predictive draws whole weight matrices: each draw's mean output is x @ W + b.
    out = Predictive(model, posterior_samples={"l1.kernel": samples["l1.kernel"][0]}, params=result.params,
                     return_sites=["out"])(jax.random.PRNGKey(3), x)["out"]
    np.testing.assert_allclose(out[0], x @ samples["l1.kernel"][0, 0] + result.params["l1.bias"], rtol=1e-5)
    median = guide.median(result.params)
    np.testing.assert_array_equal(median["l1.kernel"], result.params["l1.kernel.loc"])


def test_sample_posterior_on_a_fresh_guide(data):
    x, y = data
    model = one_layer_model(npvi.DenseFlipout)
    params = init_params(model, npvi.MeanFieldGuide(model), x)
    fresh = npvi.MeanFieldGuide(model)
    samples = fresh.sample_posterior(jax.random.PRNGKey(0), params, x, sample_shape=(4,))
    assert samples["l1.kernel"].shape == (4, 4, 3)
    again = fresh.sample_posterior(jax.random.PRNGKey(0), params, x, sample_shape=(4,))
    np.testing.assert_array_equal(samples["l1.kernel"], again["l1.kernel"])


def test_median_before_setup_is_a_clear_error():
    guide = npvi.MeanFieldGuide(big_model)
    try:
        guide.median(fixed_params())
    except RuntimeError as e:
        assert "svi.init" in str(e)
    else:
        raise AssertionError("expected RuntimeError")
