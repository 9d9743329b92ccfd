r"""The ``npvi demo`` job: a Bayesian MLP or CNN on scikit-learn's bundled data, end to end.

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
* or, with ``model="cnn"`` (digits only), a small CNN of npvi convolutions
  (:class:`~npvi.Conv2DFlipout` and its siblings, with the dense layer of the same
  estimator) on the images as ``(n, 8, 8, 1)``: two 3x3 ``SAME`` ReLU convolutions
  of 8 and 16 filters, each followed by 2x2 max-pooling, then a dense layer to the
  10 classes; the same run also trains the MLP above and scores both;
* trains it with :func:`npvi.fit` (:class:`~npvi.MeanFieldGuide`,
  :class:`~npvi.ELBO`, Adam, one jitted ``lax.scan`` per epoch);
* scores the held-out set from :class:`npvi.Predictive` draws: accuracy,
  NLL :math:`-\frac{1}{n}\sum_i \log \frac{1}{S}\sum_s p(y_i \mid x_i, W_s)` and
  ECE for digits; RMSE and NLL in the original target units for diabetes; next
  to a baseline that predicts the training class frequencies (digits) or the
  training mean and spread (diabetes);
* writes ``metrics.json``, ``inference_data.nc`` (:func:`npvi.to_inference_data`
  on the held-out set), ``elbo.png`` and ``reliability.png`` (digits) or
  ``predictive.png`` (diabetes) into ``out``; for the CNN, ``metrics.json`` holds
  the MLP's metrics too and the two plots show both networks side by side.

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
from typing import Any, NamedTuple, TextIO

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
#: Convolution class of each ``--estimator`` choice, for the CNN (its dense layer comes from :data:`ESTIMATORS`).
CONV_ESTIMATORS: dict[str, type[npvi.conv.ConvVariational]] = {
    "flipout": npvi.Conv2DFlipout,
    "lrt": npvi.Conv2DLocalReparameterization,
    "reparam": npvi.Conv2DReparameterization,
}
#: The demo's networks: the MLP for both datasets, the CNN for the digits' images.
MODELS = ("mlp", "cnn")


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
class CNNConfig:
    """Architecture and training settings of the demo's CNN (digits)."""

    filters: tuple[int, ...]  # one kernel_size x kernel_size SAME ReLU convolution, then 2x2 max-pooling, per entry
    kernel_size: int
    batch_size: int
    learning_rate: float
    epochs: int
    num_samples: int


CNN_CONFIG = CNNConfig((8, 16), 3, 64, 1e-2, 30, 300)


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
    """Held-out metrics of one demo run (regression metrics are in original units).

    ``metrics`` and ``losses`` are those of the run's ``model``; a CNN run also
    holds the metrics of the MLP it trained for comparison in ``mlp_metrics``.
    """

    dataset: str
    estimator: str
    metrics: dict[str, float]
    baseline: dict[str, float]
    seconds: float
    losses: np.ndarray = field(repr=False)
    files: list[Path] = field(default_factory=list)
    model: str = "mlp"
    mlp_metrics: dict[str, float] | None = None


def load_split(
    dataset: str = "digits",
    split_seed: int = SPLIT_SEED,
    test_fraction: float = TEST_FRACTION,
    *,
    images: bool = False,
) -> Dataset:
    """Load a bundled scikit-learn dataset, split it and standardise it.

    The split is a permutation drawn from ``numpy.random.default_rng(split_seed)``.
    Each feature is standardised with its own training mean and spread, except
    with ``images=True`` (digits only): then ``x`` holds the images, shape
    ``(n, 8, 8, 1)``, standardised with one mean and spread over all the training
    pixels, as a convolution applies one kernel at every position.

    >>> data = load_split("diabetes")
    >>> data.x_train.shape, data.x_test.shape
    ((354, 10), (88, 10))
    >>> abs(float(data.y_train.mean())) < 1e-6, round(float(data.y_train.std()), 6)
    (True, 1.0)
    >>> digits = load_split("digits")
    >>> digits.x_train.shape, digits.y_test.dtype, digits.num_classes
    ((1438, 64), dtype('int32'), 10)
    >>> load_split("digits", images=True).x_test.shape
    (359, 8, 8, 1)
    """
    if dataset not in CONFIGS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(CONFIGS)}")
    if images and dataset != "digits":
        raise ValueError(f"images=True needs the digits dataset (8x8 images), got {dataset!r}")
    try:
        from sklearn import datasets
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the demo needs scikit-learn: pip install 'npvi[demo]'", name=error.name) from error

    x, y = getattr(datasets, f"load_{dataset}")(return_X_y=True)
    n = x.shape[0]
    num_test = int(round(test_fraction * n))
    order = np.random.default_rng(split_seed).permutation(n)
    test, train = order[:num_test], order[num_test:]
    if images:
        x = x.reshape(-1, 8, 8, 1)
        x_mean, x_std = x[train].mean(), x[train].std()
    else:
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


def max_pool(x: jax.Array, size: int = 2) -> jax.Array:
    """``size x size`` max-pooling of ``(batch, height, width, channels)`` images, without overlap.

    Height and width must be multiples of ``size``.

    >>> max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """
    batch, height, width, channels = x.shape
    if height % size or width % size:
        raise ValueError(f"max_pool: height and width {height, width} are not multiples of {size}")
    return x.reshape(batch, height // size, size, width // size, size, channels).max(axis=(2, 4))


def make_cnn(estimator: str = "flipout", num_classes: int = 10, config: CNNConfig = CNN_CONFIG) -> Callable[..., None]:
    """The demo's CNN for ``(batch, 8, 8, 1)`` images, with the layers of ``estimator``.

    Per entry of ``config.filters`` a :data:`CONV_ESTIMATORS` convolution
    (``SAME`` padding, ReLU) and 2x2 max-pooling, then a :data:`ESTIMATORS` dense
    layer to the ``num_classes`` logits and a categorical likelihood in
    ``numpyro.plate("data", num_data, subsample_size=batch)``, called as
    :func:`npvi.fit` calls it. Sites: ``"conv1.*"``, ``"conv2.*"``, ...,
    ``"output.*"``, ``"probs"`` and ``"y"``.

    >>> import numpyro
    >>> model = make_cnn("lrt")
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     trace = numpyro.handlers.trace(model).get_trace(jnp.zeros((5, 8, 8, 1)))
    >>> trace["conv2.kernel"]["value"].shape, trace["output.kernel"]["value"].shape, trace["probs"]["value"].shape
    ((3, 3, 8, 16), (64, 10), (5, 10))
    """
    if estimator not in CONV_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {sorted(CONV_ESTIMATORS)}")
    conv, dense = CONV_ESTIMATORS[estimator], ESTIMATORS[estimator]

    def cnn(x: jax.Array, y: jax.Array | None = None, num_data: int | None = None) -> None:
        h = x
        for i, filters in enumerate(config.filters, start=1):
            h = conv(filters, config.kernel_size, padding="SAME", activation="relu", name=f"conv{i}")(h)
            h = max_pool(h)
        logits = dense(num_classes, name="output")(h.reshape(h.shape[0], -1))
        numpyro.deterministic("probs", jax.nn.softmax(logits, axis=-1))
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return cnn


def cnn_layout(config: CNNConfig = CNN_CONFIG, num_classes: int = 10) -> str:
    """The CNN's layers in words.

    >>> cnn_layout()
    '8x8x1 > conv 8@3x3 > pool > conv 16@3x3 > pool > 10'
    """
    convs = "".join(f" > conv {filters}@{config.kernel_size}x{config.kernel_size} > pool" for filters in config.filters)
    return f"8x8x1{convs} > {num_classes}"


def regression_metrics(mu: ArrayLike, sigma: ArrayLike, y: ArrayLike, y_std: float) -> dict[str, float]:
    """RMSE of the predictive mean and the average predictive NLL, in original units.

    ``mu`` has shape ``(S, n)`` and ``sigma`` shape ``(S,)`` (one noise scale per draw) or
    ``(S, n)`` (one per draw and row, as a deep ensemble's members predict), both in standardised
    units, like ``y`` (shape ``(n,)``); ``y_std`` converts back to original units.
    The predictive density of ``y_i`` is the mixture
    :math:`\\frac{1}{S}\\sum_s \\mathcal{N}(y_i \\mid \\mu_{s,i}, \\sigma_{s,i})`, so
    ``nll = -mean_i log mean_s N(y_i | mu_si, sigma_si) + log(y_std)``.

    >>> m = regression_metrics(np.zeros((2, 3)), np.ones(2), np.zeros(3), 1.0)
    >>> m["rmse"], round(m["nll"], 4)  # -log N(0 | 0, 1) = log(2 pi) / 2
    (0.0, 0.9189)
    """
    mu, sigma, y = (np.asarray(a, dtype=np.float64) for a in (mu, sigma, y))
    rmse = float(np.sqrt(np.mean((mu.mean(0) - y) ** 2))) * y_std
    log_density = norm.logpdf(y, loc=mu, scale=sigma[:, None] if sigma.ndim == 1 else sigma)
    log_predictive = logsumexp(log_density, axis=0) - math.log(len(mu))
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


class _Network(NamedTuple):
    """One network of a demo run, before training."""

    name: str  # "MLP" or "CNN"
    layout: str  # as printed, e.g. "DenseFlipout MLP 64-128-10"
    model: Callable[..., None]
    config: TaskConfig | CNNConfig
    data: Dataset  # in the layout the network takes


@dataclass(frozen=True)
class _Trained:
    """One network of a demo run, trained, with its held-out draws and metrics."""

    network: _Network
    epochs: int
    guide: npvi.MeanFieldGuide = field(repr=False)
    params: dict[str, jax.Array] = field(repr=False)
    draws: dict[str, jax.Array] = field(repr=False)
    losses: np.ndarray = field(repr=False)
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0


def _train_and_score(
    network: _Network,
    *,
    task: str,
    epochs: int,
    num_samples: int,
    keys: tuple[jax.Array, jax.Array],
    progress_bar: bool,
) -> _Trained:
    """Fit the network with ``npvi.fit`` (key ``keys[0]``) and score ``num_samples`` predictive draws (``keys[1]``)."""
    model, config, data = network.model, network.config, network.data
    start = time.perf_counter()
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(config.learning_rate), npvi.ELBO())
    fit_key, predict_key = keys
    result = npvi.fit(
        svi, fit_key, data.x_train, data.y_train,
        num_epochs=epochs, batch_size=config.batch_size, progress_bar=progress_bar,
    )  # fmt: skip
    losses = np.asarray(result.losses)
    if not np.isfinite(losses[-1]):
        raise FloatingPointError(f"the training loss ended at {losses[-1]}; try fewer epochs or another seed")
    train_seconds = time.perf_counter() - start

    sites = ["probs"] if task == "classification" else ["mu", "sigma", "y"]
    draws = npvi.Predictive(model, guide, result.params, num_samples, return_sites=sites)(predict_key, data.x_test)
    if task == "classification":
        metrics = classification_metrics(draws["probs"], data.y_test)
    else:
        metrics = regression_metrics(draws["mu"], draws["sigma"], data.y_test, data.y_std)
    return _Trained(network, epochs, guide, result.params, draws, losses, metrics, train_seconds)


def _panels(count: int) -> list[Any]:
    """``count`` axes side by side, or ``[None]`` for one (npvi.plots then makes its usual figure)."""
    if count == 1:
        return [None]
    import matplotlib.pyplot as plt

    return list(plt.subplots(1, count, figsize=(5.5 * count, 3.8))[1])


def _write_outputs(out: Path, data: Dataset, runs: list[_Trained], idata: Any, summary: dict[str, Any]) -> list[Path]:
    """Write ``metrics.json``, ``inference_data.nc`` and the plots; with two networks the plots get a panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "metrics.json", out / "inference_data.nc", out / "elbo.png"]
    files[0].write_text(json.dumps(summary, indent=2) + "\n")
    idata.to_netcdf(str(files[1]))
    single = len(runs) == 1
    for run, ax in zip(runs, _panels(len(runs)), strict=True):
        ax = npvi.plots.plot_elbo(run.losses, ax=ax)
        what = summary["dataset"] if single else run.network.name
        ax.set_title(f"{what}: ELBO per minibatch step ({summary['estimator']})")
    ax.figure.savefig(files[2], dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    if "probs" in runs[0].draws:
        for run, ax in zip(runs, _panels(len(runs)), strict=True):
            probs = npvi.classification_summary(run.draws["probs"]).probs
            ax = npvi.plots.plot_reliability(npvi.reliability_diagram(probs, data.y_test), ax=ax, label="accuracy")
            what = "digits" if single else f"{run.network.name}, digits"
            ax.set_title(f"{what}, held out: ECE {run.metrics['ece']:.3f}")
        files.append(out / "reliability.png")
    else:
        draws = runs[0].draws
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


def _summary(
    dataset: str, model: str, estimator: str, seed: int, num_samples: int, runs: list[_Trained], baseline: dict
) -> dict[str, Any]:
    """The contents of ``metrics.json``: settings and metrics of the run's network, and of the MLP next to a CNN."""
    main, *others = runs
    summary: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "network": main.network.layout,
        "estimator": estimator,
        "epochs": main.epochs,
        "seed": seed,
        "batch_size": main.network.config.batch_size,
        "learning_rate": main.network.config.learning_rate,
        "num_samples": num_samples,
        "metrics": main.metrics,
        "baseline": baseline,
        "train_seconds": main.train_seconds,
    }
    for run in others:
        summary[run.network.name.lower()] = {
            "network": run.network.layout,
            "epochs": run.epochs,
            "batch_size": run.network.config.batch_size,
            "learning_rate": run.network.config.learning_rate,
            "metrics": run.metrics,
            "train_seconds": run.train_seconds,
        }
    summary["npvi_version"] = npvi.__version__
    return summary


def run_demo(
    dataset: str = "digits",
    estimator: str = "flipout",
    epochs: int | None = None,
    seed: int = 0,
    *,
    model: str = "mlp",
    num_samples: int | None = None,
    out: str | os.PathLike | None = "npvi-demo",
    progress_bar: bool = True,
    stream: TextIO | None = None,
) -> DemoResult:
    """Train the demo's network on ``dataset``, print held-out metrics, and write the result files to ``out``.

    ``model="mlp"`` (the default) trains the MLP of :data:`CONFIGS`;
    ``model="cnn"`` (digits only) trains the CNN of :data:`CNN_CONFIG` on the
    images, then the same MLP with the same seed, and reports both (the MLP's
    numbers are those of ``model="mlp"``); the files describe the CNN, with the
    MLP's metrics in ``metrics.json`` and a panel of each in the plots.
    ``epochs`` (for every network trained) and ``num_samples`` default to the
    configs; ``out=None`` writes no files. ``seed`` drives initialisation,
    minibatch order, the estimators' noise and the predictive draws; the split is
    fixed (:data:`SPLIT_SEED`). Text goes to ``stream`` (default: standard
    output), the progress bars to standard error.
    """
    if dataset not in CONFIGS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(CONFIGS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)}")
    if model == "cnn" and dataset != "digits":
        raise ValueError(f"model 'cnn' convolves images: it needs dataset 'digits', got {dataset!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {sorted(ESTIMATORS)}")
    config = CONFIGS[dataset]
    num_samples = (CNN_CONFIG if model == "cnn" else config).num_samples if num_samples is None else num_samples
    for name, value in (("epochs", epochs), ("num_samples", num_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    start = time.perf_counter()
    data = load_split(dataset)
    num_outputs = data.num_classes if config.task == "classification" else 1
    mlp_layout = f"{ESTIMATORS[estimator].__name__} MLP {data.x_train.shape[1]}-{config.hidden}-{num_outputs}"
    networks = [_Network("MLP", mlp_layout, make_model(dataset, estimator, num_outputs), config, data)]
    if model == "cnn":  # the CNN first; the MLP, with the same keys, for comparison
        layout = f"{CONV_ESTIMATORS[estimator].__name__} CNN {cnn_layout(CNN_CONFIG, num_outputs)}"
        images = load_split(dataset, images=True)
        networks.insert(0, _Network("CNN", layout, make_cnn(estimator, num_outputs), CNN_CONFIG, images))
    fit_key, predict_key, idata_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    runs: list[_Trained] = []
    for network in networks:
        net_epochs = network.config.epochs if epochs is None else epochs
        say(
            f"npvi demo: {'for comparison, ' if runs else ''}{network.layout} on {dataset} "
            f"({data.num_train} train / {data.x_test.shape[0]} held-out), {net_epochs} epochs, "
            f"batch {network.config.batch_size}, Adam {network.config.learning_rate:g}, seed {seed}"
        )
        trained = _train_and_score(
            network, task=config.task, epochs=net_epochs, num_samples=num_samples,
            keys=(fit_key, predict_key), progress_bar=progress_bar,
        )  # fmt: skip
        runs.append(trained)
    main = runs[0]
    baseline = _baseline(data)
    seconds = time.perf_counter() - start

    names = list(main.metrics)
    say(f"held-out metrics ({data.x_test.shape[0]} points, {num_samples} posterior draws):")
    say(f"  {'':24s}" + "".join(f" {name.upper():>9s}" for name in names))
    for run in runs:
        say(f"  {'Bayesian ' + run.network.name:24s}" + "".join(f" {run.metrics[name]:9.4f}" for name in names))
    say(f"  {'baseline (ignores x)':24s}" + "".join(f" {baseline[name]:9.4f}" for name in names))
    training = " + ".join(
        f"{run.train_seconds:.1f} s" + (f" {run.network.name}" if len(runs) > 1 else "") for run in runs
    )
    say(f"training {training} (compilation included), total {seconds:.1f} s")

    files: list[Path] = []
    if out is not None:
        summary = _summary(dataset, model, estimator, seed, num_samples, runs, baseline)
        # Digits keep only the output layer's weights: ArviZ files of every weight draw grow fast.
        var_names = (
            ["output.kernel"] if config.task == "classification" else ["hidden.kernel", "output.kernel", "sigma"]
        )
        idata = npvi.to_inference_data(
            main.network.model, main.guide, main.params, main.network.data.x_test, data.y_test,
            rng_key=idata_key, num_samples=num_samples, var_names=var_names,
        )  # fmt: skip
        files = _write_outputs(Path(out), data, runs, idata, summary)
        say(f"wrote {', '.join(str(f) for f in files)}")
    mlp_metrics = runs[-1].metrics if model == "cnn" else None
    return DemoResult(dataset, estimator, main.metrics, baseline, seconds, main.losses, files, model, mlp_metrics)
