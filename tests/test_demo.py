"""The ``npvi demo`` command: a short real run, and argparse errors for bad options."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("sklearn")

from npvi.cli import main  # noqa: E402
from npvi.demo import predictive_metrics  # noqa: E402

METRIC_ROW = r"^\s+{label}\s+(?P<rmse>[-\d.]+)\s+(?P<nll>[-\d.]+)\s*$"


def _metrics(out: str, label: str) -> tuple[float, float]:
    match = re.search(METRIC_ROW.format(label=re.escape(label)), out, flags=re.MULTILINE)
    assert match, f"no metrics row {label!r} in the output:\n{out}"
    return float(match["rmse"]), float(match["nll"])


def test_demo_prints_progress_and_beats_the_baseline(capsys):
    assert main(["demo", "--epochs", "20", "--seed", "1", "--num-samples", "100"]) == 0
    out = capsys.readouterr().out
    elbos = [float(v) for v in re.findall(r"^epoch\s+\d+\s+ELBO\s+([-\d.]+)$", out, flags=re.MULTILINE)]
    assert len(elbos) >= 2 and np.isfinite(elbos).all()
    assert elbos[-1] > elbos[0]  # training improves the ELBO
    assert "held-out metrics" in out
    rmse, nll = _metrics(out, "Flipout BNN")
    baseline_rmse, baseline_nll = _metrics(out, "baseline (train mean)")
    assert np.isfinite([rmse, nll, baseline_rmse, baseline_nll]).all()
    assert rmse < baseline_rmse
    assert nll < baseline_nll


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--epochs", "-1"], "--epochs: expected a positive integer, got '-1'"),
        (["demo", "--epochs", "abc"], "--epochs: expected a positive integer, got 'abc'"),
        (["demo", "--num-samples", "0"], "--num-samples: expected a positive integer"),
        (["demo", "--seed", "x"], "--seed: expected a non-negative integer"),
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


def test_predictive_metrics_match_a_direct_computation():
    rng = np.random.default_rng(0)
    mu, sigma, y = rng.normal(size=(50, 7)), rng.uniform(0.5, 2.0, size=50), rng.normal(size=7)
    rmse, nll = predictive_metrics(mu, sigma, y, y_std=3.0)
    density = np.exp(-0.5 * ((y - mu) / sigma[:, None]) ** 2) / (np.sqrt(2 * np.pi) * sigma[:, None])
    np.testing.assert_allclose(rmse, 3.0 * np.sqrt(np.mean((mu.mean(0) - y) ** 2)))
    np.testing.assert_allclose(nll, -np.mean(np.log(density.mean(0))) + np.log(3.0))
