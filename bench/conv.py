"""The convolution benchmark (issue 14): ``make bench`` runs it after ``run.py``.

One process, one model (``conv_steps.ConvProblem``: LeNet-5-like, 28x28x1 inputs, two 5x5
"SAME" convolutions of 6 and 16 filters each followed by a 2x2 max-pool, dense 120-84-10,
every layer Bayesian with one estimator; batch 128, softmax likelihood scaled for N = 60000,
Adam 1e-3, float32):

1. step time, interleaved as in ``run.py``: npvi's SVI step (reparameterization, Flipout,
   LRT), the same step by hand in plain JAX, the deterministic CNN in plain JAX, TFP's
   ``Convolution2D*`` + ``Dense*`` CNN and the Keras CNN when TFP imports, PyTorch's Flipout
   and deterministic CNN when torch imports; and plain-JAX LRT steps with one piece changed
   (``conv_steps.LRT_ABLATIONS``; the grouped convolution only with ``--grouped``), to see
   where LRT's time goes;
2. the pieces of LRT and Flipout that the deterministic CNN does not have, each timed alone
   on the CNN's convolution shapes (forward and backward);
3. peak memory (XLA's compiled memory analysis) of a Flipout convolution's forward and
   backward pass (batch 256, 32x32, 64 -> 64 channels, 3x3 kernel) against the deterministic
   convolution, and a search of the compiled program for a batch x kernel-sized array.

Then issue 14's targets, each with its figure and verdict, as markdown tables. Results go to
``bench/results/conv.json`` (``conv-quick.json`` with ``--quick``: a smoke run of about a
minute, Flipout's group and the floor only, whose figures mean nothing). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conv_steps as C  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import tfp_steps  # noqa: E402
import torch_steps  # noqa: E402
from memory import _bytes as compiled_bytes  # noqa: E402
from run import load, machine, verdict  # noqa: E402
from steps import LR, SHORT  # noqa: E402
from timing import Variant, interleave, paired_ratio  # noqa: E402

import npvi  # noqa: E402
from npvi.estimators import rademacher_signs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FLIPOUT, LRT = "flipout", "local_reparameterization"
JAX_FLOOR = "deterministic CNN (plain JAX)"
FLOORS = {"TFP": "Keras CNN (TF)", "PyTorch": "deterministic CNN (PyTorch)"}  # each framework's own floor


# --------------------------------------------------------------------------- 1. step time


def build_groups(problem: C.ConvProblem, args, tfp_ok: bool, torch_ok: bool) -> dict[str, list[Variant]]:
    """The variants, grouped as they are compared: one group per estimator, the floor, the LRT ablations."""
    x, y = problem.batch_data()
    groups: dict[str, list[Variant]] = {}
    for est in args.estimators:
        npvi_v, svi, state = C.npvi_step(problem, est, x, y)
        group = [npvi_v, C.plain_step(problem, est, svi, state, x, y)]
        if tfp_ok and est in tfp_steps.tfp_conv_estimators():
            group.append(tfp_steps.tfp_conv_step(problem, est, x, y, LR))
        if torch_ok and est == FLIPOUT:
            group.append(torch_steps.torch_conv_step(problem, x, y, LR, threads=args.torch_threads))
        groups[est] = group
        if est == LRT and args.ablations:
            params = C.params_from_npvi(problem, svi.get_params(state))
            groups["ablations"] = [
                C.lrt_ablation_step(problem, label, params, state.rng_key, x, y) for label in args.ablations
            ]
    floor = [C.deterministic_step(problem, x, y)]
    if tfp_ok:
        floor.append(tfp_steps.tfp_conv_step(problem, None, x, y, LR))
    if torch_ok:
        floor.append(torch_steps.torch_conv_step(problem, x, y, LR, deterministic=True, threads=args.torch_threads))
    groups["floor"] = floor
    return groups


def step_ratios(groups: dict[str, list[Variant]]) -> dict[str, dict[str, float]]:
    """Paired ratios: npvi against plain JAX, the floor and the other frameworks; TF's floor against JAX's."""
    floors = {v.label: v for v in groups["floor"]}
    det = floors[JAX_FLOOR]
    ratios = {}
    for est in (est for est in C.ESTIMATORS if est in groups):
        npvi_v, plain_v = groups[est][:2]
        r = {
            "npvi/plain paired": paired_ratio(npvi_v, plain_v),
            "npvi/deterministic paired": paired_ratio(npvi_v, det),
            "plain/deterministic paired": paired_ratio(plain_v, det),
            "compile npvi/plain": (npvi_v.lower_s + npvi_v.compile_s) / (plain_v.lower_s + plain_v.compile_s),
        }
        for other in groups[est][2:]:  # TFP, PyTorch
            who = other.label.split()[0]
            r[f"npvi/{who} paired"] = paired_ratio(npvi_v, other)
            floor = floors.get(FLOORS[who])
            if floor is not None:
                r[f"{who}/own floor paired"] = paired_ratio(other, floor)
                r[f"{who} floor/JAX floor paired"] = paired_ratio(floor, det)
        ratios[est] = r
    if "ablations" in groups:
        ratios["ablations"] = {v.label: paired_ratio(v, groups[LRT][1]) for v in groups["ablations"]}
    return ratios


def compiled_cost(v: Variant) -> dict[str, float]:
    """XLA's cost analysis of a JAX step's compiled program (FLOPs, bytes accessed); empty for TF and PyTorch."""
    if v.update is None:
        return {}
    cost = v.update.cost_analysis()
    return {"flops": float(cost.get("flops", math.nan)), "bytes_accessed": float(cost.get("bytes accessed", math.nan))}


def step_times(problem: C.ConvProblem, args, tfp_ok: bool, torch_ok: bool) -> dict:
    """Compile, warm up and time every variant in interleaved blocks; rows, ratios and the table order."""
    groups = build_groups(problem, args, tfp_ok, torch_ok)
    variants = [v for g in groups.values() for v in g]
    for v in variants:  # JAX steps: compile ahead of time, timed; then the first call
        if v.update is not None:
            v.compile_ahead()
        v.first_call()
    for v in variants:
        v.run(args.warmup)
    interleave(list(groups.values()), args.blocks, args.steps)
    rows = {
        v.label: {
            **v.summary(),
            **compiled_cost(v),
        }
        for v in variants
    }
    return {"rows": rows, "ratios": step_ratios(groups), "order": [v.label for v in variants]}


def cell(row: dict, key: str, scale: float, digits: int) -> str:
    """``row[key] * scale`` to ``digits`` decimals, or "-" where the variant has no such figure (TF, PyTorch)."""
    value = row.get(key, math.nan) * scale
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def print_step_table(result: dict) -> None:
    """The step table, the paired-ratio table and the LRT probes, as markdown."""
    rows, ratios = result["rows"], result["ratios"]
    det = rows[JAX_FLOOR]["median_ms"]
    print(
        "| variant | median ms/step | min-max | / deterministic (medians) | trace+lower s | XLA compile s "
        "| XLA GFLOP | XLA MB accessed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label in result["order"]:
        r = rows[label]
        print(
            f"| {label} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['median_ms'] / det:.2f} "
            f"| {cell(r, 'lower_s', 1, 2)} | {cell(r, 'compile_s', 1, 2)} | {cell(r, 'flops', 1e-9, 3)} "
            f"| {cell(r, 'bytes_accessed', 1e-6, 1)} |"
        )
    keys = [k for k in ratios[FLIPOUT] if not k.startswith("compile")]
    print("\n| estimator (paired ratios) | " + " | ".join(k.removesuffix(" paired") for k in keys) + " | compile |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for est in (est for est in C.ESTIMATORS if est in ratios):
        r = ratios[est]
        cells = " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in keys)
        print(f"| {SHORT[est]} | {cells} | {r['compile npvi/plain']:.2f} |")
    if "ablations" not in ratios:
        return
    print("\n| LRT step with one piece changed | median ms/step | / plain-JAX LRT (paired) |\n|---|---:|---:|")
    for label, ratio in ratios["ablations"].items():
        print(f"| {label} | {rows[label]['median_ms']:.2f} | {ratio:.2f} |")


# --------------------------------------------------------------------------- 2. LRT's pieces


def fwd_bwd(f, cotangent, *args):
    """``f(*args)`` and its VJP with ``cotangent``: one layer's forward and backward work."""
    out, vjp = jax.vjp(f, *args)
    return out, vjp(cotangent)


def conv_vjp(f, x, g, kernels, first: bool):
    """The VJP of ``f(x, *kernels)`` with respect to the kernels, and to ``x`` unless it is the data (``first``)."""
    if first:
        return fwd_bwd(lambda *k: f(x, *k), g, *kernels)
    return fwd_bwd(f, g, x, *kernels)


def guarded_sqrt(var: jax.Array) -> jax.Array:
    """The square root with LRT's guard at 0 (``estimators.local_reparameterization``)."""
    positive = var > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1)), 0)


def piece_functions(problem: C.ConvProblem) -> dict:
    """Each piece as ``f(xs, gs, locs, scales, key)`` over the CNN's convolution layers (and LRT's dense noise)."""
    dense_shapes = [(problem.batch, units) for units in problem.dense]

    def over_layers(piece):
        def run(xs, gs, locs, scales, key):
            keys = jax.random.split(key, len(xs))
            return [piece(i == 0, *args) for i, args in enumerate(zip(xs, gs, locs, scales, keys, strict=True))]

        return run

    def mean_conv(first, x, g, mu, s, key):
        return conv_vjp(C.conv, x, g, (mu,), first)

    def variance_conv(first, x, g, mu, s, key):
        return conv_vjp(lambda x, s: C.conv(x * x, s * s), x, g, (s,), first)

    def sqrt_piece(first, x, g, mu, s, key):
        return fwd_bwd(guarded_sqrt, g, jnp.abs(g) + 1.0)

    def perturbation_conv(first, x, g, mu, s, key):
        s_in, s_out = rademacher_signs(key, *C.sign_shapes(x, mu.shape[-1]), dtype=x.dtype)
        return conv_vjp(lambda x, dw: C.conv(x * s_in, dw) * s_out, x, g, (s,), first)

    def activation_draws(draw):
        def run(xs, gs, locs, scales, key):
            shapes = [g.shape for g in gs] + dense_shapes
            return [draw(k, shape) for k, shape in zip(jax.random.split(key, len(shapes)), shapes, strict=True)]

        return run

    return {
        "mean convs (= deterministic convs)": over_layers(mean_conv),
        "variance convs: x*x, sigma^2, conv": over_layers(variance_conv),
        "guarded sqrt of the variance": over_layers(sqrt_piece),
        "N(0,1) noise of activation size (all 5 layers)": activation_draws(jax.random.normal),
        "its random bits alone (threefry, no normal transform)": activation_draws(jax.random.bits),
        "Flipout: signs + perturbation convs": over_layers(perturbation_conv),
    }


def piece_inputs(problem: C.ConvProblem) -> tuple:
    """Random activations, output cotangents and kernels of the CNN's convolution layers, and a key."""
    height, width, channels = problem.image
    ins, keys = (channels, *problem.filters[:-1]), jax.random.split(jax.random.PRNGKey(5), 4)
    xs, gs, locs, scales = [], [], [], []
    for i, (c_in, c_out) in enumerate(zip(ins, problem.filters, strict=True)):
        size = (problem.batch, height // 2**i, width // 2**i)  # each pooling halves the image
        k = jax.random.split(keys[i], 4)
        xs.append(jax.random.normal(k[0], (*size, c_in)))
        gs.append(jax.random.normal(k[1], (*size, c_out)))
        locs.append(0.1 * jax.random.normal(k[2], (problem.kernel, problem.kernel, c_in, c_out)))
        scales.append(0.05 + 0.01 * jax.random.uniform(k[3], (problem.kernel, problem.kernel, c_in, c_out)))
    return xs, gs, locs, scales, keys[-1]


def piece_times(problem: C.ConvProblem, blocks: int, steps: int, warmup: int) -> dict[str, float]:
    """Median ms per call of each piece (jitted, forward + backward where it has one), interleaved."""
    inputs = piece_inputs(problem)
    variants = []
    for label, f in piece_functions(problem).items():
        jitted = jax.jit(f)
        variants.append(Variant(label, lambda carry, jitted=jitted: (jitted(*inputs),), (None,)))
    for v in variants:
        v.first_call()
        v.run(warmup)
    interleave([[v] for v in variants], blocks, steps)
    return {v.label: v.median_ms for v in variants}


def print_pieces(pieces: dict[str, float], step: dict | None) -> None:
    """The pieces' table, and the plain-JAX steps' differences it accounts for."""
    print("| piece (the CNN's conv layers, forward + backward) | median ms |\n|---|---:|")
    for label, ms in pieces.items():
        print(f"| {label} | {ms:.2f} |")
    if step is None:
        return
    rows = step["rows"]
    labels = ("plain JAX LRT", "plain JAX Flipout", JAX_FLOOR)
    if not all(label in rows for label in labels):
        return
    lrt, flip, det = (rows[label]["median_ms"] for label in labels)
    print(
        f"\nplain-JAX steps: LRT - deterministic = {lrt - det:.2f} ms, Flipout - deterministic = {flip - det:.2f} ms, "
        f"LRT - Flipout = {lrt - flip:.2f} ms"
    )


# --------------------------------------------------------------------------- 3. peak memory


MEMORY_SHAPE = {"batch": 256, "size": 32, "channels": 64, "kernel": 3}


def conv_memory_shapes() -> tuple:
    """``(x, kernel, bias, key)`` as ``jax.ShapeDtypeStruct``s of the memory measurement's layer."""
    m = MEMORY_SHAPE
    x = jax.ShapeDtypeStruct((m["batch"], m["size"], m["size"], m["channels"]), jnp.float32)
    kernel = jax.ShapeDtypeStruct((m["kernel"], m["kernel"], m["channels"], m["channels"]), jnp.float32)
    bias = jax.ShapeDtypeStruct((m["channels"],), jnp.float32)
    return x, kernel, bias, jax.ShapeDtypeStruct((2,), jnp.uint32)


def normal_nll(out: jax.Array, y: jax.Array) -> jax.Array:
    """``-sum log N(y | out, 1)``: the memory measurement's likelihood."""
    return -jnp.sum(jax.scipy.stats.norm.logpdf(y, out, 1.0))


def npvi_conv_grad(estimator: str):
    """``(jax.grad of npvi.ELBO().loss, params' shapes)`` for one Conv2D layer with a Normal likelihood."""
    x, kernel, bias, _ = conv_memory_shapes()
    m = MEMORY_SHAPE
    layer_cls = C.CONV_LAYERS[estimator]

    def model(x, y):
        out = layer_cls(m["channels"], m["kernel"], padding="SAME", name="l1")(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(out, 1.0).to_event(3), obs=y)

    guide = npvi.MeanFieldGuide(model)
    one = jnp.zeros((1, *x.shape[1:]))  # the params' shapes do not depend on the batch
    params = {}
    for program in (guide, model):  # the guide's params, and the model's (the point-estimate bias)
        with numpyro.handlers.seed(rng_seed=0):
            trace = numpyro.handlers.trace(program).get_trace(one, one)
        params.update(
            (k, jax.ShapeDtypeStruct(v["value"].shape, v["value"].dtype))
            for k, v in trace.items()
            if v["type"] == "param"
        )

    def grad(params, key, x, y):
        return jax.grad(lambda p: npvi.ELBO().loss(key, p, model, guide, x, y))(params)

    return grad, params


def memory_programs(estimators=C.ESTIMATORS) -> dict:
    """The compiled forward + backward programs: deterministic, plain-JAX Flipout, npvi's ``estimators``."""
    x, kernel, bias, key = conv_memory_shapes()

    def deterministic(p, x, y):
        return normal_nll(C.conv(x, p["w"]) + p["bias"], y)

    def plain_flipout(p, key, x, y):
        noise_key, layer_key = jax.random.split(key)
        eps = jax.random.normal(noise_key, p["loc"].shape)
        out = C.plain_layer(FLIPOUT, layer_key, eps, x, p)
        return normal_nll(out, y) + C.plain_kl({"l1": p})

    programs = {
        "deterministic": jax.jit(jax.grad(deterministic)).lower({"w": kernel, "bias": bias}, x, x).compile(),
        "plain JAX Flipout": jax.jit(jax.grad(plain_flipout))
        .lower({"loc": kernel, "u": kernel, "bias": bias}, key, x, x)
        .compile(),
    }
    for est in estimators:
        grad, params = npvi_conv_grad(est)
        programs[f"npvi {SHORT[est]}"] = jax.jit(grad).lower(params, key, x, x).compile()
    return programs


SHAPE = re.compile(r"\b(?:f32|f16|bf16|s32|u32|u8|pred)\[([0-9,]*)\]")


def array_shapes(compiled) -> set[tuple[int, ...]]:
    """Every array shape that appears in the optimised HLO of a compiled program."""
    return {tuple(int(d) for d in dims.split(",")) for dims in SHAPE.findall(compiled.as_text()) if dims}


def per_example_kernel_arrays(shapes: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Shapes with at least batch x kernel elements that are not activation-sized: per-example kernels."""
    m = MEMORY_SHAPE
    per_example = m["batch"] * m["kernel"] ** 2 * m["channels"] ** 2
    activation = m["batch"] * m["size"] ** 2 * m["channels"]
    return sorted(s for s in shapes if math.prod(s) >= per_example and math.prod(s) != activation)


def memory(estimators=C.ESTIMATORS) -> dict:
    """Each program's XLA memory analysis, its largest array and any batch x kernel-sized array."""
    m = MEMORY_SHAPE
    result = {"shape": m, "per_example_kernel_bytes": 4 * m["batch"] * m["kernel"] ** 2 * m["channels"] ** 2}
    result["activation_bytes"] = 4 * m["batch"] * m["size"] ** 2 * m["channels"]
    for name, compiled in memory_programs(estimators).items():
        shapes = array_shapes(compiled)
        result[name] = {
            **compiled_bytes(compiled),
            "largest_array": list(max(shapes, key=math.prod)),
            "per_example_kernel_arrays": [list(s) for s in per_example_kernel_arrays(shapes)],
        }
    return result


def print_memory(mem: dict) -> None:
    """The memory table, as markdown."""
    det, kb = mem["deterministic"]["total"], mem["per_example_kernel_bytes"]
    print(
        "| program | argument MiB | output MiB | temp MiB | total MiB | / deterministic "
        "| temp / (batch x kernel x 4 B) | largest array | batch x kernel-sized arrays |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for name in ("deterministic", "plain JAX Flipout", *(f"npvi {SHORT[est]}" for est in C.ESTIMATORS)):
        if name not in mem:
            continue
        r = mem[name]
        found = ", ".join(map(str, r["per_example_kernel_arrays"])) or "none"
        print(
            f"| {name} | {r['argument'] / 2**20:.0f} | {r['output'] / 2**20:.0f} | {r['temp'] / 2**20:.0f} "
            f"| {r['total'] / 2**20:.0f} | {r['total'] / det:.2f} | {r['temp'] / kb:.2f} "
            f"| {tuple(r['largest_array'])} | {found} |"
        )
    print(
        f"(batch x kernel x 4 B = {kb / 2**20:.0f} MiB: per-example kernels; one activation "
        f"(batch x 32 x 32 x 64 x 4 B) = {mem['activation_bytes'] / 2**20:.0f} MiB)"
    )


# --------------------------------------------------------------------------- targets


def targets(step: dict | None, mem: dict | None) -> list[dict]:
    """Issue 14's targets that this run measured, each with its value, limit and verdict."""
    out = []

    def add(name, value, limit, note=""):
        out.append({"target": name, "value": value, "limit": limit, "verdict": verdict(value, limit), "note": note})

    if step is not None:
        ratios = step["ratios"]
        for est in (est for est in C.ESTIMATORS if est in ratios):
            add(f"npvi Conv {SHORT[est]} / plain JAX", ratios[est]["npvi/plain paired"], 1.10, "paired")
        add("npvi Conv Flipout / deterministic CNN (JAX)", ratios[FLIPOUT]["npvi/deterministic paired"], 2.0, "paired")
        add("plain-JAX Flipout / deterministic CNN", ratios[FLIPOUT]["plain/deterministic paired"], 2.0, "reference")
    if mem is not None:
        found = len(mem["npvi Flipout"]["per_example_kernel_arrays"])
        add("batch x kernel-sized arrays in npvi's Flipout conv program", found, 0, "count")
    return out


def print_targets(rows: list[dict], step: dict | None) -> None:
    """The targets' table, then the TFP ratios (reported, no target) beside TF's floor against JAX's."""
    print("| target | value | limit | verdict |\n|---|---:|---:|---|")
    for r in rows:
        note = f" ({r['note']})" if r["note"] else ""
        print(f"| {r['target']}{note} | {r['value']:.2f} | {r['limit']:.2f} | {r['verdict']} |")
    if step is None:
        return
    for est in (est for est in C.ESTIMATORS if est in step["ratios"]):
        r = step["ratios"][est]
        if "npvi/TFP paired" in r:
            print(
                f"| npvi / TFP, {SHORT[est]} (reported; TFP / Keras CNN {r['TFP/own floor paired']:.2f}, "
                f"Keras CNN / JAX CNN {r['TFP floor/JAX floor paired']:.2f}) "
                f"| {r['npvi/TFP paired']:.2f} | - | - |"
            )


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` also narrows the run to Flipout's group and the floor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (under a minute), figures meaningless")
    parser.add_argument("--no-tfp", action="store_true", help="leave TFP out even when it is installed")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when it is installed")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads for PyTorch's steps")
    parser.add_argument("--only", nargs="+", choices=["step", "pieces", "memory"], help="run only these parts")
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks per variant (default 10)")
    parser.add_argument("--steps", type=int, default=10, help="steps per block (default 10)")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up steps per variant (default 50)")
    parser.add_argument(
        "--grouped", action="store_true", help="also time LRT with one grouped convolution (slow on XLA's CPU backend)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where conv.json goes")
    args = parser.parse_args(argv)
    args.estimators = C.ESTIMATORS
    args.ablations = [label for label in C.LRT_ABLATIONS if args.grouped or "grouped" not in label]
    if args.quick:  # Flipout's group and the floor only: every JAX step takes seconds to compile
        args.blocks, args.steps, args.warmup, args.estimators, args.ablations = 2, 2, 2, (FLIPOUT,), []
    return args


def print_header(info: dict, tfp: tuple[bool, str], torch: tuple[bool, str]) -> None:
    """Machine, versions, which frameworks take part, and the load average."""
    print(
        f"{info['cpu']}, {info['cpus']} CPUs, backend {info['backend']} ({info['device']}); python {info['python']}, "
        f"jax {info['jax']}, numpyro {info['numpyro']}, optax {info['optax']}, npvi {info['npvi']}"
    )
    print(f"TFP: {tfp[1]}" if tfp[0] else f"TFP columns absent: {tfp[1]}")
    print(f"PyTorch: {torch[1]}" if torch[0] else f"PyTorch columns absent: {torch[1]}")
    print(f"load average at start: {load()}")


def run_parts(args, problem: C.ConvProblem, tfp_ok: bool, torch_ok: bool) -> dict:
    """Run the chosen parts, printing each one's tables and its wall time; their results by part."""
    parts = args.only or ["step", "pieces", "memory"]
    out: dict = {}
    for part in ("step", "pieces", "memory"):
        if part not in parts:
            continue
        start = time.perf_counter()
        if part == "step":
            print(
                f"\n## 1. Step time: {problem.describe()}; {args.warmup} warm-up steps, "
                f"{args.blocks} interleaved blocks x {args.steps} steps"
            )
            out["step"] = step_times(problem, args, tfp_ok, torch_ok)
            print_step_table(out["step"])
        elif part == "pieces":
            print("\n## 2. LRT's and Flipout's extra pieces, timed alone (median ms per call)")
            out["pieces"] = piece_times(problem, args.blocks, 2 * args.steps, args.warmup)
            print_pieces(out["pieces"], out.get("step"))
        else:
            m = MEMORY_SHAPE
            print(
                f"\n## 3. Peak memory: conv {m['kernel']}x{m['kernel']}, {m['channels']} -> {m['channels']} "
                f"channels, {m['size']}x{m['size']}, batch {m['batch']}, forward + backward (XLA memory analysis)"
            )
            out["memory"] = memory(args.estimators)
            print_memory(out["memory"])
        print(f"({part}: {time.perf_counter() - start:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print its markdown tables and write ``conv.json``; return the results."""
    args = parse(argv)
    problem = C.ConvProblem()
    tfp = (False, "--no-tfp") if args.no_tfp else tfp_steps.available()
    torch = (False, "--no-torch") if args.no_torch else torch_steps.available()
    info = machine()
    started = time.perf_counter()
    print_header(info, tfp, torch)
    result = {"machine": info, "tfp": tfp[1] if tfp[0] else None, "torch": torch[1] if torch[0] else None}
    result.update(quick=args.quick, load_start=load(), problem=problem.describe())
    result.update(run_parts(args, problem, tfp[0], torch[0]))
    step, mem = result.get("step"), result.get("memory")
    if step is not None or mem is not None:
        print("\n## Targets (issue 14; ratios are medians of per-block ratios of interleaved blocks)")
        if args.quick:
            print("(--quick: too few steps and blocks for these figures to mean anything)")
        result["targets"] = targets(step, mem)
        print_targets(result["targets"], step)
    result["load_end"] = load()
    result["seconds"] = time.perf_counter() - started
    print(f"\nload average at end: {load()} (1, 5, 15 min); {result['seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"conv{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
