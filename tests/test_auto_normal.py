"""AutoNormal's compiled setup (npvi.auto_normal) and MeanFieldGuide's use of it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_median

import npvi
from npvi.auto_normal import _holds_tracer, set_up_auto_normal

X = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
Y = jnp.linspace(-1.0, 1.0, 8)
KEY = jax.random.PRNGKey(7)
SETTINGS = {"init_loc_fn": init_to_median, "init_scale": 0.1}


def hierarchical(x, y=None, num_data=None, local=False):
    """Latents of several kinds: a constrained scalar, a vector, a plate of them; optionally a local one."""
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    with numpyro.plate("groups", 2):
        numpyro.sample("tau", dist.Gamma(2.0, 2.0))
    numpyro.deterministic("fitted", x @ w)
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        if local:
            numpyro.sample("offset", dist.Normal(0.0, 0.1))  # per-example, so full-size in the guide
        numpyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


def eager(model, *args, **kwargs):
    auto = AutoNormal(model, **SETTINGS)
    with handlers.block(), handlers.seed(rng_seed=KEY):
        auto(*args, **kwargs)
    return auto


def first_call_params(auto, *args, **kwargs):
    tr = handlers.trace(handlers.seed(auto, KEY)).get_trace(*args, **kwargs)
    return {name: site["value"] for name, site in tr.items() if site["type"] == "param"}


@pytest.mark.parametrize("local", [False, True], ids=["global latents", "a local latent"])
def test_the_compiled_setup_gives_numpyros_autonormal(local):
    args, kwargs = (X, Y), {"num_data": 20, "local": local}
    compiled = set_up_auto_normal(hierarchical, KEY, args, kwargs, **SETTINGS)
    reference = eager(hierarchical, *args, **kwargs)
    # It ran compiled (only the latent sites are kept) unless a latent sits in a subsampled plate,
    # whose initial point the compiled program cannot check.
    assert ("y" in compiled.prototype_trace) == local
    assert set(compiled._init_locs) == {"sigma", "w", "tau"} | ({"offset"} if local else set())
    for name, value in reference._init_locs.items():
        np.testing.assert_allclose(compiled._init_locs[name], value, rtol=1e-6)
    if local:
        assert compiled._init_locs["offset"].shape == (20,)  # repeated to the plate's full size
    params = first_call_params(compiled, *args, **kwargs)
    expected = first_call_params(reference, *args, **kwargs)
    assert params.keys() == expected.keys()
    for name in params:
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-6)
    # Everything AutoNormal does after setup works on concrete values (no escaped tracer).
    for a, b in [
        (compiled.median(params), reference.median(expected)),
        (compiled.quantiles(params, [0.1, 0.9]), reference.quantiles(expected, [0.1, 0.9])),
        (
            compiled.sample_posterior(KEY, params, *args, sample_shape=(3,), **kwargs),
            reference.sample_posterior(KEY, params, *args, sample_shape=(3,), **kwargs),
        ),
    ]:
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert not _holds_tracer(vars(compiled))


def test_a_support_that_depends_on_a_computed_value_sets_up_eagerly():
    def model(x):
        numpyro.sample("z", dist.Uniform(0.0, jnp.exp(x.mean())))

    auto = set_up_auto_normal(model, KEY, (X,), {}, **SETTINGS)
    assert not _holds_tracer(vars(auto))
    assert "z" in auto.prototype_trace
    np.testing.assert_allclose(auto._init_locs["z"], eager(model, X)._init_locs["z"])
    params = first_call_params(auto, X)
    assert 0.0 < float(auto.median(params)["z"]) < float(jnp.exp(X.mean()))


@pytest.mark.filterwarnings("ignore:.*Out-of-support values")
def test_no_valid_starting_point_is_numpyros_error():
    def model(y):
        rate = numpyro.sample("rate", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Exponential(rate), obs=y)

    y = jnp.array([1.0, -1.0])  # outside the likelihood's support: log density -inf at every start
    with pytest.raises(RuntimeError, match="Cannot find valid initial parameters"):
        eager(model, y)
    with pytest.raises(RuntimeError, match="Cannot find valid initial parameters"):
        set_up_auto_normal(model, KEY, (y,), {}, **SETTINGS)


def test_a_model_that_cannot_be_traced_sets_up_eagerly():
    def model(x):
        scale = 2.0 if float(x.sum()) > 0 else 1.0  # Python control flow on a value
        numpyro.sample("sigma", dist.HalfNormal(scale))

    auto = set_up_auto_normal(model, KEY, (X,), {}, **SETTINGS)
    np.testing.assert_array_equal(auto._init_locs["sigma"], eager(model, X)._init_locs["sigma"])


def test_holds_tracer_looks_through_containers_attributes_and_closures():
    class Box:
        pass

    found, concrete = [], jnp.ones(2)

    def probe(t):
        def closure():
            return t

        box = Box()
        box.inner = {"fn": functools.partial(lambda a, b: a, [closure])}
        found.append(_holds_tracer(box))
        found.append(_holds_tracer({"x": concrete, "f": lambda: 1.0, "t": (np.zeros(2),)}))
        return t

    jax.jit(probe)(1.0)
    assert found == [True, False]


def layered(x, y=None):
    h = npvi.DenseFlipout(4, activation=jax.nn.relu, name="l1")(x)
    mu = npvi.DenseReparameterization(1, name="l2")(h)[..., 0]
    numpyro.deterministic("mu", mu)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_mean_field_guide_other_latents_start_as_autonormal_on_the_conditioned_model():
    guide = npvi.MeanFieldGuide(layered)
    svi = SVI(layered, guide, optax.adam(1e-2), npvi.ELBO())
    params = svi.get_params(svi.init(KEY, X, Y))
    with handlers.seed(rng_seed=jax.random.split(KEY, 3)[2]):  # SVI.init's guide key
        setup_key = numpyro.prng_key()  # the guide's first draw: its setup key
    with handlers.block():
        prior = handlers.trace(handlers.seed(layered, setup_key)).get_trace(X, Y)
    weights = {name: prior[name]["value"] for name in ("l1.kernel", "l2.kernel")}
    reference = AutoNormal(handlers.condition(layered, data=weights), **SETTINGS)
    with handlers.block(), handlers.seed(rng_seed=setup_key):
        reference(X, Y)
    np.testing.assert_allclose(params["sigma_auto_loc"], reference._init_locs["sigma"], rtol=1e-6)
    median = guide.median(params)
    assert sorted(median) == ["l1.kernel", "l2.kernel", "sigma"]  # no deterministic site from the prototype


def test_mean_field_guide_sets_up_with_tracer_leak_checking_on():
    guide = npvi.MeanFieldGuide(layered)
    svi = SVI(layered, guide, optax.adam(1e-2), npvi.ELBO())
    with jax.checking_leaks():
        params = svi.get_params(svi.init(KEY, X, Y))
    assert "sigma_auto_loc" in params


def test_mean_field_guide_with_a_model_that_cannot_be_traced():
    def model(x, y=None, num_data=None):
        mu = npvi.DenseFlipout(1, name="l1")(x)[..., 0]
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0 if float(x.sum()) > 0 else 1.0))
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    guide = npvi.MeanFieldGuide(model)
    with pytest.raises(jax.errors.ConcretizationTypeError):  # as in NumPyro: training compiles the model
        npvi.fit(SVI(model, guide, optax.adam(1e-2), npvi.ELBO()), KEY, 1, X, Y, batch_size=4, progress_bar=False)
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    params = svi.get_params(svi.init(KEY, X, Y))
    assert sorted(params) == [
        "l1.bias",
        "l1.kernel.loc",
        "l1.kernel.untransformed_scale",
        "sigma_auto_loc",
        "sigma_auto_scale",
    ]
