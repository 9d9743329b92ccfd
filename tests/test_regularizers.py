"""KLDivergenceRegularizer and KLDivergenceAddLoss: TFP's own test, key handling, configs, ELBOs, a VAE."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import svi_traces
from numpyro.handlers import scale, seed, trace
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

import npvi
from npvi import KLDivergenceAddLoss, KLDivergenceRegularizer, SamplePoints

# TFP's test: a = MVN(loc=[-1, 1], scale_tril=[[1.1, 0], [0.2, 1.3]]), b = MVNDiag(0, I).
LOC = np.array([-1.0, 1.0])
TRIL = np.array([[1.1, 0.0], [0.2, 1.3]])


def tfp_a():
    return dist.MultivariateNormal(jnp.asarray(LOC), scale_tril=jnp.asarray(TRIL))


def exact_kl_by_hand():
    """KL(N(m, S) || N(0, I)) = (tr S + m'm - k - log det S) / 2, in float64."""
    cov = TRIL @ TRIL.T
    return 0.5 * (np.trace(cov) + LOC @ LOC - 2 - np.linalg.slogdet(cov)[1])


B_CHOICES = {
    "MultivariateNormal(0, I)": lambda: dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
    "Normal(0, 1).expand([2]).to_event(1)": lambda: dist.Normal(0.0, 1.0).expand([2]).to_event(1),
}


def test_tfp_exact_value():
    b = B_CHOICES["MultivariateNormal(0, I)"]()
    value = KLDivergenceRegularizer(b, use_exact_kl=True)(tfp_a())
    assert value.shape == ()
    np.testing.assert_allclose(value, exact_kl_by_hand(), rtol=1e-6)  # 1.1123..., float32 precision


def test_exact_against_independent_normal_has_no_closed_form():
    # NumPyro has no KL(MultivariateNormal || Independent(Normal)); the error names both types.
    b = B_CHOICES["Normal(0, 1).expand([2]).to_event(1)"]()
    with pytest.raises(TypeError, match=r"KL\(MultivariateNormal \|\| Normal\).*use_exact_kl=False"):
        KLDivergenceRegularizer(b, use_exact_kl=True)(tfp_a())


@pytest.mark.parametrize("b_name", list(B_CHOICES))
@pytest.mark.parametrize("points", ["SamplePoints", "callable"])
def test_tfp_monte_carlo_1000_points(b_name, points):
    # TFP's test: test_points_fn draws 1000 samples, reduced over axis 0; within 0.15 of the exact value.
    fn = SamplePoints(1000) if points == "SamplePoints" else (lambda a, key: a.sample(key, (1000,)))
    reg = KLDivergenceRegularizer(B_CHOICES[b_name](), test_points_fn=fn, test_points_reduce_axis=0)
    estimate = reg(tfp_a(), rng_key=jax.random.PRNGKey(0))
    assert estimate.shape == ()
    # sd of log a(z) - log b(z) here is about 1.69 (measured with 200k draws), so the standard error of
    # 1000 draws is about 0.053; 0.15 is TFP's own tolerance, about 2.8 standard errors. With these fixed
    # keys the estimates are 1.059 (key 0) for both priors, since log b agrees on every point.
    assert abs(float(estimate) - exact_kl_by_hand()) < 0.15


def test_reduce_axis_weight_and_sum():
    a = dist.Normal(jnp.array([0.5, -1.0, 2.0]), jnp.array([1.0, 0.5, 2.0]))
    b = dist.Normal(0.0, 1.0)
    key = jax.random.PRNGKey(3)
    z = a.sample(key, (4,))
    log_ratio = a.log_prob(z) - b.log_prob(z)  # shape (4, 3)
    fn = SamplePoints(4)
    none = KLDivergenceRegularizer(b, test_points_fn=fn)  # () : no reduction, then sum
    np.testing.assert_allclose(none.terms(a, key), log_ratio)
    np.testing.assert_allclose(none(a, key), log_ratio.sum(), rtol=1e-6)
    axis0 = KLDivergenceRegularizer(b, test_points_fn=fn, test_points_reduce_axis=0, weight=jnp.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(axis0.terms(a, key), log_ratio.mean(0) * jnp.array([1.0, 2.0, 3.0]), rtol=1e-6)
    every = KLDivergenceRegularizer(b, test_points_fn=fn, test_points_reduce_axis=None, weight=10.0)
    np.testing.assert_allclose(every(a, key), 10.0 * log_ratio.mean(), rtol=1e-6)
    # default test points: one draw a.sample(key)
    one = a.sample(key)
    np.testing.assert_allclose(KLDivergenceRegularizer(b)(a, key), (a.log_prob(one) - b.log_prob(one)).sum(), rtol=1e-6)


def test_keys_outside_and_inside_a_model():
    a, b = dist.Normal(jnp.zeros(3), 2.0), dist.Normal(0.0, 1.0)
    reg = KLDivergenceRegularizer(b)
    with pytest.raises(ValueError, match="needs a PRNG key; pass rng_key"):
        reg(a)
    with pytest.raises(ValueError, match="needs a PRNG key"), trace():  # a handler, but no seed
        reg(a)
    assert jnp.isfinite(KLDivergenceRegularizer(b, use_exact_kl=True)(a))  # exact: no key needed

    seen = []

    def points(d, key):
        seen.append(key)
        return d.sample(key)

    recording = KLDivergenceRegularizer(b, test_points_fn=points)
    with seed(rng_seed=5):
        inside = recording(a)
    assert len(seen) == 1
    np.testing.assert_array_equal(inside, reg(a, rng_key=seen[0]))  # the key came from numpyro.prng_key()
    with seed(rng_seed=5):
        assert recording(a) == inside  # same seed, same key


def test_callable_distribution_b_is_called_each_time():
    calls = []

    def make_b():
        calls.append(1)
        return dist.Normal(0.0, 1.0)

    reg = KLDivergenceRegularizer(make_b, use_exact_kl=True)
    reg(dist.Normal(1.0, 1.0))
    reg(dist.Normal(1.0, 1.0))
    assert len(calls) == 2
    with pytest.raises(TypeError, match="must return a numpyro Distribution, got float"):
        KLDivergenceRegularizer(lambda: 1.0, use_exact_kl=True)(dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="expected a numpyro Distribution"):
        reg(jnp.zeros(2))


CONFIG_CASES = {
    "Normal": (dist.Normal(0.0, 1.5), "scalar"),
    "Laplace": (dist.Laplace(jnp.array([0.0, 1.0]), 0.5), "scalar"),
    "StudentT": (dist.StudentT(3.0, 0.0, 2.0), "scalar"),
    "MultivariateNormal": (dist.MultivariateNormal(jnp.array([0.1, -0.1]), jnp.array([[2.0, 0.3], [0.3, 1.0]])), "vec"),
    "Independent(Normal)": (dist.Normal(jnp.zeros(2), 1.0).to_event(1), "vec"),
    "Independent(Expanded(Normal))": (dist.Normal(0.0, 1.0).expand([2]).to_event(1), "vec"),
    "Independent(Laplace)": (dist.Laplace(0.0, jnp.array([1.0, 2.0])).to_event(1), "vec"),
    "Expanded(StudentT)": (dist.StudentT(4, 0.0, 1.0).expand([2]), "scalar"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_round_trip_through_json(case):
    b, kind = CONFIG_CASES[case]
    reg = KLDivergenceRegularizer(
        b, test_points_reduce_axis=0, test_points_fn=SamplePoints(7), weight=jnp.array([1.0, 0.5])
    )
    config = json.loads(json.dumps(reg.get_config()))
    rebuilt = KLDivergenceRegularizer.from_config(config)
    assert type(rebuilt.distribution_b) is type(b)
    assert rebuilt.distribution_b.batch_shape == b.batch_shape and rebuilt.distribution_b.event_shape == b.event_shape
    assert rebuilt.test_points_fn == SamplePoints(7) and rebuilt.test_points_reduce_axis == (0,)
    assert json.loads(json.dumps(rebuilt.get_config())) == config
    a = dist.Normal(jnp.array([0.3, -0.2]), 0.7)
    a = a if kind == "scalar" else a.to_event(1)
    key = jax.random.PRNGKey(11)
    np.testing.assert_array_equal(rebuilt(a, key), reg(a, key))  # same numbers, bit for bit


def test_default_config_and_add_loss_config():
    reg = KLDivergenceRegularizer(dist.Normal(0.0, 1.0))
    assert reg.get_config() == {
        "distribution_b": {"type": "Normal", "loc": 0.0, "scale": 1.0},
        "use_exact_kl": False,
        "test_points_reduce_axis": [],
        "test_points_fn": None,
        "weight": None,
    }
    assert KLDivergenceRegularizer.from_config(reg.get_config()).test_points_reduce_axis == ()
    add = KLDivergenceAddLoss(
        dist.Normal(0.0, 1.0), use_exact_kl=True, test_points_reduce_axis=None, weight=2.0, name="k"
    )
    rebuilt = KLDivergenceAddLoss.from_config(json.loads(json.dumps(add.get_config())))
    assert (rebuilt.name, rebuilt.use_exact_kl, rebuilt.test_points_reduce_axis) == ("k", True, None)
    assert rebuilt.weight == 2.0


def test_undescribable_parts_are_clear_errors():
    with pytest.raises(TypeError, match="distribution_b is a callable"):
        KLDivergenceRegularizer(lambda: dist.Normal(0.0, 1.0)).get_config()
    with pytest.raises(TypeError, match="test_points_fn is the callable '<lambda>'"):
        KLDivergenceRegularizer(dist.Normal(0.0, 1.0), test_points_fn=lambda d, k: d.mean).get_config()
    with pytest.raises(TypeError, match="cannot describe Gamma"):
        KLDivergenceRegularizer(dist.Gamma(2.0, 1.0)).get_config()
    with pytest.raises(TypeError, match="cannot describe Gamma"):  # also when wrapped
        KLDivergenceRegularizer(dist.Gamma(2.0, 1.0).expand([3]).to_event(1)).get_config()
    with pytest.raises(ValueError, match="unknown distribution type 'Gamma'"):
        KLDivergenceRegularizer.from_config({"distribution_b": {"type": "Gamma", "concentration": 2.0}})
    with pytest.raises(ValueError, match="missing \\['scale'\\]"):
        KLDivergenceRegularizer.from_config({"distribution_b": {"type": "Normal", "loc": 0.0}})
    with pytest.raises(TypeError, match="test_points_reduce_axis"):
        KLDivergenceRegularizer(dist.Normal(0.0, 1.0), test_points_reduce_axis=0.5)


# ---------------------------------------------------------------- KLDivergenceAddLoss


def _fixed_q(n=4):
    return dist.Normal(jnp.linspace(-1.0, 1.0, n), 0.5)  # batch (n,), known closed-form KL


def _kl_fixed_q(n=4):
    return dist.kl_divergence(_fixed_q(n), dist.Normal(0.0, 1.0))  # shape (n,)


def test_add_loss_returns_the_distribution_and_adds_minus_the_penalty():
    add = KLDivergenceAddLoss(dist.Normal(0.0, 1.0), use_exact_kl=True, name="kl")
    q = _fixed_q()

    def model():
        assert add(q) is q

    tr = trace(seed(model, 0)).get_trace()
    site = tr["kl"]
    assert site["type"] == "sample" and site["is_observed"]
    # outside any plate the factor is the scalar penalty, the regularizer's value
    regularizer = KLDivergenceRegularizer(dist.Normal(0.0, 1.0), use_exact_kl=True)
    assert site["fn"].log_factor.shape == ()
    np.testing.assert_allclose(site["fn"].log_prob(site["value"]), -regularizer(q), rtol=1e-6)
    np.testing.assert_allclose(-regularizer(q), -_kl_fixed_q().sum(), rtol=1e-6)


def _penalty_model(add, with_plate=False, n=4, subsample=None):
    def model():
        if with_plate:
            with numpyro.plate("data", n, subsample_size=subsample) as idx:
                add(dist.Normal(jnp.linspace(-1.0, 1.0, n)[idx], 0.5))
        else:
            add(_fixed_q(n))

    return model


def _guide(*args, **kwargs):
    pass


ELBOS = {
    "Trace_ELBO": Trace_ELBO,
    "TraceMeanField_ELBO": TraceMeanField_ELBO,
    "TraceGraph_ELBO": TraceGraph_ELBO,
    "RenyiELBO": RenyiELBO,
    "npvi.ELBO": npvi.ELBO,
}


@pytest.mark.parametrize("elbo", list(ELBOS))
def test_penalty_counted_once_under_every_elbo(elbo):
    add = KLDivergenceAddLoss(dist.Normal(0.0, 1.0), use_exact_kl=True, name="kl")
    penalty = float(_kl_fixed_q().sum())
    key = jax.random.PRNGKey(0)
    for model in (_penalty_model(add), _penalty_model(add, with_plate=True)):
        loss = ELBOS[elbo]().loss(key, {}, model, _guide)
        np.testing.assert_allclose(loss, penalty, rtol=1e-6)  # -ELBO = +penalty, once


def test_plate_subsampling_and_handlers_scale():
    add = KLDivergenceAddLoss(dist.Normal(0.0, 1.0), use_exact_kl=True, name="kl")
    model = _penalty_model(add, with_plate=True, n=8, subsample=2)
    tr = trace(seed(model, 1)).get_trace()
    assert tr["kl"]["scale"] == 4.0  # N / B = 8 / 2
    assert tr["kl"]["fn"].log_factor.shape == (2,)  # one term per example in the minibatch
    loss = Trace_ELBO().loss(jax.random.PRNGKey(0), {}, model, _guide)
    np.testing.assert_allclose(loss, 4.0 * np.sum(-tr["kl"]["fn"].log_factor), rtol=1e-6)
    half = Trace_ELBO().loss(jax.random.PRNGKey(0), {}, scale(_penalty_model(add), 0.5), _guide)
    np.testing.assert_allclose(half, 0.5 * float(_kl_fixed_q().sum()), rtol=1e-6)


def test_terms_are_summed_down_to_the_plate_shape():
    # 3 test points per element, no reduction: terms (3, 4, 2) inside a plate at dim -2 of size 4
    add = KLDivergenceAddLoss(dist.Normal(0.0, 1.0), test_points_fn=SamplePoints(3), name="kl")
    a = dist.Normal(jnp.linspace(-1.0, 1.0, 8).reshape(4, 2), 0.5)
    key = jax.random.PRNGKey(4)

    def model():
        with numpyro.plate("data", 4, dim=-2):
            add(a, rng_key=key)

    tr = trace(seed(model, 0)).get_trace()
    expected = KLDivergenceRegularizer(dist.Normal(0.0, 1.0), test_points_fn=SamplePoints(3)).terms(a, key)
    assert expected.shape == (3, 4, 2) and tr["kl"]["fn"].log_factor.shape == (4, 1)
    np.testing.assert_allclose(-tr["kl"]["fn"].log_factor, expected.sum((0, 2))[:, None], rtol=1e-5)


def test_penalty_the_plate_would_copy_is_an_error():
    add = KLDivergenceAddLoss(dist.Normal(0.0, 1.0), test_points_reduce_axis=None, name="kl")
    with pytest.raises(ValueError, match=r"inside plate\(s\) \['data'\].*shape \(\)"):
        seed(_penalty_model(add, with_plate=True), 0)()


def test_monte_carlo_add_loss_uses_the_model_key():
    seen = []

    def points(d, key):
        seen.append(key)
        return d.sample(key)

    add = KLDivergenceAddLoss(dist.Normal(0.0, 1.0), test_points_fn=points, name="kl")
    tr = trace(seed(_penalty_model(add), 9)).get_trace()
    expected = KLDivergenceRegularizer(dist.Normal(0.0, 1.0))(_fixed_q(), rng_key=seen[0])
    np.testing.assert_allclose(-tr["kl"]["fn"].log_factor.sum(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        _penalty_model(KLDivergenceAddLoss(dist.Normal(0.0, 1.0), name="kl"))()


def test_add_loss_name_is_required_and_unique():
    with pytest.raises(TypeError, match="name"):
        KLDivergenceAddLoss(dist.Normal(0.0, 1.0))
    add = KLDivergenceAddLoss(dist.Normal(0.0, 1.0), use_exact_kl=True, name="kl")

    def twice():
        add(_fixed_q())
        add(_fixed_q())

    with pytest.raises(ValueError, match="'kl' is already used"):
        trace(seed(twice, 0)).get_trace()


# ---------------------------------------------------------------- a small VAE

N, D, K = 64, 4, 2
PRIOR = dist.Normal(jnp.zeros(K), 1.0).to_event(1)
ADD_KL = KLDivergenceAddLoss(PRIOR, use_exact_kl=True, name="kl")


def _vae_data():
    kz, ka, kn = jax.random.split(jax.random.PRNGKey(0), 3)
    return jax.random.normal(kz, (N, K)) @ jax.random.normal(ka, (K, D)) + 0.3 * jax.random.normal(kn, (N, D))


def _encoder(params, x):
    h = x @ params["enc.w"] + params["enc.b"]
    return dist.Normal(h[:, :K], jax.nn.softplus(h[:, K:])).to_event(1)


def vae_model(x):
    """TFP's VAE pattern: q(z|x) from an encoder, KLDivergenceAddLoss on it, z ~ q, Normal decoder."""
    enc = {
        "enc.w": numpyro.param("enc.w", lambda k: 0.1 * jax.random.normal(k, (D, 2 * K))),
        # starts far from the prior (loc 2, scale 0.13), so the penalty has room to fall
        "enc.b": numpyro.param("enc.b", jnp.concatenate([jnp.full(K, 2.0), jnp.full(K, -2.0)])),
    }
    w_dec = numpyro.param("dec.w", lambda k: 0.1 * jax.random.normal(k, (K, D)))
    b_dec = numpyro.param("dec.b", jnp.zeros(D))
    with numpyro.plate("data", x.shape[0]):
        q = ADD_KL(_encoder(enc, x))
        z = numpyro.deterministic("z", q.sample(numpyro.prng_key()))
        numpyro.sample("x", dist.Normal(z @ w_dec + b_dec, 1.0).to_event(1), obs=x)


def test_vae_training_reduces_the_penalty_and_elbo_is_likelihood_minus_penalty():
    x = _vae_data()

    def penalty(params):
        return float(dist.kl_divergence(_encoder(params, x), PRIOR).sum())

    svi = SVI(vae_model, _guide, optax.adam(0.05), Trace_ELBO())
    initial = svi.get_params(svi.init(jax.random.PRNGKey(1), x))
    result = svi.run(jax.random.PRNGKey(1), 300, x, progress_bar=False)
    # ~454 nats at the start, ~128 after 300 steps with these keys
    assert penalty(result.params) < 0.5 * penalty(initial)
    assert result.losses[-1] < result.losses[0]

    key = jax.random.PRNGKey(2)
    loss = Trace_ELBO().loss(key, result.params, vae_model, _guide, x)
    model_trace, _ = svi_traces(vae_model, _guide, result.params, key, x)  # Trace_ELBO's key split
    p = result.params
    z = model_trace["z"]["value"]
    log_likelihood = dist.Normal(z @ p["dec.w"] + p["dec.b"], 1.0).log_prob(x).sum()
    assert np.std(np.asarray(z)) > 0.1  # the key matters: z is a draw, not the mean
    np.testing.assert_allclose(-loss, log_likelihood - penalty(p), rtol=1e-5)  # float32 sums of ~500 terms
