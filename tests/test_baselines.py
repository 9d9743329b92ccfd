"""The UCI benchmark's plain-JAX baselines (bench/baselines.py) compute what they say, and bench/uci.py's
table reads its verdicts off the numbers: MC dropout keeps each unit with probability 1 - rate and scales it
back, the mixture log-likelihood is the log of the mean density, an ensemble member's scale is its softplus
variance, and both baselines train on a small problem."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import baselines  # noqa: E402
import uci  # noqa: E402

import npvi  # noqa: E402
from npvi.demo import regression_metrics  # noqa: E402


def test_dropout_keeps_each_unit_with_probability_one_minus_the_rate_and_keeps_the_mean():
    rate, n = 0.05, 200_000
    kept = np.asarray(baselines.dropout(jax.random.PRNGKey(0), jnp.ones(n), rate))
    # A Bernoulli(0.95) per unit: the kept fraction's standard error is sqrt(0.95 * 0.05 / n) = 4.9e-4.
    assert abs((kept > 0).mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    assert sorted({round(float(v), 5) for v in np.unique(kept)}) == [0.0, round(1 / (1 - rate), 5)]
    # Inverted dropout: the mean stays 1, with standard error sqrt(rate / (1 - rate) / n) = 5.1e-4.
    assert abs(kept.mean() - 1.0) < 5 * np.sqrt(rate / (1 - rate) / n)
    assert not np.array_equal(kept, baselines.dropout(jax.random.PRNGKey(1), jnp.ones(n), rate))


def test_at_rate_zero_the_dropout_network_is_the_network():
    params = baselines.init_mlp(jax.random.PRNGKey(0), 3, 4, 1)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    plain = (jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"])[:, 0]
    np.testing.assert_allclose(baselines.dropout_forward(params, jax.random.PRNGKey(2), x, 0.0), plain, rtol=1e-6)
    assert not np.allclose(baselines.dropout_forward(params, jax.random.PRNGKey(2), x, 0.5), plain)


def test_an_ensemble_members_scale_is_its_softplus_variance():
    params = baselines.init_mlp(jax.random.PRNGKey(0), 3, 4, 2)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    out = jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    mean, scale = baselines.ensemble_member_output(params, x)
    np.testing.assert_allclose(mean, out[:, 0], rtol=1e-6)
    np.testing.assert_allclose(scale**2, jax.nn.softplus(out[:, 1]) + 1e-6, rtol=1e-5)


def test_the_mixture_log_likelihood_is_the_log_of_the_mean_density():
    rng = np.random.default_rng(3)
    mu, sigma, y, y_std = rng.normal(size=(5, 7)), rng.uniform(0.2, 2.0, size=(5, 7)), rng.normal(size=7), 2.5
    density = np.exp(-0.5 * ((y - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    metrics = regression_metrics(mu, sigma, y, y_std)  # one scale per member and row (the ensemble)
    assert metrics["nll"] == pytest.approx(-np.mean(np.log(density.mean(0))) + np.log(y_std), rel=1e-12)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((mu.mean(0) - y) ** 2)) * y_std, rel=1e-12)
    # One scale per draw (npvi, MC dropout) is that scale on every row.
    per_draw = regression_metrics(mu, sigma[:, 0], y, y_std)["nll"]
    assert per_draw == pytest.approx(regression_metrics(mu, np.repeat(sigma[:, :1], 7, 1), y, y_std)["nll"])


def test_the_noise_scale_maximises_the_mixtures_likelihood():
    mu = jnp.stack([jnp.full(4000, -0.5), jnp.full(4000, 0.5)])  # two masks half a unit either side of 0
    y = 0.2 * jax.random.normal(jax.random.PRNGKey(0), (4000,))
    sigma = float(baselines.mixture_noise_scale(mu, y))
    # Each mask alone is 0.5 off, so the mixture needs a scale near sqrt(0.5**2 + 0.2**2) = 0.54, not 0.2.
    assert 0.45 < sigma < 0.6
    grid = jnp.array([sigma * 0.9, sigma, sigma * 1.1])
    assert float(baselines.mixture_noise_scale(mu, y, grid)) == pytest.approx(sigma)


@pytest.mark.usefixtures("quick_xla")  # the time is compiling two small training programs
def test_both_baselines_train_and_give_one_prediction_per_mask_or_member():
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    y = x @ jnp.array([1.0, -1.0]) + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (64,))
    training = {"n_hidden": 16, "epochs": 40, "batch_size": 16, "learning_rate": 1e-2}
    mu, sigma = baselines.mc_dropout(jax.random.PRNGKey(2), x, y, x, num_samples=20, **training)
    assert mu.shape == (20, 64) and sigma.shape == (20,)
    assert float(jnp.std(mu, axis=0).mean()) > 1e-3  # the masks differ at test time
    assert float(jnp.sqrt(jnp.mean((mu.mean(0) - y) ** 2))) < 0.5 * float(y.std())  # it learned the line
    e_mu, e_sigma = baselines.deep_ensemble(jax.random.PRNGKey(2), x, y, x, **training)
    assert e_mu.shape == e_sigma.shape == (5, 64) and float(e_sigma.min()) > 0
    assert float(jnp.std(e_mu, axis=0).mean()) > 1e-3  # five initialisations, five networks
    assert float(jnp.sqrt(jnp.mean((e_mu.mean(0) - y) ** 2))) < 0.5 * float(y.std())
    again = baselines.deep_ensemble(jax.random.PRNGKey(2), x, y, x, **training)
    np.testing.assert_array_equal(again[0], e_mu)  # same key, same numbers


def test_the_table_puts_this_runs_baselines_beside_npvi_and_reads_the_verdicts_off_the_numbers():
    def row(rmse, ll):
        return {"splits": 3, "rmse": (rmse, 0.1), "ll": (ll, 0.01)}

    runs = {"MC dropout": row(1.3, -1.36), "deep ensemble": row(1.2, -0.13)}
    results = {"yacht": {**row(0.7, -0.97), "baselines": runs}}
    table = uci.markdown_table(results).splitlines()
    assert "MC dropout (this run)" in table[0] and "deep ensemble (this run)" in table[0]
    cells = [cell.strip() for cell in table[2].split("|")[1:-1]]
    assert cells[2:5] == ["0.700±0.100 / -0.970±0.010", "1.300±0.100 / -1.360±0.010", "1.200±0.100 / -0.130±0.010"]
    assert cells[-2:] == ["yes", "ahead / ahead"]  # published VI: 6.89 / -3.43; MC dropout -1.36 here, -1.55 published
    results["yacht"]["ll"] = (-1.4, 0.01)
    assert uci.markdown_table(results).splitlines()[2].endswith("| behind / ahead |")


def test_validation_rows_are_training_rows_and_the_test_rows_are_never_read():
    rng = np.random.default_rng(0)
    train, test = np.arange(0, 50), np.arange(50, 60)
    data = uci.Dataset("toy", rng.normal(size=(60, 2)), rng.normal(size=60), [(train, test)], 10)
    data.y[test] = np.nan  # a test row read anywhere would show as NaN
    x_fit, y_fit, x_val, y_val, y_std = uci.standardised_split(data, 0, validate=True)
    assert (len(x_fit), len(x_val)) == (40, 10)
    assert np.all(np.isfinite(y_fit)) and np.all(np.isfinite(y_val)) and np.isfinite(y_std)
    fit_rows = {tuple(row) for row in np.round(x_fit, 5)}
    assert not fit_rows & {tuple(row) for row in np.round(x_val, 5)}  # the validation rows are held out
    x_train, *_ = uci.standardised_split(data, 0, validate=False)
    assert len(x_train) == 50
    assert uci.kernel_posterior(uci.Recipe(posterior="low_rank", rank=3)) == npvi.LowRankNormal(rank=3)
    with pytest.raises(ValueError, match="unknown posterior 'full'"):
        uci.kernel_posterior(uci.Recipe(posterior="full"))


def test_the_benchmark_prints_its_help(capsys):
    """``--help`` works: argparse reads every help string as a %-format, so a bare "20%" in one broke it."""
    with pytest.raises(SystemExit) as exit_info:
        uci.main(["--help"])
    assert exit_info.value.code == 0
    assert f"{uci.VALIDATION_SHARE:.0%} of each split's training rows" in " ".join(capsys.readouterr().out.split())


def test_the_heteroscedastic_model_gives_each_row_the_ensembles_softplus_scale():
    from numpyro.handlers import seed, trace

    x = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
    model = uci.make_model(5, "flipout", noise="heteroscedastic")
    sites = trace(seed(model, jax.random.PRNGKey(1))).get_trace(x)
    assert sites["sigma"]["type"] == "deterministic"  # no global noise latent
    out, mu, sigma = sites["output"]["value"], sites["mu"]["value"], sites["sigma"]["value"]
    assert out.shape == (7, 2) and mu.shape == sigma.shape == (7,)
    np.testing.assert_allclose(mu, out[:, 0])
    # The deep ensemble's scale of the second output unit: sqrt(softplus(.) + 1e-6), one per row.
    params = {"w1": jnp.zeros((3, 1)), "b1": jnp.zeros(1), "w2": jnp.zeros((1, 2)), "b2": out}  # output = b2
    ensemble_scale = baselines.ensemble_member_output(params, jnp.zeros((7, 3)))[1]
    np.testing.assert_allclose(sigma, ensemble_scale, rtol=1e-6)
    assert len(np.unique(np.round(np.asarray(sigma), 6))) == 7
    homoscedastic = trace(seed(uci.make_model(5, "flipout"), jax.random.PRNGKey(1))).get_trace(x)
    assert homoscedastic["sigma"]["type"] == "sample" and homoscedastic["sigma"]["value"].shape == ()
    with pytest.raises(ValueError, match="unknown noise 'poisson'"):
        uci.make_model(5, "flipout", noise="poisson")


def test_an_ensemble_of_variational_networks_mixes_its_members_draws():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = (x[:, 0] + 0.1 * rng.normal(size=64)).astype("float32")
    fit_key, predict_key = jax.random.split(jax.random.PRNGKey(0))
    recipe = uci.Recipe(noise="heteroscedastic", members=2, held_out=0.25, num_samples=10)
    mu, sigma = uci.train_predict(recipe, 4, fit_key, predict_key, x, y, x[:5], 3)
    assert mu.shape == sigma.shape == (10, 5)  # 5 draws of each of the 2 members
    assert not np.allclose(mu[:5].mean(0), mu[5:].mean(0))  # two networks, trained from different keys
    one, _ = uci.train_predict(uci.Recipe(noise="heteroscedastic", num_samples=10), 4, fit_key, predict_key, x, y,
                               x[:5], 3)  # fmt: skip
    assert one.shape == (10, 5)
    with pytest.raises(ValueError, match="members must be >= 1 and divide num_samples=10, got 3"):
        uci.train_predict(uci.Recipe(members=3, num_samples=10), 4, fit_key, predict_key, x, y, x[:5], 3)
    with pytest.raises(ValueError, match=r"held_out must be in \[0, 1\), got 1.0"):
        uci.train_predict(uci.Recipe(held_out=1.0), 4, fit_key, predict_key, x, y, x[:5], 3)
