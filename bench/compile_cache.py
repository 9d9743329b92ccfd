"""A user's script with and without JAX's persistent compilation cache (issue 10): cold and warm processes.

The script is the README's first example: 200 points of ``sin(2x)`` plus noise, a two-layer
``DenseFlipout`` MLP (32 tanh units, then 1), ``npvi.MeanFieldGuide``, ``npvi.ELBO``, Adam 1e-2,
``npvi.fit`` for 300 epochs of batch 32 (6 steps an epoch), then ``npvi.Predictive`` with 500
draws and ``npvi.regression_summary``. Each run is a fresh Python process, in one of three ways:

* ``off``: no persistent cache (JAX's default): every program compiles;
* ``cold``: ``npvi.enable_compilation_cache(DIR)`` on an empty ``DIR``: every program compiles and
  is written to ``DIR``;
* ``warm``: the same on a ``DIR`` that an untimed run filled first: every program is loaded.

Repetitions are interleaved: repetition k runs the three ways, in an order that rotates from one
repetition to the next, before repetition k + 1 starts; every cold run gets a new empty directory.
Two figures per run: the wall time of the whole process (``python -c``, timed by this parent:
interpreter start, imports, the work, exit) and the time of the import + fit + predict part (timed
inside the process, from before ``import jax`` to the predictive summary being ready), with its
parts. Reported: medians over repetitions and their min-max. Each run also reports how JAX's
cache answered its compile requests (``jax.monitoring``: hits, and misses, i.e. programs compiled
and written) and the numbers it computed: warm and off must give cold's numbers exactly.

``--quick`` is a smoke run (1 repetition, 30 epochs; figures meaningless). Results go to
``bench/results/compile_cache.json`` (``compile_cache-quick.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WAYS = ("off", "cold", "warm")


# --------------------------------------------------------------------------- the user's script (one process)


def child(cache: str | None, epochs: int) -> None:
    """The README's example, timed from before ``import jax``; prints one JSON line."""
    start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.infer import SVI

    import npvi

    events: list[str] = []
    jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
    if cache is not None:
        npvi.enable_compilation_cache(cache)
    imported = time.perf_counter()

    x = jnp.linspace(-2.0, 2.0, 200)[:, None]
    y = jnp.sin(2.0 * x[:, 0]) + 0.1 * jax.random.normal(jax.random.PRNGKey(42), (200,))

    def model(x, y=None, num_data=None):
        h = npvi.DenseFlipout(32, activation=jax.nn.tanh, name="l1")(x)
        mu = npvi.DenseFlipout(1, name="l2")(h)[..., 0]
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)

    guide = npvi.MeanFieldGuide(model)
    svi = SVI(model, guide, optax.adam(1e-2), npvi.ELBO())
    result = npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=epochs, batch_size=32, progress_bar=False)
    jax.block_until_ready(result.params)
    fitted = time.perf_counter()
    draws = npvi.Predictive(model, guide, result.params, num_samples=500)(jax.random.PRNGKey(1), x)
    mean, std = jax.block_until_ready(npvi.regression_summary(draws["y"]))
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "work_s": done - start,
                "import_s": imported - start,
                "fit_s": fitted - imported,
                "predict_s": done - fitted,
                "hits": events.count("/jax/compilation_cache/cache_hits"),
                "misses": events.count("/jax/compilation_cache/cache_misses"),
                "numbers": {
                    "last_loss": float(np.asarray(result.losses)[-1]),
                    "mean": np.asarray(mean).tolist(),
                    "std": np.asarray(std).tolist(),
                },
                "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__, "npvi": npvi.__version__},
            }
        )
    )


# --------------------------------------------------------------------------- the parent


def run_once(cache: Path | None, epochs: int) -> dict:
    """One fresh process; its JSON line plus the process wall time."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--epochs", str(epochs)]
    if cache is not None:
        command += ["--cache", str(cache)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    process_s = time.perf_counter() - start
    return {"process_s": process_s, **json.loads(done.stdout.splitlines()[-1])}


def summary(runs: list[dict], key: str) -> dict:
    values = [run[key] for run in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each way (default 5)")
    parser.add_argument("--epochs", type=int, default=300, help="epochs of npvi.fit (default 300, the README's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, 30 epochs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.cache, args.epochs)
        return {}
    reps, epochs = (1, 30) if args.quick else (args.reps, args.epochs)

    scratch = Path(tempfile.mkdtemp(prefix="npvi-compile-cache-"))
    try:
        warm_dir = scratch / "warm"
        priming = run_once(warm_dir, epochs)  # untimed: fills the warm directory
        runs: dict[str, list[dict]] = {way: [] for way in WAYS}
        load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
        for rep in range(reps):
            for way in WAYS[rep % 3 :] + WAYS[: rep % 3]:
                cache = {"off": None, "cold": scratch / f"cold-{rep}", "warm": warm_dir}[way]
                runs[way].append(run_once(cache, epochs))
                if way == "cold":
                    shutil.rmtree(cache)
            print(f"repetition {rep + 1}/{reps} done", file=sys.stderr)
        if load:
            load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    for way in WAYS:  # a cached program is the same program: the same numbers
        for run in runs[way]:
            assert run["numbers"] == priming["numbers"], f"{way} computed other numbers than the priming run"
    assert all(run["misses"] == 0 and run["hits"] > 0 for run in runs["warm"]), "a warm run compiled"

    medians = {way: {key: summary(runs[way], key) for key in ("process_s", "work_s", "import_s", "fit_s",
                                                               "predict_s")} for way in WAYS}  # fmt: skip
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_start_end": load,
        },
        "versions": priming["versions"],
        "problem": {"epochs": epochs, "batch_size": 32, "num_data": 200, "num_samples": 500, "reps": reps},
        "programs": {way: {"hits": runs[way][0]["hits"], "misses": runs[way][0]["misses"]} for way in WAYS},
        "medians": medians,
        "runs": {way: [{k: v for k, v in run.items() if k != "numbers"} for run in runs[way]] for way in WAYS},
    }

    def cell(way: str, key: str) -> str:
        s = medians[way][key]
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"

    print(f"\n{reps} interleaved repetitions, medians (min-max), seconds; jax {priming['versions']['jax']}")
    print("| run | process wall s | import + fit + predict s | import s | fit s | predict s | "
          "programs loaded / compiled |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for way in WAYS:
        programs = results["programs"][way]
        compiled = programs["misses"] if way != "off" else "all"
        print(f"| {way} | {cell(way, 'process_s')} | {cell(way, 'work_s')} | {cell(way, 'import_s')} | "
              f"{cell(way, 'fit_s')} | {cell(way, 'predict_s')} | {programs['hits']} / {compiled} |")  # fmt: skip
    for key in ("process_s", "work_s"):
        ratio = medians["warm"][key]["median"] / medians["cold"][key]["median"]
        print(f"warm / cold, {key}: {ratio:.2f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("compile_cache-quick.json" if args.quick else "compile_cache.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
