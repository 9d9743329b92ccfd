"""MeanFieldGuide: TFP-default posterior, stable names, other sites, prediction helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
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
        "sigma.loc",
        "sigma.untransformed_scale",
    ]


def test_guide_posterior_is_an_independent_normal_in_infer():
    guide = npvi.MeanFieldGuide(big_model)
    params = init_params(big_model, guide, X, Y)
    tr = trace(seed(substitute(guide, data=params), 0)).get_trace(X, Y)
    q = tr["l1.kernel"]["fn"]
    assert tr["l1.kernel"]["infer"][npvi.layers.POSTERIOR_KEY] is q
    assert isinstance(q.base_dist, dist.Normal) and q.event_shape == (50, 200)
    np.testing.assert_allclose(q.base_dist.loc, params["l1.kernel.loc"])
    # Other latent sites: a Normal in unconstrained space, mapped to sigma's support (the positive reals).
    assert tr["sigma"]["value"] > 0


def test_first_and_later_calls_draw_the_same_numbers():
    params = init_params(big_model, npvi.MeanFieldGuide(big_model), X, Y)

    def draw(guide):
        tr = trace(seed(substitute(guide, data=params), 3)).get_trace(X, Y)
        return tr["l1.kernel"]["value"], tr["sigma"]["value"]

    fresh = npvi.MeanFieldGuide(big_model)
    first = draw(fresh)  # reads the model's sites
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


# ---------------------------------------------------------------- latents that are not layer weights


def conjugate(y=None, num_data=None):
    """mu ~ N(0, 1), y_i ~ N(mu, 1): the posterior is N(sum(y) / (n + 1), 1 / (n + 1))."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", num_data or y.shape[0], subsample_size=y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_a_latent_without_layers_trains_to_its_exact_posterior():
    y = 1.5 + jax.random.normal(jax.random.PRNGKey(0), (40,))
    svi = SVI(conjugate, npvi.MeanFieldGuide(conjugate), optax.adam(2e-2), npvi.ELBO(num_particles=8))
    params = svi.run(jax.random.PRNGKey(1), 2000, y, progress_bar=False).params
    n = y.shape[0]
    # Adam with a fixed step and an 8-particle gradient: the loc jitters by about lr, the scale a little less.
    np.testing.assert_allclose(params["mu.loc"], float(y.sum()) / (n + 1), atol=0.03)
    scale = float(npvi.posteriors.softplus_scale(params["mu.untransformed_scale"]))
    np.testing.assert_allclose(scale, 1 / np.sqrt(n + 1), rtol=0.1)


def hierarchy(x, y=None, num_data=None):
    """Latents of several kinds: positive, a vector, a plate of them, a simplex."""
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    with numpyro.plate("groups", 2):
        numpyro.sample("tau", dist.Gamma(2.0, 2.0))
    numpyro.sample("mix", dist.Dirichlet(jnp.ones(3)))
    mu = npvi.DenseReparameterization(1, name="l1")(x)[..., 0] + x @ w
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_other_latents_start_where_the_init_strategy_says_with_init_scale():
    from numpyro.infer.initialization import init_to_value

    x, y = jnp.ones((5, 3)), jnp.zeros(5)
    values = {"sigma": 0.7, "w": jnp.array([1.0, -1.0, 0.5]), "tau": jnp.array([0.5, 2.0]),
              "mix": jnp.array([0.2, 0.3, 0.5])}  # fmt: skip
    guide = npvi.MeanFieldGuide(hierarchy, init_loc_fn=init_to_value(values=values), init_scale=0.05)
    params = init_params(hierarchy, guide, x, y)
    assert sorted(params) == ["l1.bias", "l1.kernel.loc", "l1.kernel.untransformed_scale"] + sorted(
        f"{site}.{part}" for site in values for part in ("loc", "untransformed_scale")
    )
    np.testing.assert_allclose(params["sigma.loc"], np.log(0.7), rtol=1e-6)
    np.testing.assert_allclose(params["w.loc"], values["w"])
    np.testing.assert_allclose(params["tau.loc"], np.log(values["tau"]), rtol=1e-6)
    assert params["mix.loc"].shape == (2,)  # a simplex of 3 is 2 numbers unconstrained
    for site in values:
        scale = npvi.posteriors.softplus_scale(params[f"{site}.untransformed_scale"])
        np.testing.assert_allclose(scale, 0.05, rtol=1e-5)
    median = guide.median(params)
    np.testing.assert_allclose(median["sigma"], 0.7, rtol=1e-6)
    np.testing.assert_allclose(median["mix"], values["mix"], rtol=1e-5)
    np.testing.assert_array_equal(median["l1.kernel"], params["l1.kernel.loc"])
    # The guide's draws live on each support, with the plate's shape.
    draws = guide.sample_posterior(jax.random.PRNGKey(0), params, x, sample_shape=(50,))
    assert draws["tau"].shape == (50, 2) and bool(jnp.all(draws["tau"] > 0)) and bool(jnp.all(draws["sigma"] > 0))
    np.testing.assert_allclose(draws["mix"].sum(-1), 1.0, rtol=1e-5)


def test_a_hierarchical_latent_starts_from_its_parents_initial_value():
    from numpyro.infer.initialization import init_to_median, init_to_value

    def model(x, y=None):
        scale = numpyro.sample("scale", dist.HalfNormal(1.0))
        numpyro.sample("shifted", dist.Normal(scale, 1e-3))  # its median is the scale's initial value
        npvi.DenseFlipout(1, name="l1")(x)

    def strategy(site=None):
        return init_to_value(site, values={"scale": 3.0}) if site["name"] == "scale" else init_to_median(site)

    params = init_params(model, npvi.MeanFieldGuide(model, init_loc_fn=strategy), jnp.ones((2, 2)))
    np.testing.assert_allclose(params["scale.loc"], np.log(3.0), rtol=1e-6)
    np.testing.assert_allclose(params["shifted.loc"], 3.0, atol=5e-3)  # 15 prior draws of sd 1e-3


def test_latents_the_guide_cannot_place_are_clear_errors():
    x, y = jnp.ones((8, 3)), jnp.zeros(8)

    def local(x, y=None, num_data=None):
        mu = npvi.DenseFlipout(1, name="l1")(x)[..., 0]
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            offset = numpyro.sample("offset", dist.Normal(0.0, 0.1))
            numpyro.sample("y", dist.Normal(mu + offset, 1.0), obs=y)

    svi = SVI(local, npvi.MeanFieldGuide(local), optax.adam(1e-2), npvi.ELBO())
    with pytest.raises(ValueError, match=r"latent site 'offset' sits in the subsampled plate\(s\) \['data'\]"):
        npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=4, progress_bar=False)
    # Without subsampling, a local latent is one posterior per example.
    params = init_params(local, npvi.MeanFieldGuide(local), x, y)
    assert params["offset.loc"].shape == (8,)

    def discrete(x):
        numpyro.sample("k", dist.Categorical(probs=jnp.ones(3) / 3))
        npvi.DenseFlipout(1, name="l1")(x)

    with pytest.raises(ValueError, match="discrete sample site 'k'"):
        init_params(discrete, npvi.MeanFieldGuide(discrete), x)

    def computed_support(x):
        numpyro.sample("z", dist.Uniform(0.0, jnp.exp(x.mean())))
        npvi.DenseFlipout(1, name="l1")(x)

    with pytest.raises(ValueError, match=r"support of latent site 'z'.*depends on values computed in the model"):
        init_params(computed_support, npvi.MeanFieldGuide(computed_support), x)


def test_a_guide_that_misses_a_model_latent_is_reported_as_numpyro_does():
    def model(x, y=None):
        mu = npvi.DenseFlipout(1, name="l1")(x)[..., 0]
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    def partial_guide(x, y=None):
        loc = numpyro.param("l1.kernel.loc", jnp.zeros((3, 1)))
        numpyro.sample("l1.kernel", dist.Normal(loc, 0.1).to_event(2))

    x, y = jnp.ones((4, 3)), jnp.zeros(4)
    with npvi.handlers.reparameterization():  # the hand-written guide exposes no posterior for Flipout
        params = init_params(model, partial_guide, x, y)
        with pytest.warns(UserWarning, match=r"Found vars in model but not guide: \{'sigma'\}"):
            npvi.ELBO().loss(jax.random.PRNGKey(0), params, model, partial_guide, x, y)
