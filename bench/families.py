"""The correlated posterior families' step against the mean field's, on the same npvi model (bench/steps.py's MLP).

Issue 23's target: a new family's step costs at most 1.5x a mean-field step. Every variant is
``jax.jit(svi.update)`` with Adam on one minibatch; they differ only in every layer's ``kernel_posterior``.
Medians of interleaved blocks after a warm-up, and the paired ratio to the mean field (median of block-by-block
ratios). Flipout is not measured: neither correlated family supports it.

    python bench/families.py [--blocks 15 --steps 50 --warmup 20 --sizes 784,400,400,10]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import optax  # noqa: E402
import steps as S  # noqa: E402
from timing import paired_ratio  # noqa: E402

import npvi  # noqa: E402

FAMILIES = {
    "mean field": npvi.MeanFieldNormal(),
    "low rank 1": npvi.LowRankNormal(rank=1),
    "low rank 4": npvi.LowRankNormal(rank=4),
    "matrix": npvi.MatrixVariateNormal(),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--sizes", default="784,400,400,10", help="the MLP's layer sizes, comma-separated")
    args = parser.parse_args(argv)
    problem = S.Problem(sizes=tuple(int(s) for s in args.sizes.split(",")))
    x, y = problem.batch_data()
    groups = S.timed_svi_groups(
        [
            [(f"{S.SHORT[estimator]} {name}",
              S.npvi_model(problem, functools.partial(S.ESTIMATORS[estimator], kernel_posterior=family)),
              optax.adam(S.LR))
             for name, family in FAMILIES.items()]
            for estimator in ("reparameterization", "local_reparameterization")
        ],
        x, y, blocks=args.blocks, steps=args.steps, warmup=args.warmup,
    )  # fmt: skip
    print(f"{problem.describe()}")
    print(f"{'variant':<22} {'ms':>9} {'/ mean field (paired)':>22}")
    result = {}
    for group in groups:
        for v in group:
            ratio = paired_ratio(v, group[0])
            result[v.label] = {"ms": v.median_ms, "paired": ratio}
            print(f"{v.label:<22} {v.median_ms:9.3f} {ratio:22.3f}")
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    return result


if __name__ == "__main__":
    main()
