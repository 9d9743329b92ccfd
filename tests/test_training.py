"""npvi.fit and npvi.Trainer: the epoch loop against svi.run, shuffling, reproducibility, compiled
programs reused and freed, progress bar and bad input."""

from __future__ import annotations

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import count_compiles
from numpyro.infer import SVI

import npvi

N, D = 40, 3


def model(x, y=None, num_data=None):
    mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.PRNGKey(1), (N, D))
    return x, x @ jnp.array([1.0, -2.0, 0.5])


def make_svi(learning_rate=1e-2):
    return SVI(model, npvi.MeanFieldGuide(model), optax.adam(learning_rate), npvi.ELBO())


def test_one_full_batch_per_epoch_matches_svi_run(data):
    x, y = data
    key = jax.random.PRNGKey(0)
    result = npvi.fit(make_svi(), key, x, y, num_epochs=30, batch_size=N, shuffle=False, progress_bar=False)
    init_key, _ = jax.random.split(key)  # fit initialises with the first half of its key
    reference = make_svi().run(init_key, 30, x, y, num_data=N, progress_bar=False)
    np.testing.assert_allclose(result.losses, reference.losses, rtol=1e-5)
    for name in reference.params:
        np.testing.assert_allclose(result.params[name], reference.params[name], rtol=1e-5, atol=1e-6)


def test_minibatch_epochs_train_and_count_steps(data):
    x, y = data
    result = npvi.fit(make_svi(5e-2), jax.random.PRNGKey(0), x, y, num_epochs=60, batch_size=16, progress_bar=False)
    assert result.losses.shape == (60 * (N // 16),)  # the remainder of each epoch is dropped
    assert np.isfinite(result.losses).all()
    steps = N // 16
    assert result.losses[-10 * steps :].mean() < 0.2 * result.losses[: 10 * steps].mean()
    np.testing.assert_allclose(result.params["out.kernel.loc"][:, 0], [1.0, -2.0, 0.5], atol=0.15)


def test_each_epoch_sees_a_fresh_permutation(data):
    """Pass the row ids as a third data array and record the minibatches that reach the model."""
    x, y = data
    seen = []

    def spy_model(x, y=None, ids=None, num_data=None):
        jax.debug.callback(lambda rows: seen.append(np.asarray(rows)), ids, ordered=True)
        model(x, y, num_data=num_data)

    svi = SVI(spy_model, npvi.MeanFieldGuide(spy_model), optax.adam(1e-2), npvi.ELBO())
    ids = jnp.arange(N)
    npvi.fit(svi, jax.random.PRNGKey(3), x, y, ids, num_epochs=2, batch_size=10, progress_bar=False)
    jax.effects_barrier()
    batches = np.stack(seen[-8:])  # 2 epochs of 4 minibatches; earlier calls are svi.init's
    first, second = batches[:4].ravel(), batches[4:].ravel()
    for epoch in (first, second):
        assert sorted(epoch.tolist()) == list(range(N))  # every row once
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(N))


def test_same_key_same_numbers_other_key_other_numbers(data):
    x, y = data
    runs = [
        npvi.fit(make_svi(), jax.random.PRNGKey(seed), x, y, num_epochs=3, batch_size=8, progress_bar=False).losses
        for seed in (0, 0, 1)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_progress_bar_shows_the_elbo_and_can_be_switched_off(data, capsys):
    x, y = data
    npvi.fit(make_svi(), jax.random.PRNGKey(0), x, y, num_epochs=2, batch_size=20, progress_bar=True)
    assert "ELBO" in capsys.readouterr().err
    npvi.fit(make_svi(), jax.random.PRNGKey(0), x, y, num_epochs=2, batch_size=20, progress_bar=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x, y: dict(args=(x, y), batch_size=N + 1), ValueError, f"batch_size {N + 1} is larger than the data"),
        (lambda x, y: dict(args=(x, y[:-1]), batch_size=8), ValueError, f"got lengths [{N}, {N - 1}]"),
        (lambda x, y: dict(args=(x, y), batch_size=0), ValueError, "batch_size must be a positive int, got 0"),
        (lambda x, y: dict(args=(x, y), batch_size=8.0), ValueError, "batch_size must be a positive int, got 8.0"),
        (lambda x, y: dict(args=(x, 1.0), batch_size=8), TypeError, "data argument 1 is the number 1.0, not an array"),
        (lambda x, y: dict(args=(x, [1.0]), batch_size=8), TypeError, "data argument 1 must be an array"),
        (lambda x, y: dict(args=(x, y.at[3].set(jnp.nan)), batch_size=8), ValueError, "data argument 1 must be finite"),
        (lambda x, y: dict(args=(), batch_size=8), ValueError, "at least one data array"),
        (lambda x, y: dict(args=(x, y), batch_size=8, num_data=5), TypeError, "fit passes num_data= itself"),
    ],
)
def test_bad_input_is_refused_before_training(data, call, error, message):
    x, y = data
    kwargs = call(x, y)
    args = kwargs.pop("args")
    with pytest.raises(error) as info:
        npvi.fit(make_svi(), jax.random.PRNGKey(0), *args, num_epochs=1, progress_bar=False, **kwargs)
    assert message in str(info.value)


def test_bad_epoch_count_and_a_model_without_num_data(data):
    x, y = data
    with pytest.raises(ValueError, match="num_epochs must be a positive int, got 0"):
        npvi.fit(make_svi(), jax.random.PRNGKey(0), x, y, num_epochs=0, batch_size=8)

    def plain_model(x, y=None):
        model(x, y)

    svi = SVI(plain_model, npvi.MeanFieldGuide(plain_model), optax.adam(1e-2), npvi.ELBO())
    with pytest.raises(TypeError, match="does not take a 'num_data' keyword"):
        npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=8)


def noisy_model(x, y=None, num_data=None):
    mu = npvi.DenseReparameterization(1, name="out")(x)[..., 0]
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_a_model_with_other_latents_matches_svi_run(data):
    """The guide's own posterior for sigma: fit's compiled init and epochs are svi.run's steps."""
    x, y = data

    def svi():
        return SVI(noisy_model, npvi.MeanFieldGuide(noisy_model), optax.adam(1e-2), npvi.ELBO())

    key = jax.random.PRNGKey(5)
    result = npvi.fit(svi(), key, x, y, num_epochs=20, batch_size=N, shuffle=False, progress_bar=False)
    reference = svi().run(jax.random.split(key)[0], 20, x, y, num_data=N, progress_bar=False)
    np.testing.assert_allclose(result.losses, reference.losses, rtol=1e-5)
    assert {"sigma.loc", "sigma.untransformed_scale"} <= set(result.params)


def test_the_first_guide_call_can_be_jitted(data):
    x, y = data
    svi = SVI(noisy_model, npvi.MeanFieldGuide(noisy_model), optax.adam(1e-2), npvi.ELBO())
    jitted = svi.get_params(jax.jit(svi.init)(jax.random.PRNGKey(0), x, y))
    fresh = SVI(noisy_model, npvi.MeanFieldGuide(noisy_model), optax.adam(1e-2), npvi.ELBO())
    eager = fresh.get_params(fresh.init(jax.random.PRNGKey(0), x, y))
    assert jitted.keys() == eager.keys()
    for name in eager:
        np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-6, atol=1e-7)


def test_a_trainer_compiles_once_and_reuses_its_programs(data):
    x, y = data
    trainer = npvi.Trainer(make_svi(), batch_size=8)
    key, other_key = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    with count_compiles() as first:
        result = trainer.fit(key, x, y, num_epochs=2, progress_bar=False)
    with count_compiles() as again:
        repeat = trainer.fit(key, x, y, num_epochs=2, progress_bar=False)
        trainer.fit(other_key, x, y, num_epochs=3, init_state=result.state, progress_bar=False)
    assert len(first) >= 2 and again == []  # init and epoch compiled once, then reused
    np.testing.assert_array_equal(repeat.losses, result.losses)


def test_the_first_epochs_of_a_longer_run_are_the_shorter_run(data):
    x, y = data
    key = jax.random.PRNGKey(4)
    short = npvi.fit(make_svi(), key, x, y, num_epochs=2, batch_size=8, progress_bar=False)
    long = npvi.fit(make_svi(), key, x, y, num_epochs=4, batch_size=8, progress_bar=False)
    steps = 2 * (N // 8)
    np.testing.assert_array_equal(long.losses[:steps], short.losses)
    assert not np.array_equal(long.losses[steps:], short.losses)


def test_nothing_keeps_the_model_guide_svi_or_programs_alive(data):
    x, y = data

    def train_and_predict():
        def local_model(x, y=None, num_data=None):
            noisy_model(x, y, num_data)

        guide = npvi.MeanFieldGuide(local_model)
        svi = SVI(local_model, guide, optax.adam(1e-2), npvi.ELBO())
        trainer = npvi.Trainer(svi, batch_size=8)
        result = trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=2, progress_bar=False)
        npvi.fit(svi, jax.random.PRNGKey(1), x, y, num_epochs=1, batch_size=8, progress_bar=False)
        predictive = npvi.Predictive(local_model, guide, result.params, 4)
        predictive(jax.random.PRNGKey(2), x)
        npvi.to_inference_data(local_model, guide, result.params, x, y, rng_key=jax.random.PRNGKey(3), num_samples=4)
        return [weakref.ref(obj) for obj in (local_model, guide, svi, trainer, predictive)]

    refs = train_and_predict()
    gc.collect()
    assert [ref() for ref in refs] == [None] * len(refs)


def unscaled_model(x, y=None, num_data=None):
    """Takes num_data but forgets it: the likelihood is not scaled to the full data."""
    mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


def test_an_unscaled_likelihood_is_caught_before_training(data):
    x, y = data
    svi = SVI(unscaled_model, npvi.MeanFieldGuide(unscaled_model), optax.adam(1e-2), npvi.ELBO())
    expected = (
        r"(?s)fit: the observed site 'y' is scaled by 1, but minibatches of 8 from 40 examples need "
        r"N / batch_size = 5; without it the KL weighs 5 times too much.*check_scale=False"
    )
    with pytest.raises(ValueError, match=expected) as info:
        npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=8, progress_bar=False)
    assert 'with numpyro.plate("data", num_data, subsample_size=x.shape[0]):' in str(info.value)
    # Full batches need no scale; a model that scales its own way says so.
    npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=N, progress_bar=False)

    def hand_scaled(x, y=None, num_data=None):
        with numpyro.handlers.scale(scale=(num_data or x.shape[0]) / x.shape[0]):
            unscaled_model(x, y)

    scaled = SVI(hand_scaled, npvi.MeanFieldGuide(hand_scaled), optax.adam(1e-2), npvi.ELBO())
    npvi.fit(scaled, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=8, progress_bar=False)  # passes
    result = npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=8, check_scale=False,
                      progress_bar=False)  # fmt: skip
    assert result.losses.shape == (5,)


def test_a_kl_schedule_anneals_as_a_hand_written_loop_does(data):
    """fit's schedule against the steps written out: an ELBO with kl_weight = schedule(t) at step t."""
    x, y = data
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=6)
    key = jax.random.PRNGKey(7)
    result = npvi.fit(make_svi(), key, x, y, num_epochs=3, batch_size=10, shuffle=False, kl_schedule=schedule,
                      progress_bar=False)  # fmt: skip

    svi = make_svi()
    state = svi.init(jax.random.split(key)[0], x[:10], y[:10], num_data=N)
    params, rng_key = svi.get_params(state), state.rng_key  # MeanFieldGuide's params are all unconstrained
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def step_loss(params, step_key, kl_weight, x_batch, y_batch):
        return npvi.ELBO(kl_weight=kl_weight).loss(step_key, params, model, svi.guide, x_batch, y_batch, num_data=N)

    losses = []
    for t in range(12):  # 3 epochs of 4 minibatches, in order
        rows = slice((t % 4) * 10, (t % 4 + 1) * 10)
        rng_key, step_key = jax.random.split(rng_key)
        loss, grads = jax.value_and_grad(step_loss)(params, step_key, schedule(t), x[rows], y[rows])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(loss)
    np.testing.assert_allclose(result.losses, np.array(losses), rtol=2e-5)
    for name in params:
        np.testing.assert_allclose(result.params[name], params[name], rtol=1e-4, atol=1e-6)
    plain = npvi.fit(make_svi(), key, x, y, num_epochs=3, batch_size=10, shuffle=False, progress_bar=False)
    assert plain.losses[0] > result.losses[0]  # step 0 has kl_weight 0: the KL is left out


def test_counts_are_keywords_and_a_number_among_the_data_says_so(data):
    x, y = data
    with pytest.raises(TypeError, match=r"fit needs num_epochs=, the number of passes over the data"):
        npvi.fit(make_svi(), jax.random.PRNGKey(0), 30, x, y, batch_size=8)  # epochs as in svi.run's steps
    with pytest.raises(TypeError, match=r"data argument 0 is the number 30, not an array; the counts are keywords"):
        npvi.fit(make_svi(), jax.random.PRNGKey(0), 30, x, y, num_epochs=30, batch_size=8)
    with pytest.raises(TypeError, match=r"kl_schedule needs npvi.ELBO as the SVI's loss.*Trace_ELBO"):
        from numpyro.infer import Trace_ELBO

        npvi.Trainer(SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), Trace_ELBO()), batch_size=8,
                     kl_schedule=lambda t: 1.0)  # fmt: skip
