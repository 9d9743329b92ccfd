"""The ``npvi demo`` job: a Flipout Bayesian MLP on scikit-learn's diabetes data.

The demo trains a small Bayesian neural network end to end, using only public npvi
and NumPyro API:

* data: :func:`sklearn.datasets.load_diabetes` (442 patients, 10 features, bundled
  with scikit-learn, so no network), a fixed, seeded 80/20 train/held-out split,
  features and target standardised with the training statistics;
* model: two :class:`npvi.DenseFlipout` layers (``10 -> hidden -> 1``) and a learned
  observation noise ``sigma ~ HalfNormal(1)``; only the likelihood sits in the
  subsampled ``numpyro.plate("data", N, subsample_size=B)``, so each minibatch
  log-likelihood is scaled by ``N / B`` and the weights' KL is counted once;
* inference: :class:`npvi.MeanFieldGuide`, :class:`npvi.ELBO` and NumPyro's ``SVI``
  with ``optax.adam``; a Python loop over epochs calls a jitted epoch function that
  draws a fresh :func:`jax.random.permutation` of the training set and runs
  ``svi.update`` on each minibatch of it (a ``jax.lax.scan``);
* evaluation on the held-out set, from :class:`numpyro.infer.Predictive` draws
  :math:`(\\mu_s, \\sigma_s)`: the RMSE of the predictive mean and the average
  predictive negative log-likelihood
  :math:`-\\frac{1}{n}\\sum_i \\log \\frac{1}{S}\\sum_s \\mathcal{N}(y_i \\mid \\mu_{s,i}, \\sigma_s)`,
  both in the original target units, next to a baseline that predicts the
  training mean (with the training standard deviation as its spread).

There is no global random state: the split comes from a seeded
:func:`numpy.random.default_rng`, everything else from explicit JAX keys, so the
same ``seed`` gives the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpy.typing import ArrayLike
from numpyro.infer import SVI, Predictive
from scipy.special import logsumexp
from scipy.stats import norm

import npvi

#: Seed of the train/held-out split. It is fixed, independent of the training seed,
#: so that runs with different ``seed`` values are scored on the same held-out points.
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    """A standardised train/held-out split of a regression dataset.

    ``x_*`` and ``y_*`` are standardised with the training mean and standard
    deviation; ``y_mean`` and ``y_std`` map the target back to its original units.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    y_mean: float
    y_std: float

    @property
    def num_train(self) -> int:
        """Number of training points."""
        return int(self.x_train.shape[0])


@dataclass(frozen=True)
class DemoResult:
    """Held-out metrics of one demo run; RMSE and NLL are in the original target units."""

    rmse: float
    nll: float
    baseline_rmse: float
    baseline_nll: float
    noise_scale: float
    epoch_elbos: list[float] = field(repr=False)
    seconds: float


def load_diabetes_split(split_seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> Dataset:
    """Load scikit-learn's diabetes data, split it and standardise it.

    The split is a permutation drawn from ``numpy.random.default_rng(split_seed)``.

    >>> data = load_diabetes_split()
    >>> data.x_train.shape, data.x_test.shape
    ((354, 10), (88, 10))
    >>> abs(float(data.y_train.mean())) < 1e-6, round(float(data.y_train.std()), 6)
    (True, 1.0)
    """
    try:
        from sklearn.datasets import load_diabetes
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the demo needs scikit-learn: pip install 'npvi[demo]'", name=error.name) from error

    x, y = load_diabetes(return_X_y=True)
    n = x.shape[0]
    num_test = int(round(test_fraction * n))
    order = np.random.default_rng(split_seed).permutation(n)
    test, train = order[:num_test], order[num_test:]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    y_mean, y_std = float(y[train].mean()), float(y[train].std())

    def features(rows: np.ndarray) -> jax.Array:
        return jnp.asarray((x[rows] - x_mean) / x_std, dtype=jnp.float32)

    def target(rows: np.ndarray) -> jax.Array:
        return jnp.asarray((y[rows] - y_mean) / y_std, dtype=jnp.float32)

    return Dataset(features(train), target(train), features(test), target(test), y_mean, y_std)


def make_model(hidden: int = 32) -> Callable[..., None]:
    """A Flipout MLP ``features -> hidden (tanh) -> 1`` with a learned noise scale.

    The returned ``model(x, y=None, num_data=None)`` takes a minibatch ``x, y`` and
    the size ``num_data`` of the full training set (default: ``x.shape[0]``, no
    subsampling). The layers are called outside the plate: their weights are global.
    """

    def model(x: jax.Array, y: jax.Array | None = None, num_data: int | None = None) -> None:
        h = npvi.DenseFlipout(hidden, activation=jax.nn.tanh, name="hidden")(x)
        mu = npvi.DenseFlipout(1, name="output")(h)[..., 0]
        numpyro.deterministic("mu", mu)
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        size = x.shape[0] if num_data is None else num_data
        with numpyro.plate("data", size, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    return model


def predictive_metrics(mu: ArrayLike, sigma: ArrayLike, y: ArrayLike, y_std: float) -> tuple[float, float]:
    """RMSE of the predictive mean and the average predictive NLL, in original units.

    ``mu`` has shape ``(S, n)`` and ``sigma`` shape ``(S,)``, both in standardised
    units, like ``y`` (shape ``(n,)``); ``y_std`` converts back to original units.
    The predictive density of ``y_i`` is the mixture
    :math:`\\frac{1}{S}\\sum_s \\mathcal{N}(y_i \\mid \\mu_{s,i}, \\sigma_s)`, so
    ``nll = -mean_i log mean_s N(y_i | mu_si, sigma_s) + log(y_std)``.

    >>> rmse, nll = predictive_metrics(np.zeros((2, 3)), np.ones(2), np.zeros(3), 1.0)
    >>> rmse, round(nll, 4)  # -log N(0 | 0, 1) = log(2 pi) / 2
    (0.0, 0.9189)
    """
    mu, sigma, y = (np.asarray(a, dtype=np.float64) for a in (mu, sigma, y))
    rmse = float(np.sqrt(np.mean((mu.mean(0) - y) ** 2))) * y_std
    log_density = norm.logpdf(y, loc=mu, scale=sigma[:, None])
    log_predictive = logsumexp(log_density, axis=0) - math.log(len(sigma))
    nll = float(-np.mean(log_predictive)) + math.log(y_std)
    return rmse, nll


def run_demo(
    epochs: int = 200,
    seed: int = 0,
    num_samples: int = 500,
    *,
    batch_size: int = 32,
    hidden: int = 32,
    learning_rate: float = 1e-2,
    stream: TextIO | None = None,
) -> DemoResult:
    """Train the Flipout MLP on the diabetes data and print held-out metrics.

    Progress (epoch and the epoch's mean ELBO estimate, about ten lines) and the
    final metrics go to ``stream`` (default: standard output). ``seed`` drives
    initialisation, minibatch order, the estimators' noise and the predictive draws;
    the split is fixed (:data:`SPLIT_SEED`).
    """
    for name, value in (("epochs", epochs), ("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    start = time.perf_counter()
    data = load_diabetes_split()
    n = data.num_train
    batch_size = min(batch_size, n)
    batches = n // batch_size  # each epoch drops the remainder of a fresh permutation
    say(
        f"npvi demo: Flipout MLP {data.x_train.shape[1]}-{hidden}-1 on diabetes "
        f"({n} train / {data.x_test.shape[0]} held-out), {epochs} epochs of {batches} "
        f"minibatches of {batch_size}, seed {seed}"
    )
    say("(ELBO: mean of the epoch's minibatch estimates, each scaled to the full training set)")

    model = make_model(hidden)
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(learning_rate), npvi.ELBO())
    init_key, shuffle_key, predict_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    state = svi.init(init_key, data.x_train[:batch_size], data.y_train[:batch_size], num_data=n)

    @jax.jit
    def run_epoch(state: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        """One pass over a fresh permutation: ``svi.update`` per minibatch; mean ELBO estimate."""
        rows = jax.random.permutation(key, n)[: batches * batch_size].reshape(batches, batch_size)

        def step(state: Any, batch: jax.Array) -> tuple[Any, jax.Array]:
            return svi.update(state, data.x_train[batch], data.y_train[batch], num_data=n)

        state, losses = jax.lax.scan(step, state, rows)
        return state, -losses.mean()

    report_every = max(1, epochs // 10)
    epoch_elbos: list[float] = []
    for epoch in range(1, epochs + 1):
        state, elbo_estimate = run_epoch(state, jax.random.fold_in(shuffle_key, epoch))
        elbo = float(elbo_estimate)
        if not math.isfinite(elbo):
            raise FloatingPointError(f"the ELBO became {elbo} at epoch {epoch}")
        epoch_elbos.append(elbo)
        if epoch % report_every == 0 or epoch in (1, epochs):
            say(f"epoch {epoch:4d}  ELBO {elbo:12.2f}")

    params = svi.get_params(state)
    predictive = Predictive(model, guide=guide, params=params, num_samples=num_samples, return_sites=["mu", "sigma"])
    draws = predictive(predict_key, data.x_test)
    rmse, nll = predictive_metrics(draws["mu"], draws["sigma"], data.y_test, data.y_std)
    # The baseline predicts the training mean, N(y_mean, y_std^2): 0 and 1 in standard units.
    baseline_rmse, baseline_nll = predictive_metrics(
        np.zeros((1, data.y_test.shape[0])), np.ones(1), data.y_test, data.y_std
    )
    noise_scale = float(draws["sigma"].mean()) * data.y_std
    seconds = time.perf_counter() - start

    say(f"held-out metrics ({data.x_test.shape[0]} points, {num_samples} posterior draws, original units):")
    say(f"  {'':24s} {'RMSE':>8s} {'NLL':>8s}")
    say(f"  {'Flipout BNN':24s} {rmse:8.2f} {nll:8.3f}")
    say(f"  {'baseline (train mean)':24s} {baseline_rmse:8.2f} {baseline_nll:8.3f}")
    say(f"learned noise scale sigma: {noise_scale:.2f}; total time {seconds:.1f} s")
    return DemoResult(rmse, nll, baseline_rmse, baseline_nll, noise_scale, epoch_elbos, seconds)
