"""Estimators, and mixed precision, as NumPyro effect handlers.

Each estimator handler intercepts the linear operation of every npvi layer inside it (dense
and convolutional alike: one ``npvi_linear`` message type) and chooses how that
layer turns its weight posterior into outputs. They work as
context managers and as model wrappers; the innermost handler wins, and a layer
outside every handler uses its own default (``DenseFlipout`` asks for Flipout).

>>> import jax, jax.numpy as jnp, numpyro
>>> import npvi
>>> def model(x):
...     return npvi.DenseFlipout(2, name="l1")(x)
>>> with numpyro.handlers.seed(rng_seed=0), npvi.handlers.reparameterization():
...     model(jnp.ones((3, 4))).shape
(3, 2)
>>> reparameterized_model = npvi.handlers.reparameterization(model)

:class:`mixed_precision` intercepts the same messages and sets the dtype the layers
compute in, the parameters staying float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from numpyro.primitives import Messenger

from npvi.estimators import FLIPOUT, LOCAL_REPARAMETERIZATION, REPARAMETERIZATION

LINEAR_MESSAGE = "npvi_linear"


class _EstimatorEffect(Messenger):
    estimator: str

    def process_message(self, msg) -> None:
        if msg["type"] == LINEAR_MESSAGE and msg["kwargs"]["estimator"] is None:
            msg["kwargs"]["estimator"] = self.estimator


class reparameterization(_EstimatorEffect):
    """Use one weight draw ``W ~ q`` for the whole batch: ``out = op(x, W) + b``."""

    estimator = REPARAMETERIZATION


class local_reparameterization(_EstimatorEffect):
    """Sample each output element from ``N(op(x, mu) + b, op(x * x, sigma^2))`` independently.

    Exact per example for a dense layer; for a convolution each element's marginal is
    exact but the covariance between positions of one example is dropped.

    Needs a Normal weight posterior (``npvi.MeanFieldNormal``); others raise ``TypeError``.
    """

    estimator = LOCAL_REPARAMETERIZATION


class flipout(_EstimatorEffect):
    """Flipout: ``out = op(x, mu) + op(x * s_in, W - mu) * s_out + b`` with random signs.

    Needs a Normal weight posterior (``npvi.MeanFieldNormal``); others raise ``TypeError``.
    """

    estimator = FLIPOUT


#: The compute dtypes :class:`mixed_precision` takes (a float8 is too coarse for a variance or a noise draw).
COMPUTE_DTYPES = ("bfloat16", "float16", "float32", "float64")


def _check_compute_dtype(owner: str, compute_dtype: Any) -> jnp.dtype:
    """``compute_dtype`` as a NumPy dtype, if it is one of :data:`COMPUTE_DTYPES`; else an error naming ``owner``.

    >>> _check_compute_dtype("m", "bfloat16")
    dtype(bfloat16)
    >>> _check_compute_dtype("m", jnp.int32)
    Traceback (most recent call last):
    ...
    TypeError: m: compute_dtype must be a floating dtype, one of bfloat16, float16, float32, float64; got int32
    """
    expected = f"one of {', '.join(COMPUTE_DTYPES)}"
    try:
        dtype = None if compute_dtype is None else jnp.dtype(compute_dtype)
    except TypeError:  # not a dtype at all, e.g. the string "float8"
        dtype = None
    if dtype is None:
        raise TypeError(f"{owner}: compute_dtype must be a floating dtype, {expected}; got {compute_dtype!r}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{owner}: compute_dtype must be a floating dtype, {expected}; got {dtype}")
    if dtype.name not in COMPUTE_DTYPES:
        raise ValueError(
            f"{owner}: compute_dtype {dtype} is too narrow for the estimators' variances and noise draws; "
            f"expected {expected}"
        )
    return dtype


class mixed_precision(Messenger):
    r"""Mixed precision: run every npvi layer inside it in ``compute_dtype``, its parameters staying float32.

    As Keras' ``"mixed_bfloat16"`` policy: variables in float32, computations and
    outputs in ``compute_dtype`` (``jnp.bfloat16`` or ``jnp.float16``). It sets the
    compute dtype of every ``npvi_linear`` message, so every npvi layer and every layer
    of a converted Flax or Equinox network inside it. The innermost handler wins, so
    ``mixed_precision(compute_dtype=jnp.float32)`` around a last layer keeps it in float32.
    It works as a context manager and as a model wrapper; give the wrapped model to
    ``SVI`` (and so to :func:`npvi.fit`) and to :class:`npvi.Predictive`.

    With :math:`c(\cdot)` rounding to ``compute_dtype``, :math:`\circledast` the layer's
    op (``x @ W``, a convolution, ...) computed in ``compute_dtype``, and the
    posterior :math:`\mathcal N(\mu, \sigma^2)`:

    * the parameters (:math:`\mu`, :math:`u`, a point-estimate bias :math:`b`) and
      the scale :math:`\sigma = \operatorname{softplus}(u) + \varepsilon_{32}` stay
      float32, computed by the guide; in bfloat16 :math:`\varepsilon` would be
      :math:`2^{-7}`, and in float16 softplus underflows to 0 below
      :math:`u \approx -17` and :math:`\log\sigma` in the KL becomes :math:`-\infty`.
      A layer's weights are float32 even where its input is the previous layer's
      ``compute_dtype`` output;
    * reparameterization: :math:`c\big(c(x) \circledast c(W) + b\big)`, with :math:`W = \mu + \sigma\epsilon`
      drawn in float32 (the bias is added in float32, and its gradient summed in float32, in
      every estimator). The drawn kernel itself is rounded, so weight noise below a weight's
      rounding (half a unit in its last place) is lost in the forward pass; its gradient is not;
    * Flipout: :math:`c\big(c(x) \circledast c(\mu) + ((x s_\text{in}) \circledast c(W - \mu))
      s_\text{out} + b\big)`: the perturbation :math:`W - \mu = \sigma\epsilon` is formed in
      float32 and rounded once; in bfloat16, :math:`c(W) - c(\mu)` would be 0 for a
      perturbation below half a unit in the last place of :math:`\mu` (up to :math:`2^{-8}|\mu|`);
    * local reparameterization: :math:`c\big(c(x) \circledast c(\mu) + s\, c(\epsilon) + b\big)`,
      :math:`s = \sqrt{c(x^2) \circledast c(\sigma^2)}` with :math:`\sigma^2` squared in
      float32 and rounded once, :math:`\epsilon` drawn in float32 (so a key gives the
      float32 run's draws, rounded), and the square root taken in float32
      (:func:`npvi.estimators.safe_sqrt`). In float16, :math:`\sigma^2` underflows to 0
      for :math:`\sigma` below about :math:`1.7 \times 10^{-4}`: a variance of exactly 0
      has the standard deviation 0 and a zero gradient (not ``inf * 0``), and a
      positive one below float16's smallest normal number is a normal float32 number,
      whose square root has a gradient of at most 2048. Those scales still get the
      KL's float32 gradient;
    * the output (and so the activation and the next layer's input) is ``compute_dtype``;
    * the KL terms are computed by :class:`npvi.ELBO` from the guide's float32
      posterior and the layer's float32 prior, so they are float32; the likelihood's log
      density has the dtype its distribution promotes to: ``Normal(mu, sigma).log_prob(y)``
      is float32 for float32 observations ``y``, but a likelihood of the outputs alone
      (``Categorical(logits=...)``) would be computed in ``compute_dtype``: pass it
      ``logits.astype(jnp.float32)`` (Keras' float32 last layer). The gradients of the
      parameters, and so the optimizer state, are float32 (a cast's gradient is the cast back).

    bfloat16 has float32's range and 8 bits of significand (a rounding error of at most
    :math:`2^{-8}` relative); float16 has 11 bits but overflows above 65504 (local
    reparameterization's :math:`x^2` above :math:`|x| = 256`). In float16 each op's gradient
    is computed from its output's cotangent divided by a power of two that brings its largest
    element into [1, 2), and multiplied back in float32 (loss scaling per op, without Keras'
    state or skipped steps: :class:`npvi.linear_ops.Cast`), so a kernel's gradient, a sum over
    the batch of an ELBO scaled by ``N / batch_size``, does not overflow; the gradient of a
    float16 activation above 65504 still does. bfloat16 needs none of this.
    A posterior family computes in ``compute_dtype`` what it computes through the op
    (:class:`npvi.MatrixVariateNormal`'s local reparameterization multiplies by its factors
    outside the op, in float32); its output is ``compute_dtype`` all the same.
    A ``compute_dtype`` that is not bfloat16, float16, float32 or float64 is a ``TypeError``
    (not a floating dtype) or a ``ValueError`` (a float8).

    >>> import jax, jax.numpy as jnp, numpyro
    >>> import npvi
    >>> def model(x):
    ...     return npvi.DenseReparameterization(2, name="l1")(x)
    >>> with numpyro.handlers.seed(rng_seed=0), npvi.handlers.mixed_precision(compute_dtype=jnp.bfloat16):
    ...     model(jnp.ones((3, 4))).dtype
    dtype(bfloat16)
    >>> bf16_model = npvi.handlers.mixed_precision(model, compute_dtype=jnp.bfloat16)
    """

    def __init__(self, fn: Callable | None = None, *, compute_dtype: Any = None) -> None:
        owner = "npvi.handlers.mixed_precision"
        if compute_dtype is None and fn is not None:  # mixed_precision(jnp.bfloat16): a dtype is callable
            raise TypeError(
                f"{owner}: compute_dtype= must be given by keyword, e.g. mixed_precision(compute_dtype=jnp.bfloat16) "
                f"or mixed_precision(model, compute_dtype=jnp.bfloat16); got only {fn!r}"
            )
        self.compute_dtype = _check_compute_dtype(owner, compute_dtype)
        super().__init__(fn)

    def process_message(self, msg) -> None:
        if msg["type"] == LINEAR_MESSAGE and msg["kwargs"].get("compute_dtype") is None:
            msg["kwargs"]["compute_dtype"] = self.compute_dtype
