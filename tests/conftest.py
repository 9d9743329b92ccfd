"""Shared helpers: run a guide and a model the way an SVI step does; count XLA compiles; a compilation cache."""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.primitives import Messenger

import npvi


def _stamp_arviz_warning_for_today() -> None:
    """Write ArviZ's once-a-day stamp before any test imports ArviZ.

    ArviZ 0.23 writes the stamp on its first import of the day through one fixed temporary file
    name, so two pytest-xdist workers importing it at the same moment race, and one fails with
    ``FileNotFoundError`` (seen on the first run of a day, and likely on every fresh CI machine).
    Each worker writes today's stamp here through a temporary file of its own, which is race-free,
    and ArviZ then finds it and writes nothing.
    """
    from platformdirs import user_cache_dir

    directory = Path(user_cache_dir("arviz", "arviz"))
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f"daily_warning.{os.getpid()}.tmp"
    temporary.write_text(datetime.date.today().isoformat())
    os.replace(temporary, directory / "daily_warning")


_stamp_arviz_warning_for_today()

#: Where this process's JAX compilation cache lives (one directory per test process).
_CACHE_DIR = pytest.StashKey[Path]()
#: JAX's environment variables for it (directory, min compile time 0 s, no min size), which subprocesses inherit.
CACHE_VARIABLES = (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)


def pytest_configure(config: pytest.Config) -> None:
    """Every test process, and every interpreter a test starts, shares JAX's persistent compilation cache.

    Most of the suite's time is XLA compiling small programs, and many tests compile the same
    program again (the same model at the same shapes, NumPyro's and npvi's programs, the eager
    ops), in this process or in a fresh one: a docs page, a notebook, the README. With the cache
    (:func:`npvi.enable_compilation_cache`, the call the docs give users) the later ones load the
    program instead. A cached program is the program the compiler made, so no number changes,
    and tests that count compiles still see every request. One directory per pytest-xdist worker,
    removed at the end: a worker runs one test at a time, so no two processes write one entry at
    once (the tests that run processes side by side give them no cache). The subprocesses inherit
    the directory through JAX's environment variables; a test that sets a cache of its own wins.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    directory = Path(tempfile.mkdtemp(prefix=f"npvi-tests-jax-cache-{worker}-"))
    config.stash[_CACHE_DIR] = directory
    npvi.enable_compilation_cache(directory)
    os.environ.update(dict(zip(CACHE_VARIABLES, (str(directory), "0", "-1"), strict=True)))


def without_compilation_cache(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the test cache's variables: for processes that run side by side or get killed."""
    return {name: value for name, value in env.items() if name not in CACHE_VARIABLES}


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_CACHE_DIR, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def svi_traces(model, guide, params, rng_key, *args, **kwargs):
    """Model and guide traces of one ELBO particle (same key split as npvi.ELBO)."""
    model_seed, guide_seed = jax.random.split(rng_key)
    guide_trace = trace(substitute(seed(guide, guide_seed), data=params)).get_trace(*args, **kwargs)
    replayed = replay(seed(model, model_seed), guide_trace)
    model_trace = trace(substitute(replayed, data=params)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def init_params(model, guide, *args, seed_value: int = 0, **kwargs):
    """Initial params as SVI.init creates them (for guide and model)."""
    import optax
    from numpyro.infer import SVI, Trace_ELBO

    svi = SVI(model, guide, optax.sgd(0.0), Trace_ELBO())
    return svi.get_params(svi.init(jax.random.PRNGKey(seed_value), *args, **kwargs))


def one_layer_model(layer_cls, units=3, **layer_kwargs):
    """``out = layer(x)`` recorded as a deterministic site, Normal likelihood if y is given."""

    def model(x, y=None):
        out = layer_cls(units, name="l1", **layer_kwargs)(x)
        numpyro.deterministic("out", out)
        if y is not None:
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)
        return out

    return model


class EstimatorSpy(Messenger):
    """Records, for each npvi layer message it sees, the estimator and whether q arrived."""

    def __init__(self, fn=None, log=None):
        self.log = [] if log is None else log
        super().__init__(fn)

    def postprocess_message(self, msg):
        if msg["type"] == npvi.handlers.LINEAR_MESSAGE:
            kwargs = msg["kwargs"]
            estimator = kwargs["estimator"] or kwargs["layer"].default_estimator
            self.log.append((msg["name"], estimator, kwargs["kernel_posterior"] is not None))


LAYERS = [npvi.DenseReparameterization, npvi.DenseLocalReparameterization, npvi.DenseFlipout]


@pytest.fixture(params=LAYERS, ids=lambda cls: cls.__name__)
def layer_cls(request):
    return request.param


@pytest.fixture
def data():
    kx, ky = jax.random.split(jax.random.PRNGKey(42))
    x = jax.random.normal(kx, (16, 4))
    y = jax.random.normal(ky, (16, 3))
    return x, y


def fixed_params(in_features=4, units=3, loc_scale=0.5, untransformed_scale=-1.0, key=7):
    """Posterior params for a one-layer model with known values."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    return {
        "l1.kernel.loc": loc_scale * jax.random.normal(k1, (in_features, units)),
        "l1.kernel.untransformed_scale": jnp.full((in_features, units), untransformed_scale),
        "l1.bias": 0.1 * jax.random.normal(k2, (units,)),
    }


@contextlib.contextmanager
def count_compiles():
    """Yield a list that collects one entry per XLA compile (``jax.monitoring``) inside the block."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@contextlib.contextmanager
def quick_xla_context():
    """XLA with most optimisations off (JAX's ``jax_disable_most_optimizations``) inside the block.

    For code whose time is mostly compiling a short training run or a batch of draws: compiles
    are quicker on a CPU, and the programs compute the same values up to float rounding. The
    flag is part of every program's cache key; the caches are cleared afterwards anyway, so the
    slower programs do not outlive the block.
    """
    flag = "jax_disable_most_optimizations"
    previous = jax.config.read(flag)
    jax.config.update(flag, True)
    try:
        yield
    finally:
        jax.config.update(flag, previous)
        jax.clear_caches()


@pytest.fixture
def quick_xla():
    """:func:`quick_xla_context` for one test."""
    with quick_xla_context():
        yield
