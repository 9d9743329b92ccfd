"""The transformer benchmark (issue 24): a converted Flax transformer block's Flipout step, and embedding memory.

(a) Step time. One pre-LayerNorm transformer block written in Flax Linen (:class:`Block`: token
``nn.Embed`` plus a learned positional embedding, ``nn.MultiHeadDotProductAttention``, an MLP with
GELU, mean pooling and a ``nn.Dense`` head; :class:`BlockProblem` holds the sizes), with a softmax
likelihood in a plate scaled for ``n`` examples, Adam(1e-3) from optax, float32, one fixed random
minibatch. Each variant is one jitted update:

* ``npvi converted Flipout``: the block made Bayesian with one ``npvi.random_flax_module`` call,
  Flipout, an N(0, 1) prior on every kernel (the query, key, value and output projections, the two
  MLP layers, the head) and none elsewhere, so the biases, the LayerNorms and both embeddings are
  point estimates; ``jax.jit(SVI(model, npvi.MeanFieldGuide(model), optax.adam, npvi.ELBO()).update)``;
* ``plain JAX Flipout``: the same block and the same ELBO by hand (:func:`plain_loss`: mean-field
  params, softplus scales, Flipout's signs, the likelihood and the exact Normal KL, ``value_and_grad``
  and ``optax.adam`` in one ``jax.jit``), started from npvi's params and key, so it draws what npvi
  draws and computes npvi's loss (``tests/test_bench.py`` checks that, as for the MLP of ``steps.py``);
* ``deterministic block``: the Flax module itself (``Block().apply``) with the same likelihood and Adam.

The method is ``run.py``'s: compile ahead of time, warm up, then interleaved blocks
(``timing.interleave``); ratios are medians of per-block ratios (``timing.paired_ratio``).
Targets: converted Flipout / plain JAX Flipout <= 1.10 and converted Flipout / deterministic <= 2.5.

(b) Memory. A Flipout SVI step of ``npvi.EmbeddingFlipout`` over a large vocabulary (ids of
``(batch, seq)``, mean-pooled, then ``npvi.DenseFlipout`` onto the classes), against the same
model written with a one-hot input (``npvi.DenseFlipout`` on ``jax.nn.one_hot(ids, vocab)``, which
is what an embedding is without a lookup) and against a deterministic lookup with Adam. Two
measures, neither runs the step: XLA's compiled memory analysis (argument + output + temp - alias
bytes, as ``memory.py``) and the largest array anywhere in the step's jaxpr (every equation's
outputs, into every sub-jaxpr), with whether any array has ``batch * seq * vocab`` elements or more.
Target: the embedding's step has no such array.

Results go to ``bench/results/transformer.json`` (``transformer-quick.json`` with ``--quick``, a
smoke run whose figures mean nothing). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from memory import _bytes  # noqa: E402
from numpyro.infer import SVI  # noqa: E402
from run import load, machine, verdict  # noqa: E402
from steps import DTYPE, LR, log_likelihood, loss_variant, plain_kl, sigma, svi_variant  # noqa: E402
from timing import Variant, interleave, paired_ratio  # noqa: E402

import npvi  # noqa: E402
from npvi.estimators import rademacher_signs  # noqa: E402  (pure JAX: the same sign draw as npvi)

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "net"
#: The converted layers in the order the block calls them (the guide draws their kernels in this order).
LAYERS = ("attention.query", "attention.key", "attention.value", "attention.out", "mlp_in", "mlp_out", "head")
#: Each layer's contraction, input first: the projections onto and off the heads, the MLP, the head.
EQUATIONS = {
    "attention.query": "bld,dhk->blhk",
    "attention.key": "bld,dhk->blhk",
    "attention.value": "bld,dhk->blhk",
    "attention.out": "blhk,hkd->bld",
    "mlp_in": "bld,df->blf",
    "mlp_out": "blf,fd->bld",
    "head": "bd,dc->bc",
}
TARGET_PLAIN = 1.10
TARGET_DETERMINISTIC = 2.5
LN_EPSILON = 1e-6  # Flax's LayerNorm default


def random_batch(problem: Any, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """One fixed random minibatch: token ids ``(batch, length)`` and labels; the plate scales it by N / B."""
    k_ids, k_y = jax.random.split(jax.random.PRNGKey(seed))
    ids = jax.random.randint(k_ids, (problem.batch, problem.length), 0, problem.vocab)
    return ids, jax.random.randint(k_y, (problem.batch,), 0, problem.classes)


@dataclass(frozen=True)
class BlockProblem:
    """Sizes of the block and of its data: vocabulary, sequence length, width, heads, MLP width, classes."""

    vocab: int = 1000
    length: int = 64
    features: int = 128
    heads: int = 4
    mlp: int = 512
    classes: int = 10
    batch: int = 32
    n: int = 50_000

    def describe(self) -> str:
        return (
            f"transformer block: vocab {self.vocab}, length {self.length}, width {self.features}, {self.heads} heads, "
            f"MLP {self.mlp}, {self.classes} classes; batch {self.batch}, N {self.n}, adam({LR}), float32"
        )

    def batch_data(self, seed: int = 0) -> tuple[jax.Array, jax.Array]:
        return random_batch(self, seed)


class Block(nn.Module):
    """One pre-LayerNorm transformer block over token ids, mean-pooled onto a classifier head."""

    problem: BlockProblem

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        p = self.problem
        h = nn.Embed(p.vocab, p.features, name="embed")(ids)
        h = h + self.param("position", nn.initializers.normal(0.02), (p.length, p.features))
        h = h + nn.MultiHeadDotProductAttention(p.heads, name="attention")(nn.LayerNorm(name="ln1")(h))
        mlp = nn.Dense(p.features, name="mlp_out")(nn.gelu(nn.Dense(p.mlp, name="mlp_in")(nn.LayerNorm(name="ln2")(h))))
        return nn.Dense(p.classes, name="head")((h + mlp).mean(axis=1))


def kernel_prior(path: str, shape: tuple[int, ...]) -> dist.Distribution | None:
    """N(0, 1) on every kernel, no prior elsewhere (biases, LayerNorms, embeddings: point estimates)."""
    del shape
    return dist.Normal(0.0, 1.0) if path.endswith(".kernel") else None


def initial_variables(problem: BlockProblem) -> dict[str, Any]:
    """The module's initial variables, made once outside the model (so no step re-runs ``init``)."""
    return jax.jit(Block(problem).init)(jax.random.PRNGKey(0), jnp.zeros((1, problem.length), jnp.int32))


# --------------------------------------------------------------------------- npvi


def npvi_model(problem: BlockProblem, variables: dict[str, Any]) -> Callable[..., None]:
    """The block made Bayesian by one ``random_flax_module`` call (Flipout, kernel-only priors)."""

    def model(ids: jax.Array, y: jax.Array | None = None) -> None:
        logits = npvi.random_flax_module(NAME, Block(problem), kernel_prior, ids[:1], params=variables)(ids)
        with numpyro.plate("data", problem.n, subsample_size=ids.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


def npvi_svi(problem: BlockProblem, ids: jax.Array, y: jax.Array, seed: int = 0) -> tuple[SVI, Any]:
    """``(svi, state)``: npvi's SVI object for the converted block and its initial state."""
    model = npvi_model(problem, initial_variables(problem))
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(LR), npvi.ELBO())
    return svi, jax.jit(svi.init)(jax.random.PRNGKey(seed), ids, y)


def random_params(problem: BlockProblem, ids: jax.Array, y: jax.Array, seed: int = 0) -> tuple[SVI, dict[str, Any]]:
    """``(svi, params)``: npvi's SVI object and params of its names and shapes, drawn with NumPy (nothing compiles).

    The shapes come from abstract traces of ``Block.init`` and ``svi.init``; each scale is about
    0.1, so the loss depends visibly on the draws. For checking a loss, where any params do.
    """
    rng = np.random.default_rng(seed)

    def fill(shapes: Any) -> Any:
        return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)

    abstract = jnp.zeros((1, problem.length), jnp.int32)
    variables = fill(jax.eval_shape(Block(problem).init, jax.random.PRNGKey(0), abstract))
    model = npvi_model(problem, variables)
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(LR), npvi.ELBO())
    shapes = jax.eval_shape(lambda key: svi.get_params(svi.init(key, ids, y)), jax.random.PRNGKey(seed))
    params = fill(shapes)
    for name in params:
        if name.endswith(".untransformed_scale"):
            params[name] = params[name] - np.float32(2.25)  # softplus(-2.25) is about 0.1
    return svi, params


# --------------------------------------------------------------------------- plain JAX


def params_from_npvi(npvi_params: dict[str, jax.Array]) -> dict[str, Any]:
    """The plain-JAX params holding npvi's values: ``{"layers": {layer: {loc, u, bias}}, "points": {...}}``."""
    layers = {
        layer: {
            "loc": npvi_params[f"{NAME}/{layer}.kernel.loc"],
            "u": npvi_params[f"{NAME}/{layer}.kernel.untransformed_scale"],
            "bias": npvi_params[f"{NAME}/{layer}.bias"],
        }
        for layer in LAYERS
    }
    points = {
        "embedding": npvi_params[f"{NAME}/embed.embedding"],
        "position": npvi_params[f"{NAME}/position"],
        **{f"{ln}.{part}": npvi_params[f"{NAME}/{ln}.{part}"] for ln in ("ln1", "ln2") for part in ("scale", "bias")},
    }
    return {"layers": layers, "points": points}


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """Flax's LayerNorm over the last axis: ``E[x^2] - E[x]^2`` as the variance (its fast variance)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.maximum(0.0, jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean)
    return (x - mean) * (jax.lax.rsqrt(var + LN_EPSILON) * scale) + bias


def flipout(equation: str, key: jax.Array, eps: jax.Array, x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    """``x W_mu + ((x * s_in) dW) * s_out + b``, with ``dW = eps * sigma`` and one sign per input and output element."""
    mean = jnp.einsum(equation, x, p["loc"])
    s_in, s_out = rademacher_signs(key, x.shape, mean.shape, dtype=mean.dtype)
    return mean + jnp.einsum(equation, x * s_in, eps * sigma(p["u"])) * s_out + p["bias"]


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Scaled dot-product attention over ``(batch, length, heads, depth)``, as Flax computes it."""
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k))
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def plain_logits(params: dict[str, Any], layer_keys: dict[str, jax.Array], eps: dict[str, jax.Array], ids: jax.Array):
    """The block's forward pass under Flipout: each layer with its own key and weight noise."""
    layers, points = params["layers"], params["points"]

    def dense(name: str, x: jax.Array) -> jax.Array:
        return flipout(EQUATIONS[name], layer_keys[name], eps[name], x, layers[name])

    h = jnp.take(points["embedding"], ids, axis=0) + points["position"]
    x = layer_norm(h, points["ln1.scale"], points["ln1.bias"])
    q, k, v = (dense(f"attention.{part}", x) for part in ("query", "key", "value"))
    h = h + dense("attention.out", attention(q, k, v))
    x = layer_norm(h, points["ln2.scale"], points["ln2.bias"])
    h = h + dense("mlp_out", jax.nn.gelu(dense("mlp_in", x)))
    return dense("head", h.mean(axis=1))


def plain_loss(problem: BlockProblem) -> Callable[..., jax.Array]:
    """The negative ELBO of the converted block by hand; it splits keys in the order NumPyro's handlers do.

    npvi.ELBO splits the step key into (model, guide) keys. The guide takes one key per kernel
    draw, in the order the block calls its layers (:data:`LAYERS`). The model takes one key per
    kernel site (the replayed draw; ``random_flax_module`` creates the sites in the order of the
    params tree, whose keys are sorted), then one per layer call for Flipout, in call order, and
    one for the subsampling plate. With the same keys the plain step draws npvi's numbers, and the
    same params give the same loss (tests/test_bench.py).
    """

    def loss(params: dict[str, Any], key: jax.Array, ids: jax.Array, y: jax.Array) -> jax.Array:
        model_key, guide_key = jax.random.split(key)
        eps = {}
        for name in LAYERS:
            guide_key, draw_key = jax.random.split(guide_key)
            eps[name] = jax.random.normal(draw_key, params["layers"][name]["loc"].shape, DTYPE)
        for _ in sorted(LAYERS):  # the replayed kernel sites
            model_key, _ = jax.random.split(model_key)
        layer_keys = {}
        for name in LAYERS:
            model_key, layer_keys[name] = jax.random.split(model_key)
        logits = plain_logits(params, layer_keys, eps, ids)
        return -(log_likelihood(problem.n, logits, y) - plain_kl(params["layers"]))

    return loss


# --------------------------------------------------------------------------- the three steps


def npvi_step(problem: BlockProblem, ids: jax.Array, y: jax.Array) -> tuple[Variant, SVI, Any]:
    svi, state = npvi_svi(problem, ids, y)
    return svi_variant("npvi converted Flipout", svi, state, ids, y), svi, state


def plain_step(problem: BlockProblem, svi: SVI, state: Any, ids: jax.Array, y: jax.Array) -> Variant:
    """The plain-JAX step from npvi's initial params and PRNG key: it draws what npvi draws."""
    params = params_from_npvi(svi.get_params(state))
    return loss_variant("plain JAX Flipout", plain_loss(problem), params, ids, y, state.rng_key)


def deterministic_loss(problem: BlockProblem) -> Callable[..., jax.Array]:
    module = Block(problem)

    def loss(params: dict[str, Any], key: jax.Array, ids: jax.Array, y: jax.Array) -> jax.Array:
        del key
        return -log_likelihood(problem.n, module.apply(params, ids), y)

    return loss


def deterministic_step(problem: BlockProblem, ids: jax.Array, y: jax.Array) -> Variant:
    """The Flax block itself, trained by Adam on the same likelihood: the floor."""
    return loss_variant("deterministic block (Flax)", deterministic_loss(problem), initial_variables(problem), ids, y)


def step_times(problem: BlockProblem, args: argparse.Namespace) -> dict[str, Any]:
    """Compile, warm up and time the three steps in interleaved blocks; rows and paired ratios."""
    ids, y = problem.batch_data()
    npvi_v, svi, state = npvi_step(problem, ids, y)
    plain_v = plain_step(problem, svi, state, ids, y)
    floor = deterministic_step(problem, ids, y)
    variants = [npvi_v, plain_v, floor]
    for v in variants:
        v.compile_ahead()
        v.first_call()
    for v in variants:
        v.run(args.warmup)
    interleave([[npvi_v, plain_v], [floor]], args.blocks, args.steps)
    rows = {v.label: {**v.summary(), "/ deterministic paired": paired_ratio(v, floor)} for v in variants}
    return {
        "rows": rows,
        "order": [v.label for v in variants],
        "npvi / plain paired": paired_ratio(npvi_v, plain_v),
        "npvi / deterministic paired": paired_ratio(npvi_v, floor),
        "plain / deterministic paired": paired_ratio(plain_v, floor),
        "compile npvi / plain": (npvi_v.lower_s + npvi_v.compile_s) / (plain_v.lower_s + plain_v.compile_s),
    }


# --------------------------------------------------------------------------- (b) embedding memory


@dataclass(frozen=True)
class EmbeddingProblem:
    """A large-vocabulary embedding: ids of ``(batch, length)`` over ``vocab`` tokens, ``features`` wide."""

    vocab: int = 50_000
    features: int = 64
    length: int = 128
    batch: int = 32
    classes: int = 10
    n: int = 50_000

    def describe(self) -> str:
        return (
            f"embedding: vocab {self.vocab}, width {self.features}, ids ({self.batch}, {self.length}), "
            f"{self.classes} classes, N {self.n}, adam({LR}), float32"
        )

    @property
    def one_hot_elements(self) -> int:
        """The elements of a ``(batch, length, vocab)`` array."""
        return self.batch * self.length * self.vocab

    def batch_data(self, seed: int = 0) -> tuple[jax.Array, jax.Array]:
        return random_batch(self, seed)


def embedding_model(problem: EmbeddingProblem, one_hot: bool) -> Callable[..., None]:
    """``EmbeddingFlipout`` (a lookup) or ``DenseFlipout`` on one-hot rows, mean-pooled, then a Flipout head."""

    def model(ids: jax.Array, y: jax.Array | None = None) -> None:
        if one_hot:
            h = npvi.DenseFlipout(problem.features, use_bias=False, name="embed")(jax.nn.one_hot(ids, problem.vocab))
        else:
            h = npvi.EmbeddingFlipout(problem.vocab, problem.features, name="embed")(ids)
        logits = npvi.DenseFlipout(problem.classes, name="head")(h.mean(axis=1))
        with numpyro.plate("data", problem.n, subsample_size=ids.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


def _sub_jaxprs(value: Any) -> Iterator[Any]:
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _sub_jaxprs(item)


def array_shapes(jaxpr: Any) -> Iterator[tuple[int, ...]]:
    """The shape of every array a jaxpr makes: each equation's outputs, in every sub-jaxpr (jit, scan, cond, ...)."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", None)
            if shape is not None:
                yield tuple(shape)
        for param in eqn.params.values():
            for sub in _sub_jaxprs(param):
                yield from array_shapes(sub)


def step_memory(label: str, update: Callable, state: Any, ids: jax.Array, y: jax.Array, limit: int) -> dict[str, Any]:
    """XLA's memory analysis of the jitted step, and the largest array of its jaxpr (the step is not run)."""
    compiled = jax.jit(update).lower(state, ids, y).compile()
    shapes = list(array_shapes(jax.make_jaxpr(update)(state, ids, y).jaxpr))
    largest = max(shapes, key=math.prod)
    return {
        "label": label,
        "bytes": _bytes(compiled),
        "largest_array": list(largest),
        "largest_array_elements": math.prod(largest),
        "arrays_with_batch_seq_vocab_elements": sum(1 for shape in shapes if math.prod(shape) >= limit),
    }


def deterministic_embedding_update(problem: EmbeddingProblem) -> tuple[Callable, Any]:
    """The floor: a plain lookup ``E[ids]``, mean-pooled, a dense head, Adam; ``(update, state)``."""
    optimizer = optax.adam(LR)
    keys = jax.random.split(jax.random.PRNGKey(0))
    params = {
        "embedding": 0.1 * jax.random.normal(keys[0], (problem.vocab, problem.features), DTYPE),
        "head": 0.1 * jax.random.normal(keys[1], (problem.features, problem.classes), DTYPE),
    }

    def loss(p: dict[str, jax.Array], ids: jax.Array, y: jax.Array) -> jax.Array:
        logits = jnp.take(p["embedding"], ids, axis=0).mean(axis=1) @ p["head"]
        return -log_likelihood(problem.n, logits, y)

    def update(state: Any, ids: jax.Array, y: jax.Array) -> Any:
        p, opt_state = state
        grads = jax.grad(loss)(p, ids, y)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    return update, (params, optimizer.init(params))


def embedding_memory(problem: EmbeddingProblem) -> dict[str, Any]:
    """Memory of the SVI step of the lookup, of the one-hot layer, and of the deterministic lookup."""
    ids, y = problem.batch_data()
    rows = []
    for label, one_hot in (("npvi.EmbeddingFlipout", False), ("npvi.DenseFlipout on one_hot(ids)", True)):
        model = embedding_model(problem, one_hot)
        svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(LR), npvi.ELBO())
        state = jax.jit(svi.init)(jax.random.PRNGKey(0), ids, y)
        rows.append(step_memory(label, svi.update, state, ids, y, problem.one_hot_elements))
    update, state = deterministic_embedding_update(problem)
    rows.append(step_memory("deterministic lookup (plain JAX)", update, state, ids, y, problem.one_hot_elements))
    return {
        "problem": problem.describe(),
        "batch_seq_vocab_elements": problem.one_hot_elements,
        "batch_seq_vocab_bytes": 4 * problem.one_hot_elements,
        "rows": rows,
    }


# --------------------------------------------------------------------------- report


def print_step_table(step: dict[str, Any]) -> None:
    print("| variant | median ms/step | min-max | / deterministic (paired) | trace+lower s | XLA compile s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in step["order"]:
        r = step["rows"][label]
        print(
            f"| {label} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} "
            f"| {r['/ deterministic paired']:.2f} | {r['lower_s']:.2f} | {r['compile_s']:.2f} |"
        )


def print_memory_table(mem: dict[str, Any]) -> None:
    print(f"A (batch, seq, vocab) float32 array: {mem['batch_seq_vocab_bytes'] / 2**20:.0f} MiB")
    print("| SVI step | argument MiB | temp MiB | total MiB | largest array (elements) | arrays >= batch*seq*vocab |")
    print("|---|---:|---:|---:|---|---:|")
    for r in mem["rows"]:
        b = r["bytes"]
        print(
            f"| {r['label']} | {b['argument'] / 2**20:.1f} | {b['temp'] / 2**20:.1f} | {b['total'] / 2**20:.1f} "
            f"| {tuple(r['largest_array'])} ({r['largest_array_elements']:,}) "
            f"| {r['arrays_with_batch_seq_vocab_elements']} |"
        )


def targets(step: dict[str, Any], mem: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = [
        {"target": "converted Flipout / plain JAX Flipout", "value": step["npvi / plain paired"],
         "limit": TARGET_PLAIN, "verdict": verdict(step["npvi / plain paired"], TARGET_PLAIN)},
        {"target": "converted Flipout / deterministic block", "value": step["npvi / deterministic paired"],
         "limit": TARGET_DETERMINISTIC,
         "verdict": verdict(step["npvi / deterministic paired"], TARGET_DETERMINISTIC)},
    ]  # fmt: skip
    if mem is not None:
        count = mem["rows"][0]["arrays_with_batch_seq_vocab_elements"]
        out.append({"target": "EmbeddingFlipout step: arrays of batch*seq*vocab elements", "value": count,
                    "limit": 0, "verdict": "met" if count == 0 else "NOT met"})  # fmt: skip
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, small sizes, figures meaningless")
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks per variant (default 20)")
    parser.add_argument("--steps", type=int, default=10, help="steps per block (default 10)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up steps per variant (default 20)")
    parser.add_argument("--no-memory", action="store_true", help="leave the embedding memory part out")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where transformer.json goes")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.steps, args.warmup = 2, 2, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its markdown tables and write ``transformer.json``; return the results."""
    args = parse(argv)
    quick_sizes = {"vocab": 50, "length": 8, "features": 16, "heads": 2, "mlp": 32, "batch": 4}
    problem = BlockProblem(**quick_sizes) if args.quick else BlockProblem()
    emb_problem = EmbeddingProblem(vocab=5000, length=16, batch=8) if args.quick else EmbeddingProblem()
    info = machine()
    started = time.perf_counter()
    print(f"{info['cpu']}, {info['cpus']} CPUs, backend {info['backend']} ({info['device']}); python "
          f"{info['python']}, jax {info['jax']}, numpyro {info['numpyro']}, optax {info['optax']}, "
          f"npvi {info['npvi']}")  # fmt: skip
    print(f"load average at start: {load()}")
    result: dict[str, Any] = {"machine": info, "quick": args.quick, "load_start": load(), "problem": problem.describe()}
    print(f"\n## Step time: {problem.describe()}; {args.warmup} warm-up steps, {args.blocks} interleaved blocks x "
          f"{args.steps} steps")  # fmt: skip
    result["step"] = step_times(problem, args)
    print_step_table(result["step"])
    print(f"converted / plain JAX (paired): {result['step']['npvi / plain paired']:.3f}; plain JAX / deterministic: "
          f"{result['step']['plain / deterministic paired']:.3f}")  # fmt: skip
    result["memory"] = None
    if not args.no_memory:
        print(f"\n## Memory of one SVI step: {emb_problem.describe()}")
        result["memory"] = embedding_memory(emb_problem)
        print_memory_table(result["memory"])
    print("\n## Targets (issue 24; ratios are medians of per-block ratios of interleaved blocks)")
    if args.quick:
        print("(--quick: too few steps and blocks for these figures to mean anything)")
    result["targets"] = targets(result["step"], result["memory"])
    print("| figure | value | limit | verdict |\n|---|---:|---:|---|")
    for r in result["targets"]:
        print(f"| {r['target']} | {r['value']:.2f} | {r['limit']:.2f} | {r['verdict']} |")
    result["load_end"] = load()
    result["seconds"] = time.perf_counter() - started
    print(f"\nload average at end: {load()} (1, 5, 15 min); {result['seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"transformer{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
