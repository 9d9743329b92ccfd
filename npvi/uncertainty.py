r"""Summaries of posterior predictive draws: uncertainty and calibration.

Regression draws :math:`y_s` (or means :math:`\mu_s`) give a predictive mean
and standard deviation. Classification draws of class probabilities
:math:`p_s = p(y \mid x, W_s)`, :math:`s = 1..S`, split the predictive
uncertainty in two (Depeweg et al. 2018):

.. math::

    \underbrace{H\Big[\tfrac{1}{S}\sum_s p_s\Big]}_{\text{predictive entropy}}
    = \underbrace{\tfrac{1}{S}\sum_s H[p_s]}_{\text{expected entropy (aleatoric)}}
    + \underbrace{I[y; W \mid x]}_{\text{mutual information (epistemic)}}.

Calibration compares confidence with accuracy: the predictions are put into
``num_bins`` equal-width bins of their confidence :math:`\max_k \bar p_k`, and
the expected calibration error (Guo et al. 2017) is

.. math::

    \mathrm{ECE} = \sum_b \frac{n_b}{n}\,\big|\mathrm{acc}(b) - \mathrm{conf}(b)\big|.

Entropies are in nats.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from numpy.typing import ArrayLike

from npvi.validation import warn_if_not_finite


class RegressionSummary(NamedTuple):
    """Predictive mean and standard deviation over the draws (axis 0)."""

    mean: jax.Array
    std: jax.Array


class ClassificationSummary(NamedTuple):
    """Predictive class probabilities and the split of their uncertainty, per example."""

    probs: jax.Array
    predictive_entropy: jax.Array
    expected_entropy: jax.Array
    mutual_information: jax.Array


class ReliabilityDiagram(NamedTuple):
    """Per-bin data of a reliability diagram; empty bins have ``count == 0`` and NaN means."""

    bin_edges: jax.Array
    confidence: jax.Array
    accuracy: jax.Array
    counts: jax.Array


def _entropy(probs: jax.Array) -> jax.Array:
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=-1)


def _check_probs(name: str, probs: ArrayLike, min_ndim: int) -> jax.Array:
    probs = jnp.asarray(probs)
    if probs.ndim < min_ndim:
        raise ValueError(f"{name}: probs must have at least {min_ndim} dimensions, got shape {probs.shape}")
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise TypeError(f"{name}: probs must be floating point, got dtype {probs.dtype}")
    warn_if_not_finite(name, "probs", probs)
    return probs


def regression_summary(draws: ArrayLike) -> RegressionSummary:
    """Mean and standard deviation of predictive draws of shape ``(S, ...)`` over the draws.

    >>> regression_summary(jnp.array([[1.0, 2.0], [3.0, 2.0]]))
    RegressionSummary(mean=Array([2., 2.], dtype=float32), std=Array([1., 0.], dtype=float32))
    """
    draws = jnp.asarray(draws)
    if draws.ndim < 1 or draws.shape[0] < 1:
        raise ValueError(f"regression_summary: draws must have shape (num_samples, ...), got {draws.shape}")
    warn_if_not_finite("regression_summary", "draws", draws)
    return RegressionSummary(draws.mean(axis=0), draws.std(axis=0))


def classification_summary(probs: ArrayLike) -> ClassificationSummary:
    r"""Predictive probabilities and entropies from draws ``probs`` of shape ``(S, ..., K)``.

    * ``probs``: :math:`\bar p = \frac{1}{S}\sum_s p_s`, shape ``(..., K)``;
    * ``predictive_entropy``: :math:`H[\bar p]` (total uncertainty);
    * ``expected_entropy``: :math:`\frac{1}{S}\sum_s H[p_s]` (aleatoric);
    * ``mutual_information``: their difference, :math:`\ge 0` (epistemic).

    Two draws that disagree completely carry one bit (:math:`\log 2` nats) of
    mutual information and no aleatoric uncertainty:

    >>> s = classification_summary(jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
    >>> s.probs.tolist(), round(float(s.mutual_information[0]), 6), float(s.expected_entropy[0])
    ([[0.5, 0.5]], 0.693147, 0.0)
    """
    probs = _check_probs("classification_summary", probs, 2)
    mean = probs.mean(axis=0)
    predictive = _entropy(mean)
    expected = _entropy(probs).mean(axis=0)
    return ClassificationSummary(mean, predictive, expected, jnp.maximum(predictive - expected, 0.0))


def _check_labels(name: str, probs: jax.Array, labels: ArrayLike) -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.shape != probs.shape[:-1]:
        raise ValueError(
            f"{name}: labels must have the shape of probs without its class axis, {probs.shape[:-1]}, "
            f"got {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    return labels


def reliability_diagram(probs: ArrayLike, labels: ArrayLike, num_bins: int = 15) -> ReliabilityDiagram:
    r"""Bin the predictions by confidence :math:`\max_k p_k` into ``num_bins`` equal bins of ``[0, 1]``.

    ``probs`` are predictive probabilities of shape ``(n, K)`` (the ``probs``
    of :func:`classification_summary`), ``labels`` the true classes, shape
    ``(n,)``. Each bin is ``(lo, hi]`` (the first is ``[0, hi]``); per bin it
    gives the mean confidence, the accuracy and the count.

    >>> d = reliability_diagram(jnp.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]), jnp.array([0, 1, 1]), 2)
    >>> d.counts.tolist(), d.accuracy.tolist()
    ([0, 3], [nan, 0.6666666865348816])
    """
    probs = _check_probs("reliability_diagram", probs, 1)
    labels = _check_labels("reliability_diagram", probs, labels)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"reliability_diagram: num_bins must be a positive int, got {num_bins!r}")
    return _binned(probs, labels, num_bins)


@functools.partial(jax.jit, static_argnums=2)
def _binned(probs: jax.Array, labels: jax.Array, num_bins: int) -> ReliabilityDiagram:
    # One compiled program: run op by op, these dozen small operations cost about a second of compiles.
    confidence = probs.max(axis=-1).reshape(-1)
    correct = (probs.argmax(axis=-1) == labels).reshape(-1).astype(probs.dtype)
    edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=probs.dtype)
    bins = jnp.clip(jnp.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    counts = jnp.bincount(bins, length=num_bins)
    sums = jnp.zeros(num_bins, probs.dtype)
    mean_confidence = sums.at[bins].add(confidence) / counts
    accuracy = sums.at[bins].add(correct) / counts
    nan = jnp.array(jnp.nan, probs.dtype)
    return ReliabilityDiagram(
        edges, jnp.where(counts > 0, mean_confidence, nan), jnp.where(counts > 0, accuracy, nan), counts
    )


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, num_bins: int = 15) -> jax.Array:
    r"""Expected calibration error :math:`\sum_b \frac{n_b}{n}|\mathrm{acc}(b) - \mathrm{conf}(b)|`.

    Same binning as :func:`reliability_diagram`; 0 is perfectly calibrated.

    >>> probs = jnp.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    >>> round(float(expected_calibration_error(probs, jnp.array([0, 0, 0, 1]), num_bins=10)), 6)
    0.1
    """
    return _calibration_error(reliability_diagram(probs, labels, num_bins))


@jax.jit
def _calibration_error(diagram: ReliabilityDiagram) -> jax.Array:
    weights = diagram.counts / diagram.counts.sum()
    gaps = jnp.where(diagram.counts > 0, jnp.abs(diagram.accuracy - diagram.confidence), 0.0)
    return jnp.sum(weights * gaps)
