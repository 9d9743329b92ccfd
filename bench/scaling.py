"""Step time against batch size and against hidden width, for every estimator.

The net is the benchmark's MLP (784-400-400-10, batch 128) with one of the two
varied: batch in 32..4096 at width 400, or hidden width in 128..2048 at batch 128.
At each point every variant (npvi reparameterization, LRT, Flipout and the
deterministic floor) is compiled, warmed up, then timed in interleaved blocks.
Warm-up is by count and by time (whichever ends first), so wide or large-batch
points do not spend minutes warming up.
"""

from __future__ import annotations

import time

import steps as S
from timing import interleave


def _warm(variants, steps: int, seconds: float) -> None:
    for v in variants:
        start, done = time.perf_counter(), 0
        while done < steps and time.perf_counter() - start < seconds:
            v.run(5)
            done += 5


def point(problem: S.Problem, blocks: int, steps_per_block: int, warmup: int, warmup_s: float) -> dict[str, float]:
    """Median ms/step of each variant at one problem size."""
    x, y = problem.batch_data()
    variants = [S.npvi_step(problem, est, x, y)[0] for est in S.ESTIMATORS] + [S.deterministic_step(problem, x, y)]
    for v in variants:
        v.first_call()
    _warm(variants, warmup, warmup_s)
    # Big points: fewer steps per block, so a block stays around a tenth of a second or more.
    interleave([[v] for v in variants], blocks, steps_per_block)
    return {v.label: v.median_ms for v in variants}


def sweep(batches, widths, blocks: int, steps_per_block: int, warmup: int, warmup_s: float, log=print) -> dict:
    result = {"batch": {}, "width": {}}
    for batch in batches:
        result["batch"][batch] = point(S.Problem(batch=batch), blocks, steps_per_block, warmup, warmup_s)
        log(f"  batch {batch:5d}: " + ", ".join(f"{k} {v:.2f}" for k, v in result["batch"][batch].items()) + " ms")
    for width in widths:
        problem = S.Problem(sizes=(784, width, width, 10))
        result["width"][width] = point(problem, blocks, steps_per_block, warmup, warmup_s)
        log(f"  width {width:5d}: " + ", ".join(f"{k} {v:.2f}" for k, v in result["width"][width].items()) + " ms")
    return result


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (axis, xlabel) in enumerate((("batch", "batch size (width 400)"), ("width", "hidden width (batch 128)"))):
        points = result[axis]
        xs = sorted(points, key=int)
        labels = list(points[xs[0]])
        floor = [points[x]["deterministic (plain JAX)"] for x in xs]
        for label in labels:
            ys = [points[x][label] for x in xs]
            axes[0, col].plot([int(x) for x in xs], ys, marker="o", label=label)
            if label != "deterministic (plain JAX)":
                axes[1, col].plot(
                    [int(x) for x in xs], [a / b for a, b in zip(ys, floor, strict=True)], marker="o", label=label
                )
        axes[0, col].set(xscale="log", yscale="log", xlabel=xlabel, ylabel="ms per step (median)")
        axes[1, col].set(xscale="log", xlabel=xlabel, ylabel="step time / deterministic step")
        axes[1, col].axhline(2.0, color="grey", ls=":", lw=1)
        axes[1, col].axhline(3.0, color="grey", ls="--", lw=1)
        for ax in axes[:, col]:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("npvi SVI step (MLP 784-w-w-10, Adam, CPU): time against batch and width")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
