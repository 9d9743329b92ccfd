"""Time one jitted SVI step of npvi against the same step written in plain JAX.

Model: MLP 784-400-400-10 with ReLU, batch 128, softmax likelihood scaled for
N = 60000 examples, Adam(1e-3) from optax, float32, default priors N(0, 1),
TFP's default mean-field Normal posterior, point-estimate biases, exact KL.

For each estimator (reparameterization, local reparameterization, Flipout) the
script times

* ``npvi``: ``jax.jit(SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-3), npvi.ELBO()).update)``;
* ``plain JAX``: the same math by hand (params dict, closed-form KL,
  ``jax.value_and_grad`` and ``optax.adam``, all in one ``jax.jit``), started
  from npvi's initial parameters;

plus a deterministic MLP of the same sizes (plain JAX + optax) as a floor.

Method: every step is warmed up (a jitted step on CPU stays slow for roughly its
first hundred calls), then timed in blocks of steps, ``block_until_ready`` at the
end of each block; the blocks of all variants are interleaved (block k of every
variant before block k+1, in a rotating order) so machine noise hits all of them
alike. The table gives the median over blocks of the per-step time.

Run with ``make bench`` (or ``.venv/bin/python bench/bench_step.py``); ``--quick``
is a smoke run. See docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI

import npvi

N = 60_000
BATCH = 128
SIZES = (784, 400, 400, 10)
LR = 1e-3
DTYPE = jnp.float32
EPS = float(jnp.finfo(DTYPE).eps)
TINY = float(jnp.finfo(DTYPE).tiny)
NAMES = tuple(f"l{i + 1}" for i in range(len(SIZES) - 1))

ESTIMATORS = {
    "reparameterization": npvi.DenseReparameterization,
    "local_reparameterization": npvi.DenseLocalReparameterization,
    "flipout": npvi.DenseFlipout,
}


# --------------------------------------------------------------------------- data


def synthetic_batch(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """One fixed random minibatch; the plate below scales it as a batch of N examples."""
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (BATCH, SIZES[0]), DTYPE)
    y = jax.random.randint(ky, (BATCH,), 0, SIZES[-1])
    return x, y


# --------------------------------------------------------------------------- npvi


def npvi_model(layer_cls: type) -> Callable[[jax.Array, jax.Array], None]:
    def model(x: jax.Array, y: jax.Array) -> None:
        h = x
        for i, (name, units) in enumerate(zip(NAMES, SIZES[1:], strict=True)):
            last = i == len(NAMES) - 1
            h = layer_cls(units, activation=None if last else jax.nn.relu, name=name)(h)
        with numpyro.plate("data", N, subsample_size=BATCH):
            numpyro.sample("y", dist.Categorical(logits=h), obs=y)

    return model


def make_npvi(estimator: str, x: jax.Array, y: jax.Array, seed: int = 0):
    """``(svi, state, step)``: the npvi SVI object, its initial state and the jitted update."""
    model = npvi_model(ESTIMATORS[estimator])
    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(LR), npvi.ELBO())
    state = svi.init(jax.random.PRNGKey(seed), x, y)
    return svi, state, jax.jit(svi.update)


# --------------------------------------------------------------------------- plain JAX


def sigma(untransformed_scale: jax.Array) -> jax.Array:
    return jax.nn.softplus(untransformed_scale) + EPS


def params_from_npvi(npvi_params: dict[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    """The plain-JAX params dict, holding npvi's initial values (so both start identical)."""
    return {
        name: {
            "loc": npvi_params[f"{name}.kernel.loc"],
            "u": npvi_params[f"{name}.kernel.untransformed_scale"],
            "bias": npvi_params[f"{name}.bias"],
        }
        for name in NAMES
    }


def plain_layer(estimator: str, key: jax.Array, x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    mu, s = p["loc"], sigma(p["u"])
    if estimator == "reparameterization":
        w = mu + s * jax.random.normal(key, mu.shape, mu.dtype)
        return x @ w + p["bias"]
    if estimator == "local_reparameterization":
        mean = x @ mu
        var = (x * x) @ (s * s)
        noise = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + jnp.sqrt(jnp.maximum(var, TINY)) * noise + p["bias"]
    k_w, k_in, k_out = jax.random.split(key, 3)
    dw = s * jax.random.normal(k_w, mu.shape, mu.dtype)
    s_in = jax.random.rademacher(k_in, x.shape, x.dtype)
    s_out = jax.random.rademacher(k_out, x.shape[:-1] + (mu.shape[-1],), x.dtype)
    return x @ mu + ((x * s_in) @ dw) * s_out + p["bias"]


def plain_kl(params: dict[str, dict[str, jax.Array]]) -> jax.Array:
    """Closed-form KL(N(mu, sigma^2) || N(0, 1)), summed over every kernel weight."""
    total = jnp.zeros((), DTYPE)
    for p in params.values():
        s = sigma(p["u"])
        total = total + jnp.sum(0.5 * (s * s + p["loc"] * p["loc"] - 1.0) - jnp.log(s))
    return total


def log_likelihood(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``(N / B) * sum log softmax(logits)[y]``: the minibatch estimate of the full-data term."""
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)
    return (N / BATCH) * jnp.sum(picked)


def plain_loss(estimator: str):
    def loss(params, key, x, y):
        h = x
        for i, name in enumerate(NAMES):
            # One split per layer, as NumPyro's seed handler does per site. The batched
            # jax.random.split(key, 3) looks cheaper, but XLA then schedules the RNG
            # loops differently and the step gets about 8% slower on CPU.
            key, layer_key = jax.random.split(key)
            h = plain_layer(estimator, layer_key, h, params[name])
            if i < len(NAMES) - 1:
                h = jax.nn.relu(h)
        return -(log_likelihood(h, y) - plain_kl(params))

    return loss


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation):
    """One jitted step: split the key, ``value_and_grad``, Adam update."""

    @jax.jit
    def step(params, opt_state, key, x, y):
        key, step_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, step_key, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    return step


# --------------------------------------------------------------------------- deterministic floor


def deterministic_params(seed: int = 0) -> dict[str, dict[str, jax.Array]]:
    keys = jax.random.split(jax.random.PRNGKey(seed), len(NAMES))
    return {
        name: {
            "w": 0.1 * jax.random.normal(k, (n_in, n_out), DTYPE),
            "bias": jnp.zeros((n_out,), DTYPE),
        }
        for k, name, n_in, n_out in zip(keys, NAMES, SIZES[:-1], SIZES[1:], strict=True)
    }


def deterministic_loss(params, key, x, y):
    del key
    h = x
    for i, name in enumerate(NAMES):
        h = h @ params[name]["w"] + params[name]["bias"]
        if i < len(NAMES) - 1:
            h = jax.nn.relu(h)
    return -log_likelihood(h, y)


# --------------------------------------------------------------------------- timing


class Variant:
    """A step function and its carried state; ``run(n)`` takes n steps and waits for them."""

    def __init__(self, label: str, step: Callable[[Any], Any], carry: Any) -> None:
        self.label = label
        self._step = step
        self.carry = carry
        self.compile_s = float("nan")
        self.block_ms: list[float] = []

    def first_call(self) -> None:
        start = time.perf_counter()
        self.carry = jax.block_until_ready(self._step(self.carry))
        self.compile_s = time.perf_counter() - start

    def run(self, n: int) -> float:
        carry = self.carry
        start = time.perf_counter()
        for _ in range(n):
            carry = self._step(carry)
        jax.block_until_ready(carry)
        elapsed = time.perf_counter() - start
        self.carry = carry
        return elapsed

    @property
    def median_ms(self) -> float:
        return statistics.median(self.block_ms)

    def loss(self) -> float:
        return float(self.carry[-1])


def npvi_variant(estimator: str, x, y) -> tuple[Variant, SVI, Any]:
    svi, state, step = make_npvi(estimator, x, y)

    def advance(carry):
        return step(carry[0], x, y)

    return Variant(f"npvi {estimator}", advance, (state, jnp.zeros((), DTYPE))), svi, state


def plain_variant(label: str, loss_fn: Callable, params, x, y) -> Variant:
    optimizer = optax.adam(LR)
    step = make_step(loss_fn, optimizer)

    def advance(carry):
        params, opt_state, key, _ = carry
        return step(params, opt_state, key, x, y)

    carry = (params, optimizer.init(params), jax.random.PRNGKey(1), jnp.zeros((), DTYPE))
    return Variant(label, advance, carry)


# --------------------------------------------------------------------------- sanity check


def sanity_check(estimator: str, svi: SVI, state, x, y, draws: int = 16) -> str:
    """Compare npvi's and plain JAX's loss at the same initial params.

    The KL part is deterministic and must agree to float32 rounding; the
    likelihood part is random, so it is averaged over ``draws`` keys.
    """
    params = svi.get_params(state)
    plain_params = params_from_npvi(params)
    loss_plain = jax.jit(plain_loss(estimator))
    keys = jax.random.split(jax.random.PRNGKey(123), draws)

    def npvi_loss(key, kl_weight):
        elbo = npvi.ELBO(kl_weight=kl_weight)
        return elbo.loss(key, params, svi.model, svi.guide, x, y)

    npvi_loss = jax.jit(npvi_loss)
    npvi_losses = [float(npvi_loss(k, 1.0)) for k in keys]
    npvi_nll = [float(npvi_loss(k, 0.0)) for k in keys]
    npvi_kl = npvi_losses[0] - npvi_nll[0]
    plain_losses = [float(loss_plain(plain_params, k, x, y)) for k in keys]
    kl_plain = float(plain_kl(plain_params))
    mean_npvi, mean_plain = statistics.fmean(npvi_losses), statistics.fmean(plain_losses)
    nll_npvi, nll_plain = mean_npvi - npvi_kl, mean_plain - kl_plain
    kl_rel = abs(npvi_kl - kl_plain) / abs(kl_plain)
    nll_rel = abs(nll_npvi - nll_plain) / abs(nll_plain)
    ok = kl_rel < 1e-4 and nll_rel < 0.05
    return (
        f"{estimator:<25} loss npvi {mean_npvi:12.1f}  plain {mean_plain:12.1f} | "
        f"KL npvi {npvi_kl:12.1f}  plain {kl_plain:12.1f} (rel {kl_rel:.1e}) | "
        f"-loglik npvi {nll_npvi:9.1f}  plain {nll_plain:9.1f} (rel {nll_rel:.1e})  "
        f"{'OK' if ok else 'MISMATCH'}"
    )


# --------------------------------------------------------------------------- TFP (optional)


def tfp_comparison(estimators: list[str], x, y, warmup: int, steps: int, blocks: int) -> None:
    """Time TFP's Keras layers on TensorFlow when ``tensorflow_probability`` is importable.

    Not run in the reference environment (TFP is not installed there).
    """
    try:
        import tensorflow as tf
        import tensorflow_probability as tfp
    except ImportError:
        print("\nTFP comparison skipped: tensorflow_probability is not importable.")
        return
    try:
        import tf_keras as keras  # TFP's layers need Keras 2 with TF >= 2.16
    except ImportError:
        keras = tf.keras
    classes = {
        "reparameterization": tfp.layers.DenseReparameterization,
        "local_reparameterization": tfp.layers.DenseLocalReparameterization,
        "flipout": tfp.layers.DenseFlipout,
    }
    xs, ys = tf.constant(jax.device_get(x)), tf.constant(jax.device_get(y))
    print("\nTFP (TensorFlow, tf.function(jit_compile=False)), same model and batch:")
    print("| variant | median ms/step |\n|---|---:|")
    for estimator in estimators:
        try:
            # TFP's defaults match npvi's: N(0, 1) prior, mean-field Normal posterior,
            # point-estimate bias, exact KL added to net.losses once per call.
            layers = [
                classes[estimator](units, activation="relu" if i < len(NAMES) - 1 else None)
                for i, units in enumerate(SIZES[1:])
            ]
            net = keras.Sequential(layers)
            net.build((None, SIZES[0]))
            optimizer = keras.optimizers.Adam(LR)

            @tf.function
            def train_step(net=net, optimizer=optimizer):
                with tf.GradientTape() as tape:
                    logits = net(xs)
                    nll = tf.reduce_sum(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ys, logits=logits)
                    )
                    loss = (N / BATCH) * nll + tf.add_n(net.losses)
                grads = tape.gradient(loss, net.trainable_variables)
                optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))
                return loss

            for _ in range(warmup):
                train_step()
            times = []
            for _ in range(blocks):
                start = time.perf_counter()
                for _ in range(steps):
                    loss = train_step()
                loss.numpy()
                times.append(1e3 * (time.perf_counter() - start) / steps)
            print(f"| TFP {estimator} | {statistics.median(times):.2f} |")
        except Exception as error:  # noqa: BLE001 - report and go on
            print(f"| TFP {estimator} | failed: {type(error).__name__}: {error} |")


# --------------------------------------------------------------------------- main


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"python {platform.python_version()}, jax {jax.__version__}, numpyro {numpyro.__version__}, "
        f"optax {optax.__version__}, npvi {npvi.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks per variant (default 10)")
    parser.add_argument("--steps-per-block", type=int, default=20, help="steps per block (default 20)")
    parser.add_argument("--warmup", type=int, default=150, help="warm-up steps per variant (default 150)")
    parser.add_argument(
        "--estimators", nargs="+", choices=list(ESTIMATORS), default=list(ESTIMATORS), help="what to time"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 blocks x 5 steps, 10 warm-up")
    parser.add_argument("--no-sanity", action="store_true", help="skip the loss sanity check")
    parser.add_argument("--no-tfp", action="store_true", help="skip the TFP comparison")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.steps_per_block, args.warmup = 3, 5, 10

    print(machine())
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, N {N}, adam({LR}), {jnp.dtype(DTYPE).name}; "
        f"{args.warmup} warm-up steps, {args.blocks} blocks x {args.steps_per_block} steps, interleaved\n"
    )
    x, y = synthetic_batch()

    variants: list[Variant] = []
    pairs: dict[str, tuple[Variant, Variant]] = {}
    sanity: list[str] = []
    for estimator in args.estimators:
        npvi_v, svi, state = npvi_variant(estimator, x, y)
        plain_v = plain_variant(
            f"plain JAX {estimator}", plain_loss(estimator), params_from_npvi(svi.get_params(state)), x, y
        )
        if not args.no_sanity:
            sanity.append(sanity_check(estimator, svi, state, x, y))
        pairs[estimator] = (npvi_v, plain_v)
        variants += [npvi_v, plain_v]
    floor = plain_variant("deterministic MLP (plain JAX)", deterministic_loss, deterministic_params(), x, y)
    variants.append(floor)

    if sanity:
        print("Sanity check at npvi's initial params (mean over 16 noise draws):")
        print("\n".join(sanity) + "\n")

    for v in variants:
        v.first_call()
    for v in variants:
        v.run(args.warmup)
    # Block k of every variant runs before block k + 1. The order rotates from block to
    # block, and the npvi and plain-JAX steps of one estimator run back to back (which
    # goes first alternates), so a noisy moment lands on both sides of a pair.
    groups = [list(pair) for pair in pairs.values()] + [[floor]]
    for block in range(args.blocks):
        shift = block % len(groups)
        for group in groups[shift:] + groups[:shift]:
            for v in group if block % 2 == 0 else group[::-1]:
                v.block_ms.append(1e3 * v.run(args.steps_per_block) / args.steps_per_block)

    print("| variant | median ms/step | min-max ms/step | npvi / plain JAX | first call (compile) s |")
    print("|---|---:|---:|---:|---:|")
    for npvi_v, plain_v in pairs.values():
        ratio = npvi_v.median_ms / plain_v.median_ms
        for v, r in ((npvi_v, f"**{ratio:.2f}**"), (plain_v, "1.00")):
            spread = f"{min(v.block_ms):.2f}-{max(v.block_ms):.2f}"
            print(f"| {v.label} | {v.median_ms:.2f} | {spread} | {r} | {v.compile_s:.2f} |")
    spread = f"{min(floor.block_ms):.2f}-{max(floor.block_ms):.2f}"
    print(f"| {floor.label} | {floor.median_ms:.2f} | {spread} | - | {floor.compile_s:.2f} |")

    print(
        "\nTarget: npvi step <= 1.10 x plain-JAX step. Ratio of the medians (as in the table), "
        "of the fastest blocks,\nand the median of the per-block ratios of the back-to-back pairs "
        "(the most robust to machine noise):"
    )
    if args.quick:
        print("  (--quick is a smoke run: too few warm-up steps and blocks for these ratios to mean much)")
    for estimator, (npvi_v, plain_v) in pairs.items():
        ratio = npvi_v.median_ms / plain_v.median_ms
        best = min(npvi_v.block_ms) / min(plain_v.block_ms)
        paired = statistics.median(a / b for a, b in zip(npvi_v.block_ms, plain_v.block_ms, strict=True))
        verdict = "met" if max(ratio, paired) <= 1.10 else "NOT met" if min(ratio, paired) > 1.10 else "unclear"
        print(
            f"  {estimator:<25} median {ratio:.2f}x  fastest {best:.2f}x  paired {paired:.2f}x  -> {verdict}"
        )
    for v in variants:
        if not jnp.isfinite(v.loss()):
            print(f"warning: {v.label} has a non-finite loss after the run")

    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min)")

    if not args.no_tfp:
        tfp_comparison(args.estimators, x, y, args.warmup, args.steps_per_block, args.blocks)


if __name__ == "__main__":
    main()
