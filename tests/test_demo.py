"""The ``npvi demo`` job: short real runs on both datasets, the files it writes, and bad options."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from npvi.cli import main  # noqa: E402
from npvi.demo import classification_metrics, regression_metrics, run_demo  # noqa: E402


def _row(out: str, label: str) -> list[float]:
    match = re.search(rf"^\s+{re.escape(label)}((?:\s+[-\d.]+)+)\s*$", out, flags=re.MULTILINE)
    assert match, f"no metrics row {label!r} in the output:\n{out}"
    return [float(v) for v in match[1].split()]


@pytest.mark.usefixtures("quick_xla")
def test_digits_demo_beats_the_baseline_and_writes_its_files(capsys, tmp_path):
    out_dir = tmp_path / "run"
    argv = ["demo", "--epochs", "8", "--num-samples", "50", "--out", str(out_dir), "--estimator", "lrt", "--no-cache"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "ELBO" in captured.err  # the progress bar
    accuracy, nll, ece = _row(captured.out, "Bayesian MLP")
    base_accuracy, base_nll, _ = _row(captured.out, "baseline (ignores x)")
    assert accuracy > 0.85 > base_accuracy and nll < base_nll and 0 <= ece < 0.2
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "elbo.png",
        "inference_data.nc",
        "metrics.json",
        "reliability.png",
    ]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "digits" and metrics["estimator"] == "lrt" and metrics["epochs"] == 8
    assert metrics["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    idata = az.from_netcdf(str(out_dir / "inference_data.nc"))
    assert idata.log_likelihood["y"].shape == (1, 50, 359)
    assert idata.posterior.attrs["estimator"] == "hidden: local_reparameterization, output: local_reparameterization"
    # ArviZ's PSIS-LOO and WAIC on the file itself: float64 log-likelihoods, none cancelled to the same value
    # (exactly 0) in every draw, so no point has constant importance weights.
    log_lik = idata.log_likelihood["y"].values[0]
    assert log_lik.dtype == np.float64 and not np.any(log_lik.max(axis=0) == log_lik.min(axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ's high-Pareto-k and WAIC-variance warnings
        loo, waic = az.loo(idata, pointwise=True), az.waic(idata)
    assert np.isfinite([loo.elpd_loo, loo.se, waic.elpd_waic, waic.se]).all()
    assert np.isfinite(loo.pareto_k.values).all() and np.isfinite(loo.loo_i.values).all()
    assert (out_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("quick_xla")
def test_cnn_demo_reports_the_mlp_next_to_it_and_writes_its_files(capsys, tmp_path):
    argv = ["demo", "--model", "cnn", "--epochs", "3", "--num-samples", "20", "--out", str(tmp_path), "--no-cache"]
    assert main(argv + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "npvi demo: Conv2DFlipout CNN 8x8x1 > conv 8@3x3 > pool > conv 16@3x3 > pool > 10 on digits" in out
    assert "npvi demo: for comparison, DenseFlipout MLP 64-128-10 on digits" in out
    cnn, mlp, baseline = (_row(out, label) for label in ("Bayesian CNN", "Bayesian MLP", "baseline (ignores x)"))
    assert cnn[0] > 0.85 > baseline[0] and cnn[1] < baseline[1] and 0 <= cnn[2] < 0.2
    assert mlp[0] > 0.85 and mlp[1] < baseline[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "elbo.png",
        "inference_data.nc",
        "metrics.json",
        "reliability.png",
    ]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model"] == "cnn" and metrics["estimator"] == "flipout" and metrics["epochs"] == 3
    assert metrics["metrics"]["accuracy"] == pytest.approx(cnn[0], abs=1e-4)
    assert metrics["mlp"]["epochs"] == 3 and metrics["mlp"]["metrics"]["nll"] == pytest.approx(mlp[1], abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    idata = az.from_netcdf(str(tmp_path / "inference_data.nc"))
    assert idata.posterior["output.kernel"].shape == (1, 20, 64, 10)  # the CNN's: 2x2x16 pooled features
    assert idata.posterior.attrs["estimator"].startswith("conv1: flipout")


@pytest.mark.usefixtures("quick_xla")
def test_diabetes_demo_beats_the_baseline(capsys, tmp_path):
    argv = ["demo", "--dataset", "diabetes", "--epochs", "30", "--seed", "1", "--num-samples", "100", "--no-cache"]
    assert main(argv + ["--out", str(tmp_path), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rmse, nll = _row(captured.out, "Bayesian MLP")
    base_rmse, base_nll = _row(captured.out, "baseline (ignores x)")
    assert rmse < base_rmse and nll < base_nll
    assert (tmp_path / "predictive.png").exists() and not (tmp_path / "reliability.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--epochs", "-1"], "--epochs: expected a positive integer, got '-1'"),
        (["demo", "--epochs", "abc"], "--epochs: expected a positive integer, got 'abc'"),
        (["demo", "--num-samples", "0"], "--num-samples: expected a positive integer"),
        (["demo", "--seed", "x"], "--seed: expected a non-negative integer"),
        (["demo", "--dataset", "mnist"], "--dataset: invalid choice: 'mnist'"),
        (["demo", "--estimator", "bbb"], "--estimator: invalid choice: 'bbb'"),
        (["demo", "--model", "rnn"], "--model: invalid choice: 'rnn'"),
        (["demo", "--model", "cnn", "--dataset", "diabetes"], "--model cnn convolves images: it needs --dataset"),
        (["demo", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_options_exit_nonzero_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "usage: npvi" in err
    assert message in err


def test_run_demo_rejects_a_cnn_on_tabular_data_and_unknown_models():
    with pytest.raises(ValueError, match="model 'cnn' convolves images: it needs dataset 'digits'"):
        run_demo("diabetes", model="cnn", out=None)
    with pytest.raises(ValueError, match="unknown model 'rnn'"):
        run_demo(model="rnn", out=None)


@pytest.mark.usefixtures("quick_xla")
def test_an_unwritable_out_directory_fails_cleanly(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    argv = ["demo", "--dataset", "diabetes", "--epochs", "1", "--num-samples", "5", "--no-progress", "--no-cache"]
    assert main(argv + ["--out", str(blocker / "sub")]) == 1
    assert "npvi demo: cannot write the results" in capsys.readouterr().err


def test_the_compilation_cache_is_on_by_default_and_changes_no_number(tmp_path):
    """Fresh processes, as a user runs the demo: the cache fills, and cached programs give the same numbers."""
    argv = [sys.executable, "-m", "npvi.cli", "demo", "--dataset", "diabetes", "--epochs", "2", "--num-samples", "20",
            "--no-progress"]  # fmt: skip
    cache = tmp_path / "cache"
    # Quick compiles (JAX's flag, in every run alike): the test is about the cache, not XLA's optimisations.
    env = {**os.environ, "NPVI_CACHE_DIR": str(cache), "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}

    def run(name, *extra):
        subprocess.run(argv + ["--out", str(tmp_path / name), *extra], env=env, check=True, capture_output=True)
        return json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]

    cold = run("cold")
    entries = len(list(cache.iterdir()))
    assert entries > 0
    warm = run("warm")
    assert len(list(cache.iterdir())) == entries  # every program came from the cache
    assert warm == cold


def test_no_cache_leaves_the_compilation_cache_off(monkeypatch, tmp_path):
    """``--no-cache`` never turns the cache on (the demo itself is mocked: the cache's numbers are tested above)."""
    import npvi.cli
    import npvi.demo

    calls = []
    monkeypatch.setattr(npvi.cli, "enable_compilation_cache", lambda *a: calls.append("cache"))
    monkeypatch.setattr(npvi.demo, "run_demo", lambda *a, **k: calls.append("demo"))
    assert npvi.cli.main(["demo", "--no-cache", "--out", str(tmp_path)]) == 0
    assert npvi.cli.main(["demo", "--out", str(tmp_path)]) == 0
    assert calls == ["demo", "cache", "demo"]


USER_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist, optax
from numpyro.infer import SVI
import npvi

events = []  # JAX's: every compile request, and how the persistent cache answered it
jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
jax.monitoring.register_event_duration_secs_listener(lambda event, duration, **kwargs: events.append(event))
directory = npvi.enable_compilation_cache(sys.argv[1])

def model(x, y=None, num_data=None):
    h = npvi.DenseFlipout(8, activation=jax.nn.tanh, name="l1")(x)
    mu = npvi.DenseFlipout(1, name="l2")(h)[..., 0]
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)

x = jnp.linspace(-2.0, 2.0, 40)[:, None]
y = jnp.sin(2.0 * x[:, 0])
guide = npvi.MeanFieldGuide(model)
svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
result = npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=3, batch_size=10, progress_bar=False)
draws = npvi.Predictive(model, guide, result.params, num_samples=20)(jax.random.PRNGKey(1), x)
numbers = {"losses": np.asarray(result.losses).tolist(), "y": np.asarray(draws["y"]).ravel().tolist()}
counts = {name: events.count(f"/jax/{event}") for name, event in [("requests", "core/compile/backend_compile_duration"),
          ("hits", "compilation_cache/cache_hits"), ("misses", "compilation_cache/cache_misses")]}  # misses: compiled
print(json.dumps({"directory": str(directory), **counts, "numbers": numbers}))
"""


def test_enable_compilation_cache_in_a_user_script_compiles_nothing_the_second_time(tmp_path):
    """A user's script, fit and predict, run twice as fresh processes on one cache directory."""
    cache = tmp_path / "new" / "cache"  # created by enable_compilation_cache
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # quick compiles, in both runs alike

    def run():
        done = subprocess.run([sys.executable, "-c", USER_SCRIPT, str(cache)], env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
        return json.loads(done.stdout.splitlines()[-1])

    cold = run()
    entries = sorted(p.name for p in cache.iterdir())
    assert cold["directory"] == str(cache) and cold["requests"] == cold["misses"] > 0 == cold["hits"]
    assert len(entries) >= cold["misses"]  # every program compiled was written, however quick or small
    warm = run()
    assert warm["requests"] == warm["hits"] == cold["misses"] and warm["misses"] == 0  # nothing compiled
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert warm["numbers"] == cold["numbers"]  # and it is the same program: the same numbers, bit for bit


def test_regression_metrics_match_a_direct_computation():
    rng = np.random.default_rng(0)
    mu, sigma, y = rng.normal(size=(50, 7)), rng.uniform(0.5, 2.0, size=50), rng.normal(size=7)
    m = regression_metrics(mu, sigma, y, y_std=3.0)
    density = np.exp(-0.5 * ((y - mu) / sigma[:, None]) ** 2) / (np.sqrt(2 * np.pi) * sigma[:, None])
    np.testing.assert_allclose(m["rmse"], 3.0 * np.sqrt(np.mean((mu.mean(0) - y) ** 2)))
    np.testing.assert_allclose(m["nll"], -np.mean(np.log(density.mean(0))) + np.log(3.0))


def test_classification_metrics_match_a_direct_computation():
    rng = np.random.default_rng(1)
    probs, labels = rng.dirichlet(np.ones(3), size=(20, 9)), rng.integers(0, 3, size=9)
    m = classification_metrics(probs, labels)
    mean = probs.mean(0)
    np.testing.assert_allclose(m["accuracy"], np.mean(mean.argmax(-1) == labels))
    np.testing.assert_allclose(m["nll"], -np.mean(np.log(mean[np.arange(9), labels])))
