"""npvi.ELBO: per-layer KL choices, minibatch scaling, KL weight, and every NumPyro ELBO."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import EstimatorSpy, fixed_params, init_params, one_layer_model, svi_traces
from numpyro.handlers import substitute
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from numpyro.infer.autoguide import AutoNormal

import npvi


def closed_form_kl(loc, sigma):
    """KL(N(loc, sigma^2) || N(0, 1)) summed over elements."""
    return jnp.sum(-jnp.log(sigma) + 0.5 * (sigma**2 + loc**2) - 0.5)


def prior_only_model(layer_cls=npvi.DenseFlipout, **kwargs):
    """No likelihood: the loss is exactly the (weighted) KL."""

    def model(x):
        layer_cls(3, name="l1", **kwargs)(x)

    return model


X = jnp.ones((2, 4))


def sigma_of(params):
    return jax.nn.softplus(params["l1.kernel.untransformed_scale"]) + jnp.finfo(jnp.float32).eps


def test_exact_kl_is_closed_form_and_key_independent(layer_cls):
    model = prior_only_model(layer_cls)
    guide = npvi.MeanFieldGuide(model)
    params = fixed_params()
    expected = closed_form_kl(params["l1.kernel.loc"], sigma_of(params))
    losses = [npvi.ELBO().loss(jax.random.PRNGKey(k), params, model, guide, X) for k in range(5)]
    np.testing.assert_allclose(losses, expected, rtol=1e-6)


def test_default_init_kl_is_about_2_53_nats_per_element():
    model = prior_only_model()
    guide = npvi.MeanFieldGuide(model)
    params = init_params(model, guide, X)
    kl = npvi.ELBO().loss(jax.random.PRNGKey(0), params, model, guide, X)
    # TFP's default posterior against N(0, 1): -log(0.0486) + (0.0486^2 + 0.1^2)/2 - 1/2 = 2.53
    assert abs(float(kl) / 12 - 2.53) < 0.05


@pytest.mark.parametrize("layer_cls", [npvi.DenseLocalReparameterization, npvi.DenseFlipout])
def test_mc_kl_mean_matches_exact_under_every_estimator(layer_cls):
    model = prior_only_model(layer_cls, kernel_kl="mc")
    guide = npvi.MeanFieldGuide(model)
    params = fixed_params()
    exact = closed_form_kl(params["l1.kernel.loc"], sigma_of(params))
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = jax.jit(jax.vmap(lambda k: npvi.ELBO().loss(k, params, model, guide, X)))(keys)
    assert draws.std() > 0  # really Monte Carlo
    se = draws.std() / np.sqrt(len(keys))
    assert abs(float(draws.mean() - exact)) < 5 * float(se), (draws.mean(), exact, se)


def test_callable_kl_gets_posterior_prior_and_the_weight_draw():
    seen = {}

    def divergence(q, p, w):
        seen.update(q=q, p=p, w=w)
        return jnp.sum(w**2)

    model = prior_only_model(npvi.DenseFlipout, kernel_kl=divergence)
    guide = npvi.MeanFieldGuide(model)
    params = fixed_params()
    key = jax.random.PRNGKey(3)
    loss = npvi.ELBO().loss(key, params, model, guide, X)
    _, guide_trace = svi_traces(model, guide, params, key, X)
    w = guide_trace["l1.kernel"]["value"]
    np.testing.assert_allclose(loss, jnp.sum(w**2), rtol=1e-6)
    np.testing.assert_allclose(seen["w"], w)
    np.testing.assert_allclose(seen["q"].base_dist.loc, params["l1.kernel.loc"])
    np.testing.assert_allclose(seen["q"].base_dist.scale, sigma_of(params))
    assert seen["p"].event_shape == (4, 3)
    np.testing.assert_allclose(seen["p"].log_prob(w), dist.Normal(0, 1).log_prob(w).sum(), rtol=1e-6)


def test_loss_is_negative_likelihood_plus_kl(data):
    x, y = data
    model = one_layer_model(npvi.DenseFlipout)
    guide = npvi.MeanFieldGuide(model)
    params = fixed_params()
    key = jax.random.PRNGKey(4)
    model_trace, _ = svi_traces(model, guide, params, key, x, y)
    log_lik = dist.Normal(model_trace["out"]["value"], 1.0).log_prob(y).sum()
    kl = closed_form_kl(params["l1.kernel.loc"], sigma_of(params))
    np.testing.assert_allclose(npvi.ELBO().loss(key, params, model, guide, x, y), kl - log_lik, rtol=1e-5)


def test_bias_kl_choice_is_honoured():
    model = prior_only_model(npvi.DenseFlipout, bias_prior=dist.Normal(0.0, 1.0), bias_kl="exact")
    guide = npvi.MeanFieldGuide(model)
    params = init_params(model, guide, X)
    bias_sigma = jax.nn.softplus(params["l1.bias.untransformed_scale"]) + jnp.finfo(jnp.float32).eps
    expected = closed_form_kl(params["l1.kernel.loc"], sigma_of(params)) + closed_form_kl(
        params["l1.bias.loc"], bias_sigma
    )
    np.testing.assert_allclose(npvi.ELBO().loss(jax.random.PRNGKey(0), params, model, guide, X), expected, rtol=1e-6)


def test_exact_kl_without_closed_form_is_a_type_error():
    model = prior_only_model(npvi.DenseFlipout, kernel_prior=dist.StudentT(3.0, 0.0, 1.0))
    guide = npvi.MeanFieldGuide(model)
    params = init_params(model, guide, X)
    with pytest.raises(TypeError, match=r"layer 'l1'.*StudentT.*kernel_kl='mc'"):
        npvi.ELBO().loss(jax.random.PRNGKey(0), params, model, guide, X)


def test_point_mass_posterior_kl_is_negative_log_prior():
    model = prior_only_model(npvi.DenseReparameterization, kernel_posterior=npvi.PointMass())
    guide = npvi.MeanFieldGuide(model)
    params = init_params(model, guide, X)
    assert "l1.kernel.untransformed_scale" not in params
    expected = -dist.Normal(0, 1).log_prob(params["l1.kernel.loc"]).sum()
    np.testing.assert_allclose(npvi.ELBO().loss(jax.random.PRNGKey(0), params, model, guide, X), expected, rtol=1e-6)


def test_minibatch_scaling_matches_full_batch():
    n, b = 32, 8
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 4))
    y = jax.random.normal(jax.random.PRNGKey(1), (n, 3))

    def model(x, y, subsample_size):
        data = numpyro.plate("data", n, subsample_size=subsample_size)
        with data:
            xb = numpyro.subsample(x, event_dim=1)
            yb = numpyro.subsample(y, event_dim=1)
        out = npvi.DenseReparameterization(3, name="l1")(xb)
        with data:
            numpyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=yb)

    guide = npvi.MeanFieldGuide(model)
    params = fixed_params()
    key = jax.random.PRNGKey(2)  # same key: same guide draw of the weights in every call
    elbo = npvi.ELBO()
    full = elbo.loss(key, params, model, guide, x, y, n)
    batches = jnp.arange(n).reshape(n // b, b)
    minibatch = [
        elbo.loss(key, params, substitute(model, data={"data": idx}), guide, x, y, b) for idx in batches
    ]
    # The N/B likelihood scale makes every minibatch loss unbiased for the full loss...
    np.testing.assert_allclose(np.mean(minibatch), full, rtol=1e-5)
    # ...and the KL of the global weights is counted once per step, never scaled.
    kl = closed_form_kl(params["l1.kernel.loc"], sigma_of(params))
    w = svi_traces(model, guide, params, key, x, y, n)[1]["l1.kernel"]["value"]
    for idx, loss in zip(batches, minibatch, strict=True):
        nll = -dist.Normal(x[idx] @ w + params["l1.bias"], 1.0).log_prob(y[idx]).sum()
        np.testing.assert_allclose(loss, kl + (n / b) * nll, rtol=1e-5)


def test_kl_weight_static_traced_and_by_scale(data):
    x, y = data
    model = one_layer_model(npvi.DenseReparameterization)
    guide = npvi.MeanFieldGuide(model)
    params = fixed_params()
    key = jax.random.PRNGKey(0)
    full = npvi.ELBO().loss(key, params, model, guide, x, y)
    no_kl = npvi.ELBO(kl_weight=0.0).loss(key, params, model, guide, x, y)
    kl = closed_form_kl(params["l1.kernel.loc"], sigma_of(params))
    np.testing.assert_allclose(full - no_kl, kl, rtol=1e-5)
    # A traced weight, as an annealing schedule inside a jitted step would pass it.
    annealed = jax.jit(lambda beta: npvi.ELBO(kl_weight=beta).loss(key, params, model, guide, x, y))
    np.testing.assert_allclose(annealed(0.25), no_kl + 0.25 * kl, rtol=1e-5)
    # handlers.scale around a layer scales its KL (and only what is inside it).
    scaled = numpyro.handlers.scale(prior_only_model(npvi.DenseReparameterization), scale=0.5)
    scaled_loss = npvi.ELBO().loss(key, params, scaled, npvi.MeanFieldGuide(scaled), X)
    np.testing.assert_allclose(scaled_loss, 0.5 * kl, rtol=1e-6)


ELBOS = {
    "npvi": lambda: npvi.ELBO(),
    "npvi-2-vmap": lambda: npvi.ELBO(num_particles=2),
    "npvi-2-map": lambda: npvi.ELBO(num_particles=2, vectorize_particles=False),
    "Trace": lambda: Trace_ELBO(),
    "Trace-2-map": lambda: Trace_ELBO(num_particles=2, vectorize_particles=False),
    "TraceMeanField": lambda: TraceMeanField_ELBO(num_particles=2),
    "TraceGraph": lambda: TraceGraph_ELBO(),
    "Renyi": lambda: RenyiELBO(),
}


@pytest.mark.parametrize("elbo", ELBOS, ids=list(ELBOS))
@pytest.mark.parametrize("estimator", ["local_reparameterization", "flipout"])
def test_effect_is_active_on_every_elbo_training_path(elbo, estimator, data):
    x, y = data
    log = []
    base = one_layer_model(npvi.DenseReparameterization)
    model = EstimatorSpy(getattr(npvi.handlers, estimator)(base), log=log)
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-2), ELBOS[elbo]())
    state = svi.init(jax.random.PRNGKey(0), x, y)
    log.clear()
    step = jax.jit(svi.update)
    for _ in range(3):
        state, loss = step(state, x, y)
    assert np.isfinite(loss)
    assert log and all(entry == ("l1", estimator, True) for entry in log), log


def test_subsampled_plate_with_flipout_trains():
    n, b = 256, 32
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (n,))

    def model(x, y=None):
        data = numpyro.plate("data", n, subsample_size=b)
        with data:
            xb = numpyro.subsample(x, event_dim=1)
            yb = numpyro.subsample(y, event_dim=0)
        mu = npvi.DenseFlipout(1, name="l1")(xb)[..., 0]
        with data:
            numpyro.sample("y", dist.Normal(mu, 0.1), obs=yb)

    guide = npvi.MeanFieldGuide(model)
    result = SVI(model, guide, optax.adam(3e-2), npvi.ELBO()).run(
        jax.random.PRNGKey(2), 1500, x, y, progress_bar=False
    )
    np.testing.assert_allclose(result.params["l1.kernel.loc"][:, 0], [1.0, -2.0, 0.5], atol=0.05)


def test_autonormal_guide_trains_and_warns_about_the_fallback(data):
    x, y = data
    model = one_layer_model(npvi.DenseFlipout)
    with pytest.warns(UserWarning, match="layer 'l1' asks for flipout.*reparameterization"):
        result = SVI(model, AutoNormal(model), optax.adam(1e-2), Trace_ELBO()).run(
            jax.random.PRNGKey(0), 300, x, y, progress_bar=False
        )
    assert result.losses[-50:].mean() < result.losses[:50].mean()
