r"""Out-of-distribution detection metrics: AUROC and AUPR of a score that is higher for OOD inputs.

A detector gives each input a score :math:`s`, higher meaning "more likely out of
distribution": the predictive entropy or the mutual information of
:func:`npvi.classification_summary`, say. Given the scores of ``n_in``
in-distribution inputs (the negatives) and ``n_out`` out-of-distribution ones (the
positives), the area under the ROC curve is the Mann–Whitney :math:`U` statistic
over :math:`n_{\text{in}} n_{\text{out}}`, ties counted one half:

.. math::

    \mathrm{AUROC} = P(s_{\text{out}} > s_{\text{in}}) + \tfrac12 P(s_{\text{out}} = s_{\text{in}})
    = \frac{1}{n_{\text{in}} n_{\text{out}}} \sum_{i \in \text{out}} \big(
      \#\{j \in \text{in}: s_j < s_i\} + \tfrac12 \#\{j \in \text{in}: s_j = s_i\} \big).

The area under the precision-recall curve, with OOD the positive class, is the
average precision. With one threshold :math:`t_k` at each distinct score (tied
scores share it), precision :math:`P_k` and recall :math:`R_k` of the rule
":math:`s \ge t_k` is OOD", thresholds in decreasing order and :math:`R_0 = 0`,

.. math::

    \mathrm{AUPR} = \sum_k (R_k - R_{k-1})\, P_k
    = \frac{1}{n_{\text{out}}} \sum_{i \in \text{out}}
      \frac{\#\{j \in \text{out}: s_j \ge s_i\}}{\#\{j: s_j \ge s_i\}}:

recall grows only at thresholds where OOD scores sit, by their share of them. Both
equal scikit-learn's ``roc_auc_score`` and ``average_precision_score`` with labels 1
for out, 0 for in. A score that does not tell the two apart has an AUROC of about
0.5 and an AUPR of about the OOD share :math:`n_{\text{out}} / (n_{\text{in}} + n_{\text{out}})`;
one that separates them perfectly has 1 for both.

Both count by sorting, :math:`O(n \log n)`, comparing the scores as given (ties are
exact), and run under ``jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from npvi.validation import check_finite

__all__ = ["auroc", "aupr"]


def _is_real(dtype: np.dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_


def _check_scores(owner: str, what: str, scores: ArrayLike) -> jax.Array:
    if not hasattr(scores, "dtype"):
        try:  # a list: NumPy reads its dtype (JAX would take a list of strings for a dtype name)
            scores = np.asarray(scores)
        except (TypeError, ValueError):
            pass  # ragged, or a list of tracers: jnp.asarray says which
    if hasattr(scores, "dtype") and not _is_real(scores.dtype):
        raise TypeError(f"{owner}: {what} must hold real numbers (bool, int or float), got dtype {scores.dtype}")
    try:
        array = jnp.asarray(scores)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{owner}: {what} must be a 1-D array of real numbers, got a {type(scores).__name__}: {error}"
        ) from None
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(f"{owner}: {what} must be a non-empty 1-D array of scores, got shape {array.shape}")
    check_finite(owner, what, array)
    return array


def _check_pair(owner: str, in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[jax.Array, jax.Array]:
    return _check_scores(owner, "in_scores", in_scores), _check_scores(owner, "out_scores", out_scores)


def _common_dtype(in_scores: jax.Array, out_scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    dtype = jnp.promote_types(in_scores.dtype, out_scores.dtype)
    if dtype == jnp.bool_:
        dtype = jnp.int32  # sort and compare bools as 0 and 1
    return in_scores.astype(dtype), out_scores.astype(dtype)


def auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> jax.Array:
    r"""Area under the ROC curve for telling ``out_scores`` (positives) from ``in_scores`` (negatives).

    :math:`P(s_{\text{out}} > s_{\text{in}}) + \frac12 P(s_{\text{out}} = s_{\text{in}})` over
    all pairs, computed as the Mann–Whitney :math:`U` statistic; higher scores mean
    "more likely out of distribution". 1 separates them perfectly, 0.5 is chance, 0 is
    perfectly reversed, and ``auroc(a, b) + auroc(b, a) == 1``. Both inputs are
    non-empty 1-D arrays of finite real scores (``ValueError`` otherwise, ``TypeError`` for another dtype); the result
    is a scalar of JAX's default float dtype.

    Of the 3 × 2 pairs, 5 are ordered (0.25 beats 0.1 and 0.2; 0.4 beats all three):

    >>> round(float(auroc([0.1, 0.2, 0.3], [0.25, 0.4])), 6)
    0.833333

    A tie counts one half: 1 beats 0 and ties 1, 2 beats both, so (1.5 + 2) / 4:

    >>> float(auroc([0, 1], [1, 2]))
    0.875
    """
    in_scores, out_scores = _check_pair("auroc", in_scores, out_scores)
    return _auroc(in_scores, out_scores)


@jax.jit
def _auroc(in_scores: jax.Array, out_scores: jax.Array) -> jax.Array:
    # One compiled program; op by op, each of its steps would compile on its own.
    in_scores, out_scores = _common_dtype(in_scores, out_scores)
    below = _count_below(in_scores, out_scores, or_equal=False)
    at_or_below = _count_below(in_scores, out_scores, or_equal=True)
    float_dtype = jnp.result_type(float)
    # 2 (#less + #equal / 2) = #less + #(less or equal), exact integers; each term over 2 n_in lies in [0, 1]
    return jnp.mean((below + at_or_below).astype(float_dtype) / (2 * in_scores.shape[0]))


def aupr(in_scores: ArrayLike, out_scores: ArrayLike) -> jax.Array:
    r"""Area under the precision-recall curve with ``out_scores`` the positives, as average precision.

    :math:`\sum_k (R_k - R_{k-1}) P_k` over one threshold at each distinct score
    (tied scores share one threshold), equal to scikit-learn's
    ``average_precision_score``; higher scores mean "more likely out of distribution".
    1 for scores that separate perfectly; a score that cannot tell them apart gets
    about the OOD share :math:`n_{\text{out}} / (n_{\text{in}} + n_{\text{out}})`. Unlike
    :func:`auroc` it is not symmetric in the two classes. Both inputs are non-empty 1-D
    arrays of finite real scores (``ValueError`` otherwise); the result is a scalar of
    JAX's default float dtype.

    Ranked from the top: 0.4 (out, precision 1/1), 0.3 (in), 0.25 (out, precision 2/3),
    so recall steps by 1/2 at precisions 1 and 2/3:

    >>> round(float(aupr([0.1, 0.2, 0.3], [0.25, 0.4])), 6)
    0.833333
    >>> float(aupr([0, 3], [3, 3, 3]))  # one threshold for the four tied 3s: precision 3/4, recall 0 to 1
    0.75
    """
    in_scores, out_scores = _check_pair("aupr", in_scores, out_scores)
    return _aupr(in_scores, out_scores)


@jax.jit
def _aupr(in_scores: jax.Array, out_scores: jax.Array) -> jax.Array:
    in_scores, out_scores = _common_dtype(in_scores, out_scores)
    # At the threshold s_k of each OOD score: true positives #out >= s_k, false positives #in >= s_k
    # (ties on either side included), each OOD score raising the recall by 1 / n_out.
    true_positives = out_scores.shape[0] - _count_below(out_scores, out_scores, or_equal=False)
    false_positives = in_scores.shape[0] - _count_below(in_scores, out_scores, or_equal=False)
    float_dtype = jnp.result_type(float)
    return jnp.mean(true_positives.astype(float_dtype) / (true_positives + false_positives).astype(float_dtype))


def _count_below(data: jax.Array, queries: jax.Array, or_equal: bool) -> jax.Array:
    """For the queries in increasing order, how many ``data`` are below each (``<``, or ``<=`` if ``or_equal``).

    One sort of data and queries together, equal values ordered data first (``<=``) or queries first
    (``<``); the k-th query (from 0) at position p has p - k data before it. The positions come
    from a second sort. Two sorts compile in a third of the time of ``jnp.searchsorted``'s loop.
    """
    num_data, num_queries = data.shape[0], queries.shape[0]
    is_query = jnp.concatenate([jnp.zeros(num_data, jnp.int32), jnp.ones(num_queries, jnp.int32)])
    tie_break = is_query if or_equal else -is_query
    _, tie_break = jax.lax.sort((jnp.concatenate([data, queries]), tie_break), num_keys=2)
    index = jnp.arange(num_data + num_queries, dtype=jnp.int32)
    positions = jnp.sort(jnp.where(tie_break != 0, index, num_data + num_queries))[:num_queries]
    return positions - jnp.arange(num_queries, dtype=jnp.int32)
