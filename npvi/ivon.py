r"""IVON, natural-gradient variational learning (Shen et al., ICML 2024), as an optax transformation.

IVON learns the same mean-field Gaussian :math:`q(w) = \mathcal{N}(\mu, \sigma^2)` as SVI with
Adam, but by an approximate natural-gradient (variational online Newton) step that also keeps an
estimate :math:`h` of the diagonal Hessian of the loss, and reads the posterior scale from it:
:math:`\sigma = 1 / \sqrt{\lambda (h + \delta)}`. :func:`ivon` is an
``optax.GradientTransformation`` over the params of a :class:`~npvi.MeanFieldGuide`, so it goes
where any optimiser goes: ``SVI(model, guide, npvi.ivon(...), npvi.ELBO())``, then
:func:`npvi.fit`, :class:`npvi.Trainer`, checkpoints, :class:`npvi.Predictive` and a mesh, all
unchanged.

**What it reads.** npvi's loss is the full-data ELBO
:math:`\mathcal{L} = \mathbb{E}_q[-\log p(y, w)] - \mathbb{H}[q]`, whose reparameterised gradient
gives, for every weight (``<site>.loc`` :math:`\mu`, ``<site>.untransformed_scale`` :math:`u`,
:math:`\sigma = \operatorname{softplus}(u) + \varepsilon`, drawn as :math:`w = \mu + \sigma z`),

.. math::

    \hat g = \frac{1}{\lambda}\frac{\partial \mathcal{L}}{\partial \mu}, \qquad
    \hat h = \frac{1}{\lambda}\Bigl(\frac{1}{\sigma}\frac{\partial \mathcal{L}}{\partial \sigma}
             + \frac{1}{\sigma^2}\Bigr),
    \qquad \frac{\partial \mathcal{L}}{\partial \sigma}
    = \frac{\partial \mathcal{L} / \partial u}{\operatorname{sigmoid}(u)} .

:math:`\hat h` is IVON's reparameterisation ("Price") estimate
:math:`\nabla_w \ell \cdot (w - \mu) / \sigma^2` of the Hessian of
:math:`-\log p(y, w) / \lambda`: :math:`\partial_\sigma \mathbb{E}_q[\ell] = \sigma\,\mathbb{E}_q[\nabla^2 \ell]`,
and the :math:`1/\sigma^2` takes the entropy's :math:`-1/\sigma` back out. With
:math:`\lambda` the number of training rows (IVON's *effective sample size*), :math:`\hat g` and
:math:`\hat h` are those of the paper's average loss, and the prior of every layer (its KL) is part
of the loss, so the posterior precision :math:`\lambda(h + \delta)` includes it; :math:`\delta`
(``weight_decay``) adds a Gaussian prior of precision :math:`\lambda\delta` on top, as in
``ivon-opt``.

**The step** (``ivon-opt``'s, with :math:`t` counted from 1):

.. math::

    m &\leftarrow \beta_1 m + (1 - \beta_1)\,\hat g \\
    h &\leftarrow \beta_2 h + (1 - \beta_2)\,\hat h
         + \tfrac12 (1 - \beta_2)^2 \,(h - \hat h)^2 / (h + \delta) \\
    \mu &\leftarrow \mu - \alpha\,(h_0 + \delta)\,
          \operatorname{clip}\!\Bigl(\frac{m / (1 - \beta_1^t) + \delta\mu}{h + \delta}, \pm r\Bigr) \\
    u &\leftarrow \operatorname{softplus}^{-1}\bigl(1/\sqrt{\lambda(h + \delta)} - \varepsilon\bigr)

The :math:`h` update keeps :math:`h + \delta > 0` whatever :math:`\hat h` is (with
:math:`x = (1 - \beta_2)(\hat h - h) / (h + \delta)` it multiplies :math:`h + \delta` by
:math:`1 + x + x^2/2 > 0`), also with :math:`\delta = 0`. The factor :math:`h_0 + \delta` makes the
first step an SGD step of size :math:`\alpha` (``ivon-opt``'s ``rescale_lr``); with
``rescale_lr=False`` it is dropped, and the first step is :math:`\alpha / (h_0 + \delta)` times SGD's.
Monte Carlo samples are the ELBO's: ``npvi.ELBO(num_particles=k)`` averages the
gradients, so :math:`\hat g` and :math:`\hat h` are ``ivon-opt``'s ``mc_samples=k`` averages.

**Point estimates.** A ``<site>.loc`` with its ``<site>.untransformed_scale`` is a Normal
posterior (the guide's :class:`~npvi.MeanFieldNormal` weights and its other latents). Every other
param (a :class:`~npvi.PointMass`, such as a layer's default bias, or a model's ``numpyro.param``)
has no noise to estimate a Hessian from: it gets the mean step with :math:`h = h_0` held fixed,
that is SGD with momentum :math:`\beta_1`, step :math:`\alpha` (:math:`\alpha / (h_0 + \delta)` with
``rescale_lr=False``), and weight decay :math:`\delta`.
Give it another optimiser with ``optax.multi_transform`` if that does not suit. A weight with a
correlated posterior (:class:`~npvi.LowRankNormal`, :class:`~npvi.MatrixVariateNormal`) is a
``ValueError``: IVON learns a mean field. The ELBO's KL weight must be 1 (no ``kl_schedule``): the
:math:`1/\sigma^2` above is the entropy's at weight 1. The first step's gradient is taken at the
guide's initial scale; every later one at IVON's.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> from numpyro.infer import SVI
>>> import npvi
>>> def model(x, y=None, num_data=None):
...     mu = npvi.DenseReparameterization(1, name="l1")(x)[..., 0]
...     with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
...         numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)
>>> x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
>>> y = x @ jnp.array([1.0, -0.5])
>>> svi = SVI(model, npvi.MeanFieldGuide(model), npvi.ivon(0.005, ess=64, hess_init=100.0, beta2=0.999), npvi.ELBO())
>>> result = npvi.fit(svi, jax.random.PRNGKey(1), x, y, num_epochs=100, batch_size=64, progress_bar=False)
>>> [round(float(v), 1) for v in result.params["l1.kernel.loc"][:, 0]]
[1.0, -0.5]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from npvi.posteriors import softplus_scale

LOC = ".loc"
UNTRANSFORMED_SCALE = ".untransformed_scale"


class IVONState(NamedTuple):
    """IVON's state: the steps taken, every mean's momentum :math:`m`, every Normal's Hessian :math:`h`."""

    count: jax.Array
    momentum: dict[str, jax.Array]
    hessian: dict[str, jax.Array]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"npvi.ivon: {name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _positive(name: str, value: Any, *, infinite: bool = False) -> float:
    value = _number(name, value)
    if not (value > 0 and (math.isfinite(value) or infinite)):
        raise ValueError(f"npvi.ivon: {name} must be positive{'' if infinite else ' and finite'}, got {value!r}")
    return value


def _within(name: str, value: Any, interval: str) -> float:
    """``value`` in ``interval``, one of ``"[0, 1)"``, ``"[0, 1]"``, ``"[0, inf)"``, else a ``ValueError``."""
    value = _number(name, value)
    valid = {
        "[0, 1)": 0.0 <= value < 1.0,
        "[0, 1]": 0.0 <= value <= 1.0,
        "[0, inf)": 0.0 <= value < math.inf,
    }[interval]
    if not valid:
        raise ValueError(f"npvi.ivon: {name} must be in {interval}, got {value!r}")
    return value


def _normal_locs(params: Mapping[str, jax.Array]) -> list[str]:
    """The ``<site>.loc`` params that have a ``<site>.untransformed_scale``: the Normal posteriors' means."""
    return [
        name for name in params if name.endswith(LOC) and name[: -len(LOC)] + UNTRANSFORMED_SCALE in params
    ]


#: The params of the correlated families (npvi.families), which IVON's mean-field update cannot learn.
CORRELATED_PARTS = (".cov_factor", ".row_scale_tril", ".column_scale_tril")


def _check_mean_field(params: Mapping[str, jax.Array]) -> None:
    """``ValueError`` naming the site when a weight has a correlated posterior (LowRankNormal, MatrixVariateNormal)."""
    for name in params:
        for part in CORRELATED_PARTS:
            if name.endswith(part) and name[: -len(part)] + LOC in params:
                raise ValueError(
                    f"npvi.ivon: {name[: -len(part)]!r} has a correlated posterior (its {part[1:]!r} param), but "
                    "IVON learns a mean field; use MeanFieldNormal there, or an optimizer such as optax.adam"
                )


def _untransformed(scale: jax.Array) -> jax.Array:
    """The ``u`` with ``softplus(u) + eps = scale``, for scales down to the dtype's smallest normal number."""
    target = jnp.maximum(scale - jnp.finfo(scale.dtype).eps, jnp.finfo(scale.dtype).tiny)
    return target + jnp.log(-jnp.expm1(-target))


def ivon(
    learning_rate: optax.ScalarOrSchedule,
    ess: float,
    *,
    hess_init: float = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.99999,
    weight_decay: float = 1e-4,
    clip_radius: float = math.inf,
    rescale_lr: bool = True,
) -> optax.GradientTransformation:
    r"""IVON (``ivon-opt``'s defaults) over a :class:`~npvi.MeanFieldGuide`'s params; the maths is the module's.

    ``learning_rate`` (:math:`\alpha`, a number or an optax schedule of the step), ``ess``
    (:math:`\lambda`, usually the number of training rows), ``hess_init`` (:math:`h_0`),
    ``beta1``, ``beta2``, ``weight_decay`` (:math:`\delta`) and ``clip_radius`` (:math:`r`) are
    ``ivon-opt``'s, with its bounds: ``beta1`` in [0, 1), ``beta2`` in [0, 1] (1 holds :math:`h` at
    :math:`h_0`), ``weight_decay`` >= 0 (``ivon-opt`` also takes ``beta1 = 1``, whose debiasing
    divides by zero); ``rescale_lr=False`` drops the factor :math:`h_0 + \delta`. The paper's advice:
    ``beta2`` close to 1 (its default keeps :math:`h` for about :math:`10^5` steps), ``hess_init``
    small enough that the initial :math:`\sigma = 1/\sqrt{\lambda(h_0+\delta)}` does not swamp the
    weights, ``clip_radius`` about 1e-3 for large networks.

    >>> transform = ivon(0.1, ess=1000.0)
    >>> state = transform.init({"w.loc": jnp.zeros(2), "w.untransformed_scale": jnp.zeros(2)})
    >>> [float(v) for v in state.hessian["w.loc"]]
    [1.0, 1.0]
    """
    ess = _positive("ess", ess)
    hess_init = _positive("hess_init", hess_init)
    beta1 = _within("beta1", beta1, "[0, 1)")
    beta2 = _within("beta2", beta2, "[0, 1]")
    weight_decay = _within("weight_decay", weight_decay, "[0, inf)")
    clip_radius = _positive("clip_radius", clip_radius, infinite=True)
    if not callable(learning_rate):
        _positive("learning_rate", learning_rate)
    lr_factor = hess_init + weight_decay if rescale_lr else 1.0

    def init(params: Mapping[str, jax.Array]) -> IVONState:
        _check_mean_field(params)
        normal = _normal_locs(params)
        scales = {name[: -len(LOC)] + UNTRANSFORMED_SCALE for name in normal}
        means = [name for name in params if name not in scales]
        return IVONState(
            count=jnp.zeros([], jnp.int32),
            momentum={name: jnp.zeros_like(params[name]) for name in means},
            hessian={name: jnp.full_like(params[name], hess_init) for name in normal},
        )

    def update(
        grads: Mapping[str, jax.Array], state: IVONState, params: Mapping[str, jax.Array] | None = None
    ) -> tuple[dict[str, jax.Array], IVONState]:
        if params is None:
            raise ValueError("npvi.ivon: update needs the params (optax's update(grads, state, params))")
        count = state.count + 1
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        debias = 1.0 - beta1 ** count.astype(jnp.float32)
        updates, momentum, hessian = {}, {}, {}
        for name, previous_momentum in state.momentum.items():
            mean = params[name]
            m = beta1 * previous_momentum + (1.0 - beta1) * grads[name] / ess
            if name in state.hessian:
                u_name = name[: -len(LOC)] + UNTRANSFORMED_SCALE
                u = params[u_name]
                sigma = softplus_scale(u)
                h_hat = (grads[u_name] / jax.nn.sigmoid(u) / sigma + 1.0 / sigma**2) / ess
                h = state.hessian[name]
                h = beta2 * h + (1.0 - beta2) * h_hat + 0.5 * (1.0 - beta2) ** 2 * (h - h_hat) ** 2 / (h + weight_decay)
                updates[u_name] = _untransformed(jax.lax.rsqrt(ess * (h + weight_decay))) - u
                hessian[name] = h
            else:
                h = hess_init
            step = jnp.clip((m / debias + weight_decay * mean) / (h + weight_decay), -clip_radius, clip_radius)
            updates[name] = -alpha * lr_factor * step
            momentum[name] = m
        return updates, IVONState(count, momentum, hessian)

    return optax.GradientTransformation(init, update)

