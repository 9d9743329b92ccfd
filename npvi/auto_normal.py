"""NumPyro's AutoNormal, set up by one compiled program instead of op by op.

AutoNormal sets itself up on its first call by running NumPyro's
``initialize_model`` eagerly: a prior run of the model, the init strategy's
draws, and the potential energy with its gradient. Eager JAX compiles every new
operation on first use, so that costs about a hundred small XLA compiles: 7 s of
the diabetes demo's 9 s guide setup. :func:`set_up_auto_normal` runs the same
setup once under :func:`jax.jit` and keeps what AutoNormal needs afterwards, all
concrete:

* the initial locations, which come back as the program's output;
* the latent sites' distributions (their supports and event dims), the plates,
  and the functions that map latents to constrained values, which close over
  the concrete model arguments (the program closes over them rather than taking
  them as arguments).

The program also runs NumPyro's test of the starting point (finite potential
energy and gradient), which NumPyro cannot act on under ``jit``; if it fails,
the eager setup runs and raises NumPyro's own error. The traced values the setup
leaves behind (the prototype's site values, the key of NumPyro's ``seed`` around
the postprocessing function, the potential function) are dropped or rebuilt.
If anything traced is still reachable afterwards (for example a latent whose
support depends on a computed value), the model cannot be traced, or a latent
sits in a subsampled plate, the setup runs eagerly, exactly as in NumPyro.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.autoguide import AutoNormal

from npvi.tracing import jit_once

UNTRACEABLE = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def set_up_auto_normal(
    model: Callable[..., Any],
    rng_key: jax.Array,
    args: tuple,
    kwargs: dict,
    *,
    init_loc_fn: Callable,
    init_scale: float,
) -> AutoNormal:
    """``AutoNormal(model, ...)`` after its first call under ``seed(rng_key)``, compiled where it can be.

    The result is the same guide, with the same parameters' initial values, as
    calling it eagerly; later calls draw the same keys.

    >>> import jax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer.initialization import init_to_median
    >>> def model():
    ...     numpyro.sample("sigma", dist.HalfNormal(1.0))
    >>> auto = set_up_auto_normal(model, jax.random.PRNGKey(0), (), {}, init_loc_fn=init_to_median, init_scale=0.1)
    >>> sorted(auto._init_locs)
    ['sigma']
    """

    def new() -> AutoNormal:
        return AutoNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale)

    def first_call(auto: AutoNormal, key: jax.Array) -> dict[str, jax.Array]:
        with handlers.block(), handlers.seed(rng_seed=key):
            auto(*args, **kwargs)
        return auto._init_locs

    def compiled_call(auto: AutoNormal, key: jax.Array) -> tuple[dict[str, jax.Array], jax.Array | None]:
        init_locs = first_call(auto, key)
        return init_locs, _valid_start(auto, key, init_locs)

    if not jax.config.jax_check_tracer_leaks:  # the compiled setup keeps (then drops) traced values
        auto = new()
        try:
            init_locs, valid = jit_once(functools.partial(compiled_call, auto))(rng_key)
        except UNTRACEABLE:
            pass
        else:
            # Under jit NumPyro cannot raise "Cannot find valid initial parameters"; the eager setup below does.
            if valid is not None and bool(valid) and _make_concrete(auto, init_locs, args, kwargs):
                return auto
    auto = new()
    first_call(auto, rng_key)
    return auto


def _valid_start(auto: AutoNormal, key: jax.Array, init_locs: dict[str, jax.Array]) -> jax.Array | None:
    """NumPyro's test of an initial point: finite potential energy and gradient (None: cannot tell here).

    A latent in a subsampled plate has had its initial value repeated to the plate's
    full size, which the potential energy (one subsample) does not take.
    """
    full_sizes = auto._prototype_frame_full_sizes
    frames = [frame for name in init_locs for frame in auto.prototype_trace[name]["cond_indep_stack"]]
    if any(frame.size != full_sizes[frame.name] for frame in frames):
        return None
    with handlers.block(), handlers.seed(rng_seed=key):  # a subsampled plate draws its indices
        energy, grads = jax.value_and_grad(auto._potential_fn)(init_locs)
    return jnp.isfinite(energy) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))


def _make_concrete(auto: AutoNormal, init_locs: dict[str, jax.Array], args: tuple, kwargs: dict) -> bool:
    """Replace or drop the traced values a compiled setup left in ``auto``; False if some remain."""
    postprocess = auto._postprocess_fn
    if not isinstance(postprocess, handlers.seed):
        return False
    auto._postprocess_fn = handlers.seed(postprocess.fn, rng_seed=0)
    # AutoNormal reads only the latent sites' distributions, plates and value ranks after setup.
    auto.prototype_trace = {
        name: {
            **site,
            "value": np.zeros(np.shape(site["value"]), site["value"].dtype),
            "intermediates": [],
            "kwargs": {**site["kwargs"], "rng_key": None},
        }
        for name, site in auto.prototype_trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    # In the model's order, as eagerly (jit returns dicts sorted by key): sample_posterior draws in this order.
    auto._init_locs = {name: init_locs[name] for name in auto.prototype_trace if name in init_locs}
    auto._potential_fn = auto._potential_fn_gen(*args, **kwargs)
    return not _holds_tracer(vars(auto))


def _holds_tracer(obj: Any, seen: set[int] | None = None) -> bool:
    """Whether a JAX tracer is reachable from ``obj`` through containers, attributes and closures."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, type | types.ModuleType | str | bytes | int | float | np.ndarray):
        return False
    seen.add(id(obj))
    if isinstance(obj, jax.core.Tracer):
        return True
    if isinstance(obj, jax.Array):
        return False
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    elif isinstance(obj, functools.partial):
        children = [obj.func, obj.args, obj.keywords]
    elif isinstance(obj, types.FunctionType):
        children = [cell.cell_contents for cell in obj.__closure__ or () if _has_contents(cell)]
        children += list(obj.__defaults__ or ())
    elif isinstance(obj, types.MethodType):
        children = [obj.__self__, obj.__func__]
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return False
    return any(_holds_tracer(child, seen) for child in children)


def _has_contents(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell
        return False
    return True
