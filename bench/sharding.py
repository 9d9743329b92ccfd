"""Data-parallel ``npvi.fit`` over 1, 2, 4 and 8 simulated CPU devices (issue 16): what an epoch costs.

The device count of a JAX process is fixed when it starts, so every count runs in its own
worker process (``XLA_FLAGS=--xla_force_host_platform_device_count=n``), plus one worker on a
single device without a mesh (``mesh=None``, the baseline). Each worker builds the same problem,
places the data once (:func:`npvi.sharding.place_data`), compiles and warms up its
:class:`npvi.Trainer`, then waits. The parent asks the workers for one block at a time in the
house style of ``timing.interleave``: block k of every worker before block k + 1, in an order
that rotates from block to block, so a noisy moment lands on every count; only one worker runs at
a time. A block is ``Trainer.fit`` of a few epochs from the current state, timed around the call,
so it includes what ``fit`` does per call and per epoch (its checks of the data, the loss read
back each epoch). Reported figures are medians over blocks.

The problem: 8192 examples of 32 features, regression MLP 32-128-128-1 of ``DenseFlipout``
layers (tanh), batch 256 (32 steps an epoch), Adam, float32. On a CPU the simulated devices
share the same cores, so more devices measure the overhead of splitting the step (collectives,
smaller kernels), not a speed-up. ``--quick`` is a smoke run (figures meaningless). Results go
to ``bench/results/sharding.json`` (``sharding-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COUNTS = ("1 (no mesh)", "1", "2", "4", "8")
N, D, HIDDEN, BATCH = 8192, 32, 128, 256


# --------------------------------------------------------------------------- worker (one device count)


def worker(devices: int, use_mesh: bool, warmup: int, epochs_per_block: int) -> None:
    """Build, compile and warm up; then answer ``block`` lines on stdin with one JSON line each."""
    import jax
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.infer import SVI

    import npvi
    from npvi.sharding import place_data

    def model(x, y=None, num_data=None):
        h = npvi.DenseFlipout(HIDDEN, activation=jax.nn.tanh, name="l1")(x)
        h = npvi.DenseFlipout(HIDDEN, activation=jax.nn.tanh, name="l2")(h)
        mu = npvi.DenseFlipout(1, name="out")(h)[..., 0]
        with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = np.sin(x @ rng.normal(size=D) / np.sqrt(D)).astype(np.float32)
    assert jax.device_count() == devices, (jax.device_count(), devices)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",)) if use_mesh else None
    x, y = place_data(mesh, x, y) if use_mesh else (jax.device_put(x), jax.device_put(y))
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-3), npvi.ELBO())
    trainer = npvi.Trainer(svi, batch_size=BATCH, mesh=mesh)
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    result = trainer.fit(key, x, y, num_epochs=1, progress_bar=False)  # compiles init and the epoch
    first_s = time.perf_counter() - start
    state = trainer.fit(key, x, y, num_epochs=warmup, init_state=result.state, progress_bar=False).state
    print(json.dumps({"ready": True, "first_fit_s": first_s, "steps_per_epoch": N // BATCH}), flush=True)
    for line in sys.stdin:
        if line.strip() != "block":
            break
        start = time.perf_counter()
        result = trainer.fit(key, x, y, num_epochs=epochs_per_block, init_state=state, progress_bar=False)
        jax.block_until_ready(result.losses)
        elapsed = time.perf_counter() - start
        state = result.state
        print(json.dumps({"epoch_ms": 1e3 * elapsed / epochs_per_block, "loss": float(result.losses[-1])}), flush=True)


# --------------------------------------------------------------------------- parent


def machine() -> dict:
    """``run.py``'s description of the machine (it imports JAX here; only the workers compute), and the load."""
    from run import machine as described

    return {**described(), "load_before": os.getloadavg()}


def start(label: str, args) -> subprocess.Popen:
    devices = int(label.split()[0])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, __file__, "--worker", str(devices), "--warmup", str(args.warmup),
               "--epochs-per-block", str(args.epochs_per_block)]  # fmt: skip
    if "no mesh" in label:
        command.append("--no-mesh")
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def ask(process: subprocess.Popen, line: str | None = None) -> dict:
    if line is not None:
        process.stdin.write(line + "\n")
        process.stdin.flush()
    reply = process.stdout.readline()
    if not reply:
        raise RuntimeError(f"worker {process.args} ended early (exit {process.wait()})")
    return json.loads(reply)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-mesh", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--epochs-per-block", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="epochs after the compiling one")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 blocks of 1 epoch, 1 warm-up epoch")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, not args.no_mesh, args.warmup, args.epochs_per_block)
        return 0
    if args.quick:
        args.blocks, args.epochs_per_block, args.warmup = 3, 1, 1

    info = machine()
    processes = {}
    try:
        for label in COUNTS:  # one at a time: each compiles and warms up alone
            processes[label] = start(label, args)
            ready = ask(processes[label])
            print(f"{label:>12} devices: first fit (compiles) {ready['first_fit_s']:.2f} s", flush=True)
            info.setdefault("first_fit_s", {})[label] = ready["first_fit_s"]
            info["steps_per_epoch"] = ready["steps_per_epoch"]
        blocks: dict[str, list[float]] = {label: [] for label in COUNTS}
        for block in range(args.blocks):
            shift = block % len(COUNTS)
            for label in COUNTS[shift:] + COUNTS[:shift]:
                blocks[label].append(ask(processes[label], "block")["epoch_ms"])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.stdin.close()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    base = statistics.median(blocks[COUNTS[0]])
    rows = {}
    print("\n| devices | median ms / epoch | min-max | ms / step | / 1 device, no mesh | first fit s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in COUNTS:
        median = statistics.median(blocks[label])
        rows[label] = {"median_ms_per_epoch": median, "blocks_ms": blocks[label],
                       "ms_per_step": median / info["steps_per_epoch"], "ratio": median / base}  # fmt: skip
        spread = f"{min(blocks[label]):.1f}-{max(blocks[label]):.1f}"
        print(f"| {label} | {median:.1f} | {spread} | {median / info['steps_per_epoch']:.2f} | {median / base:.2f} "
              f"| {info['first_fit_s'][label]:.2f} |")  # fmt: skip
    info["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("sharding-quick.json" if args.quick else "sharding.json")
    settings = {"N": N, "D": D, "hidden": HIDDEN, "batch": BATCH, "blocks": args.blocks,
                "epochs_per_block": args.epochs_per_block, "warmup": args.warmup}  # fmt: skip
    out.write_text(json.dumps({"machine": info, "settings": settings, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
