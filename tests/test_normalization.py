"""Normalisation layers in a converted network (issue 24, item 2): LayerNorm's and BatchNorm's scale and bias
are point estimates unless given a prior, and BatchNorm's running statistics are state, not parameters: an NNX
network keeps them in NumPyro's mutable site ``"<name>$state"``, which SVI (and ``npvi.fit``) update at every
step, as NumPyro's own ``random_nnx_module`` does."""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import quick_xla_context
from flax import nnx
from numpyro.infer import SVI

import npvi


class Normalised(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(3, 16, rngs=rngs)
        self.ln = nnx.LayerNorm(16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)  # running averages over about 10 steps
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.bn(self.ln(self.l1(x)))))[:, 0]


def kernels_only(path, shape):
    return dist.Normal(0.0, 1.0) if path.endswith("kernel") else None


def model_of(module, prior=kernels_only):
    def model(x, y=None, num_data=None):
        mu = npvi.random_nnx_module("net", module, prior)(x)
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)

    return model


@pytest.fixture(scope="module")
def trained():
    module = Normalised(nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (128, 3)) * 2.0 + 1.0
    y = jnp.sin(x[:, 0])
    model = model_of(module)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    with quick_xla_context():
        result = npvi.fit(svi, jax.random.PRNGKey(1), x, y, num_epochs=30, batch_size=32, progress_bar=False)
    return module, model, svi, result, x, y


def test_normalisation_parameters_are_trained_point_estimates(trained):
    module, _, _, result, _, _ = trained
    for path in ("ln.scale", "ln.bias", "bn.scale", "bn.bias"):
        assert f"net/{path}" in result.params and f"net/{path}.loc" not in result.params
    assert not np.allclose(result.params["net/ln.scale"], module.ln.scale[...])  # trained, from the module's start
    assert np.isfinite(result.losses).all() and result.losses[-10:].mean() < 0.3 * result.losses[:10].mean()


def test_batchnorms_running_statistics_are_state_that_fit_updates(trained):
    module, _, _, result, x, _ = trained
    state = result.state.mutable_state["net$state"]["state"]["bn"]
    # The module's own statistics are untouched (it is copied at every call); the state moved away from
    # BatchNorm's start (0, 1), by far more than rounding; the next test shows they are the right statistics.
    np.testing.assert_array_equal(module.bn.mean[...], 0.0)
    assert np.abs(state["mean"]).max() > 0.05 and np.abs(state["var"] - 1.0).max() > 0.05
    assert np.all(np.isfinite(state["mean"])) and np.all(state["var"] > 0)


def test_in_eval_mode_the_trained_running_statistics_predict(trained):
    module, model, svi, result, x, y = trained

    def rmse(state):
        params = {**result.params, **state}
        draws = npvi.Predictive(model, guide=svi.guide, params=params, num_samples=50)(jax.random.PRNGKey(3), x)
        return float(jnp.sqrt(jnp.mean((draws["y"].mean(0) - y) ** 2)))

    with_batch_statistics = rmse({})  # training mode: BatchNorm normalises with the batch's own statistics
    module.eval()  # now with the running statistics
    try:
        trained_statistics, initial_statistics = rmse(result.state.mutable_state), rmse({})
    finally:
        module.train()
    # Measured: RMSE 0.265 with the trained running statistics, 0.262 with the batch's own, 1.02 with
    # BatchNorm's initial (0, 1).
    assert trained_statistics < 1.2 * with_batch_statistics, (trained_statistics, with_batch_statistics)
    assert initial_statistics > 2 * trained_statistics, (initial_statistics, trained_statistics)


def test_a_prior_on_a_normalisation_parameter_makes_it_a_latent():
    model = model_of(Normalised(nnx.Rngs(0)), prior=lambda path, shape: dist.Normal(1.0, 0.1) if path == "ln.scale"
                     else kernels_only(path, shape))  # fmt: skip
    run = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(jnp.ones((4, 3)), jnp.ones(4))
    assert run["net/ln.scale"]["type"] == "sample" and run["net/bn.scale"]["type"] == "param"
    assert run["net$state"]["type"] == "mutable"


def test_linens_batch_stats_are_refused_with_the_reason():
    class LinenBN(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(1)(linen.BatchNorm(use_running_average=False)(x))

    with pytest.raises(ValueError, match=r"variable collections \['batch_stats'\].*does not convert yet"):
        npvi.random_flax_module("net", LinenBN(), dist.Normal(0.0, 1.0), input_shape=(1, 3))
