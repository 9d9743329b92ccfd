r"""The cheap baselines of the UCI benchmark, in plain JAX: MC dropout and a deep ensemble.

Both train the benchmark's network (one hidden layer of ReLU units, standardised inputs and
targets) on the same splits, with the same optimiser, batch size and number of steps as npvi's
recipe (``bench/uci.py``), so the only difference from npvi's row is the method.

**MC dropout** (Gal & Ghahramani 2016, the DropoutUncertaintyExps network): dropout with rate
:math:`p` on the inputs and on the hidden units, active at training and at test time, weight decay
:math:`\frac{l^2 (1 - p)}{2N}\lVert W\rVert^2 + \frac{l^2}{2N}\lVert b\rVert^2` per example (prior
lengthscale :math:`l`). Its predictive density is the mixture over :math:`T` dropout masks,
:math:`\frac{1}{T}\sum_t \mathcal{N}(y \mid f_t(x), \sigma^2)`. The paper grid-searches the noise
precision :math:`\tau = \sigma^{-2}` on a validation split; here the network trains with :math:`\sigma`
learned by maximum likelihood, and then :math:`\sigma` is chosen to maximise that mixture's
log-likelihood on (at most 2000 of) the training rows (the training value counts the masks' spread twice: it already
covers the noise of one mask, and the mixture adds the spread across masks again).

**Deep ensemble** (Lakshminarayanan et al. 2017): :math:`M = 5` networks, each with a mean and a
variance output (:math:`\sigma^2 = \mathrm{softplus}(\cdot) + 10^{-6}`), trained on the Gaussian
negative log-likelihood from their own initialisation and minibatch order; the predictive density is
the mixture :math:`\frac{1}{M}\sum_m \mathcal{N}(y \mid \mu_m(x), \sigma_m^2(x))`. The paper's
adversarial-training step is left out. Each member keeps the epoch whose NLL on a held-out 10% of
the training rows is lowest (trained for the recipe's steps without it, the heteroscedastic members
overfit the small sets: Boston's test LL was -3.66 on 3 splits). The members train side by side
(``vmap``) in one program.

Each baseline trains in one compiled program (a ``fori_loop`` over epochs of a ``scan`` over
minibatches); every key comes from the one it is given.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x, y = rng.normal(size=(64, 3)).astype("float32"), rng.normal(size=64).astype("float32")
>>> mu, sigma = mc_dropout(jax.random.PRNGKey(0), x, y, x, n_hidden=8, epochs=2, batch_size=16,
...                        learning_rate=1e-3, num_samples=10)
>>> mu.shape, sigma.shape  # T = 10 dropout masks over the 64 test rows; one noise scale per mask
((10, 64), (10,))
>>> mu, sigma = deep_ensemble(jax.random.PRNGKey(0), x, y, x, n_hidden=8, epochs=2, batch_size=16,
...                           learning_rate=1e-3)
>>> mu.shape, sigma.shape  # five members, each with its own mean and scale per row
((5, 64), (5, 64))
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

#: MC dropout's rate (the most common choice of the paper's grid) and prior lengthscale.
DROPOUT_RATE = 0.05
LENGTHSCALE = 1e-2
#: At most this many training rows choose MC dropout's noise scale.
NOISE_ROWS = 2000
#: Members of the deep ensemble, and the share of the training rows they hold out to pick their epoch.
ENSEMBLE_SIZE = 5
HELD_OUT = 0.1


def init_mlp(rng_key: jax.Array, n_in: int, n_hidden: int, n_out: int) -> dict[str, jax.Array]:
    """One hidden layer: LeCun-normal kernels (Flax's default), zero biases."""
    k1, k2 = jax.random.split(rng_key)
    return {
        "w1": jax.random.normal(k1, (n_in, n_hidden)) / math.sqrt(n_in),
        "b1": jnp.zeros(n_hidden),
        "w2": jax.random.normal(k2, (n_hidden, n_out)) / math.sqrt(n_hidden),
        "b2": jnp.zeros(n_out),
    }


def dropout(rng_key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout: each entry kept with probability ``1 - rate`` and scaled by ``1 / (1 - rate)``.

    >>> kept = dropout(jax.random.PRNGKey(0), jnp.ones(10_000), 0.25)
    >>> [round(float(v), 4) for v in np.unique(kept)]  # dropped, or kept and scaled by 1 / 0.75
    [0.0, 1.3333]
    """
    keep = jax.random.bernoulli(rng_key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def dropout_forward(params: dict, rng_key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """The MC-dropout network's output for one draw of the masks (inputs and hidden units)."""
    k_in, k_hidden = jax.random.split(rng_key)
    h = jax.nn.relu(dropout(k_in, x, rate) @ params["w1"] + params["b1"])
    return (dropout(k_hidden, h, rate) @ params["w2"] + params["b2"])[..., 0]


def gaussian_nll(y: jax.Array, mu: jax.Array, sigma: jax.Array) -> jax.Array:
    """:math:`-\\log \\mathcal{N}(y \\mid \\mu, \\sigma^2)`, elementwise."""
    return 0.5 * ((y - mu) / sigma) ** 2 + jnp.log(sigma) + 0.5 * math.log(2 * math.pi)


def _train(loss, params, rng_key, x, y, *, epochs, batch_size, learning_rate, score=None):
    """Adam on ``loss(params, key, x_batch, y_batch)`` over ``epochs`` shuffled epochs, in one program.

    With ``score`` (params -> a number to minimise, e.g. a held-out NLL), the params of the epoch
    that scored best are returned instead of the last ones.
    """
    optimizer = optax.adam(learning_rate)
    steps = x.shape[0] // batch_size

    def epoch(e, carry):
        params, state, best, best_score = carry
        perm_key, step_key = jax.random.split(jax.random.fold_in(rng_key, e))
        order = jax.random.permutation(perm_key, x.shape[0])[: steps * batch_size].reshape(steps, batch_size)

        def step(carry, inputs):
            params, state = carry
            rows, key = inputs
            grads = jax.grad(loss)(params, key, x[rows], y[rows])
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, state), _ = jax.lax.scan(step, (params, state), (order, jax.random.split(step_key, steps)))
        if score is None:
            return params, state, best, best_score
        current = score(params)
        better = current < best_score
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), params, best)
        return params, state, best, jnp.where(better, current, best_score)

    carry = (params, optimizer.init(params), params, jnp.array(jnp.inf))
    params, _, best, _ = jax.lax.fori_loop(0, epochs, epoch, carry)
    return params if score is None else best


@functools.partial(jax.jit, static_argnames=("n_hidden", "epochs", "batch_size", "learning_rate", "num_samples",
                                             "rate", "lengthscale"))  # fmt: skip
def mc_dropout(
    rng_key: jax.Array,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    *,
    n_hidden: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    num_samples: int = 500,
    rate: float = DROPOUT_RATE,
    lengthscale: float = LENGTHSCALE,
) -> tuple[jax.Array, jax.Array]:
    """Train MC dropout on ``x, y``; the test means of ``num_samples`` masks ``(T, n_test)``, noise scales ``(T,)``."""
    init_key, train_key, predict_key = jax.random.split(rng_key, 3)
    params = {**init_mlp(init_key, x.shape[1], n_hidden, 1), "log_sigma": jnp.zeros(())}
    n = x.shape[0]

    def loss(params, key, xb, yb):
        nll = gaussian_nll(yb, dropout_forward(params, key, xb, rate), jnp.exp(params["log_sigma"])).mean()
        weights = jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2)
        biases = jnp.sum(params["b1"] ** 2) + jnp.sum(params["b2"] ** 2)
        return nll + lengthscale**2 * ((1.0 - rate) * weights + biases) / (2.0 * n)

    params = _train(loss, params, train_key, x, y, epochs=epochs, batch_size=batch_size,
                    learning_rate=learning_rate)  # fmt: skip
    rows_key, train_key, test_key = jax.random.split(predict_key, 3)
    masks = jax.vmap(lambda key, x: dropout_forward(params, key, x, rate), in_axes=(0, None))
    rows = jax.random.permutation(rows_key, n)[:NOISE_ROWS]  # one scalar to choose: a few thousand rows do
    sigma = mixture_noise_scale(masks(jax.random.split(train_key, num_samples), x[rows]), y[rows])
    return masks(jax.random.split(test_key, num_samples), x_test), jnp.full((num_samples,), sigma)


def mixture_noise_scale(mu: jax.Array, y: jax.Array, grid: jax.Array | None = None) -> jax.Array:
    """The :math:`\\sigma` of ``grid`` (default: 400 log-spaced from 1e-3 to 10) that maximises
    :math:`\\sum_i \\log \\frac{1}{T}\\sum_t \\mathcal{N}(y_i \\mid \\mu_{t,i}, \\sigma^2)`; ``mu`` is ``(T, n)``.

    >>> mu = jnp.zeros((1, 10_000))  # one mask: the maximum-likelihood scale is the residuals' RMS
    >>> y = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (10_000,))
    >>> abs(float(mixture_noise_scale(mu, y)) - float(jnp.sqrt(jnp.mean(y**2)))) < 0.01
    True
    """
    grid = jnp.logspace(-3.0, 1.0, 400) if grid is None else grid

    def log_likelihood(sigma):
        return jnp.sum(jax.nn.logsumexp(-gaussian_nll(y, mu, sigma), axis=0))

    return grid[jnp.argmax(jax.lax.map(log_likelihood, grid))]


def ensemble_member_output(params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One member's mean and scale, :math:`\\sigma = \\sqrt{\\mathrm{softplus}(\\cdot) + 10^{-6}}`."""
    out = jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    return out[..., 0], jnp.sqrt(jax.nn.softplus(out[..., 1]) + 1e-6)


@functools.partial(jax.jit, static_argnames=("n_hidden", "epochs", "batch_size", "learning_rate", "size"))
def deep_ensemble(
    rng_key: jax.Array,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    *,
    n_hidden: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    size: int = ENSEMBLE_SIZE,
) -> tuple[jax.Array, jax.Array]:
    """Train ``size`` members on ``x, y``; their test means and scales, each of shape ``(size, n_test)``."""
    split_key, members_key = jax.random.split(rng_key)
    order = jax.random.permutation(split_key, x.shape[0])
    held_out = max(1, int(HELD_OUT * x.shape[0]))
    x_val, y_val, x_fit, y_fit = x[order[:held_out]], y[order[:held_out]], x[order[held_out:]], y[order[held_out:]]

    def loss(params, key, xb, yb):
        return gaussian_nll(yb, *ensemble_member_output(params, xb)).mean()

    def member(key):
        init_key, train_key = jax.random.split(key)
        params = _train(loss, init_mlp(init_key, x.shape[1], n_hidden, 2), train_key, x_fit, y_fit, epochs=epochs,
                        batch_size=batch_size, learning_rate=learning_rate,
                        score=lambda params: loss(params, None, x_val, y_val))  # fmt: skip
        return ensemble_member_output(params, x_test)

    return jax.vmap(member)(jax.random.split(members_key, size))
