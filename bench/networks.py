"""The "bring your own network" benchmark (issue 15): a converted network's step against npvi's own layers.

One model, written three more ways: ``conv_steps.ConvProblem``'s LeNet-5-like CNN (28x28x1
inputs, two 5x5 "SAME" convolutions of 6 and 16 filters, each with ReLU and a 2x2 max-pool,
dense 120-84-10; batch 128, softmax likelihood in a plate scaled for N = 60000, Adam 1e-3,
float32, one fixed random minibatch), timed as one jitted SVI update
(``jax.jit(SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-3), npvi.ELBO()).update)``):

* ``npvi layers``: ``npvi.Conv2DFlipout`` + ``npvi.DenseFlipout`` (``conv_steps.npvi_step``), the reference;
* ``converted NNX``: the same CNN as a ``flax.nnx.Module`` (``nnx.Conv``, ``nnx.Linear``), made
  Bayesian with ``npvi.random_nnx_module``;
* ``converted Linen``: as a ``flax.linen.Module`` (``nn.Conv``, ``nn.Dense``), with
  ``npvi.random_flax_module``;
* ``converted Equinox``: as an ``equinox.Module`` (``eqx.nn.Conv2d``, ``eqx.nn.Linear``; one
  example, channels first, which npvi vmaps), with ``npvi.random_eqx_module``.

Every converted network gets npvi's defaults for its own layers: an N(0, 1) prior on each kernel
and none on the biases (``prior=kernel_prior``), so the biases are point estimates and the
kernels' posteriors are TFP's mean-field Normal; so each model has the same latent sites, params,
estimator and KL as the reference, and differs only in who computes the layers. Groups: Flipout
(the reference and the three conversions), LRT (the reference and NNX), and the deterministic CNN
in plain JAX (``conv_steps.deterministic_step``) for scale. The method is ``conv.py``'s: compile
ahead of time, warm up, then interleaved blocks; ratios are medians of per-block ratios
(``timing.paired_ratio``) against the reference of the same estimator.

Issue 15's target: the converted Flax network's Flipout step / npvi's layers' Flipout step <= 1.10.
Results go to ``bench/results/networks.json`` (``networks-quick.json`` with ``--quick``, a smoke
run whose figures mean nothing). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conv_steps as C  # noqa: E402
import equinox as eqx  # noqa: E402
import flax.linen as linen  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from numpyro.infer import SVI  # noqa: E402
from run import load, machine, verdict  # noqa: E402
from steps import LR, SHORT, svi_variant  # noqa: E402
from timing import Variant, interleave, paired_ratio  # noqa: E402

import npvi  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FLIPOUT, LRT = "flipout", "local_reparameterization"
REFERENCE = "npvi layers"
FLOOR = "deterministic CNN (plain JAX)"
FRAMEWORKS = ("NNX", "Linen", "Equinox")
TARGET = 1.10


def kernel_prior(path: str, shape: tuple[int, ...]) -> dist.Distribution | None:
    """npvi's layer defaults: N(0, 1) on every kernel (Flax ``kernel``, Equinox ``weight``), no prior on biases."""
    del shape
    return dist.Normal(0.0, 1.0) if path.rsplit(".", 1)[-1] in ("kernel", "weight") else None


# --------------------------------------------------------------------------- the CNN, three more times


class NNXLeNet(nnx.Module):
    """``ConvProblem``'s CNN in Flax NNX, its layers named as npvi's (``c1``, ``c2``, ``d1``, ...)."""

    def __init__(self, problem: C.ConvProblem, rngs: nnx.Rngs) -> None:
        self.problem = problem
        ins = (problem.image[-1], *problem.filters[:-1])
        for name, n_in, n_out in zip(problem.conv_names, ins, problem.filters, strict=True):
            setattr(self, name, nnx.Conv(n_in, n_out, (problem.kernel,) * 2, padding="SAME", rngs=rngs))
        ins = (problem.flat_features(), *problem.dense[:-1])
        for name, n_in, n_out in zip(problem.dense_names, ins, problem.dense, strict=True):
            setattr(self, name, nnx.Linear(n_in, n_out, rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        return C.cnn_forward(self.problem, lambda name, h: getattr(self, name)(h), x)


class LinenLeNet(linen.Module):
    """``ConvProblem``'s CNN in Flax Linen."""

    problem: C.ConvProblem

    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.problem
        layers = {name: linen.Conv(f, (p.kernel,) * 2, padding="SAME", name=name) for name, f in
                  zip(p.conv_names, p.filters, strict=True)}  # fmt: skip
        layers.update({name: linen.Dense(units, name=name) for name, units in zip(p.dense_names, p.dense, strict=True)})
        return C.cnn_forward(p, lambda name, h: layers[name](h), x)


class EqxLeNet(eqx.Module):
    """``ConvProblem``'s CNN in Equinox: one example, channels first ``(1, 28, 28)``."""

    convs: list
    dense: list

    def __init__(self, problem: C.ConvProblem, key: jax.Array) -> None:
        keys = iter(jax.random.split(key, len(problem.names)))
        ins = (problem.image[-1], *problem.filters[:-1])
        same = problem.kernel // 2  # "SAME" for an odd kernel at stride 1
        self.convs = [
            eqx.nn.Conv2d(n_in, n_out, problem.kernel, padding=same, key=next(keys))
            for n_in, n_out in zip(ins, problem.filters, strict=True)
        ]
        ins = (problem.flat_features(), *problem.dense[:-1])
        self.dense = [
            eqx.nn.Linear(n_in, n_out, key=next(keys)) for n_in, n_out in zip(ins, problem.dense, strict=True)
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            h = jax.nn.relu(conv(x))
            x = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2), (1, 2, 2), "VALID")
        x = x.reshape(-1)
        for i, layer in enumerate(self.dense):
            x = layer(x)
            if i < len(self.dense) - 1:
                x = jax.nn.relu(x)
        return x


def converted_model(problem: C.ConvProblem, framework: str, estimator: str) -> Callable[[jax.Array, jax.Array], None]:
    """The CNN of ``framework`` made Bayesian by npvi, with ``estimator``, and the scaled likelihood."""
    if framework == "NNX":
        module = NNXLeNet(problem, nnx.Rngs(0))

        def network():
            return npvi.random_nnx_module("net", module, kernel_prior, estimator=estimator)
    elif framework == "Linen":
        module = LinenLeNet(problem)

        def network():
            return npvi.random_flax_module(
                "net", module, kernel_prior, input_shape=(1, *problem.image), estimator=estimator
            )
    else:
        module = EqxLeNet(problem, jax.random.PRNGKey(0))

        def network():
            return npvi.random_eqx_module("net", module, kernel_prior, estimator=estimator)

    def model(x: jax.Array, y: jax.Array) -> None:
        logits = network()(x)
        with numpyro.plate("data", problem.n, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


def converted_step(problem: C.ConvProblem, framework: str, estimator: str, x, y) -> Variant:
    """The jitted SVI update of the converted network (Equinox takes the batch channels first)."""
    if framework == "Equinox":
        x = jnp.moveaxis(x, -1, 1)
    model = converted_model(problem, framework, estimator)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(LR), npvi.ELBO())
    state = svi.init(jax.random.PRNGKey(0), x, y)
    return svi_variant(f"converted {framework} {SHORT[estimator]}", svi, state, x, y)


def guide_params(problem: C.ConvProblem, framework: str | None, x, y) -> dict[str, tuple[int, ...]]:
    """``{param: shape}`` of a model's initial SVI state, the site prefix ``net/`` removed."""
    if framework is None:
        svi, state = C.npvi_svi(problem, FLIPOUT, x, y)
    else:
        xs = jnp.moveaxis(x, -1, 1) if framework == "Equinox" else x
        model = converted_model(problem, framework, FLIPOUT)
        svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(LR), npvi.ELBO())
        state = svi.init(jax.random.PRNGKey(0), xs, y)
    return {name.removeprefix("net/"): tuple(v.shape) for name, v in svi.get_params(state).items()}


# --------------------------------------------------------------------------- timing


def build_groups(problem: C.ConvProblem, args) -> dict[str, list[Variant]]:
    """One group per estimator (the reference first), and the deterministic floor."""
    x, y = problem.batch_data()
    groups = {}
    for est, frameworks in ((FLIPOUT, args.flipout), (LRT, args.lrt)):
        if not frameworks:
            continue
        reference, _, _ = C.npvi_step(problem, est, x, y)
        reference.label = f"{REFERENCE} {SHORT[est]}"
        groups[est] = [reference] + [converted_step(problem, fw, est, x, y) for fw in frameworks]
    groups["floor"] = [C.deterministic_step(problem, x, y)]
    return groups


def compiled_cost(v: Variant) -> dict[str, float]:
    """XLA's cost analysis of the step's compiled program (FLOPs, bytes accessed)."""
    cost = v.update.cost_analysis()
    return {"flops": float(cost.get("flops", math.nan)), "bytes_accessed": float(cost.get("bytes accessed", math.nan))}


def step_times(problem: C.ConvProblem, args) -> dict:
    """Compile, warm up and time every variant in interleaved blocks; rows, paired ratios and the order."""
    groups = build_groups(problem, args)
    variants = [v for g in groups.values() for v in g]
    for v in variants:
        v.compile_ahead()
        v.first_call()
    for v in variants:
        v.run(args.warmup)
    interleave(list(groups.values()), args.blocks, args.steps)
    floor = groups["floor"][0]
    rows = {
        v.label: {
            **v.summary(),
            "/ deterministic paired": paired_ratio(v, floor),
            **compiled_cost(v),
        }
        for v in variants
    }
    ratios = {}
    for est in (FLIPOUT, LRT):
        if est not in groups:
            continue
        reference, *converted = groups[est]
        for v in converted:
            ratios[v.label] = {
                "paired": paired_ratio(v, reference),
                "medians": v.median_ms / reference.median_ms,
                "compile": (v.lower_s + v.compile_s) / (reference.lower_s + reference.compile_s),
            }
    return {"rows": rows, "ratios": ratios, "order": [v.label for v in variants]}


def print_step_table(result: dict) -> None:
    """The step table and the paired ratios against the reference, as markdown."""
    rows, ratios = result["rows"], result["ratios"]
    print(
        "| variant | median ms/step | min-max | / npvi layers (paired) | / deterministic (paired) | trace+lower s "
        "| XLA compile s | XLA GFLOP | XLA MB accessed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label in result["order"]:
        r = rows[label]
        vs_reference = f"{ratios[label]['paired']:.2f}" if label in ratios else "-"
        print(
            f"| {label} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | {vs_reference} "
            f"| {r['/ deterministic paired']:.2f} | {r['lower_s']:.2f} | {r['compile_s']:.2f} "
            f"| {r['flops'] * 1e-9:.3f} | {r['bytes_accessed'] * 1e-6:.1f} |"
        )


def targets(step: dict) -> list[dict]:
    """Issue 15's target for each converted Flax network, and the same figure reported for Equinox and LRT."""
    out = []
    for label, r in step["ratios"].items():
        flax_flipout = label.endswith(SHORT[FLIPOUT]) and ("NNX" in label or "Linen" in label)
        note = "target" if flax_flipout else "reported"
        out.append({"target": f"{label} / {REFERENCE}", "value": r["paired"], "limit": TARGET,
                    "verdict": verdict(r["paired"], TARGET), "note": note})  # fmt: skip
    return out


def print_targets(rows: list[dict]) -> None:
    print("| figure (paired ratio) | value | limit | verdict |\n|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['target']} ({r['note']}) | {r['value']:.2f} | {r['limit']:.2f} | {r['verdict']} |")


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (about a minute), figures meaningless")
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks per variant (default 10)")
    parser.add_argument("--steps", type=int, default=10, help="steps per block (default 10)")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up steps per variant (default 50)")
    parser.add_argument("--flipout", nargs="*", choices=FRAMEWORKS, default=list(FRAMEWORKS),
                        help="converted networks timed with Flipout (default: all three)")  # fmt: skip
    parser.add_argument("--lrt", nargs="*", choices=FRAMEWORKS, default=["NNX"],
                        help="converted networks timed with LRT (default: NNX; none: leave LRT out)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="where networks.json goes")
    args = parser.parse_args(argv)
    if args.quick:  # Flipout's reference and NNX only: every step takes seconds to compile
        args.blocks, args.steps, args.warmup, args.flipout, args.lrt = 2, 2, 2, ["NNX"], []
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print its markdown tables and write ``networks.json``; return the results."""
    args = parse(argv)
    problem = C.ConvProblem()
    info = machine()
    started = time.perf_counter()
    print(
        f"{info['cpu']}, {info['cpus']} CPUs, backend {info['backend']} ({info['device']}); python {info['python']}, "
        f"jax {info['jax']}, numpyro {info['numpyro']}, optax {info['optax']}, npvi {info['npvi']}"
    )
    print(f"load average at start: {load()}")
    x, y = problem.batch_data()
    reference = guide_params(problem, None, x, y)
    for framework in sorted(set(args.flipout) | set(args.lrt)):
        converted = guide_params(problem, framework, x, y)
        same = sorted(map(math.prod, converted.values())) == sorted(map(math.prod, reference.values()))
        print(f"{framework}: {len(converted)} params, {'the' if same else 'NOT the'} sizes of npvi's layers' params")
    result = {"machine": info, "quick": args.quick, "load_start": load(), "problem": problem.describe()}
    print(
        f"\n## Step time: {problem.describe()}; {args.warmup} warm-up steps, "
        f"{args.blocks} interleaved blocks x {args.steps} steps"
    )
    result["step"] = step_times(problem, args)
    print_step_table(result["step"])
    print("\n## Targets (issue 15; ratios are medians of per-block ratios of interleaved blocks)")
    if args.quick:
        print("(--quick: too few steps and blocks for these figures to mean anything)")
    result["targets"] = targets(result["step"])
    print_targets(result["targets"])
    result["load_end"] = load()
    result["seconds"] = time.perf_counter() - started
    print(f"\nload average at end: {load()} (1, 5, 15 min); {result['seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"networks{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
