"""Smoke test of the benchmark's steps (never a timing): the hand-written plain-JAX
step computes exactly npvi's objective and update from the same params and keys."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import conv_steps  # noqa: E402
import steps  # noqa: E402
import transformer  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

import npvi  # noqa: E402

PROBLEM = steps.Problem(sizes=(12, 8, 8, 3), batch=6, n=60)


@pytest.fixture(scope="module")
def data():
    return PROBLEM.batch_data(seed=2)


@pytest.mark.parametrize("estimator", list(steps.ESTIMATORS))
def test_plain_loss_equals_npvi_loss(estimator, data):
    x, y = data
    svi, state = steps.npvi_svi(PROBLEM, estimator, x, y)
    params = svi.get_params(state)
    plain = steps.params_from_npvi(PROBLEM, params)
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        expected = npvi.ELBO().loss(key, params, svi.model, svi.guide, x, y)
        got = steps.plain_loss(PROBLEM, estimator)(plain, key, x, y)
        # Same draws, same formulas: only float32 rounding differs.
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The loss is random through the draws (not a constant that would match trivially).
    other = steps.plain_loss(PROBLEM, estimator)(plain, jax.random.PRNGKey(9), x, y)
    assert abs(float(other) - float(got)) > 1e-3


@pytest.mark.parametrize("estimator", list(steps.ESTIMATORS))
def test_plain_step_equals_npvi_step(estimator, data):
    x, y = data
    npvi_v, svi, state = steps.npvi_step(PROBLEM, estimator, x, y)
    plain_v = steps.plain_step(PROBLEM, estimator, svi, state, x, y)
    for _ in range(3):
        npvi_v.run(1)
        plain_v.run(1)
        np.testing.assert_allclose(plain_v.loss(), npvi_v.loss(), rtol=1e-5)
    got = plain_v.carry[0]
    want = steps.params_from_npvi(PROBLEM, svi.get_params(npvi_v.carry[0]))
    for name in PROBLEM.names:
        for part in ("loc", "u", "bias"):
            np.testing.assert_allclose(got[name][part], want[name][part], rtol=1e-5, atol=1e-6)


def test_deterministic_step_runs(data):
    x, y = data
    v = steps.deterministic_step(PROBLEM, x, y)
    first = (v.run(1), v.loss())[1]
    v.run(20)
    assert np.isfinite(v.loss()) and v.loss() < first


CONV_PROBLEM = conv_steps.ConvProblem(image=(8, 8, 1), filters=(2, 3), kernel=3, dense=(5, 4, 3), batch=4, n=400)


@pytest.mark.usefixtures("quick_xla")
@pytest.mark.parametrize("estimator", ["flipout", "local_reparameterization"])
def test_plain_conv_loss_equals_npvi_loss(estimator):
    """The CNN of bench/conv.py (tiny shapes): the plain-JAX loss is npvi's, draw for draw.

    The two estimators whose convolution differs from the dense case (per-channel signs; the
    variance convolution); the reparameterization step shares everything else with them. Each
    case compiles three small CNN programs, which the suite's time budget counts.
    """
    x, y = CONV_PROBLEM.batch_data(seed=2)
    model = conv_steps.npvi_model(CONV_PROBLEM, estimator)
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-3), npvi.ELBO())
    params = svi.get_params(jax.jit(svi.init)(jax.random.PRNGKey(0), x, y))
    plain = conv_steps.params_from_npvi(CONV_PROBLEM, params)
    npvi_loss = jax.jit(lambda key: npvi.ELBO().loss(key, params, model, guide, x, y))
    plain_loss = jax.jit(lambda key: conv_steps.plain_loss(CONV_PROBLEM, estimator)(plain, key, x, y))
    losses = []
    for key in jax.random.split(jax.random.PRNGKey(0), 2):
        losses.append(plain_loss(key))
        np.testing.assert_allclose(losses[-1], npvi_loss(key), rtol=1e-5)
    assert abs(float(losses[1]) - float(losses[0])) > 1e-2  # random through the draws, not a constant


TRANSFORMER_PROBLEM = transformer.BlockProblem(
    vocab=30, length=5, features=8, heads=2, mlp=12, classes=3, batch=4, n=40
)


@pytest.mark.usefixtures("quick_xla")
def test_plain_transformer_loss_equals_npvi_loss():
    """bench/transformer.py's hand-written Flipout block computes npvi's loss of the converted Flax block.

    Draw for draw: the same keys give the same numbers.

    The log-likelihood alone (``kl_weight=0``) is compared too: the KL, the same closed form on both sides,
    is most of the loss and would hide a likelihood computed from other draws. The params are drawn with
    NumPy (any params do), so the only program compiled is the losses', one trace of npvi's ELBO mapped
    over the two KL weights.
    """
    ids, y = TRANSFORMER_PROBLEM.batch_data(seed=2)
    svi, params = transformer.random_params(TRANSFORMER_PROBLEM, ids, y)
    plain = transformer.params_from_npvi(params)

    @jax.jit
    def losses(key):
        def npvi_loss(kl_weight):
            return npvi.ELBO(kl_weight=kl_weight).loss(key, params, svi.model, svi.guide, ids, y)

        full, likelihood = jax.vmap(npvi_loss)(jnp.array([1.0, 0.0]))
        plain_loss = transformer.plain_loss(TRANSFORMER_PROBLEM)(plain, key, ids, y)
        return (plain_loss, plain_loss - steps.plain_kl(plain["layers"])), (full, likelihood)

    likelihoods = []
    for key in jax.random.split(jax.random.PRNGKey(0), 2):
        got, want = losses(key)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
        likelihoods.append(float(got[1]))
    assert abs(likelihoods[1] - likelihoods[0]) > 1e-2  # random through the draws, not a constant
