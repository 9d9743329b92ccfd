r"""KL penalties on distribution-valued outputs: TFP's ``KLDivergenceRegularizer`` and ``KLDivergenceAddLoss``.

For a distribution :math:`a` (say a VAE encoder's :math:`q(z \mid x)`) and a fixed
:math:`b` (the prior), the penalty is

.. math::
    \text{penalty} = \sum \Big[ w \cdot \mathrm{KL}(a \,\|\, b) \Big]

where :math:`\mathrm{KL}` is either the closed form (``use_exact_kl=True``, through
:func:`numpyro.distributions.kl_divergence`) or the Monte Carlo estimate

.. math::
    \widehat{\mathrm{KL}} = \operatorname{mean}_{\text{axes}} \big[\log a(z) - \log b(z)\big],
    \qquad z = \texttt{test\_points\_fn}(a, \text{key}),

averaged over ``test_points_reduce_axis`` (``()``: no axis, ``None``: every axis),
multiplied by ``weight`` :math:`w` when given, and summed over what remains.

:class:`KLDivergenceRegularizer` returns that scalar. :class:`KLDivergenceAddLoss`
puts it into a NumPyro model as ``numpyro.factor(name, -terms)``: the ELBO of every
NumPyro ELBO then subtracts it exactly once per call, scaled by any ``plate``
subsampling or ``handlers.scale`` around the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import distributions as dist

from npvi.kl import exact_kl
from npvi.numpyro_internals import active_plates, any_handler_active, traced_site
from npvi.serialization import describe_distribution, distribution_from_description

DistributionB = dist.Distribution | Callable[[], dist.Distribution]
TestPointsFn = Callable[[dist.Distribution, jax.Array], jax.Array]


@dataclass(frozen=True)
class SamplePoints:
    """A ``test_points_fn`` that draws ``sample_shape`` samples: ``a.sample(key, sample_shape)``.

    Unlike an arbitrary callable it can be saved in a config. ``SamplePoints(1000)``
    with ``test_points_reduce_axis=0`` is a 1000-draw Monte Carlo estimate.

    >>> import jax, numpyro.distributions as dist
    >>> SamplePoints(5)(dist.Normal(0.0, 1.0), jax.random.PRNGKey(0)).shape
    (5,)
    """

    sample_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        shape = self.sample_shape
        shape = (shape,) if isinstance(shape, int) else shape
        if isinstance(shape, (list, tuple)) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape
        ):
            object.__setattr__(self, "sample_shape", tuple(shape))
        else:
            raise ValueError(f"SamplePoints: sample_shape must be a positive int or a tuple of them, got {shape!r}")

    def __call__(self, distribution: dist.Distribution, rng_key: jax.Array) -> jax.Array:
        """Draw ``sample_shape`` test points from ``distribution``."""
        return distribution.sample(rng_key, self.sample_shape)


def _check_axis(axis: Any) -> tuple[int, ...] | None:
    if axis is None:
        return None
    if isinstance(axis, int) and not isinstance(axis, bool):
        return (axis,)
    if isinstance(axis, (list, tuple)) and all(isinstance(a, int) and not isinstance(a, bool) for a in axis):
        return tuple(axis)
    raise TypeError(f"test_points_reduce_axis must be None, an int or a tuple of ints, got {axis!r}")


def _rng_key(owner: str, rng_key: jax.Array | None) -> jax.Array:
    if rng_key is not None:
        return rng_key
    if any_handler_active():  # numpyro.prng_key() warns when no handler at all is active
        key = numpyro.prng_key()
        if key is not None:
            return key
    raise ValueError(
        f"{owner}: the Monte Carlo estimate (use_exact_kl=False) draws test points and needs a PRNG key; "
        "pass rng_key=..., or call it inside a model run under numpyro.handlers.seed "
        "(SVI, Predictive and MCMC do this)"
    )


class KLDivergenceRegularizer:
    r"""TFP's ``KLDivergenceRegularizer``: a scalar :math:`\mathrm{KL}(a \,\|\, b)` penalty.

    :param distribution_b: the :math:`b` of :math:`\mathrm{KL}(a \| b)`, a NumPyro
        distribution or a zero-argument callable returning one (called on every
        use, so it may create ``numpyro.param`` sites: a trainable prior).
    :param use_exact_kl: the closed form if True; a Monte Carlo estimate otherwise.
    :param test_points_reduce_axis: axes of :math:`\log a(z) - \log b(z)` to average
        over; ``()`` (default) none, ``None`` all.
    :param test_points_fn: ``(a, rng_key) -> z``; default one draw ``a.sample(rng_key)``.
        :class:`SamplePoints` draws several and can be saved in a config.
    :param weight: multiplies the KL terms before the final sum.

    ``__call__(a, rng_key=None)``: the Monte Carlo estimate takes ``rng_key`` if
    given, else a key from ``numpyro.prng_key()`` inside a seeded model, and raises
    ``ValueError`` when there is neither. The exact KL needs no key.

    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
    >>> a = dist.MultivariateNormal(jnp.array([-1.0, 1.0]), scale_tril=jnp.array([[1.1, 0.0], [0.2, 1.3]]))
    >>> b = dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))
    >>> round(float(KLDivergenceRegularizer(b, use_exact_kl=True)(a)), 4)
    1.1123
    >>> mc = KLDivergenceRegularizer(b, test_points_fn=SamplePoints(1000), test_points_reduce_axis=0)
    >>> abs(float(mc(a, rng_key=jax.random.PRNGKey(0))) - 1.1123) < 0.15
    True
    """

    def __init__(
        self,
        distribution_b: DistributionB,
        use_exact_kl: bool = False,
        test_points_reduce_axis: int | tuple[int, ...] | None = (),
        test_points_fn: TestPointsFn | None = None,
        weight: float | jax.Array | None = None,
    ) -> None:
        owner = type(self).__name__
        if not (isinstance(distribution_b, dist.Distribution) or callable(distribution_b)):
            raise TypeError(
                f"{owner}: distribution_b must be a numpyro Distribution or a zero-argument callable "
                f"returning one, got {type(distribution_b).__name__}"
            )
        if not isinstance(use_exact_kl, (bool, np.bool_)):
            raise TypeError(f"{owner}: use_exact_kl must be a bool, got {use_exact_kl!r}")
        if test_points_fn is not None and not callable(test_points_fn):
            raise TypeError(
                f"{owner}: test_points_fn must be None or a callable (a, rng_key) -> z, got {test_points_fn!r}"
            )
        self.distribution_b = distribution_b
        self.use_exact_kl = bool(use_exact_kl)
        self.test_points_reduce_axis = _check_axis(test_points_reduce_axis)
        self.test_points_fn = test_points_fn
        self.weight = weight

    def _owner(self) -> str:
        return type(self).__name__

    def _b(self) -> dist.Distribution:
        b = self.distribution_b
        if not isinstance(b, dist.Distribution):
            b = b()
            if not isinstance(b, dist.Distribution):
                raise TypeError(
                    f"{self._owner()}: distribution_b() must return a numpyro Distribution, got {type(b).__name__}"
                )
        return b

    def terms(self, distribution_a: dist.Distribution, rng_key: jax.Array | None = None) -> jax.Array:
        """The weighted KL terms before the final sum (``__call__`` sums them)."""
        if not isinstance(distribution_a, dist.Distribution):
            raise TypeError(
                f"{self._owner()}: expected a numpyro Distribution (the a of KL(a || b)), "
                f"got {type(distribution_a).__name__}"
            )
        b = self._b()
        if self.use_exact_kl:
            kl = exact_kl(distribution_a, b, self._owner(), "use_exact_kl=True", "use_exact_kl=False")
        else:
            key = _rng_key(self._owner(), rng_key)
            fn = self.test_points_fn or SamplePoints()
            z = fn(distribution_a, key)
            kl = jnp.mean(distribution_a.log_prob(z) - b.log_prob(z), axis=self.test_points_reduce_axis)
        if self.weight is not None:
            kl = jnp.asarray(self.weight, dtype=jnp.result_type(kl)) * kl
        return kl

    def __call__(self, distribution_a: dist.Distribution, rng_key: jax.Array | None = None) -> jax.Array:
        """The scalar penalty: the sum of :meth:`terms`."""
        return jnp.sum(self.terms(distribution_a, rng_key))

    def get_config(self) -> dict[str, Any]:
        """JSON-safe arguments. A callable ``distribution_b`` or ``test_points_fn`` (other than
        :class:`SamplePoints`) has no description and raises ``TypeError``."""
        owner = self._owner()
        if not isinstance(self.distribution_b, dist.Distribution):
            raise TypeError(
                f"{owner}: distribution_b is a callable, which a config cannot describe; give a distribution"
            )
        fn = self.test_points_fn
        if fn is None:
            fn_config = None
        elif type(fn) is SamplePoints:
            fn_config = {"type": "SamplePoints", "sample_shape": list(fn.sample_shape)}
        else:
            label = getattr(fn, "__name__", None) or type(fn).__name__
            raise TypeError(
                f"{owner}: test_points_fn is the callable {label!r}, which a config cannot describe; "
                "use None or npvi.SamplePoints(sample_shape)"
            )
        weight = self.weight
        if weight is not None and not isinstance(weight, (int, float)):
            if isinstance(weight, jax.core.Tracer):
                raise ValueError(f"{owner}: weight is a traced array; get the config outside jit")
            weight = np.asarray(weight).tolist()
        axis = self.test_points_reduce_axis
        return {
            "distribution_b": describe_distribution(self.distribution_b, f"{owner}: distribution_b"),
            "use_exact_kl": self.use_exact_kl,
            "test_points_reduce_axis": None if axis is None else list(axis),
            "test_points_fn": fn_config,
            "weight": weight,
        }

    @classmethod
    def _decode(cls, config: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
        keys = {"distribution_b", "use_exact_kl", "test_points_reduce_axis", "test_points_fn", "weight", *extra}
        if not isinstance(config, dict):
            raise TypeError(f"{cls.__name__}.from_config expects a dict, got {type(config).__name__}")
        unknown = sorted(set(config) - keys)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_config: unknown keys {unknown}; expected some of {sorted(keys)}")
        kwargs = dict(config)
        if "distribution_b" in kwargs:
            kwargs["distribution_b"] = distribution_from_description(
                kwargs["distribution_b"], f"{cls.__name__}: distribution_b"
            )
        fn = kwargs.get("test_points_fn")
        if fn is not None:
            if not isinstance(fn, dict) or fn.get("type") != "SamplePoints" or set(fn) != {"type", "sample_shape"}:
                raise ValueError(
                    f"{cls.__name__}: test_points_fn must be None or "
                    f"{{'type': 'SamplePoints', 'sample_shape': [...]}}, got {fn!r}"
                )
            kwargs["test_points_fn"] = SamplePoints(tuple(fn["sample_shape"]))
        if isinstance(kwargs.get("weight"), list):
            kwargs["weight"] = jnp.asarray(kwargs["weight"])
        return kwargs

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KLDivergenceRegularizer:
        """Rebuild the regularizer from :meth:`get_config`'s output."""
        return cls(**cls._decode(config))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.distribution_b!r}, use_exact_kl={self.use_exact_kl}, "
            f"test_points_reduce_axis={self.test_points_reduce_axis}, weight={self.weight!r})"
        )


class KLDivergenceAddLoss(KLDivergenceRegularizer):
    r"""TFP's ``KLDivergenceAddLoss``: adds :math:`-\text{penalty}` to a NumPyro model's log density.

    Call it inside a model on a distribution-valued output, e.g. a VAE encoder's
    :math:`q(z \mid x)`. It returns the distribution unchanged and records
    ``numpyro.factor(name, -terms)``, where ``terms`` are the regularizer's weighted
    KL terms (:meth:`~KLDivergenceRegularizer.terms`; they sum to the regularizer's
    value), summed down to the enclosing plates' shape. So every NumPyro ELBO (``Trace_ELBO``, ``TraceMeanField_ELBO``,
    ``npvi.ELBO``, ...) subtracts the penalty exactly once per call, and a
    ``plate`` with ``subsample_size`` or ``handlers.scale`` around the call scales
    it like the likelihood. Outside any plate the factor is the scalar penalty;
    inside a data plate it holds one term per example. Inside plates the terms must
    carry the plate dimensions (the default ``test_points_reduce_axis=()`` keeps
    them); a penalty the plates would copy (e.g. reduced with ``None``) raises
    ``ValueError``.

    Arguments as :class:`KLDivergenceRegularizer`, plus a required, unique ``name``
    for the factor site. Unlike TFP, whose ``KLDivergenceAddLoss`` defaults to
    ``test_points_reduce_axis=None`` (a batch *mean*, Keras' loss convention), the
    default here is ``()``: one term per example, summed, which is the ELBO's term.

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> add_kl = KLDivergenceAddLoss(dist.Normal(0.0, 1.0), use_exact_kl=True, name="kl")
    >>> def model():
    ...     q = add_kl(dist.Normal(jnp.array([0.5, -0.5]), 1.0))
    ...     return q.loc.shape
    >>> tr = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace()
    >>> tr["kl"]["fn"].log_factor   # -KL summed: 2 * -(0.5 ** 2) / 2
    Array(-0.25, dtype=float32)
    """

    def __init__(
        self,
        distribution_b: DistributionB,
        use_exact_kl: bool = False,
        test_points_reduce_axis: int | tuple[int, ...] | None = (),
        test_points_fn: TestPointsFn | None = None,
        weight: float | jax.Array | None = None,
        *,
        name: str,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"KLDivergenceAddLoss needs a non-empty str name= for its factor site, got {name!r}")
        self.name = name
        super().__init__(distribution_b, use_exact_kl, test_points_reduce_axis, test_points_fn, weight)

    def _owner(self) -> str:
        return f"KLDivergenceAddLoss {self.name!r}"

    def __call__(self, distribution_a: dist.Distribution, rng_key: jax.Array | None = None) -> dist.Distribution:
        """Add ``factor(name, -terms)`` to the model and return ``distribution_a`` unchanged."""
        if traced_site(self.name) is not None:
            raise ValueError(
                f"{self._owner()}: the site name {self.name!r} is already used in this model run; "
                "give each KLDivergenceAddLoss call its own name"
            )
        terms = self.terms(distribution_a, rng_key)
        numpyro.factor(self.name, -self._to_plates(terms))
        return distribution_a

    def _to_plates(self, terms: jax.Array) -> jax.Array:
        """Sum ``terms`` over every axis that is not an enclosing plate's: the plate batch shape remains."""
        plates = active_plates()
        shape = tuple(jnp.shape(terms))
        copied = [p.name for d, p in plates.items() if len(shape) < -d or shape[d] != p.subsample_size]
        if copied:
            raise ValueError(
                f"{self._owner()}: called inside plate(s) {copied}, but its KL terms have shape {shape} "
                "with no dimension for them, so the plate would count the penalty once per example; "
                "keep one term per example (test_points_reduce_axis=() or an axis that leaves the "
                "batch) or call it outside the plate"
            )
        n = max((-d for d in plates), default=0)
        lead = tuple(range(len(shape) - n))
        inner = tuple(len(shape) + d for d in range(-n, 0) if d not in plates)
        terms = jnp.sum(terms, axis=inner, keepdims=True) if inner else terms
        return jnp.sum(terms, axis=lead) if lead else terms

    def get_config(self) -> dict[str, Any]:
        """The regularizer's config plus ``name``."""
        return {**super().get_config(), "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KLDivergenceAddLoss:
        """Rebuild from :meth:`get_config`'s output."""
        return cls(**cls._decode(config, extra=("name",)))

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, name={self.name!r})"
