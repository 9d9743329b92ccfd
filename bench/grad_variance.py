"""Variance of each estimator's gradient against batch size, on a fixed problem and keys.

Problem: an MLP 784-100-10 (ReLU; smaller than the timing net so that the sweep
compiles and runs in seconds) at npvi's initial posterior, one fixed
synthetic dataset (x ~ N(0, 1), labels from a fixed random linear teacher), the
first B examples as the minibatch. For each estimator and batch size the gradient
of the per-example negative ELBO (``npvi.ELBO().loss / N``) with respect to every
kernel ``loc`` is computed for the same ``draws`` keys; the figure is the total
variance over keys (the sum over weights of each weight's variance), which is the
noise the estimator adds on top of minibatch sampling (the minibatch is fixed).
Reparameterization shares one weight draw across the batch, so its variance stops
falling with B; LRT and Flipout decorrelate the examples, so theirs keeps falling
(roughly as 1 / B).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import steps as S

import npvi

PROBLEM = S.Problem(sizes=(784, 100, 10))


def _data(problem: S.Problem, batch: int):
    kx, kw = jax.random.split(jax.random.PRNGKey(42))
    x = jax.random.normal(kx, (batch, problem.sizes[0]), S.DTYPE)
    teacher = jax.random.normal(kw, (problem.sizes[0], problem.sizes[-1]), S.DTYPE)
    return x, jnp.argmax(x @ teacher, axis=-1)


def total_variance(problem: S.Problem, estimator: str, batch: int, draws: int) -> float:
    p = S.Problem(sizes=problem.sizes, batch=batch, n=problem.n)
    x, y = _data(p, batch)
    svi, state = S.npvi_svi(p, estimator, x, y, seed=0)
    params = svi.get_params(state)
    locs = [f"{name}.kernel.loc" for name in p.names]

    def grad(key):
        def loss(sub):
            return npvi.ELBO().loss(key, {**params, **sub}, svi.model, svi.guide, x, y) / p.n

        return jax.grad(loss)({k: params[k] for k in locs})

    grads = jax.jit(jax.vmap(grad))(jax.random.split(jax.random.PRNGKey(7), draws))
    return float(sum(jnp.sum(jnp.var(g, axis=0, ddof=1)) for g in grads.values()))


def sweep(batches, draws: int, problem: S.Problem | None = None, log=print) -> dict:
    problem = problem or PROBLEM
    result = {}
    for estimator in S.ESTIMATORS:
        result[estimator] = {b: total_variance(problem, estimator, b, draws) for b in batches}
        log(f"  {S.SHORT[estimator]:8s} " + ", ".join(f"B={b}: {v:.3g}" for b, v in result[estimator].items()))
    return result


def plot(result: dict, path, draws: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for estimator, points in result.items():
        bs = sorted(points, key=int)
        ax.plot([int(b) for b in bs], [points[b] for b in bs], marker="o", label=S.SHORT[estimator])
    bs = sorted(next(iter(result.values())), key=int)
    ref = result["flipout"][bs[0]]
    ax.plot([int(b) for b in bs], [ref * int(bs[0]) / int(b) for b in bs], color="grey", ls=":", label="1 / B")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="total gradient variance (sum over kernel locs)",
        title=f"Gradient variance of the per-example loss, {draws} fixed keys",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
