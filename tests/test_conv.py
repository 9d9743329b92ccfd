"""Convolutional layers: exact agreement with lax.conv, the estimators' statistics, errors, configs.

Statistical tests use M draws with fixed keys; a mean has standard error
sqrt(var / M), a relative variance sqrt(2 / (M - 1)) (the outputs are Gaussian
given the input), a correlation about (1 - rho^2) / sqrt(M). Tolerances are five
standard errors.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import EstimatorSpy, init_params, svi_traces
from numpyro.handlers import seed, substitute

import npvi
from npvi import estimators
from npvi.demo import load_split
from npvi.linear_ops import Convolution

CONV = {
    (rank, estimator): getattr(npvi, f"Conv{rank}D{estimator}")
    for rank in (1, 2, 3)
    for estimator in ("Reparameterization", "Flipout", "LocalReparameterization")
}
M = 4000


def reference_conv(x, kernel, strides, padding, dilation, channels_last):
    """lax.conv with channels-last dimension numbers; channels-first inputs are transposed around it."""
    rank = kernel.ndim - 2
    if not channels_last:
        x = jnp.moveaxis(x, 1, -1)
    spatial = "DHW"[-rank:] if rank > 1 else "W"
    out = jax.lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
    )  # fmt: skip
    return out if channels_last else jnp.moveaxis(out, -1, 1)


CASES = [
    # rank, padding, data_format, strides, dilation
    (1, "valid", "channels_last", 1, 1),
    (1, "same", "channels_first", 2, 1),
    (2, "VALID", "channels_first", 1, 2),
    (2, "SAME", "channels_last", 2, 1),
    (2, "same", "channels_last", 1, 2),
    (3, "valid", "channels_last", 2, 1),
    (3, "same", "channels_first", 1, 1),
]


@pytest.mark.parametrize(("rank", "padding", "data_format", "strides", "dilation"), CASES)
def test_a_fixed_kernel_gives_lax_conv(rank, padding, data_format, strides, dilation):
    """Outside SVI every layer uses the drawn kernel: substituting one gives lax.conv + bias."""
    kx, kk, kb = jax.random.split(jax.random.PRNGKey(rank), 3)
    spatial = (7,) * rank
    x_shape = (2, *spatial, 3) if data_format == "channels_last" else (2, 3, *spatial)
    x = jax.random.normal(kx, x_shape)
    kernel = jax.random.normal(kk, (3,) * rank + (3, 4))
    bias = jax.random.normal(kb, (4,))
    layers = [
        CONV[rank, estimator](
            4, 3, strides=strides, padding=padding, data_format=data_format, dilation_rate=dilation, name="c"
        )
        for estimator in ("Reparameterization", "Flipout", "LocalReparameterization")
    ]

    @jax.jit
    def outputs(x, kernel, bias):
        with seed(rng_seed=0), substitute(data={"c.kernel": kernel, "c.bias": bias}):
            return [layer(x) for layer in layers]

    expected = reference_conv(x, kernel, (strides,) * rank, padding.upper(), (dilation,) * rank,
                              data_format == "channels_last")  # fmt: skip
    expected = expected + (bias if data_format == "channels_last" else bias.reshape((4,) + (1,) * rank))
    for layer, out in zip(layers, outputs(x, kernel, bias), strict=True):
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, err_msg=type(layer).__name__)


def one_conv_model(layer_cls, **kwargs):
    def model(x):
        numpyro.deterministic("out", layer_cls(2, 3, padding="SAME", name="c", **kwargs)(x))

    return model


@pytest.fixture(scope="module")
def conv_setting():
    """Three 5x5x2 examples (the first two identical), a known posterior, the exact moments."""
    kx, kl, kb = jax.random.split(jax.random.PRNGKey(3), 3)
    x = jax.random.normal(kx, (3, 5, 5, 2))
    x = x.at[1].set(x[0])
    loc = 0.5 * jax.random.normal(kl, (3, 3, 2, 2))
    untransformed = jnp.full((3, 3, 2, 2), -1.0)
    params = {"c.kernel.loc": loc, "c.kernel.untransformed_scale": untransformed,
              "c.bias": 0.1 * jax.random.normal(kb, (2,))}  # fmt: skip
    sigma = jax.nn.softplus(untransformed) + jnp.finfo(jnp.float32).eps
    conv = lambda a, w: reference_conv(a, w, (1, 1), "SAME", (1, 1), True)  # noqa: E731
    return x, params, conv(x, loc) + params["c.bias"], conv(x * x, sigma**2)


@pytest.fixture(scope="module")
def conv_draws(conv_setting):
    """M draws of the layer's output under each estimator, as SVI runs it."""
    x, params, _, _ = conv_setting
    draws = {}
    for name in ("Reparameterization", "Flipout", "LocalReparameterization"):
        model = one_conv_model(CONV[2, name])
        guide = npvi.MeanFieldGuide(model)

        def one(key, model=model, guide=guide):
            return svi_traces(model, guide, params, key, x)[0]["out"]["value"]

        draws[name] = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(11), M)))
    return draws


@pytest.mark.parametrize("name", ["Reparameterization", "Flipout", "LocalReparameterization"])
def test_every_output_element_has_the_exact_mean_and_variance(name, conv_setting, conv_draws):
    _, _, mean, var = conv_setting
    out = conv_draws[name]
    assert out.shape == (M, 3, 5, 5, 2)
    assert np.all(np.abs(out.mean(0) - mean) < 5 * np.sqrt(var / M))
    rel_var = out.var(0, ddof=1) / var
    assert np.all(np.abs(rel_var - 1) < 5 * np.sqrt(2 / (M - 1))), rel_var.min()


def test_which_outputs_each_estimator_correlates(conv_draws):
    """Across examples only reparameterization correlates; within an example Flipout keeps the kernel's correlation."""

    def corr(a, b):
        return np.array([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])])

    across, within = {}, {}
    for name, out in conv_draws.items():
        across[name] = corr(out[:, 0].reshape(M, -1), out[:, 1].reshape(M, -1))
        # Horizontal neighbours of example 2 share most of their inputs and the one kernel.
        within[name] = corr(out[:, 2, :, :-1].reshape(M, -1), out[:, 2, :, 1:].reshape(M, -1))
    np.testing.assert_allclose(across["Reparameterization"], 1.0, atol=1e-5)
    for name in ("Flipout", "LocalReparameterization"):
        assert np.all(np.abs(across[name]) < 5 / np.sqrt(M)), (name, across[name])
    # Flipout gives each example one kernel sample: its within-example correlations are
    # reparameterization's (the difference of two estimates has about sqrt(2) standard errors).
    se = np.sqrt(2) * (1 - within["Reparameterization"] ** 2) / np.sqrt(M)
    assert np.max(np.abs(within["Reparameterization"])) > 0.3  # the check below has something to see
    assert np.all(np.abs(within["Flipout"] - within["Reparameterization"]) < 5 * se + 1e-6)
    # Local reparameterization draws each element alone and drops that correlation.
    assert np.all(np.abs(within["LocalReparameterization"]) < 5 / np.sqrt(M))


@pytest.mark.parametrize(
    ("rank", "channels_last"), [(1, True), (2, False), (3, True)], ids=["1d", "2d-channels-first", "3d"]
)
def test_flipout_gives_each_example_one_kernel(rank, channels_last):
    """out_n = op(x_n, mu + dW * outer(s_in_n, s_out_n)) + b, with signs one per example and channel."""
    kx, kl, kd, ks = jax.random.split(jax.random.PRNGKey(5), 4)
    op = Convolution((1,) * rank, "SAME", (1,) * rank, channels_last)
    spatial = (5,) * rank
    x = jax.random.normal(kx, (4, *spatial, 3) if channels_last else (4, 3, *spatial))
    loc = jax.random.normal(kl, (2,) * rank + (3, 5))
    delta = jax.random.normal(kd, loc.shape)
    bias = jnp.arange(5.0)
    out = estimators.flipout(ks, x, loc, delta, bias, op=op)
    sign_in, sign_out = estimators.rademacher_signs(ks, *op.sign_shapes(x.shape, out.shape))
    channel = -1 if channels_last else 1
    assert sign_in.shape[0] == 4 and sign_in.shape[channel] == 3 and sign_in.size == 4 * 3
    assert sign_out.shape[0] == 4 and sign_out.shape[channel] == 5 and sign_out.size == 4 * 5

    @jax.jit
    @jax.vmap
    def one_kernel_per_example(x_n, s_in, s_out):
        kernel_n = loc + delta * jnp.outer(s_in.reshape(-1), s_out.reshape(-1))
        return op.add_bias(op(x_n[None], kernel_n), bias)[0]

    np.testing.assert_allclose(out, one_kernel_per_example(x, sign_in, sign_out), rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("quick_xla")
def test_flipout_and_lrt_lower_the_gradient_variance_of_a_small_cnn():
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (64, 6, 6, 1))
    y = jax.random.normal(ky, (64, 3))
    total_variance = {}
    for name in ("Reparameterization", "Flipout", "LocalReparameterization"):
        conv_cls, dense_cls = CONV[2, name], getattr(npvi, f"Dense{name}")

        def model(x, y, conv_cls=conv_cls, dense_cls=dense_cls):
            h = conv_cls(4, 3, activation="relu", name="c")(x)
            out = dense_cls(3, name="d")(h.reshape(h.shape[0], -1))
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)

        guide = npvi.MeanFieldGuide(model)
        params = init_params(model, guide, x, y)
        # A posterior with real uncertainty (sigma about 0.3), whose noise dominates the gradient.
        params["c.kernel.untransformed_scale"] = params["c.kernel.untransformed_scale"] + 2.0

        def grad_loc(key, model=model, guide=guide, params=params):
            loss = lambda p: npvi.ELBO().loss(key, p, model, guide, x, y)  # noqa: E731
            return jax.grad(loss)(params)["c.kernel.loc"]

        keys = jax.random.split(jax.random.PRNGKey(1), 200)
        grads = jax.jit(lambda keys, grad_loc=grad_loc: jax.lax.map(grad_loc, keys))(keys)
        total_variance[name] = float(grads.var(0).sum())
    # 200 draws estimate a total variance to at most sqrt(2 / 199) = 10 % (less where many
    # elements contribute), so a ratio to about 14 %. Flipout measures 0.41 of
    # reparameterization's and LRT 0.25 here: 0.7 is five standard errors above Flipout's.
    for name in ("Flipout", "LocalReparameterization"):
        assert total_variance[name] < 0.7 * total_variance["Reparameterization"], total_variance


def test_tfp_names_are_the_same_classes():
    for rank in (1, 2, 3):
        for estimator in ("Flipout", "Reparameterization"):
            assert getattr(npvi, f"Convolution{rank}D{estimator}") is CONV[rank, estimator]


@pytest.mark.parametrize("cls", list(CONV.values()), ids=lambda cls: cls.__name__)
def test_configs_round_trip_through_json(cls):
    layer = cls(3, (2,) * cls.rank, strides=2, padding="same", data_format="channels_first", dilation_rate=1,
                activation="relu", name="c", kernel_prior=dist.Laplace(0.0, 0.5))  # fmt: skip
    config = json.loads(json.dumps(layer.get_config()))
    rebuilt = cls.from_config(config)
    assert rebuilt.get_config() == layer.get_config()
    assert (rebuilt.kernel_size, rebuilt.strides, rebuilt.padding) == ((2,) * cls.rank, (2,) * cls.rank, "SAME")
    assert rebuilt.activation is jax.nn.relu
    assert npvi.serialization.deserialize_layer(npvi.serialization.serialize_layer(layer)).get_config() == config


def test_a_conv_network_saves_and_loads(tmp_path):
    layers = [npvi.Conv2DFlipout(2, 3, name="c"), npvi.DenseFlipout(3, name="d")]
    params = {
        "c.kernel.loc": jnp.arange(18.0).reshape(3, 3, 1, 2),
        "c.kernel.untransformed_scale": -jnp.ones((3, 3, 1, 2)),
        "c.bias": jnp.ones(2),
        "d.kernel.loc": jnp.ones((18, 3)),
        "d.bias": jnp.zeros(3),
    }
    npvi.save(tmp_path / "cnn.npz", layers, params)
    loaded = npvi.load(tmp_path / "cnn.npz")
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in layers]
    assert type(loaded.layers[0]) is npvi.Conv2DFlipout
    for name, value in params.items():
        np.testing.assert_array_equal(loaded.params[name], value)


def run_layer(layer, x):
    with seed(rng_seed=0):
        return layer(x)


@pytest.mark.parametrize(
    ("make", "x_shape", "error", "words"),
    [
        (lambda: npvi.Conv2DFlipout(2, 3, name="c"), (5, 5, 1), ValueError, ["'c'", "rank 4", "(5, 5, 1)"]),
        (lambda: npvi.Conv1DFlipout(2, 3, name="c"), (2, 5, 5, 1), ValueError, ["'c'", "rank 3", "(2, 5, 5, 1)"]),
        (lambda: npvi.Conv2DFlipout(2, 5, name="c"), (2, 3, 3, 1), ValueError, ["'c'", "VALID", "(5, 5)", "(3, 3)"]),
        (lambda: npvi.Conv2DFlipout(2, 3, dilation_rate=3, name="c"), (2, 6, 6, 1), ValueError, ["(7, 7)", "(6, 6)"]),
        (lambda: npvi.Conv2DFlipout(2, 3, name="c"), (2, 5, 5, 0), ValueError, ["'c'", "empty"]),
    ],
)
def test_bad_inputs_name_the_layer_and_the_shapes(make, x_shape, error, words):
    with pytest.raises(error) as raised:
        run_layer(make(), jnp.ones(x_shape))
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def test_a_channel_count_other_than_the_trained_kernel_is_named():
    layer = npvi.Conv2DFlipout(2, 3, name="c")

    def model(x):
        layer(x)

    params = init_params(model, npvi.MeanFieldGuide(model), jnp.ones((2, 5, 5, 1)))
    with pytest.raises(ValueError, match=r"layer 'c': the kernel has shape \(3, 3, 1, 2\).*\(3, 3, 4, 2\)"):
        with seed(rng_seed=0), substitute(data={"c.kernel": params["c.kernel.loc"], "c.bias": params["c.bias"]}):
            layer(jnp.ones((2, 5, 5, 4)))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"filters": 0}, ["filters", "positive int", "0"]),
        ({"kernel_size": (3, 0)}, ["kernel_size", "0"]),
        ({"kernel_size": (3, 3, 3)}, ["kernel_size", "2 of them", "(3, 3, 3)"]),
        ({"strides": -1}, ["strides", "-1"]),
        ({"dilation_rate": 0}, ["dilation_rate", "0"]),
        ({"padding": "full"}, ["padding", "'VALID'", "'full'"]),
        ({"data_format": "NHWC"}, ["data_format", "'channels_last'", "'NHWC'"]),
    ],
)
def test_bad_arguments_are_refused_when_the_layer_is_built(kwargs, words):
    args = {"filters": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError) as raised:
        npvi.Conv2DFlipout(args.pop("filters"), args.pop("kernel_size"), name="c", **args)
    assert "layer 'c'" in str(raised.value)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def test_a_posterior_flipout_cannot_use_is_a_type_error():
    def model(x):
        npvi.Conv2DFlipout(2, 3, name="c", kernel_posterior=npvi.PointMass())(x)

    with pytest.raises(TypeError, match="layer 'c': the flipout estimator needs an independent Normal"):
        init_params(model, npvi.MeanFieldGuide(model), jnp.ones((2, 5, 5, 1)))


def small_cnn(estimator):
    """Conv 3x3 (6 filters, SAME, relu) -> 2x2 max-pool -> dense 10, every layer with ``estimator``."""
    conv_cls, dense_cls = CONV[2, estimator], getattr(npvi, f"Dense{estimator}")

    def model(x, y=None, num_data=None):
        h = conv_cls(6, 3, padding="SAME", activation="relu", name="c")(x)
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        logits = dense_cls(10, name="d")(h.reshape(h.shape[0], -1))
        numpyro.deterministic("probs", jax.nn.softmax(logits))
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


@pytest.fixture(scope="module")
def digits_images():
    data = load_split("digits")
    as_images = lambda x: x.reshape(-1, 8, 8, 1)  # noqa: E731
    return as_images(data.x_train), data.y_train, as_images(data.x_test), data.y_test


@pytest.mark.usefixtures("quick_xla")
@pytest.mark.parametrize(
    ("estimator", "elbo"),
    [
        ("Reparameterization", "npvi"),
        ("Flipout", "npvi"),
        ("LocalReparameterization", "npvi"),
        ("Flipout", "numpyro"),
    ],
)
def test_a_bayesian_cnn_learns_digits(estimator, elbo, digits_images):
    """Every estimator with npvi.ELBO, and Flipout with NumPyro's Trace_ELBO, train the CNN well past chance."""
    import optax
    from numpyro.infer import SVI, Trace_ELBO

    x_train, y_train, x_test, y_test = digits_images
    model = small_cnn(estimator)
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO() if elbo == "npvi" else Trace_ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(0), x_train, y_train, num_epochs=5, batch_size=128, progress_bar=False)
    assert result.losses[-1] < 0.5 * result.losses[0]
    predictive = npvi.Predictive(model, guide=guide, params=result.params, num_samples=10, return_sites=["probs"])
    probs = predictive(jax.random.PRNGKey(1), x_test)["probs"].mean(0)
    accuracy = float(jnp.mean(jnp.argmax(probs, -1) == y_test))
    # 359 held-out digits: a standard error of about 0.02 near 0.9; 0.85 is far above chance.
    assert accuracy > 0.85, accuracy


@pytest.mark.usefixtures("quick_xla")
def test_the_estimator_handlers_switch_convolutions_as_they_switch_dense_layers():
    x, y = jnp.ones((4, 8, 8, 1)), jnp.arange(4)
    base = small_cnn("Flipout")
    params = init_params(base, npvi.MeanFieldGuide(base), x, y)
    for estimator in ("reparameterization", "local_reparameterization", "flipout"):
        log = []
        model = EstimatorSpy(getattr(npvi.handlers, estimator)(base), log=log)
        svi_traces(model, npvi.MeanFieldGuide(model), params, jax.random.PRNGKey(0), x, y)
        # (a new guide first reads the model once, with no posterior: the last two entries are the step)
        assert log[-2:] == [("c", estimator, True), ("d", estimator, True)], log


def test_kernel_axes_get_named_dims_for_arviz():
    assert npvi.Conv3DFlipout(2, 3, name="c").weight_dims() == {
        "c.kernel": ["c_kernel_depth", "c_kernel_height", "c_kernel_width", "c_in", "c_filters"],
        "c.bias": ["c_filters"],
    }
    assert npvi.Conv1DFlipout(2, 3, name="c").weight_dims()["c.kernel"] == ["c_kernel_width", "c_in", "c_filters"]
    assert npvi.DenseFlipout(2, name="d").weight_dims() == {"d.kernel": ["d_in", "d_units"], "d.bias": ["d_units"]}
