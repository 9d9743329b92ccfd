"""Uncertainty decomposition and calibration on hand-made cases, an independent reference, and plots."""

from __future__ import annotations

import math

import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

import npvi

matplotlib.use("Agg")


def test_entropy_split_on_hand_made_draws():
    agree = jnp.array([[[0.5, 0.5]], [[0.5, 0.5]]])  # both draws unsure: all aleatoric
    s = npvi.classification_summary(agree)
    np.testing.assert_allclose([s.predictive_entropy[0], s.expected_entropy[0]], [math.log(2)] * 2, rtol=1e-6)
    np.testing.assert_allclose(s.mutual_information, 0.0, atol=1e-7)

    disagree = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # confident draws that disagree: all epistemic
    s = npvi.classification_summary(disagree)
    np.testing.assert_allclose(s.probs, [[0.5, 0.5]])
    np.testing.assert_allclose(s.expected_entropy, 0.0, atol=1e-7)
    np.testing.assert_allclose(s.mutual_information, math.log(2), rtol=1e-6)

    uniform = jnp.full((3, 1, 10), 0.1)
    np.testing.assert_allclose(npvi.classification_summary(uniform).predictive_entropy, math.log(10), rtol=1e-6)


def test_entropy_split_adds_up_on_random_draws():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=(30, 8))  # (S, n, K)
    s = npvi.classification_summary(jnp.asarray(probs, jnp.float32))
    mean = probs.mean(0)
    predictive = -(mean * np.log(mean)).sum(-1)
    expected = -(probs * np.log(probs)).sum(-1).mean(0)
    np.testing.assert_allclose(s.predictive_entropy, predictive, rtol=1e-5)
    np.testing.assert_allclose(s.expected_entropy, expected, rtol=1e-5)
    np.testing.assert_allclose(s.mutual_information, predictive - expected, atol=1e-5)
    assert (s.mutual_information >= 0).all()


def test_ece_of_calibrated_and_overconfident_predictions():
    calibrated = jnp.array([[0.75, 0.25]] * 4)
    assert float(npvi.expected_calibration_error(calibrated, jnp.array([0, 0, 0, 1]))) == pytest.approx(0.0, abs=1e-7)
    wrong = jnp.array([[1.0, 0.0]] * 3)
    assert float(npvi.expected_calibration_error(wrong, jnp.array([1, 1, 1]))) == pytest.approx(1.0)
    # bin (0.5, 0.6]: conf 0.55, acc 0 (2 of 5); bin (0.9, 1.0]: conf 0.95, acc 1 (3 of 5)
    probs = jnp.array([[0.55, 0.45]] * 2 + [[0.05, 0.95]] * 3)
    ece = npvi.expected_calibration_error(probs, jnp.array([1, 1, 1, 1, 1]), num_bins=10)
    assert float(ece) == pytest.approx(0.4 * 0.55 + 0.6 * 0.05, rel=1e-5)


def _reference_diagram(probs, labels, num_bins):
    """Loop-by-loop binning in float64: bins (lo, hi], the first [0, hi]."""
    edges = np.linspace(0, 1, num_bins + 1)
    conf, pred = probs.max(-1), probs.argmax(-1)
    rows = []
    for b in range(num_bins):
        inside = (conf > edges[b]) & (conf <= edges[b + 1]) if b else conf <= edges[1]
        rows.append((inside.sum(), conf[inside].mean() if inside.any() else np.nan,
                     (pred[inside] == labels[inside]).mean() if inside.any() else np.nan))  # fmt: skip
    counts, confidence, accuracy = map(np.array, zip(*rows, strict=True))
    ece = np.nansum(counts / counts.sum() * np.abs(accuracy - confidence))
    return counts, confidence, accuracy, ece


def test_reliability_diagram_matches_a_loop_reference():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=500)
    labels = rng.integers(0, 4, size=500)
    d = npvi.reliability_diagram(jnp.asarray(probs), jnp.asarray(labels), num_bins=12)
    counts, confidence, accuracy, ece = _reference_diagram(probs, labels, 12)
    np.testing.assert_array_equal(d.counts, counts)
    np.testing.assert_allclose(d.confidence, confidence, rtol=1e-5)
    np.testing.assert_allclose(d.accuracy, accuracy, rtol=1e-5)
    assert int(d.counts.sum()) == 500 and d.bin_edges.shape == (13,)
    ece_npvi = npvi.expected_calibration_error(jnp.asarray(probs), jnp.asarray(labels), 12)
    assert float(ece_npvi) == pytest.approx(ece, rel=1e-5)


def test_empty_bins_are_nan_and_a_bin_edge_belongs_to_the_lower_bin():
    d = npvi.reliability_diagram(jnp.array([[0.5, 0.5], [0.2, 0.8]]), jnp.array([0, 1]), num_bins=2)
    assert d.counts.tolist() == [1, 1]  # 0.5 lies in [0, 0.5]
    d = npvi.reliability_diagram(jnp.array([[0.9, 0.1]]), jnp.array([0]), num_bins=4)
    assert d.counts.tolist() == [0, 0, 0, 1]
    assert np.isnan(d.accuracy[:3]).all() and np.isnan(d.confidence[:3]).all()


@pytest.mark.parametrize(
    "probs, labels, num_bins, error, message",
    [
        (jnp.ones((3, 2)) / 2, jnp.zeros(4, int), 10, ValueError, "labels must have the shape of probs"),
        (jnp.ones((3, 2)) / 2, jnp.zeros(3), 10, TypeError, "labels must be integer class indices"),
        (jnp.ones((3, 2), int), jnp.zeros(3, int), 10, TypeError, "probs must be floating point"),
        (jnp.ones((3, 2)) / 2, jnp.zeros(3, int), 0, ValueError, "num_bins must be a positive int, got 0"),
    ],
)
def test_bad_calibration_input(probs, labels, num_bins, error, message):
    with pytest.raises(error, match=message):
        npvi.expected_calibration_error(probs, labels, num_bins)


def test_bad_summary_input():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        npvi.classification_summary(jnp.ones(3))
    with pytest.raises(ValueError, match="num_samples"):
        npvi.regression_summary(jnp.ones((0, 3)))


def test_plots_draw_what_they_are_given():
    ax = npvi.plots.plot_elbo(-jnp.linspace(10.0, 1.0, 300), label="run")
    assert ax.get_ylabel() == "ELBO" and len(ax.lines) == 2  # raw and smoothed
    np.testing.assert_allclose(ax.lines[0].get_ydata(), jnp.linspace(10.0, 1.0, 300), rtol=1e-6)
    assert len(ax.texts) == 0  # every step is on the axis
    early = jnp.concatenate([jnp.full(10, 1e4), jnp.linspace(10.0, 1.0, 290)])  # ten steps far below the rest
    ax = npvi.plots.plot_elbo(early)
    assert [t.get_text() for t in ax.texts] == ["the first 10 of 300 steps lie below the axis"]
    ax = npvi.plots.plot_elbo(early.at[200].set(1e4))
    assert [t.get_text() for t in ax.texts] == ["11 of 300 steps lie below the axis"]

    d = npvi.reliability_diagram(jnp.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3]]), jnp.array([0, 1, 0]), 10)
    ax = npvi.plots.plot_reliability(d)
    assert len(ax.patches) == 3  # one bar per non-empty bin
    assert sorted(round(p.get_height(), 6) for p in ax.patches) == [0.0, 1.0, 1.0]
    (below,) = [a for a in ax.figure.axes if a is not ax]  # the per-bin counts under the diagram
    assert [p.get_height() for p in below.patches] == d.counts.tolist() and below.get_ylabel() == "count"
    assert len(npvi.plots.plot_reliability(d, counts=False).figure.axes) == 1

    x = jnp.linspace(-1, 1, 20)
    draws = x + jnp.linspace(-1, 1, 101)[:, None]  # quantiles known: x +- 0.9
    ax = npvi.plots.plot_predictive_band(x, draws, x_obs=x, y_obs=x)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), x, atol=1e-6)
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(1.0 + 0.9, abs=1e-5)
    with pytest.raises(ValueError, match=r"draws must have shape \(num_samples, 20\)"):
        npvi.plots.plot_predictive_band(x, draws[:, :5])
    with pytest.raises(ValueError, match="losses is empty"):
        npvi.plots.plot_elbo(jnp.zeros(0))
