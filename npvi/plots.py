"""matplotlib plots of training and prediction: the ELBO curve, a reliability diagram, a predictive band.

Each function draws on ``ax`` (default: a new figure's axes) and returns the axes.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import jax.numpy as jnp
>>> from npvi import plots
>>> plots.plot_elbo(jnp.linspace(100.0, 10.0, 50)).get_ylabel()
'ELBO'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from npvi.uncertainty import ReliabilityDiagram

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(5, 3.5)).add_subplot()


def plot_elbo(
    losses: ArrayLike, *, ax: Axes | None = None, smooth: int | None = None, label: str | None = None
) -> Axes:
    """Plot the ELBO (minus the per-step ``losses`` of SVI) against the step.

    ``smooth`` steps of moving average (default: about 1% of the steps) tame
    the minibatch noise; the raw curve is drawn faintly behind it. The y axis
    fits the steps after the first 5%; when earlier steps fall below it, a note in
    the corner says how many.
    """
    elbo = -np.asarray(losses, dtype=np.float64).reshape(-1)
    if elbo.size == 0:
        raise ValueError("plot_elbo: losses is empty")
    ax = _axes(ax)
    steps = np.arange(1, elbo.size + 1)
    window = max(1, elbo.size // 100) if smooth is None else smooth
    (raw,) = ax.plot(steps, elbo, alpha=0.25 if window > 1 else 1.0, lw=0.8)
    if window > 1:
        smoothed = np.convolve(elbo, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smoothed, color=raw.get_color(), label=label)
    elif label is not None:
        raw.set_label(label)
    # The first steps are often orders of magnitude worse; keep the rest readable, and say so.
    settled = elbo[elbo.size // 20 :]
    low, high = np.percentile(settled, 1), settled.max()
    if high > low:
        bottom = low - 0.05 * (high - low)
        ax.set_ylim(bottom, high + 0.05 * (high - low))
        below = elbo < bottom
        if below.any():
            count = int(below.sum())
            which = f"the first {count}" if below[:count].all() else f"{count}"
            ax.text(
                0.99, 0.02, f"{which} of {elbo.size} steps lie below the axis",
                transform=ax.transAxes, ha="right", va="bottom", fontsize="small", color="0.4",
            )  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO")
    return ax


def plot_reliability(
    diagram: ReliabilityDiagram, *, ax: Axes | None = None, label: str | None = None, counts: bool = True
) -> Axes:
    """Reliability diagram: accuracy against confidence per bin, with the diagonal of perfect calibration.

    ``diagram`` is the result of :func:`npvi.reliability_diagram`; bars show
    each non-empty bin's accuracy, dots its mean confidence. ``counts`` adds, as
    usual, a histogram of the predictions per bin under the diagram, so a bin of
    three predictions is not read like one of three hundred. Returns the diagram's axes.
    """
    ax = _axes(ax)
    edges = np.asarray(diagram.bin_edges)
    bin_counts = np.asarray(diagram.counts)
    filled = bin_counts > 0
    left, width = edges[:-1][filled], np.diff(edges)[filled]
    ax.bar(left, np.asarray(diagram.accuracy)[filled], width=width, align="edge", alpha=0.6, edgecolor="k", label=label)
    centres = left + width / 2
    ax.plot(centres, np.asarray(diagram.confidence)[filled], "o", ms=3, color="C3", label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    if not counts:
        ax.set_xlabel("confidence")
        return ax
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    below = make_axes_locatable(ax).append_axes("bottom", size="25%", pad=0.1, sharex=ax)
    below.bar(edges[:-1], bin_counts, width=np.diff(edges), align="edge", color="0.6", edgecolor="k", lw=0.5)
    below.set_ylabel("count", fontsize="small")
    below.set_xlabel("confidence")
    ax.tick_params(labelbottom=False)
    return ax


def plot_predictive_band(
    x: ArrayLike,
    draws: ArrayLike,
    *,
    x_obs: ArrayLike | None = None,
    y_obs: ArrayLike | None = None,
    ax: Axes | None = None,
    quantiles: tuple[float, float] = (0.05, 0.95),
    label: str | None = None,
) -> Axes:
    """Regression predictive band: the mean and a central interval of ``draws`` against 1-D inputs ``x``.

    ``draws`` has shape ``(S, n)``, one row per posterior predictive draw at the
    ``n`` points of ``x`` (for example ``npvi.Predictive(...)(key, x)["y"]``);
    the band spans the ``quantiles`` (default 90%). ``x_obs, y_obs`` add the
    observed data as points.
    """
    x = np.asarray(x).reshape(-1)
    draws = np.asarray(draws)
    if draws.ndim != 2 or draws.shape[1] != x.size:
        raise ValueError(f"plot_predictive_band: draws must have shape (num_samples, {x.size}), got {draws.shape}")
    order = np.argsort(x)
    x, draws = x[order], draws[:, order]
    low, high = np.quantile(draws, quantiles, axis=0)
    ax = _axes(ax)
    (line,) = ax.plot(x, draws.mean(axis=0), label=label or "predictive mean")
    share = round(100 * (quantiles[1] - quantiles[0]))
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.25, label=f"{share}% predictive interval")
    if x_obs is not None and y_obs is not None:
        ax.plot(np.asarray(x_obs).reshape(-1), np.asarray(y_obs).reshape(-1), "k.", ms=3, label="observed")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize="small")
    return ax
