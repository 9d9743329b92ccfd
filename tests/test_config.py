"""Layer configs (get_config/from_config through JSON) and npvi.save/npvi.load."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import LAYERS, init_params
from numpyro.handlers import seed, trace
from numpyro.infer import SVI, Predictive

import npvi
from npvi import serialization
from npvi.io import FORMAT_VERSION

LAYER_KWARGS = {
    "defaults": {},
    "relu, Laplace per-unit prior, mc KL": {
        "activation": jax.nn.relu,
        "kernel_prior": dist.Laplace(0.0, jnp.array([0.5, 1.0, 2.0])),
        "kernel_kl": "mc",
    },
    "tanh, StudentT prior, Normal bias prior": {
        "activation": jax.nn.tanh,
        "kernel_prior": dist.StudentT(3.0, 0.0, 1.0),
        "kernel_kl": "mc",
        "bias_prior": dist.Normal(0.0, 2.0),
        "kernel_posterior": npvi.MeanFieldNormal(0.0, 0.2, -4.0, 0.05),
    },
    "MVN prior over units": {
        "activation": jax.nn.softplus,
        "kernel_prior": dist.MultivariateNormal(jnp.zeros(3), 2.0 * jnp.eye(3)),
        "kernel_kl": "mc",
    },
    "Independent(Expanded(Normal)) prior, PointMass bias posterior": {
        "activation": jax.nn.gelu,
        "kernel_prior": dist.Normal(0.0, 0.5).expand([4, 3]).to_event(2),
        "bias_prior": dist.Laplace(0.0, 1.0),
        "bias_posterior": npvi.PointMass(0.0, 0.3),
        "bias_kl": "mc",
    },
    "no bias": {"activation": jax.nn.sigmoid, "use_bias": False},
}


def make_model(layer):
    def model(x, y=None):
        out = layer(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)
        return out

    return model


def describe_site(site):
    """Everything a site is: type, shapes and (for samples) the full distribution description."""
    out = {"type": site["type"]}
    if site["type"] == "sample":
        out["fn"] = serialization.describe_distribution(site["fn"])
        out["value_shape"] = tuple(jnp.shape(site["value"]))
    elif site["type"] == "param":
        out["value_shape"] = tuple(jnp.shape(site["value"]))
    elif site["type"] == npvi.handlers.LINEAR_MESSAGE:
        layer = site["kwargs"]["layer"]
        out["layer"] = (type(layer).__name__, layer.kernel_kl, layer.bias_kl, layer.kernel_posterior,
                        layer.bias_posterior, layer.activation)
    return out


# Each case with one layer class (cycling through the three) keeps this test fast.
ROUND_TRIP_CASES = [(LAYERS[i % 3], case) for i, case in enumerate(LAYER_KWARGS)] + [
    (npvi.DenseLocalReparameterization, "defaults"),
    (npvi.DenseFlipout, "defaults"),
]


@pytest.mark.parametrize(
    ("layer_cls", "case"), ROUND_TRIP_CASES, ids=[f"{c.__name__}-{k}" for c, k in ROUND_TRIP_CASES]
)
def test_layer_round_trip_gives_the_same_model(layer_cls, case, data):
    x, y = data
    layer = layer_cls(3, name="l1", **LAYER_KWARGS[case])
    config = json.loads(json.dumps(layer.get_config()))
    rebuilt = layer_cls.from_config(config)
    assert rebuilt.get_config() == config

    # Same sites, shapes, priors (as full descriptions), posteriors and KL choices.
    original_trace = trace(seed(make_model(layer), 0)).get_trace(x, y)
    rebuilt_trace = trace(seed(make_model(rebuilt), 0)).get_trace(x, y)
    assert list(original_trace) == list(rebuilt_trace)
    for name in original_trace:
        assert describe_site(rebuilt_trace[name]) == describe_site(original_trace[name]), name

    # Same guide params (posterior families) and the same loss with the same key.
    model, rebuilt_model = make_model(layer), make_model(rebuilt)
    params = init_params(model, npvi.MeanFieldGuide(model), x, y)
    rebuilt_params = init_params(rebuilt_model, npvi.MeanFieldGuide(rebuilt_model), x, y)
    assert sorted(params) == sorted(rebuilt_params)
    for name in params:
        np.testing.assert_array_equal(params[name], rebuilt_params[name])
    key = jax.random.PRNGKey(3)
    loss = npvi.ELBO().loss(key, params, model, npvi.MeanFieldGuide(model), x, y)
    rebuilt_loss = npvi.ELBO().loss(key, params, rebuilt_model, npvi.MeanFieldGuide(rebuilt_model), x, y)
    assert loss == rebuilt_loss


def test_config_contents_are_names_and_numbers():
    layer = npvi.DenseFlipout(
        2, name="l1", activation=jax.nn.relu, kernel_prior=dist.Normal(0.0, 1.0).expand([3, 2]).to_event(2)
    )
    assert layer.get_config() == {
        "units": 2,
        "name": "l1",
        "activation": "relu",
        "kernel_prior": {
            "type": "Independent",
            "base_dist": {"type": "ExpandedDistribution", "base_dist": {"type": "Normal", "loc": 0.0, "scale": 1.0},
                          "batch_shape": [3, 2]},
            "reinterpreted_batch_ndims": 2,
        },
        "bias_prior": None,
        "kernel_posterior": {"type": "MeanFieldNormal", "loc_mean": 0.0, "loc_stddev": 0.1,
                             "untransformed_scale_mean": -3.0, "untransformed_scale_stddev": 0.1},
        "bias_posterior": {"type": "PointMass", "loc_mean": 0.0, "loc_stddev": 0.1},
        "kernel_kl": "exact",
        "bias_kl": "exact",
        "use_bias": True,
        "kernel_posterior_tensor_fn": None,
        "bias_posterior_tensor_fn": None,
        "activity_regularizer": None,
    }


@pytest.mark.parametrize("name", serialization.activation_names())
def test_every_registered_activation_round_trips(name):
    fn = getattr(jax.nn, name)
    layer = npvi.DenseReparameterization(2, name="l1", activation=fn)
    rebuilt = npvi.DenseReparameterization.from_config(json.loads(json.dumps(layer.get_config())))
    assert rebuilt.activation is fn  # swish is silu: written as "silu", read back as the same function


UNDESCRIBABLE = {
    "activation": {"activation": lambda v: v * 2},
    "kernel_prior": {"kernel_prior": lambda name, shape, dtype: dist.Normal(0.0, 1.0)},
    "bias_prior": {"bias_prior": lambda name, shape, dtype: dist.Normal(0.0, 1.0)},
    "kernel_kl": {"kernel_kl": lambda q, p, w: dist.kl_divergence(q, p)},
    "bias_kl": {"bias_prior": dist.Normal(0.0, 1.0), "bias_kl": lambda q, p, w: 0.0},
    "kernel_posterior_tensor_fn": {"kernel_posterior_tensor_fn": lambda q: q.mean},
    "bias_posterior_tensor_fn": {"bias_posterior_tensor_fn": lambda q: q.mean},
    "activity_regularizer": {"activity_regularizer": lambda out: jnp.sum(out**2)},
}


@pytest.mark.parametrize("what", list(UNDESCRIBABLE))
def test_undescribable_callables_are_clear_errors_at_get_config(what):
    layer = npvi.DenseFlipout(2, name="hidden", **UNDESCRIBABLE[what])
    with pytest.raises(TypeError, match=f"layer 'hidden': {what}.*'<lambda>'"):
        layer.get_config()


def test_other_bad_configs():
    with pytest.raises(TypeError, match="layer 'l1': kernel_prior: cannot describe Gamma"):
        npvi.DenseFlipout(2, name="l1", kernel_prior=dist.Gamma(2.0, 1.0), kernel_kl="mc").get_config()
    config = npvi.DenseFlipout(2, name="l1").get_config()
    with pytest.raises(TypeError, match="concrete layer class"):
        npvi.layers.DenseVariational.from_config(config)
    with pytest.raises(ValueError, match="unknown keys \\['trainable'\\]"):
        npvi.DenseFlipout.from_config({**config, "trainable": True})
    with pytest.raises(ValueError, match="layer 'l1': activation: unknown activation 'swishy'"):
        npvi.DenseFlipout.from_config({**config, "activation": "swishy"})
    with pytest.raises(ValueError, match="kernel_posterior"):
        npvi.DenseFlipout.from_config({**config, "kernel_posterior": {"type": "Flow"}})
    with pytest.raises(ValueError, match="can only hold activity_regularizer=None"):
        npvi.DenseFlipout.from_config({**config, "activity_regularizer": "l2"})
    with pytest.raises(ValueError, match="unknown layer class 'Dense'"):
        serialization.deserialize_layer({"class_name": "Dense", "config": config})


# ---------------------------------------------------------------- save / load


def mlp_layers():
    return [
        npvi.DenseFlipout(4, name="l1", activation=jax.nn.tanh),
        npvi.DenseLocalReparameterization(1, name="l2", kernel_prior=dist.Laplace(0.0, 1.0), kernel_kl="mc"),
    ]


def mlp_model(layers):
    def model(x, y=None):
        h = layers[0](x)
        mu = layers[1](h)[..., 0]
        sigma = numpyro.param("sigma", 1.0, constraint=dist.constraints.positive)  # a non-layer param
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    return model


def test_train_save_load_gives_identical_params_and_predictions(tmp_path, data):
    x, y = data
    y = y[:, 0]
    model = mlp_model(mlp_layers())
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    state = svi.init(jax.random.PRNGKey(0), x, y)
    update = jax.jit(svi.update)
    for _ in range(5):
        state, _ = update(state, x, y)
    params = svi.get_params(state)
    assert "sigma" in params

    path = tmp_path / "mlp.npz"
    npvi.save(path, mlp_layers(), params)
    layers, loaded = npvi.load(path)
    assert [layer.get_config() for layer in layers] == [layer.get_config() for layer in mlp_layers()]
    assert sorted(loaded) == sorted(params)
    for name in params:
        assert loaded[name].dtype == params[name].dtype and loaded[name].shape == params[name].shape
        assert np.asarray(loaded[name]).tobytes() == np.asarray(params[name]).tobytes(), name  # bitwise

    loaded_model = mlp_model(layers)
    loaded_guide = npvi.MeanFieldGuide(loaded_model)
    # A fresh guide learns which sites are observed from its first call, so give it the data once
    # (Predictive calls it without y, and would take y for a latent site).
    with numpyro.handlers.block():
        seed(loaded_guide, 0)(x, y)
    key = jax.random.PRNGKey(5)
    before = Predictive(model, guide=guide, params=params, num_samples=4)(key, x)
    after = Predictive(loaded_model, guide=loaded_guide, params=loaded, num_samples=4)(key, x)
    assert sorted(before) == sorted(after) == ["y"]
    np.testing.assert_array_equal(after["y"], before["y"])


def test_save_keeps_odd_names_and_dtypes(tmp_path):
    params = {
        "a/b c.d": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7,
        "bf16": jnp.array([1.5, -2.25, 3.1], dtype=jnp.bfloat16),
        "ints": jnp.array([1, 2, 3], dtype=jnp.int32),
        "scalar": jnp.float32(np.pi),
    }
    path = tmp_path / "odd.npz"
    npvi.save(path, [], params)
    layers, loaded = npvi.load(path)
    assert layers == []
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        assert np.asarray(loaded[name]).tobytes() == np.asarray(value).tobytes(), name


def test_save_accepts_serialized_layers_and_rejects_duplicates(tmp_path):
    serialized = [serialization.serialize_layer(layer) for layer in mlp_layers()]
    npvi.save(tmp_path / "s.npz", serialized, {})
    assert [layer.name for layer in npvi.load(tmp_path / "s.npz").layers] == ["l1", "l2"]
    with pytest.raises(ValueError, match="unique.*'l1'"):
        npvi.save(tmp_path / "d.npz", [npvi.DenseFlipout(2, name="l1"), npvi.DenseFlipout(3, name="l1")], {})
    with pytest.raises(TypeError, match="activation"):  # an undescribable layer is refused before writing
        npvi.save(tmp_path / "e.npz", npvi.DenseFlipout(2, name="l1", activation=lambda v: v), {})
    assert not (tmp_path / "d.npz").exists() and not (tmp_path / "e.npz").exists()


def test_crash_mid_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    npvi.save(path, mlp_layers(), {"w": jnp.ones(3)})
    old_bytes = path.read_bytes()

    def partial_then_crash(file, arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(npvi.io, "_write_archive", partial_then_crash)
    with pytest.raises(OSError, match="disk full"):
        npvi.save(path, mlp_layers(), {"w": jnp.zeros(3)})
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["model.npz"]
    np.testing.assert_array_equal(npvi.load(path).params["w"], jnp.ones(3))


def test_version_and_format_checks(tmp_path, monkeypatch):
    path = tmp_path / "new.npz"
    monkeypatch.setattr(npvi.io, "FORMAT_VERSION", FORMAT_VERSION + 1)
    npvi.save(path, [], {"w": jnp.ones(1)})
    monkeypatch.setattr(npvi.io, "FORMAT_VERSION", FORMAT_VERSION)
    with pytest.raises(ValueError, match=f"format_version {FORMAT_VERSION + 1}.*reads versions 1 to {FORMAT_VERSION}"):
        npvi.load(path)
    other = tmp_path / "other.npz"
    np.savez(other, w=np.ones(2))
    with pytest.raises(ValueError, match="not an npvi file"):
        npvi.load(other)


def test_a_version_1_file_loads_with_the_guides_new_names(tmp_path, monkeypatch):
    """Version 1 stored AutoNormal's names and its scale; the loaded params give the same posterior."""
    def model(x, y=None):
        mu = npvi.DenseFlipout(1, name="l1")(x)[..., 0]
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    layer = npvi.DenseFlipout(1, name="l1")
    old = {"l1.kernel.loc": jnp.ones((2, 1)), "l1.kernel.untransformed_scale": jnp.full((2, 1), -3.0),
           "l1.bias": jnp.zeros(1), "sigma_auto_loc": jnp.array(-0.5), "sigma_auto_scale": jnp.array(0.2)}  # fmt: skip
    path = tmp_path / "v1.npz"
    monkeypatch.setattr(npvi.io, "FORMAT_VERSION", 1)
    npvi.save(path, [layer], old)
    monkeypatch.undo()
    layers, params = npvi.load(path)
    assert sorted(params) == ["l1.bias", "l1.kernel.loc", "l1.kernel.untransformed_scale", "sigma.loc",
                              "sigma.untransformed_scale"]  # fmt: skip
    np.testing.assert_array_equal(params["sigma.loc"], -0.5)
    np.testing.assert_allclose(npvi.posteriors.softplus_scale(params["sigma.untransformed_scale"]), 0.2, rtol=1e-6)
    x = jnp.ones((3, 2))
    guide = npvi.MeanFieldGuide(model)
    numpyro.handlers.seed(guide, 0)(x, jnp.zeros(3))
    draws = npvi.Predictive(model, guide, params, 4000, return_sites=["sigma"])(jax.random.PRNGKey(0), x)["sigma"]
    # log sigma ~ N(-0.5, 0.2^2): 4000 draws, standard errors 0.2 / sqrt(4000) and 0.2 / sqrt(2 * 4000)
    assert abs(float(jnp.log(draws).mean()) + 0.5) < 5 * 0.2 / np.sqrt(4000)
    assert abs(float(jnp.log(draws).std()) - 0.2) < 5 * 0.2 / np.sqrt(8000)


def test_registries_extend_configs(monkeypatch):
    monkeypatch.setattr(serialization, "_DISTRIBUTIONS", dict(serialization._DISTRIBUTIONS))
    monkeypatch.setattr(serialization, "_ACTIVATIONS", dict(serialization._ACTIVATIONS))
    serialization.register_distribution(dist.Gumbel, ("loc", "scale"))
    serialization.register_activation("double", double := (lambda v: 2 * v))
    layer = npvi.DenseFlipout(2, name="l1", activation=double, kernel_prior=dist.Gumbel(0.0, 2.0), kernel_kl="mc")
    config = json.loads(json.dumps(layer.get_config()))
    assert config["activation"] == "double"
    assert config["kernel_prior"] == {"type": "Gumbel", "loc": 0.0, "scale": 2.0}
    rebuilt = npvi.DenseFlipout.from_config(config)
    assert rebuilt.activation is double and isinstance(rebuilt.kernel_prior, dist.Gumbel)
    with pytest.raises(ValueError, match="reserved"):
        serialization.register_distribution(dist.Gumbel, ("loc", "scale"), name="Independent")
