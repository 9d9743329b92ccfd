"""IVON's step against Adam's on the same npvi model (bench/steps.py's MLP), per estimator.

Issue 23's target: ``npvi.ivon``'s step costs at most 1.2x ``optax.adam``'s. Both are ``jax.jit(svi.update)``
of one SVI on one minibatch; they differ only in the optimiser. Medians of interleaved blocks after a warm-up,
and the paired ratio (median of block-by-block ratios).

    python bench/ivon.py [--blocks 15 --steps 50 --warmup 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import optax  # noqa: E402
import steps as S  # noqa: E402
from timing import paired_ratio  # noqa: E402

import npvi  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    problem = S.Problem()
    x, y = problem.batch_data()
    groups = S.timed_svi_groups(
        [
            [(f"{S.SHORT[estimator]} {name}", S.npvi_model(problem, layer), optimizer)
             for name, optimizer in (("adam", optax.adam(S.LR)), ("ivon", npvi.ivon(S.LR, ess=problem.n)))]
            for estimator, layer in S.ESTIMATORS.items()
        ],
        x, y, blocks=args.blocks, steps=args.steps, warmup=args.warmup,
    )  # fmt: skip
    print(f"{'estimator':<12} {'adam ms':>9} {'ivon ms':>9} {'ivon/adam paired':>17}")
    result = {}
    for adam, ivon in groups:
        ratio = paired_ratio(ivon, adam)
        result[adam.label.split()[0]] = {"adam_ms": adam.median_ms, "ivon_ms": ivon.median_ms, "paired": ratio}
        print(f"{adam.label.split()[0]:<12} {adam.median_ms:9.3f} {ivon.median_ms:9.3f} {ratio:17.3f}")
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    return result


if __name__ == "__main__":
    main()
