r"""The ``npvi demo`` job: a Bayesian MLP on scikit-learn's bundled data, end to end.

Using only public npvi, NumPyro and ArviZ API, the demo

* loads a bundled dataset (no network): ``digits`` (8x8 images, 10 classes,
  1797 images, the default) or ``diabetes`` (442 patients, 10 features,
  regression), with a fixed, seeded 80/20 train/held-out split, features
  standardised with the training statistics;
* builds an MLP of npvi layers (:class:`~npvi.DenseFlipout`,
  :class:`~npvi.DenseLocalReparameterization` or
  :class:`~npvi.DenseReparameterization`): ``64 -> 128 (ReLU) -> 10`` with a
  categorical likelihood for digits, ``10 -> 32 (tanh) -> 1`` with a learned
  noise scale ``sigma ~ HalfNormal(1)`` for diabetes; only the likelihood sits in
  ``numpyro.plate("data", num_data, subsample_size=B)``;
* trains it with :func:`npvi.fit` (:class:`~npvi.MeanFieldGuide`,
  :class:`~npvi.ELBO`, Adam, one jitted ``lax.scan`` per epoch);
* scores the held-out set from :class:`npvi.Predictive` draws: accuracy,
  NLL :math:`-\frac{1}{n}\sum_i \log \frac{1}{S}\sum_s p(y_i \mid x_i, W_s)` and
  ECE for digits; RMSE and NLL in the original target units for diabetes; next
  to a baseline that predicts the training class frequencies (digits) or the
  training mean and spread (diabetes);
* writes ``metrics.json``, ``inference_data.nc`` (:func:`npvi.to_inference_data`
  on the held-out set), ``elbo.png`` and ``reliability.png`` (digits) or
  ``predictive.png`` (diabetes) into ``out``.

There is no global random state: the split comes from a seeded
:func:`numpy.random.default_rng`, everything else from explicit JAX keys, so the
same ``seed`` gives the same numbers.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpy.typing import ArrayLike
from numpyro.infer import SVI
from scipy.special import logsumexp
from scipy.stats import norm

import npvi

#: Seed of the train/held-out split. It is fixed, independent of the training seed,
#: so that runs with different ``seed`` values are scored on the same held-out points.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

#: Layer class of each ``--estimator`` choice.
ESTIMATORS: dict[str, type[npvi.layers.DenseVariational]] = {
    "flipout": npvi.DenseFlipout,
    "lrt": npvi.DenseLocalReparameterization,
    "reparam": npvi.DenseReparameterization,
}


@dataclass(frozen=True)
class TaskConfig:
    """Architecture and training settings of one demo task (also used by the TFP comparison in bench/)."""

    task: str  # "classification" or "regression"
    hidden: int
    activation: str  # a jax.nn function name
    batch_size: int
    learning_rate: float
    epochs: int
    num_samples: int


CONFIGS: dict[str, TaskConfig] = {
    "digits": TaskConfig("classification", 128, "relu", 64, 1e-2, 60, 300),
    "diabetes": TaskConfig("regression", 32, "tanh", 32, 1e-2, 200, 500),
}


@dataclass(frozen=True)
class Dataset:
    """A standardised train/held-out split.

    For regression ``y_*`` are standardised too, and ``y_mean``, ``y_std`` map
    them back to original units; for classification ``y_*`` are int class labels
    and ``y_mean, y_std = 0, 1``.
    """

    name: str
    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    y_mean: float = 0.0
    y_std: float = 1.0

    @property
    def num_train(self) -> int:
        """Number of training points."""
        return int(self.x_train.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (classification only)."""
        return int(np.asarray(self.y_train).max()) + 1  # on the host: an eager jnp.max would compile


@dataclass(frozen=True)
class DemoResult:
    """Held-out metrics of one demo run (regression metrics are in original units)."""

    dataset: str
    estimator: str
    metrics: dict[str, float]
    baseline: dict[str, float]
    seconds: float
    losses: np.ndarray = field(repr=False)
    files: list[Path] = field(default_factory=list)


def load_split(dataset: str = "digits", split_seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> Dataset:
    """Load a bundled scikit-learn dataset, split it and standardise it.

    The split is a permutation drawn from ``numpy.random.default_rng(split_seed)``.

    >>> data = load_split("diabetes")
    >>> data.x_train.shape, data.x_test.shape
    ((354, 10), (88, 10))
    >>> abs(float(data.y_train.mean())) < 1e-6, round(float(data.y_train.std()), 6)
    (True, 1.0)
    >>> digits = load_split("digits")
    >>> digits.x_train.shape, digits.y_test.dtype, digits.num_classes
    ((1438, 64), dtype('int32'), 10)
    """
    if dataset not in CONFIGS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(CONFIGS)}")
    try:
        from sklearn import datasets
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the demo needs scikit-learn: pip install 'npvi[demo]'", name=error.name) from error

    x, y = getattr(datasets, f"load_{dataset}")(return_X_y=True)
    n = x.shape[0]
    num_test = int(round(test_fraction * n))
    order = np.random.default_rng(split_seed).permutation(n)
    test, train = order[:num_test], order[num_test:]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    x_std = np.where(x_std > 0, x_std, 1.0)  # constant pixels at the digits' border

    def features(rows: np.ndarray) -> jax.Array:
        return jnp.asarray(((x[rows] - x_mean) / x_std).astype(np.float32))  # cast on the host, not by a compiled op

    if CONFIGS[dataset].task == "classification":
        labels = y.astype(np.int32)
        return Dataset(dataset, features(train), jnp.asarray(labels[train]), features(test), jnp.asarray(labels[test]))
    y_mean, y_std = float(y[train].mean()), float(y[train].std())

    def target(rows: np.ndarray) -> jax.Array:
        return jnp.asarray(((y[rows] - y_mean) / y_std).astype(np.float32))

    return Dataset(dataset, features(train), target(train), features(test), target(test), y_mean, y_std)


def make_model(dataset: str = "digits", estimator: str = "flipout", num_classes: int = 10) -> Callable[..., None]:
    """The demo's MLP for ``dataset`` with the layers of ``estimator``.

    The returned ``model(x, y=None, num_data=None)`` takes a minibatch and the
    size ``num_data`` of the full training set (default ``x.shape[0]``), as
    :func:`npvi.fit` calls it. The layers sit outside the plate: their weights
    are global. Sites: ``"hidden.*"``, ``"output.*"``, ``"y"``, and ``"probs"``
    (classification) or ``"mu"`` and ``"sigma"`` (regression).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {sorted(ESTIMATORS)}")
    config = CONFIGS[dataset]
    layer = ESTIMATORS[estimator]
    activation = config.activation  # a jax.nn name, as Keras takes it

    def classifier(x: jax.Array, y: jax.Array | None = None, num_data: int | None = None) -> None:
        h = layer(config.hidden, activation=activation, name="hidden")(x)
        logits = layer(num_classes, name="output")(h)
        numpyro.deterministic("probs", jax.nn.softmax(logits, axis=-1))
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def regressor(x: jax.Array, y: jax.Array | None = None, num_data: int | None = None) -> None:
        h = layer(config.hidden, activation=activation, name="hidden")(x)
        mu = layer(1, name="output")(h)[..., 0]
        numpyro.deterministic("mu", mu)
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    return classifier if config.task == "classification" else regressor


def regression_metrics(mu: ArrayLike, sigma: ArrayLike, y: ArrayLike, y_std: float) -> dict[str, float]:
    """RMSE of the predictive mean and the average predictive NLL, in original units.

    ``mu`` has shape ``(S, n)`` and ``sigma`` shape ``(S,)``, both in standardised
    units, like ``y`` (shape ``(n,)``); ``y_std`` converts back to original units.
    The predictive density of ``y_i`` is the mixture
    :math:`\\frac{1}{S}\\sum_s \\mathcal{N}(y_i \\mid \\mu_{s,i}, \\sigma_s)`, so
    ``nll = -mean_i log mean_s N(y_i | mu_si, sigma_s) + log(y_std)``.

    >>> m = regression_metrics(np.zeros((2, 3)), np.ones(2), np.zeros(3), 1.0)
    >>> m["rmse"], round(m["nll"], 4)  # -log N(0 | 0, 1) = log(2 pi) / 2
    (0.0, 0.9189)
    """
    mu, sigma, y = (np.asarray(a, dtype=np.float64) for a in (mu, sigma, y))
    rmse = float(np.sqrt(np.mean((mu.mean(0) - y) ** 2))) * y_std
    log_density = norm.logpdf(y, loc=mu, scale=sigma[:, None])
    log_predictive = logsumexp(log_density, axis=0) - math.log(len(sigma))
    return {"rmse": rmse, "nll": float(-np.mean(log_predictive)) + math.log(y_std)}


def classification_metrics(probs: ArrayLike, labels: ArrayLike, num_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL and ECE of the predictive probabilities ``mean_s probs[s]``.

    ``probs`` has shape ``(S, n, K)``, ``labels`` shape ``(n,)``.

    >>> m = classification_metrics(np.array([[[0.9, 0.1], [0.2, 0.8]]]), np.array([0, 0]))
    >>> round(m["accuracy"], 2), round(m["nll"], 4), round(m["ece"], 2)
    (0.5, 0.8574, 0.45)
    """
    predictive = np.asarray(probs, dtype=np.float64).mean(axis=0)
    labels = np.asarray(labels)
    true_class = np.take_along_axis(predictive, labels[:, None], axis=-1)[:, 0]
    return {
        "accuracy": float(np.mean(predictive.argmax(-1) == labels)),
        "nll": float(-np.mean(np.log(np.maximum(true_class, np.finfo(np.float64).tiny)))),
        "ece": float(npvi.expected_calibration_error(jnp.asarray(predictive), jnp.asarray(labels), num_bins)),
    }


def _baseline(data: Dataset) -> dict[str, float]:
    """Metrics of a model that ignores x: training class frequencies, or N(train mean, train std)."""
    if CONFIGS[data.name].task == "classification":
        counts = np.bincount(np.asarray(data.y_train), minlength=data.num_classes)
        frequencies = np.broadcast_to(counts / counts.sum(), (1, data.y_test.shape[0], data.num_classes))
        return classification_metrics(frequencies, data.y_test)
    return regression_metrics(np.zeros((1, data.y_test.shape[0])), np.ones(1), data.y_test, data.y_std)


def _write_outputs(
    out: Path, data: Dataset, draws: dict[str, jax.Array], losses: np.ndarray, idata: Any, summary: dict[str, Any]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "metrics.json", out / "inference_data.nc", out / "elbo.png"]
    files[0].write_text(json.dumps(summary, indent=2) + "\n")
    idata.to_netcdf(str(files[1]))
    ax = npvi.plots.plot_elbo(losses)
    ax.set_title(f"{summary['dataset']}: ELBO per minibatch step ({summary['estimator']})")
    ax.figure.savefig(files[2], dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    if "probs" in draws:
        probs = npvi.classification_summary(draws["probs"]).probs
        ax = npvi.plots.plot_reliability(npvi.reliability_diagram(probs, data.y_test), label="accuracy")
        ax.set_title(f"digits, held out: ECE {summary['metrics']['ece']:.3f}")
        files.append(out / "reliability.png")
    else:
        mean = np.asarray(draws["y"]).mean(0)
        rank = np.argsort(np.argsort(mean))
        ax = npvi.plots.plot_predictive_band(
            rank,
            np.asarray(draws["y"]) * data.y_std + data.y_mean,
            x_obs=rank,
            y_obs=np.asarray(data.y_test) * data.y_std + data.y_mean,
        )
        ax.set_xlabel("held-out patient, ordered by predictive mean")
        ax.set_ylabel("disease progression")
        ax.set_title("diabetes, held out: predictive mean and 90% interval")
        files.append(out / "predictive.png")
    ax.figure.savefig(files[-1], dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    return files


def run_demo(
    dataset: str = "digits",
    estimator: str = "flipout",
    epochs: int | None = None,
    seed: int = 0,
    *,
    num_samples: int | None = None,
    out: str | os.PathLike | None = "npvi-demo",
    progress_bar: bool = True,
    stream: TextIO | None = None,
) -> DemoResult:
    """Train the demo MLP on ``dataset``, print held-out metrics, and write the result files to ``out``.

    ``epochs`` and ``num_samples`` default to the task's :data:`CONFIGS`;
    ``out=None`` writes no files. ``seed`` drives initialisation, minibatch
    order, the estimators' noise and the predictive draws; the split is fixed
    (:data:`SPLIT_SEED`). Text goes to ``stream`` (default: standard output),
    the progress bar to standard error.
    """
    if dataset not in CONFIGS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(CONFIGS)}")
    config = CONFIGS[dataset]
    epochs = config.epochs if epochs is None else epochs
    num_samples = config.num_samples if num_samples is None else num_samples
    for name, value in (("epochs", epochs), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    start = time.perf_counter()
    data = load_split(dataset)
    model = make_model(dataset, estimator, data.num_classes if config.task == "classification" else 1)
    layout = f"{data.x_train.shape[1]}-{config.hidden}-{data.num_classes if config.task == 'classification' else 1}"
    say(
        f"npvi demo: {ESTIMATORS[estimator].__name__} MLP {layout} on {dataset} "
        f"({data.num_train} train / {data.x_test.shape[0]} held-out), {epochs} epochs, "
        f"batch {config.batch_size}, Adam {config.learning_rate:g}, seed {seed}"
    )
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(config.learning_rate), npvi.ELBO())
    fit_key, predict_key, idata_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    result = npvi.fit(
        svi, fit_key, data.x_train, data.y_train,
        num_epochs=epochs, batch_size=config.batch_size, progress_bar=progress_bar,
    )  # fmt: skip
    losses = np.asarray(result.losses)
    if not np.isfinite(losses[-1]):
        raise FloatingPointError(f"the training loss ended at {losses[-1]}; try fewer epochs or another seed")
    train_seconds = time.perf_counter() - start

    sites = ["probs"] if config.task == "classification" else ["mu", "sigma", "y"]
    draws = npvi.Predictive(model, guide, result.params, num_samples, return_sites=sites)(predict_key, data.x_test)
    if config.task == "classification":
        metrics = classification_metrics(draws["probs"], data.y_test)
    else:
        metrics = regression_metrics(draws["mu"], draws["sigma"], data.y_test, data.y_std)
    baseline = _baseline(data)
    seconds = time.perf_counter() - start

    names = list(metrics)
    say(f"held-out metrics ({data.x_test.shape[0]} points, {num_samples} posterior draws):")
    say(f"  {'':24s}" + "".join(f" {name.upper():>9s}" for name in names))
    say(f"  {'Bayesian MLP':24s}" + "".join(f" {metrics[name]:9.4f}" for name in names))
    say(f"  {'baseline (ignores x)':24s}" + "".join(f" {baseline[name]:9.4f}" for name in names))
    say(f"training {train_seconds:.1f} s (compilation included), total {seconds:.1f} s")

    files: list[Path] = []
    if out is not None:
        summary = {
            "dataset": dataset,
            "estimator": estimator,
            "epochs": epochs,
            "seed": seed,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "num_samples": num_samples,
            "metrics": metrics,
            "baseline": baseline,
            "train_seconds": train_seconds,
            "npvi_version": npvi.__version__,
        }
        # Digits keep only the output layer's weights: ArviZ files of every weight draw grow fast.
        var_names = (
            ["output.kernel"] if config.task == "classification" else ["hidden.kernel", "output.kernel", "sigma"]
        )
        idata = npvi.to_inference_data(
            model, guide, result.params, data.x_test, data.y_test, rng_key=idata_key,
            num_samples=num_samples, var_names=var_names,
        )  # fmt: skip
        files = _write_outputs(Path(out), data, draws, losses, idata, summary)
        say(f"wrote {', '.join(str(f) for f in files)}")
    return DemoResult(dataset, estimator, metrics, baseline, seconds, losses, files)
