r"""npvi.ivon against ``ivon-opt``, the PyTorch reference implementation of IVON (Shen et al., ICML 2024).

Runs only in a venv where ivon-opt (``pip install ivon-opt``, loaded here as ``ivon_opt``: bench/ivon.py shadows
``import ivon``) and ``torch`` import; elsewhere it says so and exits 0. Never imported by npvi or its tests.

* ``python bench/ivon_reference.py --toy``: Bayesian linear regression with a N(0, 1) prior and known noise,
  whose posterior is closed-form. (a) *Lockstep*: ``ivon.IVON`` and ``npvi.ivon`` take the same steps from the
  same start with the same noise (the draws ``ivon-opt`` makes are handed to npvi), and the script reports how far
  apart their means and Hessians get. (b) *Convergence*: npvi through ``MeanFieldGuide`` and ``npvi.Trainer``, and
  ``ivon-opt`` under both mappings of the prior below, on minibatches, several seeds, against the exact posterior.
* ``python bench/uci.py --data DIR --ivon-reference ...``: the UCI column. :func:`train_predict` trains the
  benchmark's network (one hidden ReLU layer, the same width, epochs, batch size and standardisation, the recipe's
  IVON hyperparameters) with ``ivon.IVON`` and returns the test draws that ``bench/uci.py`` scores exactly as it
  scores npvi's.

**The mapping** (``ivon/_ivon.py`` of ivon-opt 0.1.3; ``npvi/ivon.py``). ``lr``, ``ess``, ``hess_init``,
``beta1``, ``beta2``, ``weight_decay``, ``clip_radius`` and ``rescale_lr`` are the same numbers under the same
names, and ``npvi.ELBO(num_particles=k)`` is ``mc_samples=k``. Both use the Price estimate
:math:`\nabla\ell\,(w-\mu)/\sigma^2` of the average loss's Hessian, the same :math:`h` update with its
correction term, the debiased momentum, the rescaled step :math:`\alpha (h_0 + \delta)` and the clip. They differ
in where the prior is. npvi's loss is the ELBO, so a layer's prior (its exact KL, N(0, 1) by default) is in
:math:`\hat g` and :math:`\hat h` (its Hessian :math:`1/(\lambda s^2)` exactly), and :math:`\delta` adds a prior of
precision :math:`\lambda\delta` on top. ivon-opt's loss is the data term alone, and ``weight_decay`` is its whole
prior. Two ways to give ivon-opt npvi's model:

1. **prior in the loss** (used for UCI): the closure's loss is the average NLL plus :math:`-\log p(w)/\lambda`,
   with the same ``weight_decay`` and ``hess_init``. Then :math:`h` holds the prior's curvature in both, through
   ivon-opt's Price estimate (unbiased, noisy) instead of npvi's exact value;
2. **prior as weight decay** (a Gaussian prior N(0, s^2) only): ``weight_decay = delta + 1/(ess s^2)`` and
   ``hess_init = h0 - 1/(ess s^2)``. Then ivon-opt's :math:`h` is npvi's minus :math:`1/(\lambda s^2)` at every
   step, the posterior precisions and the step size are identical, and only the prior's gradient takes another path
   (through npvi's momentum, straight into ivon-opt's step).

The rest of npvi's recipe, copied here: biases are point estimates (npvi's default ``PointMass`` bias, which
``npvi.ivon`` steps by SGD with momentum :math:`\beta_1`, step :math:`\alpha`, weight decay :math:`\delta`: the
same rule here, by hand; ``biases="ivon"`` puts them in ``ivon.IVON`` instead), the observation noise is
:math:`\sigma = e^\zeta` with :math:`\zeta` a Gaussian in ``ivon.IVON`` and the HalfNormal(1) prior's
:math:`-\log p(\zeta)` in the loss (npvi's guide: a Normal over :math:`\log\sigma`), the kernels start from
N(0, 0.1²) like ``MeanFieldNormal``'s loc and :math:`\zeta` at the log of HalfNormal(1)'s median. Unavoidable
differences: npvi's recipe uses Flipout (``--set estimator=reparam`` is one weight draw per step, ivon-opt's way),
npvi's first gradient is taken at the guide's initial scale (0.0486, and 0.1 for :math:`\zeta`) where ivon-opt's is
at :math:`1/\sqrt{\lambda(h_0+\delta)}`, and the random numbers (initial weights, minibatch order, draws) are
torch's, from a seed taken from the split's JAX key.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

#: log of HalfNormal(1)'s median, sqrt(2) erfinv(1/2): where npvi's guide starts log sigma (init_to_median).
LOG_NOISE_INIT = math.log(0.6744897501960817)


def ivon_opt():
    """ivon-opt's ``ivon`` package, loaded as ``ivon_opt``: with bench/ on ``sys.path`` (a bench script's
    directory is), ``import ivon`` finds bench/ivon.py instead."""
    from importlib import metadata, util

    if "ivon_opt" not in sys.modules:
        init = Path(metadata.distribution("ivon-opt").locate_file("ivon/__init__.py"))
        spec = util.spec_from_file_location("ivon_opt", init, submodule_search_locations=[str(init.parent)])
        module = util.module_from_spec(spec)
        sys.modules["ivon_opt"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["ivon_opt"]
            raise
    return sys.modules["ivon_opt"]


def missing() -> str | None:
    """Why the reference cannot run here (ivon-opt or torch does not import), or None."""
    try:
        import torch  # noqa: F401

        ivon_opt()
    except Exception as error:  # PackageNotFoundError, ImportError, a missing file
        why = f"{type(error).__name__}: {error}"
        return f"the ivon-opt reference needs ivon-opt (pip install ivon-opt) and torch ({why})"
    return None


def versions() -> dict[str, str]:
    """ivon-opt's and torch's versions."""
    from importlib.metadata import version

    import torch

    return {"ivon-opt": version("ivon-opt"), "torch": torch.__version__}


def _ivon_kwargs(learning_rate, ess, hess_init, beta1, beta2, weight_decay, clip_radius=math.inf, rescale_lr=True):
    return dict(lr=learning_rate, ess=ess, hess_init=hess_init, beta1=beta1, beta2=beta2,
                weight_decay=weight_decay, clip_radius=clip_radius, rescale_lr=rescale_lr)  # fmt: skip


def train_predict(
    seed: int,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    *,
    n_hidden: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    hess_init: float = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.99999,
    weight_decay: float = 1e-4,
    num_samples: int = 500,
    biases: str = "point",
) -> tuple[np.ndarray, np.ndarray]:
    """Train bench/uci.py's network with ``ivon.IVON`` (ess = the training rows) on standardised ``x, y``.

    Returns ``num_samples`` posterior draws of the test means ``(S, n_test)`` and noise scales ``(S,)``, what
    ``npvi.demo.regression_metrics`` scores. Every epoch is a permutation cut into ``len(x) // batch_size``
    minibatches (the rest sit out), as in ``npvi.fit``.
    """
    import torch

    ivon = ivon_opt()

    if biases not in ("point", "ivon"):
        raise ValueError(f"biases must be 'point' or 'ivon', got {biases!r}")
    torch.set_num_threads(1)
    torch.manual_seed(seed)  # ivon-opt draws its noise from torch's global generator
    order = torch.Generator().manual_seed(seed + 1)
    x, y, x_test = (torch.as_tensor(np.asarray(a, np.float32)) for a in (x, y, x_test))
    n, d = x.shape
    kernels = [(0.1 * torch.randn(d, n_hidden)).requires_grad_(), (0.1 * torch.randn(n_hidden, 1)).requires_grad_()]
    bias = [(0.1 * torch.randn(n_hidden)).requires_grad_(), (0.1 * torch.randn(1)).requires_grad_()]
    zeta = torch.full((1,), LOG_NOISE_INIT).requires_grad_()
    normal = kernels + [zeta] + (bias if biases == "ivon" else [])
    point = bias if biases == "point" else []
    optimizer = ivon.IVON(normal, **_ivon_kwargs(learning_rate, n, hess_init, beta1, beta2, weight_decay))
    momentum = [torch.zeros_like(b) for b in point]

    def forward(inputs):
        return (torch.relu(inputs @ kernels[0] + bias[0]) @ kernels[1] + bias[1])[:, 0]

    def loss(xb, yb):
        """The average NLL plus -log p(kernels, zeta) / ess: npvi's ELBO divided by ess, entropy left to IVON."""
        nll = (0.5 * ((yb - forward(xb)) / zeta.exp()) ** 2 + zeta).mean()
        prior = 0.5 * sum((k**2).sum() for k in kernels) + 0.5 * (2 * zeta).exp().sum() - zeta.sum()
        return nll + prior / n

    steps = n // batch_size
    t = 0
    for _ in range(epochs):
        for rows in torch.randperm(n, generator=order)[: steps * batch_size].view(steps, batch_size):
            for b in point:
                b.grad = None
            with optimizer.sampled_params(train=True):
                optimizer.zero_grad()
                loss(x[rows], y[rows]).backward()
            optimizer.step()
            t += 1
            with torch.no_grad():  # npvi.ivon's step for a point estimate: h fixed at hess_init
                for b, m in zip(point, momentum, strict=True):
                    m.mul_(beta1).add_(b.grad, alpha=1 - beta1)
                    b.sub_(learning_rate * (m / (1 - beta1**t) + weight_decay * b))
    mu, sigma = [], []
    with torch.no_grad():
        for _ in range(num_samples):
            with optimizer.sampled_params():
                mu.append(forward(x_test).numpy().copy())
                sigma.append(float(zeta.exp()))
    return np.stack(mu), np.asarray(sigma)


# --- the toy problem: Bayesian linear regression, N(0, 1) prior, known noise -------------------------------------

TOY_ROWS, TOY_NOISE = 200, 0.5
TOY_WEIGHTS = (1.0, -0.5, 0.25)
#: npvi.ivon's defaults but beta2 (0.999: h averages ~1000 steps, so 6000 steps converge), as in tests/test_ivon.py.
TOY = dict(learning_rate=0.2, hess_init=1.0, beta1=0.9, beta2=0.999, weight_decay=1e-4)


def toy_data():
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.PRNGKey(0), (TOY_ROWS, len(TOY_WEIGHTS)))
    y = x @ jnp.array(TOY_WEIGHTS) + TOY_NOISE * jax.random.normal(jax.random.PRNGKey(1), (TOY_ROWS,))
    return np.array(x), np.array(y)


def exact_posterior(x: np.ndarray, y: np.ndarray, weight_decay: float) -> dict[str, np.ndarray]:
    """The posterior of N(0, 1) weights with the extra N(0, 1/(n delta)) of IVON's weight decay, in float64.

    ``mean``, the exact marginal variances ``var`` and the mean-field optimum's ``mf_var`` = 1 / diag(precision),
    which is what a mean-field Gaussian (IVON's, npvi's) converges to.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    precision = x.T @ x / TOY_NOISE**2 + (1.0 + len(x) * weight_decay) * np.eye(x.shape[1])
    return {"mean": np.linalg.solve(precision, x.T @ y / TOY_NOISE**2),
            "var": np.diag(np.linalg.inv(precision)), "mf_var": 1.0 / np.diag(precision)}  # fmt: skip


def toy_lockstep(steps: int = 500) -> dict[str, float]:
    """``ivon.IVON`` and ``npvi.ivon`` on one full-batch loss, ivon-opt's noise handed to npvi, step by step.

    Flat prior in both (``weight_decay`` the only prior), float32, default hyperparameters but ``TOY``'s: the
    largest gaps over the steps, of the means in units of the posterior sd and of h relatively.
    """
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    import npvi
    from npvi.posteriors import inverse_softplus_scale, softplus_scale

    ivon = ivon_opt()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = toy_data()
    n, lr, h0, b1, b2, wd = TOY_ROWS, *(TOY[k] for k in ("learning_rate", "hess_init", "beta1", "beta2",
                                                         "weight_decay"))  # fmt: skip
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    w = torch.zeros(x.shape[1], requires_grad=True)
    reference = ivon.IVON([w], **_ivon_kwargs(lr, n, h0, b1, b2, wd))
    transform = npvi.ivon(lr, ess=n, hess_init=h0, beta1=b1, beta2=b2, weight_decay=wd)
    sigma0 = 1 / math.sqrt(n * (h0 + wd))
    params = {"w.loc": jnp.zeros(x.shape[1]),
              "w.untransformed_scale": jnp.full(x.shape[1], inverse_softplus_scale(sigma0, jnp.float32))}  # fmt: skip
    state = transform.init(params)

    @jax.jit
    def grad(params, z):  # npvi's loss: the full-data NLL at one draw, minus the entropy (a flat prior)
        def elbo(params):
            sigma = softplus_scale(params["w.untransformed_scale"])
            weights = params["w.loc"] + sigma * z
            nll = 0.5 * jnp.sum((y - x @ weights) ** 2) / TOY_NOISE**2
            return nll - jnp.sum(jnp.log(sigma))

        return jax.grad(elbo)(params)

    exact = exact_posterior(x, y, wd)
    sd = np.sqrt(exact["mf_var"])
    gap_mean = gap_h = gap_sigma = 0.0
    for _ in range(steps):
        before = w.detach().clone()
        sigma_ref = 1 / torch.sqrt(n * (reference.param_groups[0]["hess"] + wd))
        with reference.sampled_params(train=True):
            reference.zero_grad()
            z = ((w.detach() - before) / sigma_ref).numpy().copy()  # the draw ivon-opt made
            (0.5 * ((yt - xt @ w) ** 2).mean() / TOY_NOISE**2).backward()
        reference.step()
        updates, state = transform.update(grad(params, jnp.asarray(z)), state, params)
        params = optax.apply_updates(params, updates)
        h_ref = reference.param_groups[0]["hess"].numpy()
        gap_mean = max(gap_mean, float(np.max(np.abs(np.asarray(params["w.loc"]) - w.detach().numpy()) / sd)))
        gap_h = max(gap_h, float(np.max(np.abs(np.asarray(state.hessian["w.loc"]) / h_ref - 1))))
        sigma_npvi = np.asarray(softplus_scale(params["w.untransformed_scale"]))
        gap_sigma = max(gap_sigma, float(np.max(np.abs(sigma_npvi * np.sqrt(n * (h_ref + wd)) - 1))))
    return {"steps": steps, "max_mean_gap_in_sd": gap_mean, "max_relative_h_gap": gap_h,
            "max_relative_sigma_gap": gap_sigma, "final_mean_gap_in_sd": float(np.max(
                np.abs(np.asarray(params["w.loc"]) - w.detach().numpy()) / sd))}  # fmt: skip


def toy_npvi(seed: int, epochs: int, batch_size: int, tail: int) -> tuple[np.ndarray, np.ndarray]:
    """npvi.ivon through MeanFieldGuide and npvi.Trainer (tests/test_ivon.py's set-up): the kernel's means and
    variances after each of the last ``tail`` epochs, ``(tail, 3)`` each."""
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI

    import npvi
    from npvi.posteriors import softplus_scale

    def model(x, y=None, num_data=None):
        mu = npvi.DenseReparameterization(1, use_bias=False, name="l1")(x)[..., 0]
        with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Normal(mu, TOY_NOISE), obs=y)

    x, y = toy_data()
    optimizer = npvi.ivon(TOY["learning_rate"], ess=len(x), **{k: v for k, v in TOY.items() if k != "learning_rate"})
    trainer = npvi.Trainer(SVI(model, npvi.MeanFieldGuide(model), optimizer, npvi.ELBO()), batch_size=batch_size)
    key = jax.random.PRNGKey(seed)
    result = trainer.fit(key, x, y, num_epochs=epochs - tail, progress_bar=False)
    means, variances = [], []
    for epoch in range(epochs - tail, epochs):  # one epoch a call, as if never stopped
        result = trainer.fit(key, x, y, num_epochs=epoch + 1, init_state=result.state, initial_epoch=epoch,
                             progress_bar=False)  # fmt: skip
        means.append(np.asarray(result.params["l1.kernel.loc"])[:, 0])
        variances.append(np.asarray(softplus_scale(result.params["l1.kernel.untransformed_scale"]))[:, 0] ** 2)
    return np.stack(means), np.stack(variances)


def toy_reference(seed: int, epochs: int, batch_size: int, tail: int, prior: str) -> tuple[np.ndarray, np.ndarray]:
    """ivon-opt on the same loss, the prior ``"loss"`` (mapping 1) or ``"weight_decay"`` (mapping 2): as
    :func:`toy_npvi`."""
    import torch

    ivon = ivon_opt()

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed + 1)
    x, y = (torch.as_tensor(a) for a in toy_data())
    n = len(x)
    settings = dict(TOY)
    if prior == "weight_decay":  # N(0, 1): 1 / (ess s^2) moves from the Hessian to the weight decay
        settings["weight_decay"] += 1.0 / n
        settings["hess_init"] -= 1.0 / n
    elif prior != "loss":
        raise ValueError(f"prior must be 'loss' or 'weight_decay', got {prior!r}")
    w = (0.1 * torch.randn(x.shape[1])).requires_grad_()
    optimizer = ivon.IVON([w], **_ivon_kwargs(ess=n, **settings))
    steps, group = n // batch_size, optimizer.param_groups[0]
    means, variances = [], []
    for epoch in range(epochs):
        for rows in torch.randperm(n, generator=order)[: steps * batch_size].view(steps, batch_size):
            with optimizer.sampled_params(train=True):
                optimizer.zero_grad()
                loss = 0.5 * ((y[rows] - x[rows] @ w) ** 2).mean() / TOY_NOISE**2
                if prior == "loss":
                    loss = loss + 0.5 * (w**2).sum() / n
                loss.backward()
            optimizer.step()
        if epoch >= epochs - tail:
            means.append(w.detach().numpy().copy())
            variances.append((1.0 / (n * (group["hess"] + group["weight_decay"]))).numpy())
    return np.stack(means), np.stack(variances)


def _vector(values: np.ndarray, scale: float = 1.0, digits: int = 4) -> str:
    return "[" + ", ".join(f"{scale * v:.{digits}f}" for v in values) + "]"


def toy(seeds: int = 5, epochs: int = 600, batch_size: int = 20) -> dict:
    """Both checks of the toy problem; prints them and returns the numbers.

    Each run's estimate of the posterior is the average of its means and variances over the last third of its
    epochs (its iterates still move with the minibatch noise); the seeds' estimates are then averaged.
    """
    lockstep = toy_lockstep()
    print(f"lockstep, {lockstep['steps']} full-batch steps with ivon-opt's draws: means apart by at most "
          f"{lockstep['max_mean_gap_in_sd']:.1e} posterior sd ({lockstep['final_mean_gap_in_sd']:.1e} at the end), "
          f"h by {lockstep['max_relative_h_gap']:.1e}, sigma by {lockstep['max_relative_sigma_gap']:.1e} "
          "(relative)")  # fmt: skip
    x, y = toy_data()
    exact = exact_posterior(x, y, TOY["weight_decay"])
    tail = epochs // 3
    runs = {"npvi.ivon": lambda s: toy_npvi(s, epochs, batch_size, tail),
            "ivon-opt, prior in the loss": lambda s: toy_reference(s, epochs, batch_size, tail, "loss"),
            "ivon-opt, prior as weight decay": lambda s: toy_reference(s, epochs, batch_size, tail,
                                                                      "weight_decay")}  # fmt: skip
    results = {"lockstep": lockstep, "exact": {k: v.tolist() for k, v in exact.items()}, "runs": {},
               "settings": {**TOY, "ess": TOY_ROWS, "epochs": epochs, "batch_size": batch_size, "seeds": seeds,
                            "averaged_epochs": tail}}  # fmt: skip
    sd = np.sqrt(exact["mf_var"])
    print(f"\nconvergence: {epochs} epochs of batch {batch_size} ({epochs * (TOY_ROWS // batch_size)} steps), "
          f"{seeds} seeds, each averaged over its last {tail} epochs")  # fmt: skip
    print(f"{'':<34} {'mean':<28} {'variance x 1e4':<28}")
    print(f"{'exact posterior':<34} {_vector(exact['mean']):<28} {_vector(exact['var'], 1e4, 3):<28}")
    print(f"{'exact mean-field optimum':<34} {_vector(exact['mean']):<28} {_vector(exact['mf_var'], 1e4, 3):<28}")
    estimates = {}
    for name, run in runs.items():
        start = time.perf_counter()
        tails = [run(seed) for seed in range(seeds)]
        seconds = (time.perf_counter() - start) / seeds
        means = np.stack([m.mean(0) for m, _ in tails])  # (seeds, 3)
        variances = np.stack([v.mean(0) for _, v in tails])
        estimates[name] = means.mean(0), variances.mean(0)
        se_mean, se_var = means.std(0, ddof=1) / math.sqrt(seeds), variances.std(0, ddof=1) / math.sqrt(seeds)
        results["runs"][name] = {
            "mean": means.mean(0).tolist(), "mean_se": se_mean.tolist(),
            "variance": variances.mean(0).tolist(), "variance_se": se_var.tolist(),
            "mean_error_in_sd": ((means.mean(0) - exact["mean"]) / sd).tolist(),
            "variance_over_mean_field_optimum": (variances.mean(0) / exact["mf_var"]).tolist(),
            "per_seed_max_abs_mean_error_in_sd": float(np.abs((means - exact["mean"]) / sd).max()),
            "seconds_per_seed": seconds,
        }  # fmt: skip
        row = results["runs"][name]
        print(f"{name:<34} {_vector(means.mean(0)):<28} {_vector(variances.mean(0), 1e4, 3):<28}")
        print(f"{'  standard error over seeds':<34} {_vector(se_mean):<28} {_vector(se_var, 1e4, 3):<28}")
        print(f"{'  error of the mean / sd':<34} {_vector(row['mean_error_in_sd'], 1, 3):<28}")
        ratio = _vector(row["variance_over_mean_field_optimum"], 1, 3)
        print(f"{'  variance / mean-field optimum':<34} {'':<28} {ratio}   ({seconds:.1f} s a seed)")
    npvi_mean, npvi_var = estimates["npvi.ivon"]
    for name in list(runs)[1:]:
        mean, var = estimates[name]
        gaps = {"max_mean_gap_in_sd": float(np.max(np.abs(mean - npvi_mean) / sd)),
                "max_relative_variance_gap": float(np.max(np.abs(var / npvi_var - 1)))}  # fmt: skip
        results["runs"][name]["against_npvi"] = gaps
        print(f"{name} against npvi.ivon: means {gaps['max_mean_gap_in_sd']:.3f} sd apart at most, variances "
              f"{gaps['max_relative_variance_gap']:.1%}")  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="the linear-regression check (else: how to run UCI)")
    parser.add_argument("--seeds", type=int, default=5, help="--toy: seeds of the convergence runs")
    parser.add_argument("--epochs", type=int, default=600, help="--toy: epochs of the convergence runs")
    parser.add_argument("--out", default="bench/results/ivon_reference_toy.json", help="--toy: JSON of the numbers")
    args = parser.parse_args(argv)
    reason = missing()
    if reason is not None:
        print(f"bench/ivon_reference.py: skipped, {reason}")
        return 0
    if not args.toy:
        print("the UCI comparison runs inside bench/uci.py, on its splits: "
              "python bench/uci.py --data ../shared/uci/yacht --splits 3 --no-baselines --ivon-reference "
              "--set optimizer=ivon --set learning_rate=0.01 --set beta2=0.9995; --toy runs the toy check")  # fmt: skip
        return 0
    results = {**toy(args.seeds, args.epochs), "versions": versions()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"versions: {results['versions']}; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
