"""Every bad input gets a ValueError or TypeError that names the layer, what was expected and seen."""

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
    with pytest.raises(TypeError, match=r"layer 'l1': kernel_posterior must be npvi.MeanFieldNormal"):
        npvi.DenseFlipout(3, name="l1", kernel_posterior=dist.Normal())
    with pytest.raises(TypeError, match=r"layer 'l1': activation must be callable"):
        npvi.DenseFlipout(3, name="l1", activation="relu")


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
