"""Every bad input gets a ValueError or TypeError that names the layer, what was expected and seen."""

import functools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import fixed_params, one_layer_model, svi_traces
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI

import npvi

X = jnp.ones((5, 4))
Y = jnp.zeros((5, 3))


def init(model, *args):
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    return svi.init(jax.random.PRNGKey(0), *args)


def run_model(model, *args):
    return trace(seed(model, 0)).get_trace(*args)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"layer 'l1': expected inputs of rank >= 2.*got shape \(4,\)"):
        run_model(one_layer_model(npvi.DenseFlipout), jnp.ones(4))


def test_no_features():
    with pytest.raises(ValueError, match=r"layer 'l1': inputs have no features \(shape \(5, 0\)\)"):
        run_model(one_layer_model(npvi.DenseFlipout), jnp.ones((5, 0)))


def test_prior_shape_mismatch():
    model = one_layer_model(npvi.DenseFlipout, kernel_prior=dist.Normal(jnp.zeros(5), 1.0))
    with pytest.raises(ValueError, match=r"layer 'l1': kernel_prior has shape \(5,\).*weight shape \(4, 3\)"):
        run_model(model, X)


def test_params_for_other_inputs():
    model = one_layer_model(npvi.DenseFlipout)
    guide = npvi.MeanFieldGuide(model)
    params = fixed_params(in_features=6)
    with pytest.raises(ValueError, match=r"layer 'l1': the kernel has shape \(6, 3\), but these inputs need \(4, 3\)"):
        svi_traces(model, guide, params, jax.random.PRNGKey(0), X)


@pytest.mark.parametrize("cls", [npvi.DenseFlipout, npvi.DenseLocalReparameterization])
def test_posterior_the_estimator_cannot_use(cls):
    model = one_layer_model(cls, kernel_posterior=npvi.PointMass())
    with pytest.raises(TypeError, match=r"layer 'l1'.*needs an independent Normal.*got Delta"):
        init(model, X, Y)


def test_non_positive_prior_scale():
    # NumPyro validates at construction by default; npvi also catches unvalidated priors.
    with pytest.raises(ValueError, match="invalid scale"):
        dist.Normal(0.0, -1.0)
    prior = dist.Normal(0.0, -1.0, validate_args=False)
    model = one_layer_model(npvi.DenseFlipout, kernel_prior=prior)
    expected = r"layer 'l1': kernel_prior Normal needs a valid scale \(expected Positive.*\), got -1.0"
    with pytest.raises(ValueError, match=expected):
        run_model(model, X)
    hierarchical = lambda name, shape, dtype: dist.Laplace(0.0, jnp.zeros(3), validate_args=False)  # noqa: E731
    expected = r"layer 'l1': kernel_prior Laplace needs a valid scale.*got \[0.0, 0.0, 0.0\]"
    with pytest.raises(ValueError, match=expected):
        run_model(one_layer_model(npvi.DenseFlipout, kernel_prior=hierarchical), X)


def test_nan_inputs():
    with pytest.raises(ValueError, match=r"layer 'l1': the input must be finite, but 1 of its 20"):
        init(one_layer_model(npvi.DenseFlipout), X.at[0, 0].set(jnp.nan), Y)


def test_nan_observations():
    with pytest.raises(ValueError, match=r"site 'y': the observed data must be finite"):
        init(one_layer_model(npvi.DenseFlipout), X, Y.at[1, 1].set(jnp.nan))


def classifier(x, y=None, num_data=None):
    logits = npvi.DenseFlipout(10, name="l1")(x)
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


def counts_model(x, y=None, num_data=None):
    rate = jnp.exp(npvi.DenseFlipout(1, name="l1")(x)[..., 0])
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Poisson(rate), obs=y)


@pytest.mark.parametrize(
    "model, y, error, message",
    [
        (classifier, jnp.array([0, 3, 10, 2, 9]), ValueError,
         r"site 'y': 1 of the 5 observed values are outside the support of CategoricalLogits "
         r"\(IntegerInterval\(lower_bound=0, upper_bound=9\)\), e.g. 10 at index \(2,\)"),
        (classifier, jnp.array([0.0, 3.0, 1.0, 2.0, 9.0]), TypeError,
         r"site 'y': the observed data are float32, but CategoricalLogits needs integer values"),
        (counts_model, jnp.array([0.0, 3.0, -1.0, -2.0, 1.0]), ValueError,
         r"site 'y': 2 of the 5 observed values are outside the support of Poisson.*e.g. -1.0 at index \(2,\)"),
    ],
    ids=["label out of range", "float labels", "negative counts"],
)
def test_observations_outside_their_support(model, y, error, message):
    with pytest.raises(error, match=message):
        init(model, X, y)  # the guide's first call, with concrete data
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    with pytest.raises(error, match=message):  # fit checks all of its data before it compiles
        npvi.fit(svi, jax.random.PRNGKey(0), X, y, num_epochs=1, batch_size=2, progress_bar=False)


def regression(x, y=None, num_data=None, squeeze=True):
    mu = npvi.DenseFlipout(1, name="l1")(x)
    mu = mu[..., 0] if squeeze else mu
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)


@pytest.mark.parametrize(
    "model, y, message",
    [
        (regression, jnp.zeros((5, 1)),
         r"site 'y': the observed value has shape \(5, 1\), but its Normal has batch shape \(5,\), so log_prob "
         r"broadcasts them to \(5, 5\) and scores each of the 5 observations 5 times. Give both the same shape: drop "
         r"the value's extra axis \(y\[:, 0\] for targets of shape \(n, 1\)\), or the prediction's "
         r"\(mu\[..., 0\] for a network output of shape \(n, 1\)\)"),
        (functools.partial(regression, squeeze=False), jnp.zeros(5),
         r"site 'y': the observed value has shape \(5,\), but its Normal has batch shape \(5, 5\), so log_prob "
         r"broadcasts them to \(5, 5\).*mu\[..., 0\]"),
        (classifier, jax.nn.one_hot(jnp.array([0, 3, 1, 2, 9]), 10),
         r"site 'y': the observed labels have shape \(5, 10\), one row of 10 values per example, but Categorical "
         r"takes one class index per example, shape \(5,\). For one-hot labels pass y.argmax\(-1\) \(as integers\), "
         r"or use dist.OneHotCategorical"),
    ],
    ids=["targets (n, 1)", "outputs (n, 1)", "one-hot labels"],
)
def test_observations_that_would_broadcast_against_the_predictions(model, y, message):
    """Keras habits that train a constant without a word: refused at the guide's first call and by fit."""
    with pytest.raises(ValueError, match=message):
        init(model, X, y)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    with pytest.raises(ValueError, match=message):
        npvi.fit(svi, jax.random.PRNGKey(0), X, y, num_epochs=1, batch_size=5, progress_bar=False)
    event_model = one_layer_model(npvi.DenseFlipout)  # a (5, 3) value of a (5,)-batch, (3,)-event site is fine
    init(event_model, X, Y)


def test_a_long_bad_label_array_is_not_printed():
    labels = jnp.zeros(1000, jnp.int32).at[500].set(12)
    with pytest.raises(ValueError) as info:
        init(classifier, jnp.ones((1000, 4)), labels)
    assert "1 of the 1000 observed values" in str(info.value) and len(str(info.value)) < 300


def test_non_numeric_data_is_a_short_type_error():
    import numpy as np

    words = np.array(["cat", "dog", "cat", "cow", "dog"])
    svi = SVI(classifier, npvi.MeanFieldGuide(classifier), optax.adam(1e-2), npvi.ELBO())
    expected = r"^fit: data argument 1 must hold numbers \(bool, int or float\), got an array of dtype <U3$"
    with pytest.raises(TypeError, match=expected):
        npvi.fit(svi, jax.random.PRNGKey(0), X, words, num_epochs=1, batch_size=5, progress_bar=False)
    with pytest.raises(TypeError, match=r"^Predictive: argument 0 must hold numbers.*dtype <U3$"):
        npvi.Predictive(classifier, npvi.MeanFieldGuide(classifier), {}, 2)(jax.random.PRNGKey(0), words)


def test_duplicate_layer_name():
    def model(x):
        h = npvi.DenseFlipout(4, name="l1")(x)
        npvi.DenseFlipout(4, name="l1")(h)

    with pytest.raises(ValueError, match=r"layer name 'l1' is used twice"):
        run_model(model, X)


def test_missing_name():
    with pytest.raises(TypeError, match=r"DenseFlipout needs a unique name="):
        npvi.DenseFlipout(3)


@pytest.mark.parametrize("units", [0, -1, 2.5, True])
def test_bad_units(units):
    with pytest.raises(ValueError, match=r"layer 'l1': units must be a positive int"):
        npvi.DenseFlipout(units, name="l1")


def test_bad_kl_choice():
    with pytest.raises(ValueError, match=r"layer 'l1': kernel_kl must be 'exact', 'mc' or a callable.*'analytic'"):
        npvi.DenseFlipout(3, name="l1", kernel_kl="analytic")


def test_bad_prior_and_posterior_types():
    with pytest.raises(TypeError, match=r"layer 'l1': kernel_prior must be a numpyro Distribution"):
        run_model(one_layer_model(npvi.DenseFlipout, kernel_prior=1.0), X)
    with pytest.raises(TypeError, match=r"layer 'l1': kernel_posterior must be a posterior family .*got Normal"):
        npvi.DenseFlipout(3, name="l1", kernel_posterior=dist.Normal())
    with pytest.raises(TypeError, match=r"layer 'l1': activation must be callable"):
        npvi.DenseFlipout(3, name="l1", activation=1.0)


def test_activations_by_name_as_keras_takes_them():
    layer = npvi.DenseFlipout(3, name="l1", activation="relu")
    assert layer.activation is jax.nn.relu
    assert layer.get_config()["activation"] == "relu"  # configs keep writing the name
    out = run_model(lambda x: npvi.DenseReparameterization(3, name="l1", activation="tanh")(x), X)["l1"]
    assert out["type"] == npvi.handlers.LINEAR_MESSAGE
    with pytest.raises(ValueError, match=r"layer 'l1': activation: unknown activation 'rleu'; expected None or one of"):
        npvi.DenseFlipout(3, name="l1", activation="rleu")


@pytest.mark.parametrize(
    "kl_weight, error, message",
    [
        ("0.5", TypeError, "kl_weight must be a finite non-negative number or a JAX array, got str '0.5'"),
        (None, TypeError, "got NoneType None"),
        (True, TypeError, "got bool True"),
        (-1.0, ValueError, "kl_weight must be finite and non-negative, got -1.0"),
        (float("nan"), ValueError, "got nan"),
        (jnp.array([0.5, -0.1]), ValueError, r"got \[0.5, -0.10000000149011612\]"),
    ],
)
def test_kl_weight_is_checked_when_the_elbo_is_built(kl_weight, error, message):
    with pytest.raises(error, match=message):
        npvi.ELBO(kl_weight=kl_weight)


def test_a_traced_kl_weight_still_works():
    model = one_layer_model(npvi.DenseFlipout)
    params = fixed_params()
    guide = npvi.MeanFieldGuide(model)

    @jax.jit
    def loss(beta):
        return npvi.ELBO(kl_weight=beta).loss(jax.random.PRNGKey(0), params, model, guide, X, Y)

    assert float(loss(0.0)) < float(loss(1.0))  # the KL is positive, so weighting it in raises the loss


def test_inconsistent_bias_options():
    with pytest.raises(ValueError, match=r"layer 'l1': use_bias=False, but a bias prior"):
        npvi.DenseFlipout(3, name="l1", use_bias=False, bias_prior=dist.Normal())
    with pytest.raises(ValueError, match=r"layer 'l1': a MeanFieldNormal bias posterior needs a bias_prior"):
        npvi.DenseFlipout(3, name="l1", bias_posterior=npvi.MeanFieldNormal())


def test_layer_inside_a_plate():
    def model(x):
        with numpyro.plate("data", x.shape[0]):
            npvi.DenseFlipout(3, name="l1")(x)

    with pytest.raises(ValueError, match=r"layer 'l1' was called inside plate\(s\) \['data'\]"):
        run_model(model, X)


def test_flipout_without_seed_is_a_clear_error():
    model = one_layer_model(npvi.DenseFlipout)
    guide = npvi.MeanFieldGuide(model)
    params = fixed_params()
    guide_trace = trace(seed(substitute(guide, data=params), 0)).get_trace(X)
    replayed = numpyro.handlers.replay(substitute(model, data=params), guide_trace)
    with pytest.raises(ValueError, match=r"layer 'l1': flipout draws random numbers.*seed"):
        replayed(X)


def test_layer_without_seed_is_a_clear_error():
    with pytest.raises(ValueError, match=r"layer 'l1': drawing 'l1.kernel' needs a PRNG key.*seed"):
        npvi.DenseReparameterization(3, name="l1")(X)
