"""Statistical properties of the three estimators, with fixed keys.

M draws give a standard error of sqrt(var / M) on a mean and sqrt(2 / (M - 1))
on a relative variance (the outputs are Gaussian for all three estimators);
the tolerances below are five standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixed_params, init_params, one_layer_model, svi_traces

import npvi

M = 4000
ESTIMATORS = {
    "reparameterization": npvi.DenseReparameterization,
    "local_reparameterization": npvi.DenseLocalReparameterization,
    "flipout": npvi.DenseFlipout,
}


def draw_outputs(layer_cls, x, params, num=M):
    model = one_layer_model(layer_cls)
    guide = npvi.MeanFieldGuide(model)

    def one(key):
        return svi_traces(model, guide, params, key, x)[0]["out"]["value"]

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(11), num))


@pytest.fixture(scope="module")
def setting():
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 4))
    x = x.at[1].set(x[0])  # rows 0 and 1 are the same example
    params = fixed_params()
    sigma = jax.nn.softplus(params["l1.kernel.untransformed_scale"]) + jnp.finfo(jnp.float32).eps
    mean = x @ params["l1.kernel.loc"] + params["l1.bias"]
    var = (x * x) @ sigma**2
    return x, params, mean, var


@pytest.mark.parametrize("name", ESTIMATORS)
def test_per_example_mean_and_variance(name, setting):
    x, params, mean, var = setting
    out = np.asarray(draw_outputs(ESTIMATORS[name], x, params))
    assert out.shape == (M, 3, 3)
    se_mean = np.sqrt(var / M)
    assert np.all(np.abs(out.mean(0) - mean) < 5 * se_mean), (out.mean(0), mean)
    rel_var = out.var(0, ddof=1) / var
    assert np.all(np.abs(rel_var - 1) < 5 * np.sqrt(2 / (M - 1))), rel_var


@pytest.mark.parametrize("name", ESTIMATORS)
def test_correlation_between_examples(name, setting):
    x, params, _, _ = setting
    out = np.asarray(draw_outputs(ESTIMATORS[name], x, params))
    corr = np.array([np.corrcoef(out[:, 0, j], out[:, 1, j])[0, 1] for j in range(3)])
    if name == "reparameterization":
        # One weight draw per batch: the same example twice gives the same output.
        np.testing.assert_allclose(corr, 1.0, atol=1e-5)
    else:
        # Independent per example: sample correlation ~ N(0, 1/M).
        assert np.all(np.abs(corr) < 5 / np.sqrt(M)), corr


def test_lrt_and_flipout_lower_gradient_variance():
    kx, kw, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (64, 8))
    y = x @ jax.random.normal(kw, (8, 4)) + jax.random.normal(ky, (64, 4))
    total_variance = {}
    for name, cls in ESTIMATORS.items():
        model = one_layer_model(cls, units=4)
        guide = npvi.MeanFieldGuide(model)
        params = init_params(model, guide, x, y)

        def grad_loc(key, model=model, guide=guide, params=params):
            loss = lambda p: npvi.ELBO().loss(key, p, model, guide, x, y)  # noqa: E731
            return jax.grad(loss)(params)["l1.kernel.loc"]

        grads = jax.jit(jax.vmap(grad_loc))(jax.random.split(jax.random.PRNGKey(1), 500))
        total_variance[name] = float(grads.var(0).sum())
    # With 64 independent examples the variance drops by far more than 2x; 500 draws
    # estimate each total variance to a few percent.
    assert total_variance["local_reparameterization"] < 0.5 * total_variance["reparameterization"], total_variance
    assert total_variance["flipout"] < 0.5 * total_variance["reparameterization"], total_variance


def test_rademacher_signs_are_fair_independent_and_shaped():
    a, b = npvi.estimators.rademacher_signs(jax.random.PRNGKey(0), (100, 50), (7,))
    assert a.shape == (100, 50) and b.shape == (7,)
    assert set(np.unique(a).tolist()) == {-1.0, 1.0}
    # 5000 fair signs: the mean has standard error 1 / sqrt(5000) ~ 0.014; five of them.
    assert abs(float(a.mean())) < 5 / np.sqrt(a.size)
    # Neighbouring signs come from neighbouring bits of one word: their products must
    # average 0 too (same standard error), or the packing would correlate them.
    flat = a.reshape(-1)
    assert abs(float(jnp.mean(flat[1:] * flat[:-1]))) < 5 / np.sqrt(a.size - 1)
