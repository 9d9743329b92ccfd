"""Mixed precision (``npvi.handlers.mixed_precision``): float32 parameters, bfloat16/float16 compute.

What is tested: bfloat16 training reaches the float32 run's loss; the outputs are in the compute
dtype while the params, the optimizer state, the KL terms and the loss stay float32; tiny posterior
scales (whose squares underflow in float16) give no NaN or inf in the loss or its gradient; each
estimator's bfloat16 output is its float32 output within bfloat16's rounding for the same key, and
keeps the weight noise that a rounded kernel would lose; bad compute dtypes raise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import fixed_params, init_params, svi_traces
from numpyro.infer import SVI

import npvi
from npvi.handlers import mixed_precision
from npvi.validation import base_distribution

LOW = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
ESTIMATORS = {
    "reparameterization": npvi.DenseReparameterization,
    "local_reparameterization": npvi.DenseLocalReparameterization,
    "flipout": npvi.DenseFlipout,
}
#: bfloat16's unit roundoff: 8 significand bits, so a rounding is off by at most 2^-8 relative.
BF16_ROUNDOFF = 2.0**-8


def mlp(layer_cls=npvi.DenseFlipout, hidden=16):
    def model(x, y=None):
        h = layer_cls(hidden, activation=jax.nn.tanh, name="l1")(x)
        numpyro.deterministic("h", h)
        mu = layer_cls(1, name="l2")(h)[..., 0]
        numpyro.deterministic("mu", mu)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)

    return model


def regression_data(n=64):
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(kx, (n, 1), minval=-2.0, maxval=2.0)
    return x, jnp.sin(2.0 * x[:, 0]) + 0.1 * jax.random.normal(ky, (n,))


def train(model, x, y, steps=300):
    """Full-batch SVI for ``steps`` steps (one compiled scan); the final params and every step's loss."""
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    state = svi.init(jax.random.PRNGKey(1), x, y)

    def step(state, _):
        return svi.update(state, x, y)

    state, losses = jax.jit(lambda s: jax.lax.scan(step, s, None, length=steps))(state)
    return state, np.asarray(losses)


def test_bfloat16_training_reaches_the_float32_loss(quick_xla):
    x, y = regression_data()
    _, f32 = train(mlp(), x, y)
    state, bf16 = train(mixed_precision(mlp(), compute_dtype=jnp.bfloat16), x, y)
    assert f32.dtype == bf16.dtype == np.float32
    # the params and the optimizer state (Adam's moments) stay float32 through training
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(state.optim_state) if jnp.ndim(leaf) > 0} == {"float32"}
    assert np.all(np.isfinite(bf16))
    assert f32[-100:].mean() < 0.2 * f32[0]  # the run trains: the loss falls from about 1.5e3 to 1.5e2
    # Same key: both runs draw the same weight noise and signs (up to rounding), so their losses
    # differ only through bfloat16's rounding along the trajectory (measured: 0.7% on the mean of
    # the last 100 steps; float16: 0.07%). The per-step loss scatters by about 13% around that mean
    # (the Monte Carlo ELBO), and float32 runs from other keys end 17% and 27% away from it; 3% is
    # about four times the measured difference and a sixth of what another run shows.
    rel = abs(bf16[-100:].mean() - f32[-100:].mean()) / f32[-100:].mean()
    assert rel < 0.03, (bf16[-100:].mean(), f32[-100:].mean())


def abstract(fn, *args):
    """``fn(*args)``'s shapes and dtypes, by abstract evaluation (nothing compiles)."""
    return jax.eval_shape(fn, *args)


@pytest.mark.parametrize("name", LOW)
def test_outputs_in_compute_dtype_params_kl_and_loss_float32(name):
    dtype = LOW[name]
    model = mixed_precision(mlp(), compute_dtype=dtype)
    x, y = regression_data(8)
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())

    def step(key):
        state = svi.init(key, x, y)
        state, loss = svi.update(state, x, y)
        params = svi.get_params(state)
        model_trace, guide_trace = svi_traces(model, guide, params, key, x, y)
        kl = {  # what the KL sees: the guide's q and the layer's prior
            site: npvi.kl_term("l", "kernel_kl", "exact", guide_trace[site]["fn"], model_trace[site]["fn"], None)
            for site in ("l1.kernel", "l2.kernel")
        }
        priors = [base_distribution(model_trace[site]["fn"]) for site in kl]
        scales = [base_distribution(guide_trace[site]["fn"]).scale for site in kl]
        values = {name: model_trace[name]["value"] for name in ("h", "mu")}
        return params, state.optim_state, loss, kl, [(p.loc, p.scale) for p in priors], scales, values, \
            model_trace["y"]["fn"].log_prob(y)  # fmt: skip

    params, optim_state, loss, kl, priors, scales, values, log_likelihood = abstract(step, jax.random.PRNGKey(0))
    assert values["h"].dtype == values["mu"].dtype == dtype  # each layer's output, and so the next one's input
    assert {str(v.dtype) for v in params.values()} == {"float32"}  # the second layer's too (its input is low)
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(optim_state) if leaf.ndim > 0} == {"float32"}
    assert {str(leaf.dtype) for leaf in jax.tree.leaves((kl, priors, scales))} == {"float32"}
    assert loss.dtype == log_likelihood.dtype == jnp.float32  # float32 observations promote the likelihood


def test_innermost_handler_wins_and_float32_last_layer():
    def model(x):
        h = npvi.DenseFlipout(4, name="l1")(x)
        with mixed_precision(compute_dtype=jnp.float32):  # Keras' float32 last layer
            return h, npvi.DenseFlipout(2, name="l2")(h)

    with numpyro.handlers.seed(rng_seed=0), mixed_precision(compute_dtype=jnp.bfloat16):
        h, out = model(jnp.ones((3, 5)))
    assert h.dtype == jnp.bfloat16 and out.dtype == jnp.float32


def low_rank_model(x):
    return npvi.DenseLocalReparameterization(3, kernel_posterior=npvi.LowRankNormal(rank=2), name="l1")(x)


@pytest.mark.parametrize(
    "model, x",
    [
        (lambda x: npvi.Conv2DFlipout(3, 3, name="l1")(x), jnp.ones((2, 5, 5, 2))),
        (lambda x: npvi.Conv2DLocalReparameterization(3, 3, name="l1")(x), jnp.ones((2, 5, 5, 2))),
        (lambda x: npvi.EmbeddingFlipout(7, 3, name="l1")(x), jnp.array([[1, 6, 0]])),
        (lambda x: npvi.EmbeddingLocalReparameterization(7, 3, name="l1")(x), jnp.array([[1, 6, 0]])),
        (low_rank_model, jnp.ones((2, 4))),
    ],
    ids=["conv-flipout", "conv-lrt", "embedding-flipout", "embedding-lrt", "low-rank-lrt"],
)
def test_other_layers_and_families_compute_in_the_compute_dtype(model, x):
    guide = npvi.MeanFieldGuide(model)

    def run(key):
        params = init_params(model, guide, x)
        model_trace, _ = svi_traces(mixed_precision(model, compute_dtype=jnp.bfloat16), guide, params, key, x)
        (message,) = [site for site in model_trace.values() if site["type"] == npvi.handlers.LINEAR_MESSAGE]
        assert message["kwargs"]["kernel_posterior"] is not None  # the estimator ran, not the drawn kernel
        return params, message["value"]

    params, out = abstract(run, jax.random.PRNGKey(0))
    assert out.dtype == jnp.bfloat16
    assert {str(v.dtype) for v in params.values()} == {"float32"}


def three_estimators(x, y=None):
    """One layer of each estimator, in a row (so one program tests all three)."""
    h = npvi.DenseLocalReparameterization(8, activation=jax.nn.tanh, name="lrt")(x)
    h = npvi.DenseFlipout(8, activation=jax.nn.tanh, name="flipout")(h)
    mu = npvi.DenseReparameterization(1, name="reparameterization")(h)[..., 0]
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)


@pytest.mark.parametrize("name", LOW)
def test_no_nan_or_inf_with_tiny_scales(name, quick_xla):
    model = mixed_precision(three_estimators, compute_dtype=LOW[name])
    x, y = regression_data(16)
    guide = npvi.MeanFieldGuide(model)
    elbo = npvi.ELBO()
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p: elbo.loss(jax.random.PRNGKey(3), p, model, guide, x, y)))
    initial = init_params(model, guide, x, y)
    # u = -14: sigma = softplus(u) + eps_32 = 9.5e-7, and u = -40: sigma = eps_32 = 1.2e-7, the smallest.
    # Their squares (9e-13, 1.4e-14) are 0 in float16 (below 2^-25): local reparameterization's
    # variance is then exactly 0, where a plain sqrt has the gradient inf * 0 = NaN.
    for untransformed_scale in (-14.0, -40.0):
        sigma = jax.nn.softplus(untransformed_scale) + jnp.finfo(jnp.float32).eps
        assert name != "float16" or jnp.float16(sigma**2) == 0
        params = {
            site: jnp.full_like(value, untransformed_scale) if site.endswith("untransformed_scale") else value
            for site, value in initial.items()
        }
        loss, grads = loss_and_grad(params)
        assert loss.dtype == jnp.float32 and np.isfinite(loss), loss
        for site, grad in grads.items():
            assert grad.dtype == jnp.float32 and np.all(np.isfinite(grad)), (site, grad)


def side_by_side(x):
    """One layer of each estimator on the same input, each output a deterministic site ``"<estimator>.out"``."""
    for estimator, layer_cls in ESTIMATORS.items():
        numpyro.deterministic(f"{estimator}.out", layer_cls(3, name=estimator)(x))


def side_by_side_params(loc, untransformed_scale, bias):
    return {
        f"{name}.{param}": value
        for name in ESTIMATORS
        for param, value in (("kernel.loc", loc), ("kernel.untransformed_scale", untransformed_scale), ("bias", bias))
    }


def outputs(x, params, keys, dtype=None):
    """Each estimator's output for each key, and the kernel each key drew (the reparameterization's ``W``)."""
    guide = npvi.MeanFieldGuide(side_by_side)
    run = side_by_side if dtype is None else mixed_precision(side_by_side, compute_dtype=dtype)

    def one(key):
        model_trace, guide_trace = svi_traces(run, guide, params, key, x)
        return {name: (model_trace[f"{name}.out"]["value"], guide_trace[f"{name}.kernel"]["value"])
                for name in ESTIMATORS}  # fmt: skip

    return jax.jit(jax.vmap(one))(keys)


def test_bfloat16_output_is_the_float32_output_rounded(quick_xla):
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 4))
    fixed = fixed_params()  # loc ~ N(0, 0.5^2), scale 0.31
    loc, bias = fixed["l1.kernel.loc"], fixed["l1.bias"]
    params = side_by_side_params(loc, fixed["l1.kernel.untransformed_scale"], bias)
    keys = jax.random.split(jax.random.PRNGKey(11), 64)
    f32, bf16 = outputs(x, params, keys), outputs(x, params, keys, jnp.bfloat16)
    mean = x @ loc + bias
    for estimator in ESTIMATORS:
        (out32, kernel), (out16, _) = f32[estimator], bf16[estimator]
        assert out16.dtype == jnp.bfloat16 and out32.dtype == jnp.float32
        # Same key, same draws (the noise is drawn in float32, the signs are bits), so the difference
        # is rounding: x, mu, W - mu (or W), sigma^2 and the noise are each rounded once (2^-8
        # relative), the products summed in float32, the output rounded once more: each output
        # element is off by a few roundings of the magnitude of the terms it sums. Bound: 4 roundings
        # of |x| @ |mu| + |x| @ |W - mu| + |b| + |out - (x @ mu + b)| (the noise term, whatever its form).
        magnitude = jnp.abs(x) @ jnp.abs(loc) + jnp.einsum("ni,kij->knj", jnp.abs(x), jnp.abs(kernel - loc))
        magnitude = magnitude + jnp.abs(bias) + jnp.abs(out32 - mean)
        relative = jnp.abs(out16.astype(jnp.float32) - out32) / magnitude
        assert float(jnp.max(relative)) <= 4 * BF16_ROUNDOFF, (estimator, float(jnp.max(relative)))
        assert float(jnp.max(relative)) > 0, estimator  # bfloat16 did round: two computations are compared


def test_bfloat16_keeps_weight_noise_below_its_rounding_of_the_loc(quick_xla):
    # |mu| = 1 and sigma = 1e-3: the noise sigma * eps is below half a bfloat16 unit in the last place
    # of mu (2^-8) unless |eps| > 3.9, so bf16(W) - bf16(mu) would be 0 for almost every draw. The
    # signs of mu cancel, x @ mu = 0, so the output holds the noise alone. Formed in float32 and
    # rounded once (Flipout's W - mu), or as sigma^2 (LRT), the noise keeps its variance x^2 @ sigma^2.
    # The variance across M draws has a relative standard error of sqrt(2 / (M - 1)) = 0.032
    # (Gaussian outputs); the tolerance is five of them. (Reparameterization rounds W itself, so
    # there the noise is lost in the forward pass: the handler's docstring says so.)
    x = jnp.ones((2, 4))
    loc = jnp.array([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    sigma = 1e-3
    untransformed = jnp.full((4, 3), np.log(np.expm1(sigma - np.finfo(np.float32).eps)), jnp.float32)
    m = 2000
    out = outputs(x, side_by_side_params(loc, untransformed, jnp.zeros(3)), jax.random.split(jax.random.PRNGKey(5), m),
                  jnp.bfloat16)  # fmt: skip
    for estimator in ("local_reparameterization", "flipout"):
        rel_var = np.var(np.asarray(out[estimator][0], np.float64), axis=0, ddof=1) / (4 * sigma**2)
        assert np.all(np.abs(rel_var - 1) < 5 * np.sqrt(2 / (m - 1))), (estimator, rel_var)


@pytest.mark.parametrize(
    "compute_dtype, error, seen",
    [
        (jnp.int32, TypeError, "got int32"),
        (jnp.complex64, TypeError, "got complex64"),
        ("float8", TypeError, "got 'float8'"),
        ("not a dtype", TypeError, "got 'not a dtype'"),
        (None, TypeError, "got None"),
        (jnp.float8_e4m3fn, ValueError, "compute_dtype float8_e4m3fn is too narrow"),
    ],
)
def test_bad_compute_dtype(compute_dtype, error, seen):
    with pytest.raises(error) as raised:
        mixed_precision(compute_dtype=compute_dtype)
    message = str(raised.value)
    assert message.startswith("npvi.handlers.mixed_precision: ")
    assert "bfloat16, float16, float32, float64" in message and seen in message, message


def test_compute_dtype_must_be_given_by_keyword():
    with pytest.raises(TypeError, match=r"mixed_precision: compute_dtype= must be given by keyword.*got only <class"):
        mixed_precision(jnp.bfloat16)


def test_strings_and_wrapped_models():
    assert mixed_precision(compute_dtype="bfloat16").compute_dtype == jnp.bfloat16
    model = mixed_precision(side_by_side, compute_dtype="float16")
    trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(jnp.ones((2, 4)))
    assert {str(trace[f"{name}.out"]["value"].dtype) for name in ESTIMATORS} == {"float16"}


def test_the_products_run_in_the_compute_dtype():
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 4))
    fixed = fixed_params()
    params = side_by_side_params(fixed["l1.kernel.loc"], fixed["l1.kernel.untransformed_scale"], fixed["l1.bias"])
    guide = npvi.MeanFieldGuide(side_by_side)
    model = mixed_precision(side_by_side, compute_dtype=jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda key: svi_traces(model, guide, params, key, x)[0]["flipout.out"]["value"])(
        jax.random.PRNGKey(0)
    )
    products = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "dot_general"]
    assert len(products) == 5  # LRT's mean and variance, Flipout's mean and perturbation, reparameterization
    assert all(str(var.aval.dtype) == "bfloat16" for eqn in products for var in eqn.invars), products


def test_float16_kernel_gradients_above_its_range_stay_finite(quick_xla):
    # N / B = 5e5 / 64 scales the likelihood: each example's cotangent of the output is about 2e4,
    # within float16's range (65504), but the last kernel's gradient, their sum over the batch times
    # the hidden units, is above it: without the per-op cotangent scaling it is inf.
    def model(x, y=None):
        h = npvi.DenseReparameterization(8, activation=jax.nn.relu, name="l1")(x)
        mu = npvi.DenseReparameterization(1, name="l2")(h)[..., 0]
        with numpyro.plate("data", 5 * 10**5, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    x, y = regression_data(64)
    y = y + 3.0  # the residuals y - mu share a sign, so their sum over the batch does not cancel
    guide = npvi.MeanFieldGuide(model)
    params = init_params(model, guide, x, y)
    elbo = npvi.ELBO()

    def grads(run):
        return jax.jit(jax.grad(lambda p: elbo.loss(jax.random.PRNGKey(3), p, run, guide, x, y)))(params)

    f32, f16 = grads(model), grads(mixed_precision(model, compute_dtype=jnp.float16))
    assert float(jnp.max(jnp.abs(f32["l2.kernel.loc"]))) > 65504
    for site in f32:
        assert np.all(np.isfinite(f16[site])), site
        # float16 rounds x, W and the cotangent (2^-11 each) and the hidden layer's output: a few
        # 2^-11 relative, measured against the gradient's largest element (sums cancel)
        scale = float(jnp.max(jnp.abs(f32[site])))
        np.testing.assert_allclose(f16[site], f32[site], atol=2**-6 * scale, err_msg=site)
