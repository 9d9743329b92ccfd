"""Mixed precision (``npvi.handlers.mixed_precision``): the bfloat16 and float16 steps against float32's.

The MLP of ``bench/steps.py`` (784-400-400-10, batch 128, Adam, softmax likelihood for N = 60000) with its
logits cast to float32 before the likelihood (the handler's docstring: Keras' float32 last layer), so the
float32 variant is ``steps.py``'s model; the others are the same model under
``mixed_precision(compute_dtype=...)``. Every variant is ``jax.jit(svi.update)`` on one minibatch from the same
initial state; medians of interleaved blocks after a warm-up, and the paired ratio to float32 (median of
block-by-block ratios). The final loss of each variant (after the same steps from the same state) is printed
too: the precisions should train alike.

On a CPU, expect the narrow dtypes to be slower, not faster: XLA's CPU backend has no bfloat16 or float16
matrix units and converts to float32 around each operation. The speed-up is a GPU's (tensor cores) or a TPU's.

    python bench/mixed_precision.py [--blocks 9 --steps 20 --warmup 10 --sizes 784,400,400,10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
import steps as S  # noqa: E402
from timing import paired_ratio  # noqa: E402

import npvi  # noqa: E402

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_for(problem: S.Problem, layer_cls: type, compute_dtype):
    """``steps.npvi_model`` with float32 logits, under ``mixed_precision(compute_dtype)`` unless that is None."""

    def model(x, y):
        h = x
        for i, (name, units) in enumerate(zip(problem.names, problem.sizes[1:], strict=True)):
            last = i == len(problem.names) - 1
            h = layer_cls(units, activation=None if last else jax.nn.relu, name=name)(h)
        with numpyro.plate("data", problem.n, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=h.astype(jnp.float32)), obs=y)

    return model if compute_dtype is None else npvi.handlers.mixed_precision(model, compute_dtype=compute_dtype)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sizes", default="784,400,400,10", help="the MLP's layer sizes, comma-separated")
    args = parser.parse_args(argv)
    problem = S.Problem(sizes=tuple(int(s) for s in args.sizes.split(",")))
    x, y = problem.batch_data()
    groups = S.timed_svi_groups(
        [
            [(f"{S.SHORT[estimator]} {name}", model_for(problem, layer, dtype), optax.adam(S.LR))
             for name, dtype in DTYPES.items()]
            for estimator, layer in S.ESTIMATORS.items()
        ],
        x, y, blocks=args.blocks, steps=args.steps, warmup=args.warmup,
    )  # fmt: skip
    print(problem.describe().replace(", float32", ", float32 params"))
    print(f"{'variant':<18} {'ms':>9} {'/ float32 (paired)':>19} {'final loss':>11}")
    result = {}
    for group in groups:
        for v in group:
            ratio = paired_ratio(v, group[0])
            result[v.label] = {"ms": v.median_ms, "paired": ratio, "final_loss": v.loss(), "compile_s": v.compile_s}
            print(f"{v.label:<18} {v.median_ms:9.3f} {ratio:19.3f} {v.loss():11.1f}")
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    return result


if __name__ == "__main__":
    main()
