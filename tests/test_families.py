"""Posterior families beyond the mean field (npvi.families) and the priors of npvi.priors.

Statistical checks use fixed keys and tolerances of five standard errors of the
estimate at the sample size drawn.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import npvi
from npvi.linear_ops import DENSE
from npvi.validation import broadcast_to_event

N_DRAWS = 20_000
#: Most of these tests' time is compiling short programs; see conftest's quick_xla.
pytestmark = pytest.mark.usefixtures("quick_xla")


def low_rank_q(seed=0, shape=(3, 2), rank=2):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return npvi.LowRankNormalWeights(
        jax.random.normal(k1, shape), 0.3 + jax.random.uniform(k2, shape), 0.5 * jax.random.normal(k3, (*shape, rank))
    )


def matrix_q(seed=0, shape=(3, 2)):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    row = jnp.tril(0.4 * jax.random.normal(k2, (shape[0],) * 2), -1) + jnp.diag(jnp.array([0.9, 0.6, 1.2]))
    column = jnp.array([[0.7, 0.0], [-0.5, 0.4]])
    return dist.MatrixNormal(jax.random.normal(k1, shape), row, column)


def flat_gaussian(q):
    """``(mean, covariance)`` of ``vec W`` (row-major), the family's closed form."""
    if isinstance(q, npvi.LowRankNormalWeights):
        v = q.cov_factor.reshape(-1, q.rank)
        return q.loc.reshape(-1), jnp.diag(q.scale.reshape(-1) ** 2) + v @ v.T
    u = q.scale_tril_row @ q.scale_tril_row.T
    v = q.scale_tril_column @ q.scale_tril_column.T
    return q.loc.reshape(-1), jnp.kron(u, v)  # row-major vec: index i * columns + j


def covariance_tolerance(cov, n):
    """Five standard errors of each entry of a sample covariance of ``n`` Gaussian draws."""
    var = np.diag(cov)
    return 5 * np.sqrt((np.outer(var, var) + cov**2) / n)


@pytest.mark.parametrize("make_q", [low_rank_q, matrix_q], ids=["low_rank", "matrix"])
def test_samples_have_the_closed_form_moments_and_log_density(make_q):
    q = make_q()
    mean, cov = map(np.asarray, flat_gaussian(q))
    draws = np.asarray(q.sample(jax.random.PRNGKey(1), (N_DRAWS,))).reshape(N_DRAWS, -1)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / N_DRAWS))
    assert np.all(np.abs(np.cov(draws, rowvar=False) - cov) < covariance_tolerance(cov, N_DRAWS))
    reference = dist.MultivariateNormal(mean, cov)
    np.testing.assert_allclose(q.log_prob(draws[:5].reshape(5, *q.event_shape)), reference.log_prob(draws[:5]),
                               rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("make_q", [low_rank_q, matrix_q], ids=["low_rank", "matrix"])
def test_kl_to_an_independent_normal_prior_is_numpyros_multivariate_closed_form(make_q):
    q = make_q()
    prior = broadcast_to_event("l1", "kernel_prior", dist.Normal(0.3, jnp.array([0.5, 2.0])), q.event_shape)
    mean, cov = flat_gaussian(q)
    prior_mean = jnp.full(mean.shape, 0.3)
    prior_cov = jnp.diag(jnp.tile(jnp.array([0.25, 4.0]), mean.size // 2))
    expected = dist.kl_divergence(dist.MultivariateNormal(mean, cov), dist.MultivariateNormal(prior_mean, prior_cov))
    np.testing.assert_allclose(dist.kl_divergence(q, prior), expected, rtol=1e-5)
    with pytest.raises(TypeError, match=r"KL\(.* \|\| Laplace\).*use kernel_kl='mc'"):
        npvi.kl_term("l1", "kernel_kl", "exact", q, dist.Laplace(0.0, 1.0).expand(q.event_shape).to_event(2), None)


@pytest.mark.parametrize(
    ("family", "make_q"), [(npvi.LowRankNormal(rank=2), low_rank_q), (npvi.MatrixVariateNormal(), matrix_q)],
    ids=["low_rank", "matrix"],
)  # fmt: skip
def test_local_reparameterization_draws_each_examples_exact_preactivations(family, make_q):
    q = make_q()
    x = jnp.array([[1.0, -0.5, 2.0], [0.3, 1.5, -1.0], [0.0, 0.0, 0.0]])
    keys = jax.random.split(jax.random.PRNGKey(2), N_DRAWS)
    out = np.asarray(jax.vmap(lambda k: family.local_reparameterization(q, k, x, None, DENSE))(keys))
    mean, cov = map(np.asarray, flat_gaussian(q))
    units = q.event_shape[1]
    for n in range(2):
        jacobian = np.kron(np.asarray(x[n])[None, :], np.eye(units))  # b = J vec W (row-major vec)
        exact = jacobian @ cov @ jacobian.T
        np.testing.assert_allclose(out[:, n].mean(0), jacobian @ mean, atol=5 * np.sqrt(np.diag(exact).max() / N_DRAWS))
        assert np.all(np.abs(np.cov(out[:, n], rowvar=False) - exact) < covariance_tolerance(exact, N_DRAWS))
    cross = np.corrcoef(out[:, 0, 0], out[:, 1, 0])[0, 1]
    assert abs(cross) < 5 / np.sqrt(N_DRAWS)  # examples independent, unlike one shared weight draw
    np.testing.assert_allclose(out[:, 2], 0.0)  # a zero input row: exactly zero, no NaN


def regression(n=40, seed=0):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    base = jax.random.normal(kx, (n, 1))
    x = jnp.concatenate([base, base + 0.3 * jax.random.normal(ky, (n, 1)), jnp.ones((n, 1))], axis=1)
    y = x @ jnp.array([1.0, -0.5, 0.2]) + 0.5 * jax.random.normal(jax.random.PRNGKey(seed + 1), (n,))
    return x, y


def linear_model(layer):
    def model(x, y=None):
        mu = layer(x)[..., 0]
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)

    return model


@pytest.mark.parametrize(
    "family", [npvi.MatrixVariateNormal(), npvi.LowRankNormal(rank=3)], ids=["matrix", "low_rank"]
)
def test_a_full_rank_family_recovers_a_linear_regressions_exact_correlated_posterior(family):
    """With correlated features the exact posterior's correlations are strong; a full-rank family reaches them."""
    x, y = regression()
    layer = npvi.DenseLocalReparameterization(1, use_bias=False, kernel_posterior=family, name="l1")
    model = linear_model(layer)
    precision = np.eye(3) + np.asarray(x.T @ x) / 0.25
    exact_cov = np.linalg.inv(precision)
    exact_mean = exact_cov @ np.asarray(x.T @ y) / 0.25
    schedule = optax.exponential_decay(0.05, 3000, 0.01)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(schedule), npvi.ELBO(num_particles=8))
    result = svi.run(jax.random.PRNGKey(3), 3000, x, y, progress_bar=False)
    with numpyro.handlers.substitute(data=result.params):
        q = family("l1.kernel", (3, 1), jnp.float32)
    mean, cov = map(np.asarray, flat_gaussian(q))
    exact_sd = np.sqrt(np.diag(exact_cov))
    assert np.all(np.abs(mean - exact_mean) < 0.2 * exact_sd)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), exact_sd, rtol=0.1)
    sd = np.sqrt(np.diag(cov))
    corr, exact_corr = cov / np.outer(sd, sd), exact_cov / np.outer(exact_sd, exact_sd)
    assert abs(exact_corr[0, 1]) > 0.8  # far from what a mean field could give
    np.testing.assert_allclose(corr, exact_corr, atol=0.05)


@pytest.mark.parametrize("family", [npvi.LowRankNormal(), npvi.MatrixVariateNormal()], ids=["low_rank", "matrix"])
def test_flipout_refuses_a_correlated_family_naming_the_layer(family):
    x, y = regression(8)
    model = linear_model(npvi.DenseFlipout(1, kernel_posterior=family, name="l1"))
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    with pytest.raises(TypeError, match=rf"layer 'l1': the flipout estimator .*{type(family).__name__} supports "
                                        r"\['reparameterization', 'local_reparameterization'\]"):  # fmt: skip
        svi.init(jax.random.PRNGKey(0), x, y)


def test_matrix_variate_needs_a_dense_kernel_and_the_families_round_trip_through_a_config():
    layer = npvi.Conv2DReparameterization(2, 3, kernel_posterior=npvi.MatrixVariateNormal(), name="c1")
    with pytest.raises(ValueError, match=r"MatrixVariateNormal: 'c1.kernel' has shape \(3, 3, 1, 2\).*2-D"):
        with numpyro.handlers.seed(rng_seed=0):
            npvi.MeanFieldGuide(lambda x: layer(x))(jnp.ones((1, 5, 5, 1)))
    for family in (npvi.LowRankNormal(rank=4, cov_factor_stddev=0.02), npvi.MatrixVariateNormal(init_scale=0.1)):
        dense = npvi.DenseLocalReparameterization(2, kernel_posterior=family, name="d")
        assert npvi.DenseLocalReparameterization.from_config(dense.get_config()).kernel_posterior == family
    with pytest.raises(ValueError, match="LowRankNormal: rank must be a positive int, got 0"):
        npvi.LowRankNormal(rank=0)
    with pytest.raises(TypeError, match="layer 'd': kernel_posterior must be a posterior family.*got str"):
        npvi.DenseFlipout(2, kernel_posterior="low_rank", name="d")


def test_a_convolution_takes_a_low_rank_posterior_under_local_reparameterization():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 2))
    layer = npvi.Conv2DLocalReparameterization(3, 3, kernel_posterior=npvi.LowRankNormal(rank=2), name="c")

    def model(x, y=None):
        mu = layer(x).mean(axis=(1, 2, 3))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    state = jax.jit(svi.init)(jax.random.PRNGKey(1), x, jnp.ones(4))
    assert svi.get_params(state)["c.kernel.cov_factor"].shape == (3, 3, 2, 3, 2)
    assert np.isfinite(jax.jit(svi.evaluate)(state, x, jnp.ones(4)))


def test_scale_mixture_prior_needs_the_monte_carlo_kl_and_trains_with_it():
    x, y = regression(16)
    prior = npvi.scale_mixture_prior(0.25, 1.0, float(np.exp(-6)))
    w = jnp.array([-1.0, 0.0, 0.3])
    normal = jax.scipy.stats.norm.pdf
    np.testing.assert_allclose(prior.log_prob(w), np.log(0.25 * normal(w) + 0.75 * normal(w, 0, np.exp(-6))),
                               rtol=1e-5)  # fmt: skip
    exact = linear_model(npvi.DenseFlipout(1, kernel_prior=prior, name="l1"))
    svi = SVI(exact, npvi.MeanFieldGuide(exact), optax.adam(1e-2), npvi.ELBO())
    state = svi.init(jax.random.PRNGKey(0), x, y)
    with pytest.raises(TypeError, match=r"layer 'l1': kernel_kl='exact' needs a closed-form KL\(Normal \|\| "
                                        r"MixtureSameFamily\).*use kernel_kl='mc'"):  # fmt: skip
        svi.evaluate(state, x, y)
    model = linear_model(npvi.DenseFlipout(1, kernel_prior=prior, kernel_kl="mc", name="l1"))
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    result = svi.run(jax.random.PRNGKey(0), 500, x, y, progress_bar=False)
    assert np.all(np.isfinite(result.losses)) and result.losses[-50:].mean() < result.losses[:10].mean() - 5
    residual = y - x @ result.params["l1.kernel.loc"][:, 0] - result.params["l1.bias"]
    assert np.mean(residual**2) < 0.5 * np.var(y)


def test_type_two_maximum_likelihood_sets_each_units_prior_variance_to_its_posterior_second_moment():
    """With an exact KL the ELBO's gradient in s is deterministic and 0 at s^2 = mean(mu^2 + sigma^2) per unit."""
    x, y = regression(8)
    model = linear_model(npvi.DenseReparameterization(2, kernel_prior=npvi.learned_normal_prior("unit"), name="l1"))
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), x, y))
    assert params["l1.kernel.prior_scale"].shape == (2,)
    with pytest.raises(ValueError, match="learned_normal_prior: per must be 'layer' or 'unit', got 'row'"):
        npvi.learned_normal_prior("row")
    sigma = npvi.posteriors.softplus_scale(params["l1.kernel.untransformed_scale"])
    best = jnp.sqrt(jnp.mean(params["l1.kernel.loc"] ** 2 + sigma**2, axis=0))

    def loss(scale):
        return npvi.ELBO().loss(jax.random.PRNGKey(1), {**params, "l1.kernel.prior_scale": scale}, model, guide, x, y)

    np.testing.assert_allclose(jax.grad(loss)(best), 0.0, atol=1e-4)
    assert np.all(jax.grad(loss)(2 * best) > 0) and np.all(jax.grad(loss)(0.5 * best) < 0)


@pytest.mark.parametrize(
    ("prior", "latents"),
    [
        (npvi.hierarchical_normal_prior(per="unit"), {"l1.kernel.prior_scale": (2,)}),
        (npvi.horseshoe_prior(0.5), {"l1.kernel.global_scale": (), "l1.kernel.local_scale": (2,)}),
    ],
    ids=["hierarchical", "horseshoe"],
)
def test_hierarchical_priors_get_a_posterior_on_their_scales_and_an_exact_weight_kl(prior, latents):
    x, y = regression(16)
    model = linear_model(npvi.DenseFlipout(2, kernel_prior=prior, name="l1"))
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    result = svi.run(jax.random.PRNGKey(0), 200, x, y, progress_bar=False)
    assert {latent.name: latent.shape for latent in guide.sites.latents} == latents
    assert all(f"{name}.loc" in result.params for name in latents)
    assert np.all(np.isfinite(result.losses)) and result.losses[-20:].mean() < result.losses[:20].mean()


@pytest.mark.parametrize(
    ("family", "part"), [(npvi.LowRankNormal(), "cov_factor"), (npvi.MatrixVariateNormal(), "column_scale_tril")],
    ids=["low_rank", "matrix"],
)  # fmt: skip
def test_ivon_refuses_a_correlated_family_naming_the_site(family, part):
    x, y = regression(8)
    model = linear_model(npvi.DenseLocalReparameterization(1, kernel_posterior=family, name="l1"))
    svi = SVI(model, npvi.MeanFieldGuide(model), npvi.ivon(1e-3, ess=8), npvi.ELBO())
    with pytest.raises(ValueError, match=rf"npvi.ivon: 'l1.kernel' has a correlated posterior \(its '{part}' param\)"):
        svi.init(jax.random.PRNGKey(0), x, y)
