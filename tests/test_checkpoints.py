"""Checkpoints that resume: the whole SVIState saved and read back bit for bit, periodic checkpoints during
``fit``, a killed fit process resumed to the numbers of the uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import npvi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint_worker as worker  # noqa: E402
from conftest import without_compilation_cache  # noqa: E402

N, D = 48, 3


def model(x, y=None, num_data=None):
    mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.PRNGKey(1), (N, D))
    return x, x @ jnp.array([1.0, -2.0, 0.5])


@pytest.fixture(scope="module")
def trainer():
    """One trainer for the module: every fit below shares its compiled programs."""
    schedule = optax.linear_schedule(0.2, 1.0, 20)  # the KL weight depends on the step count: resuming must keep it
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    return npvi.Trainer(svi, batch_size=8, kl_schedule=schedule)


def same_tree(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(np.asarray(u).tobytes() == np.asarray(v).tobytes() for u, v in zip(leaves_a, leaves_b, strict=True))


def same_run(a, b) -> bool:
    history = sorted(a.history) == sorted(b.history) and all(
        np.array_equal(a.history[name], b.history[name]) for name in a.history
    )
    return same_tree(a.state, b.state) and same_tree(a.params, b.params) and same_tree(a.losses, b.losses) and history


def test_the_whole_state_saves_and_loads_bit_for_bit(tmp_path, data, trainer):
    x, y = data
    result = trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=2, progress_bar=False)
    path = tmp_path / "run.npz"
    npvi.save(path, [], result.params, state=result.state, epoch=2)
    like = jax.eval_shape(lambda: result.state)  # only the structure, shapes and dtypes are used
    state, epoch = npvi.load_state(path, like=like)
    assert epoch == 2 and same_tree(state, result.state)
    assert int(state.optim_state[0]) == 2 * (N // 8)  # the optimizer's step count came back with its moments
    # a typed key (jax.random.key) is stored as its key data and comes back as a key of the same impl
    typed = result.state._replace(rng_key=jax.random.key(3))
    npvi.save(path, [], result.params, state=typed)
    back = npvi.load_state(path, like=typed).state
    assert jax.random.key_impl(back.rng_key) == jax.random.key_impl(typed.rng_key)
    assert np.array_equal(jax.random.key_data(back.rng_key), jax.random.key_data(typed.rng_key))
    assert npvi.load_state(path, like=typed).epoch is None


def test_a_state_of_another_run_or_a_file_without_one_is_refused(tmp_path, data, trainer):
    x, y = data
    state = trainer.init(jax.random.PRNGKey(0), x, y)
    path = tmp_path / "run.npz"
    npvi.save(path, [], trainer.svi.get_params(state), state=state)
    sgd = SVI(model, npvi.MeanFieldGuide(model), optax.sgd(1e-2), npvi.ELBO())
    other = sgd.init(jax.random.PRNGKey(0), x[:8], y[:8], num_data=N)
    with pytest.raises(ValueError, match=r"has \d+ arrays, the state to fill has \d+.*same model, guide and optimizer"):
        npvi.load_state(path, like=other)
    npvi.save(path, [], trainer.svi.get_params(state))
    with pytest.raises(ValueError, match=r"holds no state; save it with npvi.save\(path, layers, params, state="):
        npvi.load_state(path, like=state)
    with pytest.raises(TypeError, match="state must be an SVIState"):
        npvi.save(path, [], {}, state={"not": "a state"})


def test_resuming_by_hand_gives_the_uninterrupted_run(data, trainer):
    x, y = data
    key = jax.random.PRNGKey(5)
    whole = trainer.fit(key, x, y, num_epochs=6, progress_bar=False)
    first = trainer.fit(key, x, y, num_epochs=2, progress_bar=False)
    rest = trainer.fit(key, x, y, num_epochs=6, init_state=first.state, initial_epoch=2, progress_bar=False)
    assert same_tree(rest.state, whole.state) and same_tree(rest.params, whole.params)
    np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), whole.losses)
    assert rest.epoch == 6 and list(rest.history["epoch"]) == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="initial_epoch=2 continues a run from its state after that epoch"):
        trainer.fit(key, x, y, num_epochs=6, initial_epoch=2, progress_bar=False)
    with pytest.raises(ValueError, match="initial_epoch=6 leaves no epoch to run up to num_epochs=6"):
        trainer.fit(key, x, y, num_epochs=6, init_state=first.state, initial_epoch=6, progress_bar=False)


def test_checkpoints_resume_a_run_with_validation_and_early_stopping_bit_for_bit(tmp_path, data, trainer):
    x, y = data
    key = jax.random.PRNGKey(6)
    settings = dict(
        validation_data=(x[:16], 0.5 * y[:16]),  # targets the fit disagrees with: the score peaks, then falls
        validation_freq=2,
        early_stopping=npvi.EarlyStopping(patience=6),
        progress_bar=False,
    )
    whole = trainer.fit(key, x, y, num_epochs=40, **settings)
    assert whole.stopped_epoch is not None and whole.stopped_epoch < 40  # the run under test does stop early
    assert whole.best_epoch < whole.stopped_epoch - 3
    directory = tmp_path / "run"
    cut = whole.stopped_epoch - 3  # interrupted between the best epoch and the stop
    part = trainer.fit(key, x, y, num_epochs=cut, checkpoints=npvi.Checkpoints(directory, every=3, keep=2),
                       **settings)  # fmt: skip
    saved = npvi.Checkpoints(directory).epochs()
    assert saved == sorted({3 * (cut // 3), cut})[-2:]  # every third epoch and the last, the newest two kept
    assert part.epoch == cut and part.stopped_epoch is None
    resumed = trainer.fit(key, x, y, num_epochs=40, checkpoints=npvi.Checkpoints(directory, every=3, keep=2),
                          resume=True, **settings)  # fmt: skip
    assert same_run(resumed, whole)
    assert (resumed.best_epoch, resumed.stopped_epoch, resumed.epoch) == (whole.best_epoch, whole.stopped_epoch,
                                                                          whole.epoch)  # fmt: skip
    # resuming a run that early stopping ended trains no further and returns the same result
    again = trainer.fit(key, x, y, num_epochs=40, checkpoints=npvi.Checkpoints(directory, every=3), resume=True,
                        **settings)  # fmt: skip
    assert same_run(again, whole)
    # a checkpoint file also loads as a saved model: its layers and params
    layers, params = npvi.load(npvi.Checkpoints(directory).latest())
    assert [layer.get_config() for layer in layers] == [npvi.DenseFlipout(1, name="out").get_config()]
    assert same_tree(params, whole.params)


def test_a_directory_of_another_run_is_never_written_over(tmp_path, data, trainer):
    x, y = data
    checkpoints = npvi.Checkpoints(tmp_path, every=2)
    trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=2, checkpoints=checkpoints, progress_bar=False)
    stale = tmp_path / ".epoch-000004.npz.abc123.tmp"  # what a write killed before its rename leaves
    stale.write_bytes(b"half a file")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if not path.name.startswith(".")}
    with pytest.raises(ValueError, match=r"already holds checkpoints \(epochs \[2\]\); pass resume=True"):
        trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=4, checkpoints=checkpoints, progress_bar=False)
    with pytest.raises(ValueError, match=r"come from another run \(rng_key \[0, 0\] there, \[0, 2\] here\)"):
        trainer.fit(jax.random.PRNGKey(2), x, y, num_epochs=4, checkpoints=checkpoints, resume=True,
                    progress_bar=False)  # fmt: skip
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if not path.name.startswith(".")} == before
    assert not stale.exists()  # a killed write's leftover is cleaned up
    with pytest.raises(ValueError, match="resume=True continues from checkpoints=npvi.Checkpoints"):
        trainer.fit(jax.random.PRNGKey(0), x, y, num_epochs=4, resume=True, progress_bar=False)
    with pytest.raises(ValueError, match="every must be a positive int, got 0"):
        npvi.Checkpoints(tmp_path, every=0)


@pytest.mark.usefixtures("quick_xla")
def test_a_killed_fit_process_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL mid-run, as a preempted job dies: whole files only, and the resumed run is the uninterrupted one."""
    directory = tmp_path / "run"
    # The same XLA flag as this test's (quick_xla): the same programs, so the same numbers in both processes.
    env = {**without_compilation_cache(os.environ), "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    process = subprocess.Popen([sys.executable, worker.__file__, str(directory)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    checkpoints = worker.checkpoints(directory)
    deadline = time.monotonic() + 120
    while not any(epoch >= 2 * worker.EVERY for epoch in checkpoints.epochs()):
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the worker wrote no checkpoint in time"
        time.sleep(0.005)
    process.kill()
    process.communicate()
    assert process.returncode == -9  # killed before it finished its epochs
    saved = checkpoints.epochs()
    assert saved and saved[-1] < worker.NUM_EPOCHS and all(epoch % worker.EVERY == 0 for epoch in saved)
    assert len(saved) <= worker.KEEP
    for epoch in saved:  # every file a reader can see is whole
        assert npvi.load(checkpoints.path(epoch)).params

    trainer, (x, y) = worker.make_trainer(), worker.make_data()
    whole = trainer.fit(worker.KEY, x, y, num_epochs=worker.NUM_EPOCHS, progress_bar=False)
    resumed = trainer.fit(worker.KEY, x, y, num_epochs=worker.NUM_EPOCHS, checkpoints=checkpoints, resume=True,
                          progress_bar=False)  # fmt: skip
    assert same_run(resumed, whole)
