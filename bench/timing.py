"""Timing machinery: a step with its carried state, warm-up and interleaved blocks.

Every variant is a function ``carry -> carry`` whose last carry element is the loss.
``interleave`` runs block k of every variant before block k + 1, in an order that
rotates from block to block, with the members of a group (say npvi and plain JAX of
one estimator) back to back and alternating which goes first, so a noisy moment
lands on both sides of a comparison. Reported figures are medians over blocks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax


class Variant:
    """A step function and its carried state; ``run(n)`` takes n steps and waits for them."""

    def __init__(self, label: str, step: Callable[[Any], Any], carry: Any, *, sync: Callable | None = None) -> None:
        self.label = label
        self._step = step
        self.carry = carry
        self._sync = sync or jax.block_until_ready
        self.first_call_s = float("nan")
        self.block_ms: list[float] = []
        self.update: Callable | None = None  # the jitted update, where the step has one
        self.first_args: tuple | None = None  # its arguments at the first step
        self.lower_s = float("nan")
        self.compile_s = float("nan")

    def first_call(self) -> float:
        """Run the first step (trace + compile + one step) and return its wall time."""
        start = time.perf_counter()
        self.carry = self._sync(self._step(self.carry))
        self.first_call_s = time.perf_counter() - start
        return self.first_call_s

    def compile_ahead(self) -> tuple[float, float]:
        """Trace + lower, then XLA-compile the jitted update ahead of time; it is used from then on.

        Returns ``(lower_s, compile_s)``: Python tracing and lowering to StableHLO, then
        XLA's compile. Only for JAX steps (``update`` set).
        """
        start = time.perf_counter()
        lowered = self.update.lower(*self.first_args)
        mid = time.perf_counter()
        self.update = lowered.compile()
        self.lower_s, self.compile_s = mid - start, time.perf_counter() - mid
        return self.lower_s, self.compile_s

    def run(self, n: int) -> float:
        carry = self.carry
        start = time.perf_counter()
        for _ in range(n):
            carry = self._step(carry)
        self._sync(carry)
        elapsed = time.perf_counter() - start
        self.carry = carry
        return elapsed

    def block(self, n: int) -> float:
        """Time one block of n steps; record and return ms per step."""
        ms = 1e3 * self.run(n) / n
        self.block_ms.append(ms)
        return ms

    @property
    def median_ms(self) -> float:
        return statistics.median(self.block_ms)

    @property
    def min_ms(self) -> float:
        return min(self.block_ms)

    @property
    def max_ms(self) -> float:
        return max(self.block_ms)

    def loss(self) -> float:
        last = self.carry[-1]
        return float(last.numpy() if hasattr(last, "numpy") else last)

    def summary(self) -> dict[str, Any]:
        """The figures every benchmark records for a variant: block times, compile times, final loss."""
        return {
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "blocks_ms": self.block_ms,
            "lower_s": self.lower_s,
            "compile_s": self.compile_s,
            "first_call_s": self.first_call_s,
            "final_loss": self.loss(),
        }


def interleave(groups: Sequence[Sequence[Variant]], blocks: int, steps: int) -> None:
    """Block k of every variant before block k + 1; rotating group order, alternating within."""
    for block in range(blocks):
        shift = block % len(groups)
        for group in list(groups[shift:]) + list(groups[:shift]):
            for v in group if block % 2 == 0 else list(group)[::-1]:
                v.block(steps)


def paired_ratio(a: Variant, b: Variant) -> float:
    """Median over blocks of a-block / b-block (robust to drift in machine load)."""
    return statistics.median(x / y for x, y in zip(a.block_ms, b.block_ms, strict=True))
