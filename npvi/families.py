r"""Posterior families with correlated weights: a low-rank-plus-diagonal and a matrix-variate Gaussian.

Both follow :class:`npvi.posteriors.PosteriorFamily`, so the guide, the ELBO and the
estimators use them with nothing changed elsewhere; each registers its closed-form KL
to an independent Normal prior with ``numpyro.distributions.kl_divergence``.

* :class:`LowRankNormal` (rank :math:`r`): :math:`\operatorname{vec} W \sim
  \mathcal{N}(\operatorname{vec}\mu,\ \operatorname{diag}\sigma^2 + V V^\top)`, any kernel
  shape. Reparameterization and local reparameterization (exact for a dense layer);
  not Flipout.
* :class:`MatrixVariateNormal`: :math:`W \sim \mathcal{MN}(M, A A^\top, B B^\top)`, i.e.
  :math:`W = M + A E B^\top`, for a dense kernel. Reparameterization and local
  reparameterization (exact); not Flipout.

Flipout multiplies the shared perturbation :math:`\Delta W` by a sign matrix
:math:`s_\text{in} s_\text{out}^\top`. That keeps :math:`\Delta W`'s distribution only
when its elements are independent and symmetric (a mean field); a correlated
perturbation changes its covariance under the flip, so both families refuse Flipout
with a ``TypeError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpyro
from numpyro import distributions as dist
from numpyro.distributions import constraints

from npvi import estimators
from npvi.linear_ops import Convolution, Dense, LinearOp, underlying
from npvi.posteriors import _normal_init, inverse_softplus_scale, softplus_scale
from npvi.validation import base_distribution, check_positive_number

_LRT = (estimators.REPARAMETERIZATION, estimators.LOCAL_REPARAMETERIZATION)


class LowRankNormalWeights(dist.Distribution):
    r"""A weight tensor :math:`W` with :math:`\operatorname{vec} W \sim \mathcal{N}(\operatorname{vec}\mu,
    \operatorname{diag}\sigma^2 + V V^\top)`.

    ``loc`` and ``scale`` have the weight's shape, ``cov_factor`` that shape plus
    ``(rank,)``; the event shape is the weight's shape. A draw is
    :math:`\mu + \sigma \odot \varepsilon + V z` with :math:`\varepsilon`, :math:`z`
    standard Normal; ``log_prob`` and ``entropy`` are NumPyro's
    ``LowRankMultivariateNormal`` of the flattened weight.

    >>> import jax, jax.numpy as jnp
    >>> q = LowRankNormalWeights(jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.ones((2, 3, 1)))
    >>> q.sample(jax.random.PRNGKey(0)).shape, q.variance.tolist()[0]
    ((2, 3), [2.0, 2.0, 2.0])
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "cov_factor": constraints.real}
    reparametrized_params = ["loc", "scale", "cov_factor"]
    pytree_data_fields = ("loc", "scale", "cov_factor")

    def __init__(self, loc: jax.Array, scale: jax.Array, cov_factor: jax.Array, *, validate_args=None) -> None:
        shape = tuple(jnp.shape(loc))
        if tuple(jnp.shape(scale)) != shape or tuple(jnp.shape(cov_factor))[:-1] != shape:
            raise ValueError(
                f"LowRankNormalWeights: loc {shape}, scale {tuple(jnp.shape(scale))} and cov_factor "
                f"{tuple(jnp.shape(cov_factor))} must have the weight's shape (cov_factor with a rank axis more)"
            )
        self.loc, self.scale, self.cov_factor = loc, scale, cov_factor
        super().__init__(batch_shape=(), event_shape=shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def rank(self) -> int:
        return jnp.shape(self.cov_factor)[-1]

    @property
    def mean(self) -> jax.Array:
        return self.loc

    @property
    def variance(self) -> jax.Array:
        return self.scale**2 + jnp.sum(self.cov_factor**2, axis=-1)

    def _flat(self) -> dist.LowRankMultivariateNormal:
        size = math.prod(self.event_shape)
        return dist.LowRankMultivariateNormal(
            self.loc.reshape(size), self.cov_factor.reshape(size, self.rank), self.scale.reshape(size) ** 2
        )

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        eps_key, z_key = jax.random.split(key)
        eps = jax.random.normal(eps_key, tuple(sample_shape) + self.event_shape, jnp.result_type(self.loc))
        z = jax.random.normal(z_key, (*sample_shape, self.rank), jnp.result_type(self.loc))
        return self.loc + self.scale * eps + jnp.tensordot(z, self.cov_factor, axes=[[-1], [-1]])

    def log_prob(self, value: jax.Array) -> jax.Array:
        sample_dims = jnp.shape(value)[: jnp.ndim(value) - len(self.event_shape)]
        return self._flat().log_prob(jnp.reshape(value, (*sample_dims, -1)))

    def entropy(self) -> jax.Array:
        return self._flat().entropy()


@dataclass(frozen=True)
class LowRankNormal:
    r"""A Gaussian posterior with a rank-``rank`` covariance on top of the mean field.

    .. math::
        \operatorname{vec} W \sim \mathcal{N}\big(\operatorname{vec}\mu,\ \operatorname{diag}\sigma^2 + V V^\top\big),
        \qquad \sigma = \operatorname{softplus}(u) + \varepsilon_{\text{dtype}}

    with parameters ``"<site>.loc"``, ``"<site>.untransformed_scale"`` (both
    :class:`npvi.MeanFieldNormal`'s, with its initialisation) and ``"<site>.cov_factor"``
    (:math:`V`, the weight's shape plus ``(rank,)``, started from
    :math:`\mathcal{N}(0, \text{cov_factor_stddev}^2)`). The KL to an independent
    Normal prior is exact. Under local reparameterization each example's outputs are
    :math:`\mathrm{op}(x, \mu) + \sqrt{\mathrm{op}(x^2, \sigma^2)}\,\varepsilon + \sum_k \mathrm{op}(x, V_k) z_k`
    with :math:`\varepsilon` per output element and :math:`z \sim \mathcal{N}(0, I_r)` per
    example: exactly the pre-activations' distribution for a dense layer. Not Flipout.

    >>> import jax, jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     q = LowRankNormal(rank=2)("l1.kernel", (3, 4), jnp.float32)
    >>> q.event_shape, q.cov_factor.shape
    ((3, 4), (3, 4, 2))
    """

    rank: int = 1
    loc_mean: float = 0.0
    loc_stddev: float = 0.1
    untransformed_scale_mean: float = -3.0
    untransformed_scale_stddev: float = 0.1
    cov_factor_stddev: float = 0.01
    estimators: ClassVar[tuple[str, ...]] = _LRT

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LowRankNormal: rank must be a positive int, got {self.rank!r}")
        if not self.cov_factor_stddev >= 0:
            raise ValueError(f"LowRankNormal: cov_factor_stddev must be >= 0, got {self.cov_factor_stddev!r}")

    def __call__(self, site: str, shape: tuple[int, ...], dtype) -> LowRankNormalWeights:
        """Create the parameters (inside a guide) and return ``q``."""
        loc = numpyro.param(f"{site}.loc", _normal_init(self.loc_mean, self.loc_stddev, shape, dtype))
        untransformed_scale = numpyro.param(
            f"{site}.untransformed_scale",
            _normal_init(self.untransformed_scale_mean, self.untransformed_scale_stddev, shape, dtype),
        )
        cov_factor = numpyro.param(
            f"{site}.cov_factor", _normal_init(0.0, self.cov_factor_stddev, (*shape, self.rank), dtype)
        )
        return LowRankNormalWeights(loc, softplus_scale(untransformed_scale), cov_factor)

    def local_reparameterization(
        self, q: LowRankNormalWeights, rng_key: jax.Array, x: jax.Array, bias: jax.Array | None, op: LinearOp
    ) -> jax.Array:
        """The diagonal part per output element, the low-rank part with one :math:`z` per example."""
        if not isinstance(underlying(op), Dense | Convolution):
            raise TypeError(
                f"LowRankNormal: local reparameterization needs a dense or convolutional layer (it draws one z per "
                f"example, the output's leading axes), got {op!r}; use the reparameterization estimator"
            )
        mean = op(x, q.loc)
        std = estimators.safe_sqrt(op(x * x, q.scale * q.scale))
        # One op of width units * rank: the kernel's last axis is the output's (dense and convolutions).
        factors = q.cov_factor.reshape(*q.cov_factor.shape[:-2], -1)
        low_rank = op(x, factors).reshape(*mean.shape, q.rank)
        _, example_shape = op.sign_shapes(x.shape, mean.shape)
        eps_key, z_key = jax.random.split(rng_key)
        eps = jax.random.normal(eps_key, mean.shape, mean.dtype)
        z = jax.random.normal(z_key, (*example_shape[:-1], 1, q.rank), mean.dtype)
        return op.add_bias(mean + std * eps + jnp.sum(low_rank * z, axis=-1), bias)


def _lower_cholesky(raw: jax.Array) -> jax.Array:
    """A lower-triangular factor with a positive diagonal, ``softplus_scale`` of ``raw``'s diagonal."""
    return jnp.tril(raw, -1) + jnp.diag(softplus_scale(jnp.diagonal(raw)))


@dataclass(frozen=True)
class MatrixVariateNormal:
    r"""A matrix-variate Gaussian posterior for a dense kernel (Louizos & Welling, 2016).

    .. math::
        W \sim \mathcal{MN}(M, U, V), \quad U = A A^\top,\ V = B B^\top, \qquad
        \operatorname{vec} W \sim \mathcal{N}(\operatorname{vec} M,\ V \otimes U)

    ``numpyro.distributions.MatrixNormal``, with parameters ``"<site>.loc"`` (:math:`M`,
    ``(in, units)``), ``"<site>.row_scale_tril"`` (``(in, in)``) and
    ``"<site>.column_scale_tril"`` (``(units, units)``): :math:`A` is the lower triangle
    of its parameter with the diagonal mapped through ``softplus_scale``, and so is
    :math:`B`. Both start diagonal, with every weight's marginal standard deviation
    ``init_scale``. The KL to an independent Normal prior is exact. Local
    reparameterization is exact: each example's outputs are
    :math:`x M + \lVert x A \rVert\, B \varepsilon`. Not Flipout. The row factor has
    :math:`\text{in}^2` parameters, so it suits layers with a moderate fan-in.

    >>> import jax, jax.numpy as jnp, numpyro
    >>> with numpyro.handlers.seed(rng_seed=0):
    ...     q = MatrixVariateNormal()("l1.kernel", (3, 4), jnp.float32)
    >>> q.event_shape, round(float(q.scale_tril_row[0, 0] * q.scale_tril_column[0, 0]), 4)
    ((3, 4), 0.0486)
    """

    loc_mean: float = 0.0
    loc_stddev: float = 0.1
    init_scale: float = 0.0486
    estimators: ClassVar[tuple[str, ...]] = _LRT

    def __post_init__(self) -> None:
        check_positive_number("MatrixVariateNormal", "init_scale", self.init_scale)

    def __call__(self, site: str, shape: tuple[int, ...], dtype) -> dist.MatrixNormal:
        """Create the parameters (inside a guide) and return ``q``."""
        if len(shape) != 2:
            raise ValueError(
                f"MatrixVariateNormal: {site!r} has shape {tuple(shape)}, but the family needs a 2-D "
                "(in, units) kernel, a dense layer's; use LowRankNormal or MeanFieldNormal for a convolution"
            )
        rows, columns = shape
        diagonal = inverse_softplus_scale(math.sqrt(self.init_scale), dtype)
        loc = numpyro.param(f"{site}.loc", _normal_init(self.loc_mean, self.loc_stddev, shape, dtype))
        row = numpyro.param(f"{site}.row_scale_tril", diagonal * jnp.eye(rows, dtype=dtype))
        column = numpyro.param(f"{site}.column_scale_tril", diagonal * jnp.eye(columns, dtype=dtype))
        return dist.MatrixNormal(loc, _lower_cholesky(row), _lower_cholesky(column))

    def local_reparameterization(
        self, q: dist.MatrixNormal, rng_key: jax.Array, x: jax.Array, bias: jax.Array | None, op: LinearOp
    ) -> jax.Array:
        r""":math:`x M + \lVert x A \rVert\, \varepsilon B^\top`, one :math:`\varepsilon` per output element."""
        if not isinstance(underlying(op), Dense):
            raise TypeError(f"MatrixVariateNormal: local reparameterization needs a dense layer, got {op!r}")
        mean = x @ q.loc
        row_scale = estimators.safe_sqrt(jnp.sum((x @ q.scale_tril_row) ** 2, axis=-1, keepdims=True))
        eps = jax.random.normal(rng_key, mean.shape, mean.dtype)
        return op.add_bias(mean + row_scale * (eps @ q.scale_tril_column.T), bias)


def _kl_to_independent_normal(q, mean: jax.Array, variance: jax.Array, entropy: jax.Array, p) -> jax.Array:
    r""":math:`\mathrm{KL}(q \| p) = \mathbb{E}_q[-\log p] - H(q)` for an independent Normal ``p``.

    The cross term needs only ``q``'s mean and marginal variances:
    :math:`\sum \tfrac12 \log(2\pi s^2) + \tfrac{v + (m - \mu_p)^2}{2 s^2}`.
    """
    base = base_distribution(p)
    if not isinstance(base, dist.Normal) or tuple(p.batch_shape) or tuple(p.event_shape) != tuple(q.event_shape):
        raise NotImplementedError
    loc = jnp.broadcast_to(base.loc, q.event_shape)
    scale = jnp.broadcast_to(base.scale, q.event_shape)
    cross = 0.5 * jnp.log(2 * jnp.pi * scale**2) + (variance + (mean - loc) ** 2) / (2 * scale**2)
    return jnp.sum(cross) - entropy


@dist.kl_divergence.register(LowRankNormalWeights, dist.Independent)
def _kl_low_rank(q: LowRankNormalWeights, p: dist.Independent) -> jax.Array:
    return _kl_to_independent_normal(q, q.loc, q.variance, q.entropy(), p)


@dist.kl_divergence.register(dist.MatrixNormal, dist.Independent)
def _kl_matrix_normal(q: dist.MatrixNormal, p: dist.Independent) -> jax.Array:
    if tuple(q.batch_shape):
        raise NotImplementedError
    rows, columns = q.event_shape
    row_variance = jnp.sum(q.scale_tril_row**2, axis=-1)
    column_variance = jnp.sum(q.scale_tril_column**2, axis=-1)
    log_det = 2 * (
        columns * jnp.sum(jnp.log(jnp.diagonal(q.scale_tril_row)))
        + rows * jnp.sum(jnp.log(jnp.diagonal(q.scale_tril_column)))
    )
    entropy = 0.5 * rows * columns * (1 + jnp.log(2 * jnp.pi)) + 0.5 * log_det
    return _kl_to_independent_normal(q, q.loc, jnp.outer(row_variance, column_variance), entropy, p)
