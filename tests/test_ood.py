"""OOD detection metrics: AUROC and AUPR against scikit-learn, limiting cases, jit, and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from npvi.ood import aupr, auroc


def _sklearn(in_scores, out_scores):
    """scikit-learn's AUROC and average precision, out labelled 1, on the values npvi sees (JAX's dtypes)."""
    in_values = np.asarray(jnp.asarray(in_scores), dtype=np.float64)
    out_values = np.asarray(jnp.asarray(out_scores), dtype=np.float64)
    labels = np.concatenate([np.zeros(in_values.size), np.ones(out_values.size)])
    scores = np.concatenate([in_values, out_values])
    return roc_auc_score(labels, scores), average_precision_score(labels, scores)


# Most cases share the sizes and dtypes, so that they share compiled programs (one per shape and dtype).
N_IN, N_OUT = 40, 25


def _random_cases():
    rng = np.random.default_rng(20240611)
    return {
        "continuous": (rng.normal(0.0, 1.0, N_IN).astype(np.float32), rng.normal(0.7, 1.0, N_OUT).astype(np.float32)),
        "ties_rounded_floats": (
            np.round(rng.normal(0.0, 1.0, N_IN), 1).astype(np.float32),
            np.round(rng.normal(0.3, 1.0, N_OUT), 1).astype(np.float32),
        ),
        "signed_zeros": (  # -0.0 == 0.0: ties across the classes
            np.tile(np.array([-0.0, 0.0, 1.0, -1.0], np.float32), N_IN // 4),
            np.tile(np.array([0.0, -0.0, 2.0, -1.0, 0.5], np.float32), N_OUT // 5),
        ),
        "ties_0_to_4": (rng.integers(0, 5, N_IN), rng.integers(1, 6, N_OUT)),
        "ties_binary": (rng.integers(0, 2, N_IN), rng.integers(0, 2, N_OUT)),
        "all_equal": (np.full(N_IN, 3), np.full(N_OUT, 3)),
        "one_out_tied": (rng.integers(0, 3, N_IN), np.array([1])),
        "one_in_tied": (np.array([2]), rng.integers(0, 4, N_OUT)),
        "one_each_tied": (np.array([0.5], np.float32), np.array([0.5], np.float32)),
        "int_in_float_out": (rng.integers(0, 4, N_IN), rng.integers(0, 4, N_OUT).astype(np.float32)),
        "bool_in_float_out": (rng.integers(0, 2, N_IN).astype(bool), rng.integers(0, 3, N_OUT).astype(np.float32)),
    }


CASES = _random_cases()


@pytest.mark.parametrize("case", list(CASES))
def test_auroc_and_aupr_match_sklearn(case):
    in_scores, out_scores = CASES[case]
    expected_auroc, expected_aupr = _sklearn(in_scores, out_scores)
    assert float(auroc(in_scores, out_scores)) == pytest.approx(expected_auroc, rel=1e-6)
    assert float(aupr(in_scores, out_scores)) == pytest.approx(expected_aupr, rel=1e-6)


def test_separated_and_reversed_scores():
    low, high = np.arange(N_IN, dtype=np.float32), N_IN + np.arange(N_OUT, dtype=np.float32)
    assert float(auroc(low, high)) == 1.0
    assert float(aupr(low, high)) == 1.0
    assert float(auroc(high, low)) == 0.0
    # reversed: the OOD scores all rank below the N_OUT in-distribution ones, so the k-th from the top
    # (k = 1..N_IN) comes at precision k / (N_OUT + k)
    expected = np.mean([k / (N_OUT + k) for k in range(1, N_IN + 1)])
    assert float(aupr(high, low)) == pytest.approx(expected, rel=1e-6)


def test_ties_are_exact():
    one = np.float32(1.0)
    just_above = np.nextafter(one, np.float32(2.0))
    assert float(auroc([one], [just_above])) == 1.0
    assert float(auroc([just_above], [one])) == 0.0
    assert float(auroc([one], [one])) == 0.5
    assert float(aupr([one], [one])) == 0.5  # one threshold for both: precision 1/2, recall 0 to 1


def test_identical_distributions_give_chance_auroc():
    n = 20_000
    rng = np.random.default_rng(7)
    in_scores, out_scores = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    # Under the null (both samples from one continuous distribution) the AUC = U / (n1 n2) has mean 1/2 and
    # standard error sqrt((n1 + n2 + 1) / (12 n1 n2)), about 0.0029 here.
    standard_error = math.sqrt((n + n + 1) / (12 * n * n))
    value = float(auroc(in_scores, out_scores))
    assert abs(value - 0.5) < 5 * standard_error
    # and float32 sums keep it at scikit-learn's value at this size too
    expected_auroc, expected_aupr = _sklearn(in_scores, out_scores)
    assert value == pytest.approx(expected_auroc, rel=1e-6)
    assert float(aupr(in_scores, out_scores)) == pytest.approx(expected_aupr, rel=1e-6)


def test_auroc_is_antisymmetric_with_ties():
    a, b = CASES["ties_0_to_4"]
    assert float(auroc(a, b)) + float(auroc(b, a)) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < float(auroc(a, b)) < 1.0  # not a degenerate case


def test_jit_gives_the_same_numbers():
    in_scores, out_scores = (jnp.asarray(x) for x in CASES["ties_0_to_4"])
    for metric in (auroc, aupr):
        assert float(jax.jit(metric)(in_scores, out_scores)) == float(metric(in_scores, out_scores))
    expected_auroc, _ = _sklearn(in_scores, out_scores)
    assert float(jax.jit(auroc)(in_scores, out_scores)) == pytest.approx(expected_auroc, rel=1e-6)


BAD = [
    (np.zeros((3, 2)), ValueError, r"must be a non-empty 1-D array of scores, got shape \(3, 2\)"),
    (np.zeros(0), ValueError, r"must be a non-empty 1-D array of scores, got shape \(0,\)"),
    ([], ValueError, r"must be a non-empty 1-D array of scores, got shape \(0,\)"),
    (1.0, ValueError, r"must be a non-empty 1-D array of scores, got shape \(\)"),
    (np.array([0.1, np.nan, 0.3]), ValueError, r"must be finite, but 1 of its 3 values are NaN or infinite"),
    ([0.1, np.inf], ValueError, r"must be finite, but 1 of its 2 values are NaN or infinite"),
    (np.array([1 + 1j, 2.0]), TypeError, r"must hold real numbers \(bool, int or float\), got dtype complex"),
    (["a", "b"], TypeError, r"must hold real numbers \(bool, int or float\), got dtype <U1"),
]


@pytest.mark.parametrize("metric", [auroc, aupr], ids=["auroc", "aupr"])
@pytest.mark.parametrize("bad, error, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_scores_raise_naming_the_argument(metric, bad, error, message):
    good = np.array([0.1, 0.2, 0.3], np.float32)
    with pytest.raises(error, match=rf"^{metric.__name__}: out_scores {message}"):
        metric(good, bad)
    with pytest.raises(error, match=rf"^{metric.__name__}: in_scores {message}"):
        metric(bad, good)
