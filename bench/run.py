"""npvi's benchmark suite (issue 5): ``make bench`` runs this file.

One process, one model (MLP 784-400-400-10, ReLU, batch 128, softmax likelihood
scaled for N = 60000, Adam 1e-3, float32):

1. step time, side by side and interleaved: npvi's SVI step (reparameterization,
   LRT, Flipout), the same step written by hand in plain JAX, the deterministic
   network (plain JAX; and Keras Dense), and TFP's three layers in a ``tf.function``
   step when the ``bench`` extra is installed, and the same step in plain PyTorch
   (``torch_steps.py``) when torch is installed (on a GPU machine, say);
2. compile time of the first step (trace + lower, XLA compile), npvi against plain JAX;
3. peak memory (XLA's compiled memory analysis) of a 2048 -> 2048 layer at batch
   4096, forward + backward, against the deterministic layer;
4. step time against batch size and width (plot);
5. gradient variance of each estimator against batch size (plot).

Then the targets of issue 5, each with its figure and verdict. Results go to
``bench/results/`` (``results.json`` and PNGs; ``--quick`` writes ``*-quick`` files).
``--quick`` is a smoke run (under a minute, figures meaningless); ``--quality``
also runs ``compare_tfp_quality.py``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grad_variance  # noqa: E402
import jax  # noqa: E402
import memory  # noqa: E402
import numpyro  # noqa: E402
import optax  # noqa: E402
import scaling  # noqa: E402
import steps as S  # noqa: E402
import tfp_steps  # noqa: E402
import torch_steps  # noqa: E402
from timing import Variant, interleave, paired_ratio  # noqa: E402

import npvi  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: The figures of docs/benchmarks.md: a full run (not --quick) writes them there too, so the docs show what it drew.
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
DOCS_FIGURES = {"scaling.png": "scaling", "grad_variance.png": "gradvar"}  # figure: the part of the run that draws it


def publish(path: Path, figure: str, quick: bool) -> None:
    """Copy a full run's plot to the docs' figure ``figure`` (a quick run's stays in the results)."""
    if not quick:
        DOCS_IMG.mkdir(exist_ok=True)
        (DOCS_IMG / figure).write_bytes(path.read_bytes())
        print(f"docs figure: {DOCS_IMG / figure}")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "optax": optax.__version__,
        "npvi": npvi.__version__,
    }


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- 1 + 2: step and compile time


def step_times(args, tfp_ok: bool, torch_ok: bool) -> dict:
    problem = S.Problem()
    x, y = problem.batch_data()
    groups: list[list[Variant]] = []
    pairs = {}
    for est in S.ESTIMATORS:
        npvi_v, svi, state = S.npvi_step(problem, est, x, y)
        plain_v = S.plain_step(problem, est, svi, state, x, y)
        group = [npvi_v, plain_v]
        if tfp_ok:
            group.append(tfp_steps.tfp_step(problem, est, x, y, S.LR))
        if torch_ok:
            group.append(torch_steps.torch_step(problem, est, x, y, S.LR, threads=args.torch_threads))
        groups.append(group)
        pairs[est] = group
    floor = [S.deterministic_step(problem, x, y)]
    if tfp_ok:
        floor.append(tfp_steps.tfp_step(problem, None, x, y, S.LR, deterministic=True))
    if torch_ok:
        floor.append(torch_steps.torch_step(problem, None, x, y, S.LR, deterministic=True, threads=args.torch_threads))
    groups.append(floor)
    variants = [v for g in groups for v in g]

    for v in variants:  # JAX steps: compile ahead of time, timed; then the first call
        if v.update is not None:
            v.compile_ahead()
        v.first_call()
    for v in variants:
        v.run(args.warmup)
    interleave(groups, args.blocks, args.steps)

    rows = {v.label: v.summary() for v in variants}
    ratios = {}
    det = floor[0]
    for est, group in pairs.items():
        npvi_v, plain_v = group[:2]
        r = {
            "npvi/plain median": npvi_v.median_ms / plain_v.median_ms,
            "npvi/plain paired": paired_ratio(npvi_v, plain_v),
            "npvi/deterministic median": npvi_v.median_ms / det.median_ms,
            "npvi/deterministic paired": paired_ratio(npvi_v, det),
            "plain/deterministic paired": paired_ratio(plain_v, det),
            "compile npvi/plain": (npvi_v.lower_s + npvi_v.compile_s) / (plain_v.lower_s + plain_v.compile_s),
        }
        for other in group[2:]:  # TFP, PyTorch
            who = other.label.split()[0]
            r[f"npvi/{who} median"] = npvi_v.median_ms / other.median_ms
            r[f"npvi/{who} paired"] = paired_ratio(npvi_v, other)
        ratios[est] = r
    return {"rows": rows, "ratios": ratios, "order": [v.label for v in variants]}


def print_step_table(result: dict) -> None:
    rows, ratios = result["rows"], result["ratios"]
    print("| variant | median ms/step | min-max | trace+lower s | XLA compile s | first call s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in result["order"]:
        r = rows[label]
        lower = "-" if r["lower_s"] != r["lower_s"] else f"{r['lower_s']:.2f}"
        comp = "-" if r["compile_s"] != r["compile_s"] else f"{r['compile_s']:.2f}"
        print(
            f"| {label} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | {lower} | {comp} "
            f"| {r['first_call_s']:.2f} |"
        )
    keys = list(next(iter(ratios.values())))
    print("\n| estimator | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for est, r in ratios.items():
        print(f"| {S.SHORT[est]} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")


# --------------------------------------------------------------------------- targets


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


def targets(step: dict, mem: dict | None, tfp_ok: bool) -> list[dict]:
    out = []
    ratios = step["ratios"]

    def add(name, value, target, note=""):
        out.append({"target": name, "value": value, "limit": target, "verdict": verdict(value, target), "note": note})

    if tfp_ok:
        add("npvi Flipout / TFP DenseFlipout", ratios["flipout"]["npvi/TFP paired"], 0.5, "paired")
        add(
            "npvi LRT / TFP DenseLocalReparameterization",
            ratios["local_reparameterization"]["npvi/TFP paired"],
            0.5,
            "paired",
        )
    for est in S.ESTIMATORS:
        add(f"npvi / plain JAX, {S.SHORT[est]}", ratios[est]["npvi/plain paired"], 1.10, "paired")
    add("npvi Flipout / deterministic (plain JAX)", ratios["flipout"]["npvi/deterministic paired"], 3.0, "paired")
    add("plain-JAX Flipout / deterministic", ratios["flipout"]["plain/deterministic paired"], 3.0, "for reference")
    if mem is not None:
        det = mem["deterministic"]["total"]
        for est in ("flipout", "local_reparameterization"):
            add(
                f"peak memory {S.SHORT[est]} / deterministic",
                mem[est]["total"] / det,
                1.5,
                "argument+output+temp bytes",
            )
            add(
                f"peak memory plain-JAX {S.SHORT[est]} / deterministic",
                mem[f"plain {est}"]["total"] / det,
                1.5,
                "for reference",
            )
    for est in S.ESTIMATORS:
        add(
            f"compile npvi / plain JAX, {S.SHORT[est]}",
            ratios[est]["compile npvi/plain"],
            1.5,
            "trace+lower+XLA compile",
        )
    return out


def print_targets(rows: list[dict], tfp_ok: bool, tfp_why: str) -> None:
    print("| target | value | limit | verdict |\n|---|---:|---:|---|")
    for r in rows:
        note = f" ({r['note']})" if r["note"] else ""
        print(f"| {r['target']}{note} | {r['value']:.2f} | {r['limit']:.2f} | {r['verdict']} |")
    if not tfp_ok:
        print(f"| npvi / TFP (Flipout, LRT) | absent | 0.50 | not measured: TFP not importable ({tfp_why}) |")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (under a minute): tiny sweeps, few steps")
    parser.add_argument("--quality", action="store_true", help="also run compare_tfp_quality.py (issue 4)")
    parser.add_argument("--no-tfp", action="store_true", help="leave TFP out even when it is installed")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when it is installed")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads for PyTorch's steps")
    parser.add_argument(
        "--only", nargs="+", choices=["step", "memory", "scaling", "gradvar"], help="run only these parts"
    )
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks per variant (default 10)")
    parser.add_argument("--steps", type=int, default=20, help="steps per block (default 20)")
    parser.add_argument("--warmup", type=int, default=150, help="warm-up steps per variant (default 150)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results.json and the plots go")
    args = parser.parse_args(argv)
    parts = set(args.only or ["step", "memory", "scaling", "gradvar"])
    if args.quick:
        args.blocks, args.steps, args.warmup = 3, 5, 10
    suffix = "-quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)

    tfp_ok, tfp_why = (False, "--no-tfp") if args.no_tfp else tfp_steps.available()
    torch_ok, torch_why = (False, "--no-torch") if args.no_torch else torch_steps.available()
    info = machine()
    started = time.perf_counter()
    print(
        f"{info['cpu']}, {info['cpus']} CPUs, backend {info['backend']} ({info['device']}); "
        f"python {info['python']}, jax {info['jax']}, numpyro {info['numpyro']}, optax {info['optax']}, "
        f"npvi {info['npvi']}"
    )
    print(f"TFP: {tfp_why}" if tfp_ok else f"TFP columns absent: {tfp_why}")
    print(f"PyTorch: {torch_why}" if torch_ok else f"PyTorch columns absent: {torch_why}")
    print(f"load average at start: {load()}")
    result = {
        "machine": info,
        "tfp": tfp_why if tfp_ok else None,
        "torch": torch_why if torch_ok else None,
        "quick": args.quick,
        "load_start": load(),
    }

    step = mem = None
    if "step" in parts:
        print(
            f"\n## 1-2. Step and compile time: {S.Problem().describe()}; {args.warmup} warm-up steps, "
            f"{args.blocks} interleaved blocks x {args.steps} steps"
        )
        step = step_times(args, tfp_ok, torch_ok)
        print_step_table(step)
        result["step"] = step
    if "memory" in parts:
        print(
            "\n## 3. Peak memory, 2048 -> 2048 layer, batch 4096, forward + backward "
            "(XLA memory analysis: argument + output + temp)"
        )
        mem = memory.measure()
        det = mem["deterministic"]["total"]
        print("| layer | argument MiB | output MiB | temp MiB | total MiB | / deterministic |")
        print("|---|---:|---:|---:|---:|---:|")
        for key in ("deterministic", *(f"{who}{est}" for est in S.ESTIMATORS for who in ("", "plain "))):
            m = mem[key]
            est = key.removeprefix("plain ")
            name = key if key == "deterministic" else ("plain JAX " if key != est else "npvi ") + S.SHORT[est]
            print(
                f"| {name} | {m['argument'] / 2**20:.0f} | {m['output'] / 2**20:.0f} | {m['temp'] / 2**20:.0f} "
                f"| {m['total'] / 2**20:.0f} | {m['total'] / det:.2f} |"
            )
        print(f"(per-example weights would need {mem['per_example_weights_bytes'] / 2**30:.0f} GiB)")
        result["memory"] = mem
    if "scaling" in parts:
        batches = [32, 512] if args.quick else [32, 128, 512, 2048, 4096]
        widths = [128, 512] if args.quick else [128, 256, 512, 1024, 2048]
        print("\n## 4. Scaling (median ms/step)")
        sc = scaling.sweep(
            batches,
            widths,
            blocks=2 if args.quick else 5,
            steps_per_block=2 if args.quick else 5,
            warmup=5 if args.quick else 100,
            warmup_s=0.3 if args.quick else 1.5,
        )
        path = args.out / f"scaling{suffix}.png"
        scaling.plot(sc, path)
        print(f"plot: {path}")
        publish(path, "scaling.png", args.quick)
        result["scaling"] = sc
    if "gradvar" in parts:
        batches = [16, 256] if args.quick else [16, 64, 256, 1024]
        draws = 16 if args.quick else 64
        print(
            f"\n## 5. Gradient variance (sum over kernel locs of the variance over {draws} fixed keys), "
            f"MLP {'-'.join(map(str, grad_variance.PROBLEM.sizes))}"
        )
        gv = grad_variance.sweep(batches, draws)
        path = args.out / f"grad_variance{suffix}.png"
        grad_variance.plot(gv, path, draws)
        print(f"plot: {path}")
        publish(path, "grad_variance.png", args.quick)
        result["grad_variance"] = {"draws": draws, "sizes": grad_variance.PROBLEM.sizes, "values": gv}

    if step is not None:
        print("\n## Targets (issue 5; ratios are medians of per-block ratios of interleaved blocks)")
        if args.quick:
            print("(--quick: too few steps and blocks for these figures to mean anything)")
        rows = targets(step, mem, tfp_ok)
        print_targets(rows, tfp_ok, tfp_why)
        result["targets"] = rows
    result["load_end"] = load()
    result["seconds"] = time.perf_counter() - started
    print(f"\nload average at end: {load()} (1, 5, 15 min); {result['seconds']:.0f} s")
    path = args.out / f"results{suffix}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"results: {path}")

    if args.quality:
        import compare_tfp_quality

        compare_tfp_quality.main(["--quick"] if args.quick else [])
    return result


if __name__ == "__main__":
    main()
