"""npvi.ivon: ivon-opt's step, its fixed point on a quadratic, the exact posterior of a linear regression."""

from __future__ import annotations

import math
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import npvi
from npvi.posteriors import inverse_softplus_scale, softplus_scale


def reference_step(mu, h, m, t, noise, grad, *, lr, ess, hess_init, beta1, beta2, weight_decay):
    """ivon-opt's step in NumPy float64 for one Monte Carlo sample; ``grad``: the average loss's at ``mu + noise``."""
    f = noise * grad * (h + weight_decay) * ess
    m = beta1 * m + (1 - beta1) * grad
    h = beta2 * h + (1 - beta2) * f + 0.5 * (1 - beta2) ** 2 * (h - f) ** 2 / (h + weight_decay)
    mu = mu - lr * (hess_init + weight_decay) * (m / (1 - beta1**t) + weight_decay * mu) / (h + weight_decay)
    return mu, h, m


SETTINGS = dict(lr=0.05, ess=100.0, hess_init=0.5, beta1=0.9, beta2=0.99, weight_decay=0.1)


def quadratic_elbo(a, c, n):
    """npvi's loss for ``-log p(y, w) = n * a/2 (w - c)^2`` and a mean-field q: E_q at one draw, minus the entropy."""

    def loss(params, z):
        sigma = softplus_scale(params["w.untransformed_scale"])
        w = params["w.loc"] + sigma * z
        point = params["b"]
        return jnp.sum(n * a / 2 * (w - c) ** 2) - jnp.sum(jnp.log(sigma)) + jnp.sum(n * (point - 1.0) ** 2)

    return loss


@pytest.mark.parametrize(
    "settings",
    [SETTINGS, dict(SETTINGS, weight_decay=0.0), dict(SETTINGS, beta1=0.0, beta2=1.0)],
    ids=["defaults", "no_weight_decay", "no_momentum_fixed_hessian"],
)
def test_the_step_is_ivon_opts_and_a_point_estimate_gets_sgd_with_momentum(settings):
    """Also at ivon-opt's bounds: no weight decay, no momentum, beta2 = 1 (h held at hess_init)."""
    a, c = jnp.array([1.0, 3.0]), jnp.array([0.5, -1.0])
    transform = npvi.ivon(
        settings["lr"], ess=settings["ess"], hess_init=settings["hess_init"], beta1=settings["beta1"],
        beta2=settings["beta2"], weight_decay=settings["weight_decay"],
    )
    h0, wd, ess, beta1 = settings["hess_init"], settings["weight_decay"], settings["ess"], settings["beta1"]
    sigma0 = 1 / math.sqrt(ess * (h0 + wd))
    params = {
        "w.loc": jnp.array([0.2, 0.4]),
        "w.untransformed_scale": jnp.full(2, inverse_softplus_scale(sigma0, jnp.float32), jnp.float32),
        "b": jnp.array([0.0]),
    }
    state = transform.init(params)
    loss = jax.grad(quadratic_elbo(a, c, ess))
    mu, h, m = np.array([0.2, 0.4]), np.full(2, h0), np.zeros(2)
    point, point_m = np.array([0.0]), np.zeros(1)
    for t in range(1, 6):
        z = jax.random.normal(jax.random.PRNGKey(t), (2,))
        sigma = 1 / np.sqrt(ess * (h + wd))
        noise = sigma * np.asarray(z, np.float64)
        mu, h, m = reference_step(mu, h, m, t, noise, np.asarray(a) * (mu + noise - np.asarray(c)), **settings)
        point_m = beta1 * point_m + (1 - beta1) * 2 * (point - 1.0)
        point = point - settings["lr"] * (point_m / (1 - beta1**t) + wd * point)
        updates, state = transform.update(loss(params, z), state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["w.loc"], mu, rtol=2e-5)
        np.testing.assert_allclose(state.hessian["w.loc"], h, rtol=2e-4)
        sigma_after = softplus_scale(params["w.untransformed_scale"])
        np.testing.assert_allclose(sigma_after, 1 / np.sqrt(ess * (h + wd)), rtol=2e-4)
        np.testing.assert_allclose(params["b"], point, rtol=2e-5)
    assert int(state.count) == 5


def test_on_a_quadratic_h_finds_the_curvature_and_the_mean_its_damped_minimum():
    """``-log p = ess a/2 (w - c)^2``: h -> a, mu -> a c / (a + wd), sigma -> 1/sqrt(ess (a + wd)).

    At the fixed point the Price estimate is ``a z (z + d)`` with ``d = (mu - c) / sigma``, of
    mean a and variance ``a^2 (2 + d^2)``; the EMA of h then has a standard deviation of
    ``a sqrt((2 + d^2) (1 - beta2) / (1 + beta2))``, an upper bound for its mean over the last 2000
    steps. Each of 64 independent coordinates is tested to 5 of them, their mean to 5 / sqrt(64).
    """
    ess, wd = 100.0, 0.5
    a = jax.random.uniform(jax.random.PRNGKey(0), (64,), minval=1.0, maxval=4.0)
    c = jax.random.uniform(jax.random.PRNGKey(1), (64,), minval=-2.0, maxval=2.0)
    transform = npvi.ivon(0.05, ess=ess, beta2=0.999, weight_decay=wd)
    u = inverse_softplus_scale(0.1, jnp.float32)
    params = {"w.loc": jnp.zeros(64), "w.untransformed_scale": jnp.full(64, u, jnp.float32)}
    grad = jax.grad(lambda p, z: quadratic_elbo(a, c, ess)({**p, "b": jnp.ones(1)}, z))

    @jax.jit
    def run(params, keys):
        def step(carry, key):
            params, state = carry
            updates, state = transform.update(grad(params, jax.random.normal(key, (64,))), state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (params["w.loc"], state.hessian["w.loc"])

        return jax.lax.scan(step, (params, transform.init(params)), keys)[1]

    locs, hessians = run(params, jax.random.split(jax.random.PRNGKey(2), 8000))
    h = np.asarray(hessians[-2000:]).mean(0) / np.asarray(a)
    posterior_sd = 1 / np.sqrt(ess * (np.asarray(a) + wd))
    d = np.asarray(c * wd / (a + wd)) / posterior_sd
    relative_sd = np.sqrt((2 + d**2) * 0.001 / 1.999)
    assert np.all(np.abs(h - 1) < 5 * relative_sd)
    assert abs(h.mean() - 1) < 5 * relative_sd.mean() / 8
    error = np.asarray(locs[-2000:]).mean(0) - np.asarray(a * c / (a + wd))
    assert np.all(np.abs(error) < 0.25 * posterior_sd)
    undamped = np.asarray(locs[-2000:]).mean(0) - np.asarray(c)  # the test tells the damped minimum from c
    assert np.mean(np.abs(undamped) < 0.25 * posterior_sd) < 0.2


def linear_model(x, y=None, num_data=None):
    mu = npvi.DenseReparameterization(1, use_bias=False, name="l1")(x)[..., 0]
    with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


def test_fit_with_ivon_finds_the_mean_field_posterior_of_a_linear_regression():
    """The kernel's prior is N(0, 1) and the noise 0.5: the posterior precision is Lambda = X'X / 0.25 + I.

    IVON's fixed point with weight decay wd is mu = (Lambda + N wd)^-1 X'y / 0.25 and
    sigma^2 = 1 / (Lambda_ii + N wd), the mean-field optimum of that posterior. With beta2 = 0.999
    the relative standard deviation of h is about sqrt(1 - beta2) = 3 %, so sigma's is 1.6 % and
    the test allows 8 %; the mean's draws spread by a small fraction of sigma, and the test allows
    half of it.
    """
    n = 200
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 3))
    y = x @ jnp.array([1.0, -0.5, 0.25]) + 0.5 * jax.random.normal(jax.random.PRNGKey(1), (n,))
    svi = SVI(linear_model, npvi.MeanFieldGuide(linear_model), npvi.ivon(0.2, ess=n, beta2=0.999), npvi.ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(2), x, y, num_epochs=600, batch_size=20, progress_bar=False)
    xx, wd = np.asarray(x, np.float64), 1e-4
    precision = xx.T @ xx / 0.25 + np.eye(3)
    mean = np.linalg.solve(precision + n * wd * np.eye(3), xx.T @ np.asarray(y, np.float64) / 0.25)
    sigma = 1 / np.sqrt(np.diag(precision) + n * wd)
    learned_sigma = np.asarray(softplus_scale(result.params["l1.kernel.untransformed_scale"]))[:, 0]
    np.testing.assert_allclose(learned_sigma, sigma, rtol=0.08)
    assert np.all(np.abs(np.asarray(result.params["l1.kernel.loc"])[:, 0] - mean) < 0.5 * sigma)


def test_ivon_trains_a_converted_equinox_network_and_its_point_layers(tmp_path):
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 3))
    y = jnp.tanh(x @ jnp.array([[1.0, 0.0], [-1.0, 1.0], [0.5, 0.5]]))
    mlp = eqx.nn.MLP(3, 2, width_size=8, depth=2, key=jax.random.PRNGKey(3))

    def model(x, y=None, num_data=None):
        out = npvi.random_eqx_module("net", mlp, dist.Normal(0.0, 1.0), deterministic=["layers[0]"])(x)
        with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(out, 0.1).to_event(1), obs=y)

    svi = SVI(model, npvi.MeanFieldGuide(model), npvi.ivon(0.01, ess=64, hess_init=10.0, beta2=0.999), npvi.ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(1), x, y, num_epochs=30, batch_size=16, progress_bar=False)
    assert np.all(np.isfinite(result.losses))
    assert result.losses[-8:].mean() < 0.5 * result.losses[:8].mean()
    is_state = lambda node: isinstance(node, npvi.IVONState)  # noqa: E731
    [state] = [node for node in jax.tree.leaves(result.state.optim_state, is_leaf=is_state) if is_state(node)]
    assert "net/layers[2].weight.loc" in state.hessian and "net/layers[0].weight" in state.momentum
    assert "net/layers[0].weight" not in state.hessian
    npvi.save(tmp_path / "run.npz", [], result.params, state=result.state)  # IVON's state is a checkpoint's too
    saved = npvi.load_state(tmp_path / "run.npz", like=result.state).state
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), saved, result.state))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(ess=0.0), ValueError, "ess must be positive"),
        (dict(ess=10.0, beta2=1.5), ValueError, "beta2 must be in [0, 1], got 1.5"),
        (dict(ess=10.0, beta1=1.0), ValueError, "beta1 must be in [0, 1), got 1.0"),
        (dict(ess=10.0, weight_decay=-1e-4), ValueError, "weight_decay must be in [0, inf), got -0.0001"),
        (dict(ess=10.0, hess_init="1"), TypeError, "hess_init must be a number"),
        (dict(ess=math.inf), ValueError, "ess must be positive and finite"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        npvi.ivon(0.1, **kwargs)
