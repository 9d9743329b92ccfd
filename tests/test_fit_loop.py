"""The training loop a user steers: validation data, early stopping, divergence caught, compile time apart from
the epochs, and Keras' habits answered in npvi's words."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import count_compiles
from jax.scipy.special import logsumexp
from numpyro.infer import SVI

import npvi
from npvi.predictive import traced_draw

N, D, B = 48, 3, 8


def model(x, y=None, num_data=None):
    mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.PRNGKey(1), (N + 16, D))
    y = x @ jnp.array([1.0, -2.0, 0.5])
    return (x[:N], y[:N]), (x[N:], y[N:])


@pytest.fixture(scope="module")
def trainer():
    """One trainer for the module, so that its fits share their compiled programs."""
    return npvi.Trainer(SVI(model, npvi.MeanFieldGuide(model), optax.adam(2e-2), npvi.ELBO()), batch_size=B,
                        validation_samples=16)  # fmt: skip


def by_hand(svi, params, key, num_samples, x, y):
    """The mean log predictive density per example, written out: one traced draw per key of split(key, S)."""

    @jax.jit
    def log_likelihood(draw_key):
        _, trace = traced_draw(svi.model, svi.guide, params, draw_key, x, y, num_data=x.shape[0])
        return trace["y"]["fn"].log_prob(y)

    log_liks = jnp.stack([log_likelihood(draw_key) for draw_key in jax.random.split(key, num_samples)])
    return float(jnp.mean(logsumexp(log_liks, axis=0) - np.log(num_samples)))


def test_the_validation_score_is_the_mean_log_predictive_density(data, trainer):
    (x, y), (x_val, y_val) = data
    key = jax.random.PRNGKey(0)
    result = trainer.fit(key, x, y, num_epochs=6, validation_data=(x_val, y_val), validation_freq=3,
                         progress_bar=False)  # fmt: skip
    assert list(result.history["val_epoch"]) == [3, 6] and list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(  # the epoch's mean loss (summed in another order by XLA: float32 rounding)
        result.history["loss"], np.asarray(result.losses).reshape(6, N // B).mean(axis=1), rtol=1e-6
    )
    validation_key = jax.random.fold_in(key, npvi.training.VALIDATION_STREAM)
    expected = by_hand(trainer.svi, result.params, validation_key, 16, x_val, y_val)
    np.testing.assert_allclose(result.history["val_log_likelihood"][-1], expected, rtol=1e-5)
    np.testing.assert_allclose(trainer.evaluate(result.state, validation_key, x_val, y_val), expected, rtol=1e-5)
    np.testing.assert_allclose(trainer.evaluate(result.params, validation_key, x_val, y_val), expected, rtol=1e-5)
    # the score rose as the fit learned (the first check is after 3 epochs of 6 steps)
    assert result.history["val_log_likelihood"][-1] > result.history["val_log_likelihood"][0]


def test_a_loop_of_epochs_and_checks_compiles_each_program_once(data, trainer):
    """Today's alternative, a new Predictive per check, compiled every time; the trainer keeps its programs."""
    (x, y), (x_val, y_val) = data
    key = jax.random.PRNGKey(1)
    trainer = npvi.Trainer(trainer.svi, batch_size=B, validation_samples=16)  # a new one: its programs are new
    state = trainer.init(key, x, y)
    scores = []
    with count_compiles() as compiles:
        for epoch in range(1, 6):
            state, _ = trainer.epoch(state, key, epoch, x, y)
            scores.append(float(trainer.evaluate(state, key, x_val, y_val)))
            if epoch == 1:
                first = len(compiles)
    assert first >= 1 and len(compiles) == first  # epochs 2 to 5 compiled nothing


def test_early_stopping_stops_on_patience_and_returns_the_best_state(data, trainer):
    (x, y), (x_val, y_val) = data
    key = jax.random.PRNGKey(2)
    # Validation targets the fit disagrees with (halved): the score peaks, then falls.
    settings = dict(validation_data=(x_val, 0.5 * y_val), progress_bar=False)
    rule = npvi.EarlyStopping(patience=4)
    result = trainer.fit(key, x, y, num_epochs=80, early_stopping=rule, **settings)
    scores, checks = result.history["val_log_likelihood"], result.history["val_epoch"]
    assert result.stopped_epoch is not None and result.stopped_epoch == result.epoch == checks[-1] < 80
    assert result.best_epoch == checks[int(np.argmax(scores))]
    assert result.stopped_epoch - result.best_epoch == 4  # stopped at the first check that ran out of patience
    assert np.all(np.diff(scores[: int(np.argmax(scores)) + 1]) > 0) or result.best_epoch < result.stopped_epoch
    best_run = trainer.fit(key, x, y, num_epochs=result.best_epoch, progress_bar=False)  # same key: same epochs
    for name, value in best_run.params.items():
        np.testing.assert_array_equal(result.params[name], value)
    assert result.losses.shape == (result.epoch * (N // B),)
    # without restoring, the last state comes back; monitoring the training loss needs no validation data
    last = trainer.fit(key, x, y, num_epochs=80, early_stopping=npvi.EarlyStopping(patience=4,
                       restore_best_weights=False), **settings)  # fmt: skip
    assert last.stopped_epoch == result.stopped_epoch and not np.array_equal(last.params["out.bias"],
                                                                             result.params["out.bias"])  # fmt: skip
    never = npvi.EarlyStopping(patience=3, monitor="loss", min_delta=1e9)  # nothing after epoch 1 counts
    stopped = trainer.fit(key, x, y, num_epochs=10, early_stopping=never, progress_bar=False)
    assert (stopped.best_epoch, stopped.stopped_epoch) == (1, 4)


def test_early_stopping_settings_are_checked():
    with pytest.raises(ValueError, match=r"monitor must be one of \['loss', 'val_log_likelihood'\], got 'val_loss'; "
                                         r"npvi's held-out score is 'val_log_likelihood'"):  # fmt: skip
        npvi.EarlyStopping(monitor="val_loss")
    with pytest.raises(ValueError, match="patience must be a positive int, got 0"):
        npvi.EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="min_delta must be a finite number >= 0"):
        npvi.EarlyStopping(min_delta=-1.0)


def test_early_stopping_on_the_held_out_score_needs_validation_data(data, trainer):
    (x, y), _ = data
    with pytest.raises(ValueError, match=r"monitors 'val_log_likelihood', which needs validation_data=\(x_val"):
        trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=3, early_stopping=npvi.EarlyStopping())
    with pytest.raises(TypeError, match="validation_data must be a tuple of arrays"):
        trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=3, validation_data=x)


def diverging_svi():
    """Adam at 1e-3 for 3 epochs of 6 steps, then at 1e4: the loss overflows in epoch 4."""
    schedule = optax.piecewise_constant_schedule(1e-3, {3 * (N // B): 1e7})
    return SVI(model, npvi.MeanFieldGuide(model), optax.sgd(schedule), npvi.ELBO())


def test_a_diverging_fit_stops_at_the_first_bad_epoch_and_keeps_the_last_finite_state(data, tmp_path):
    (x, y), _ = data
    trainer = npvi.Trainer(diverging_svi(), batch_size=B)
    key = jax.random.PRNGKey(3)
    checkpoints = npvi.Checkpoints(tmp_path, every=10)
    with pytest.raises(npvi.DivergenceError) as caught:
        trainer.fit(key, x, y, num_epochs=50, checkpoints=checkpoints, progress_bar=False)
    error = caught.value
    assert isinstance(error, FloatingPointError) and error.epoch == 4
    message = str(error)
    assert f"at step {error.step} of epoch 4 (step {18 + error.step} of the run); training stopped there" in message
    assert "The state after epoch 3, the last with a finite loss, is in error.result" in message
    assert "Lower the learning rate" in message and "epoch-000003.npz" in message
    assert error.result.epoch == 3 and all(bool(jnp.isfinite(v).all()) for v in error.result.params.values())
    three = trainer.fit(key, x, y, num_epochs=3, progress_bar=False)
    for name, value in three.params.items():
        np.testing.assert_array_equal(error.result.params[name], value)
    assert checkpoints.epochs() == [3]  # the last finite state is on disk too
    # stable_update keeps the state finite by design: a warning, and training goes on
    stable = npvi.Trainer(diverging_svi(), batch_size=B, stable_update=True)
    with pytest.warns(RuntimeWarning, match="the mean loss of epoch 4 is"):
        result = stable.fit(key, x, y, num_epochs=5, progress_bar=False)
    assert result.epoch == 5 and all(bool(jnp.isfinite(v).all()) for v in result.params.values())


def test_every_program_compiles_before_the_progress_bar_starts_timing_epochs(data, trainer, capsys, monkeypatch):
    """The bar's clock starts (tqdm.unpause) after the init, epoch and validation programs have compiled."""
    (x, y), (x_val, y_val) = data
    timeline = []
    unpause = npvi.training.tqdm.unpause
    monkeypatch.setattr(npvi.training.tqdm, "unpause", lambda bar: (timeline.append("start"), unpause(bar))[1])

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            timeline.append("compile")

    fresh = npvi.Trainer(trainer.svi, batch_size=B // 2)  # new programs: everything compiles
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        fresh.fit(jax.random.PRNGKey(0), x, y, num_epochs=3, validation_data=(x_val, y_val), progress_bar=True)
        first = list(timeline)
        timeline.clear()
        fresh.fit(jax.random.PRNGKey(1), x, y, num_epochs=3, validation_data=(x_val, y_val), progress_bar=True)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert first.count("compile") >= 3 and first[-1] == "start"  # init, epoch, validation: all before the epochs
    assert timeline == ["start"]  # the same shapes again: nothing compiles
    err = capsys.readouterr().err
    assert "fit: compiling" in err and "fit (compiled in " in err and "ELBO" in err and "val LL" in err


@pytest.mark.parametrize(
    "keyword, says",
    [
        ("epochs", "npvi's is num_epochs"),
        ("verbose", r"npvi's is progress_bar \(True or False\)"),
        ("callbacks", r"npvi's is early_stopping=npvi.EarlyStopping\(...\) and checkpoints=npvi.Checkpoints"),
        ("validation_split", r"npvi's is validation_data=\(x_val, y_val\)"),
    ],
)
def test_keras_keywords_get_npvis_names(data, trainer, keyword, says):
    (x, y), _ = data
    with pytest.raises(TypeError, match=rf"fit: {keyword}= is Keras' keyword; {says}"):
        npvi.fit(trainer.svi, jax.random.PRNGKey(0), x, y, batch_size=B, **{keyword: 1})
    with pytest.raises(TypeError, match=rf"fit: {keyword}= is Keras' keyword"):
        trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=1, **{keyword: 1})


def test_a_model_that_takes_a_keras_name_gets_it(data):
    (x, y), _ = data
    seen = []

    def verbose_model(x, y=None, num_data=None, verbose=False):
        seen.append(verbose)
        model(x, y, num_data)

    svi = SVI(verbose_model, npvi.MeanFieldGuide(verbose_model), optax.adam(1e-2), npvi.ELBO())
    npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=N, verbose=True, progress_bar=False)
    assert seen and all(seen)


@pytest.mark.parametrize(
    "args, error, message",
    [
        (lambda x, y: (x, y), TypeError, r"rng_key must be one JAX PRNG key \(jax.random.PRNGKey\(0\) or "
                                         r"jax.random.key\(0\)\), got a float32 array of shape \(48, 3\); the call is "
                                         r"fit\(svi, rng_key, x, y, num_epochs=..., batch_size=...\)"),
        (lambda x, y: (0, x, y), TypeError, r"rng_key must be a JAX PRNG key, got the int 0; use "
                                            r"jax.random.PRNGKey\(0\)"),
        (lambda x, y: (jax.random.PRNGKey(0), _frame(x), y), TypeError,
         r"data argument 0 is a pandas DataFrame \(48 rows x 3 columns\); pass its values as one array, e.g. "
         r"df.to_numpy\(dtype='float32'\)$"),
    ],
)  # fmt: skip
def test_misplaced_keys_and_data_frames_get_one_clear_message(data, trainer, args, error, message):
    (x, y), _ = data
    with pytest.raises(error, match=message):
        npvi.fit(trainer.svi, *args(x, y), num_epochs=1, batch_size=B)


def _frame(x):
    import pandas

    return pandas.DataFrame(np.asarray(x), columns=["a", "b", "c"])


def test_a_plate_of_the_full_size_without_subsample_size_is_said_in_npvis_words(data):
    (x, y), _ = data

    def full_plate_model(x, y=None, num_data=None):
        mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
        with numpyro.plate("data", num_data):
            numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)

    svi = SVI(full_plate_model, npvi.MeanFieldGuide(full_plate_model), optax.adam(1e-2), npvi.ELBO())
    expected = (
        rf"numpyro.plate\('data', {N}\) has the full data's size but no subsample_size, so NumPyro expects {N} values "
        rf"in it and a minibatch has {B}. Write\n    with numpyro.plate\(\"data\", num_data, subsample_size=x.shape"
    )
    with pytest.raises(ValueError, match=expected):
        npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=B, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full batch is that plate's own size: it trains, and says nothing
        npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=N, progress_bar=False)
