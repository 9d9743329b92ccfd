"""A fit that checkpoints as it goes: run by ``tests/test_checkpoints.py`` in a process that the test kills.

``python tests/checkpoint_worker.py DIRECTORY`` trains :func:`make_svi`'s model on :func:`make_data` for
:data:`NUM_EPOCHS` epochs, with a checkpoint every :data:`EVERY` epochs in ``DIRECTORY``. The test imports
the same functions to run the uninterrupted fit and the resumed one in its own process.
"""

from __future__ import annotations

import sys

import jax
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI

import npvi

NUM_DATA, BATCH_SIZE, NUM_EPOCHS, EVERY, KEEP = 10000, 20, 60, 5, 2
KEY = jax.random.PRNGKey(0)


def model(x, y=None, num_data=None):
    h = npvi.DenseFlipout(8, activation="tanh", name="l1")(x)
    mu = npvi.DenseFlipout(1, name="l2")(h)[..., 0]
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)


def make_data() -> tuple[jax.Array, jax.Array]:
    x = jax.random.uniform(jax.random.PRNGKey(1), (NUM_DATA, 1), minval=-2.0, maxval=2.0)
    y = jax.numpy.sin(2.0 * x[:, 0]) + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (NUM_DATA,))
    return x, y


def make_trainer() -> npvi.Trainer:
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    return npvi.Trainer(svi, batch_size=BATCH_SIZE)


def checkpoints(directory: str) -> npvi.Checkpoints:
    return npvi.Checkpoints(directory, every=EVERY, keep=KEEP)


if __name__ == "__main__":
    make_trainer().fit(KEY, *make_data(), num_epochs=NUM_EPOCHS, checkpoints=checkpoints(sys.argv[1]),
                       progress_bar=False)  # fmt: skip
