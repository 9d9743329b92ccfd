"""Estimators as NumPyro effect handlers.

Each handler intercepts the linear operation of every npvi layer inside it (dense
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
"""

from __future__ import annotations

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
