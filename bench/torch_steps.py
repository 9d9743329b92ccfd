"""The benchmark's training step in plain PyTorch: a Flipout (or reparameterization, or LRT) MLP by hand.

Optional: needs ``torch`` (never a dependency of npvi; install it where the benchmark runs,
a CPU wheel or a CUDA one). ``available()`` says whether it imports and, if not, why.
Runs on ``cuda`` when there is one, else on the CPU.

The model and the math are those of ``steps.plain_loss`` / ``steps.plain_layer``, written
in the same style (a list of per-layer parameter dicts, a layer function, a loss function):

* weights: mean-field Normal posterior ``N(mu, sigma^2)`` with ``sigma = softplus(u) + eps``
  (``eps`` = float32 machine epsilon); ``mu ~ N(0, 0.1^2)``, ``u ~ N(-3, 0.1^2)`` and the
  point-estimate bias ``b ~ N(0, 0.1^2)`` at initialisation (npvi's and TFP's defaults);
* per layer, with ``E ~ N(0, 1)`` of the kernel's shape, drawn afresh each step and shared
  by the whole batch:

  - reparameterization: ``h = x @ (mu + sigma * E) + b``;
  - local reparameterization: ``h = x @ mu + sqrt((x * x) @ sigma^2) * z + b``, ``z ~ N(0, 1)``
    of the output's shape, the square root guarded at 0 (``where``) as in steps.py;
  - Flipout: ``h = x @ mu + ((x * s_in) @ (sigma * E)) * s_out + b``, with independent
    Rademacher signs ``s_in`` (batch x inputs) and ``s_out`` (batch x outputs), drawn in one
    call as ``rademacher_signs`` does;

* ReLU between layers, none after the last;
* ``KL = sum over kernel weights of 0.5 * (sigma^2 + mu^2 - 1) - log(sigma)`` (closed form
  against the N(0, 1) prior, biases not included), as ``steps.plain_kl``;
* ``loss = -((N / B) * sum_i log_softmax(logits_i)[y_i] - KL)``, as ``steps.log_likelihood``;
* ``torch.optim.Adam(lr)`` (its defaults: betas (0.9, 0.999), eps 1e-8, as ``optax.adam``), float32.

``deterministic=True`` gives the floor: plain dense layers ``h = x @ W + b`` with
``W ~ N(0, 0.1^2)`` and ``b = 0`` (``steps.deterministic_params``) and the likelihood alone.

Random numbers come from one ``torch.Generator`` on the step's device (no global state).
The noise of a step is drawn eagerly, then passed to the loss, so ``compile=True`` can
``torch.compile`` the loss (forward and backward) without a generator inside the graph.
The numbers drawn are not npvi's (other generator): the comparison is of time, and of the
loss's level and descent, not of equal losses step by step.

Note on GPUs: PyTorch computes float32 matmuls in full float32 by default
(``torch.backends.cuda.matmul.allow_tf32 = False``), while XLA on recent NVIDIA GPUs may
use TF32 for JAX's default precision; this module leaves PyTorch's global setting alone.
"""

from __future__ import annotations

from typing import Any

from timing import Variant

SHORT = {"reparameterization": "reparam", "local_reparameterization": "LRT", "flipout": "Flipout"}


def available() -> tuple[bool, str]:
    """``(True, "torch X.Y, device cuda/cpu")`` or ``(False, reason)``."""
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - ImportError, or a broken torch install
        return False, f"{type(error).__name__}: {error}"
    return True, f"torch {torch.__version__}, device {'cuda' if torch.cuda.is_available() else 'cpu'}"


class _Loss:
    """The carried loss: a 0-d tensor left on its device; ``numpy()`` copies it to the host.

    ``Variant.loss`` calls ``.numpy()``; a CUDA tensor's own ``numpy()`` would raise, and
    copying every step would put a host-device transfer into the timed step.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def numpy(self):
        return self.tensor.detach().cpu().numpy()

    def __float__(self) -> float:
        return float(self.numpy())


def _device(device: str | None) -> str:
    import torch

    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync_for(device: Any):
    import torch

    def sync(carry):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type != "cpu" and hasattr(torch, device.type):  # mps, xpu, ...
            getattr(torch, device.type).synchronize()
        return carry

    return sync


def _init_params(problem, gen, device, deterministic: bool) -> list[dict[str, Any]]:
    """Leaf tensors, one dict per layer, initialised as npvi (or ``steps.deterministic_params``)."""
    import torch

    def normal(mean: float, std: float, *shape: int):
        return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * std + mean).requires_grad_()

    params = []
    for n_in, n_out in zip(problem.sizes[:-1], problem.sizes[1:], strict=True):
        if deterministic:
            bias = torch.zeros(n_out, device=device, dtype=torch.float32, requires_grad=True)
            params.append({"w": normal(0.0, 0.1, n_in, n_out), "bias": bias})
        else:
            params.append({"loc": normal(0.0, 0.1, n_in, n_out), "u": normal(-3.0, 0.1, n_in, n_out)})
            params[-1]["bias"] = normal(0.0, 0.1, n_out)
    return params


def sigma(u: Any) -> Any:
    """``softplus(u) + eps(float32)``, as ``steps.sigma``."""
    import torch
    import torch.nn.functional as F

    return F.softplus(u) + torch.finfo(u.dtype).eps


def rademacher(gen, batch: int, n_in: int, n_out: int, device) -> tuple[Any, Any]:
    """Fair random signs ``(s_in, s_out)`` of shapes (batch, n_in) and (batch, n_out), from one draw."""
    import torch

    signs = torch.randint(0, 2, (batch, n_in + n_out), generator=gen, device=device, dtype=torch.float32)
    signs = signs.mul_(2.0).sub_(1.0)
    return signs[:, :n_in], signs[:, n_in:]


def draw_noise(estimator: str, params: list[dict[str, Any]], batch: int, gen, device) -> list[tuple]:
    """One step's noise, per layer: ``(E,)``, ``(z,)`` or ``(E, s_in, s_out)``."""
    import torch

    noise = []
    for p in params:
        n_in, n_out = p["loc"].shape
        if estimator == "local_reparameterization":
            noise.append((torch.randn((batch, n_out), generator=gen, device=device, dtype=torch.float32),))
            continue
        eps = torch.randn((n_in, n_out), generator=gen, device=device, dtype=torch.float32)
        if estimator == "flipout":
            noise.append((eps, *rademacher(gen, batch, n_in, n_out, device)))
        else:
            noise.append((eps,))
    return noise


def layer(estimator: str, noise: tuple, x: Any, p: dict[str, Any]) -> Any:
    """One Bayesian dense layer (no activation), as ``steps.plain_layer``."""
    import torch

    mu, s = p["loc"], sigma(p["u"])
    if estimator == "reparameterization":
        (eps,) = noise
        return torch.addmm(p["bias"], x, mu + eps * s)
    if estimator == "local_reparameterization":
        (z,) = noise
        var = (x * x) @ (s * s)
        positive = var > 0
        std = torch.where(positive, torch.sqrt(torch.where(positive, var, torch.ones_like(var))), 0.0)
        return torch.addmm(p["bias"], x, mu) + std * z
    if estimator == "flipout":
        eps, s_in, s_out = noise
        return torch.addmm(p["bias"], x, mu) + ((x * s_in) @ (eps * s)) * s_out
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {sorted(SHORT)}")


def kl(params: list[dict[str, Any]]) -> Any:
    """Closed-form KL(N(mu, sigma^2) || N(0, 1)), summed over every kernel weight."""
    import torch

    total = None
    for p in params:
        s = sigma(p["u"])
        term = torch.sum(0.5 * (s * s + p["loc"] * p["loc"] - 1.0) - torch.log(s))
        total = term if total is None else total + term
    return total


def log_likelihood(n: int, logits: Any, y: Any) -> Any:
    """``(N / B) * sum log softmax(logits)[y]``; ``y`` is int64."""
    import torch

    picked = torch.log_softmax(logits, dim=-1).gather(-1, y[:, None])
    return (n / logits.shape[0]) * picked.sum()


def make_loss(problem, estimator: str | None, deterministic: bool):
    """``(params, noise, x, y) -> loss``: the negative ELBO (or the deterministic net's NLL)."""
    import torch

    last = len(problem.sizes) - 2

    def loss(params, noise, x, y):
        h = x
        for i, p in enumerate(params):
            h = torch.addmm(p["bias"], h, p["w"]) if deterministic else layer(estimator, noise[i], h, p)
            if i < last:
                h = torch.relu(h)
        if deterministic:
            return -log_likelihood(problem.n, h, y)
        return -(log_likelihood(problem.n, h, y) - kl(params))

    return loss


def torch_step(
    problem,
    estimator: str | None,
    x,
    y,
    lr: float,
    *,
    deterministic: bool = False,
    device: str | None = None,
    compile: bool = False,
    seed: int = 0,
    threads: int | None = None,
) -> Variant:
    """A Variant whose step is one PyTorch training step (noise draw, loss, backward, Adam).

    ``x`` and ``y`` (JAX or NumPy arrays) are copied to the device once. ``compile=True``
    wraps the loss in ``torch.compile`` (forward and backward; the optimizer stays eager);
    its first call, inside ``Variant.first_call``, compiles. The carry is ``(loss,)``, the
    loss left on the device; the Variant's ``sync`` waits for the device.

    ``threads`` sets ``torch.set_num_threads`` (process-wide: it holds for every PyTorch
    variant from then on). On a CPU shared with other work, PyTorch's default (one
    intra-op thread per core, spin-waiting OpenMP workers) can slow down many-fold;
    ``threads=1`` avoids that.
    """
    import numpy as np
    import torch

    if not deterministic and estimator not in SHORT:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {sorted(SHORT)}")
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(_device(device))
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    params = _init_params(problem, gen, dev, deterministic)
    leaves = [t for p in params for t in p.values()]
    optimizer = torch.optim.Adam(leaves, lr=lr)
    xs = torch.tensor(np.asarray(x), dtype=torch.float32, device=dev)
    ys = torch.tensor(np.asarray(y), dtype=torch.int64, device=dev)
    batch = xs.shape[0]
    loss_fn = make_loss(problem, estimator, deterministic)
    if compile:
        loss_fn = torch.compile(loss_fn)
    label = "deterministic (PyTorch)" if deterministic else f"PyTorch {SHORT[estimator]}"
    if compile:
        label += " compiled"

    def advance(carry):
        noise = [] if deterministic else draw_noise(estimator, params, batch, gen, dev)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(params, noise, xs, ys)
        loss.backward()
        optimizer.step()
        return (_Loss(loss.detach()),)

    variant = Variant(label, advance, (_Loss(torch.zeros((), device=dev)),), sync=_sync_for(dev))
    variant.params = params  # for checks: the live parameter tensors
    return variant


# --------------------------------------------------------------------------- the CNN of issue 14 (bench/conv.py)


def _init_conv_params(problem, gen, device, deterministic: bool) -> list[dict[str, Any]]:
    """Leaf tensors for ``conv_steps.ConvProblem``'s CNN, initialised as ``_init_params`` does.

    Convolution kernels are in PyTorch's layout ``(out, in, h, w)``; dense kernels ``(in, out)``.
    """
    import torch

    def normal(mean: float, std: float, *shape: int):
        return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * std + mean).requires_grad_()

    ins = (problem.image[-1], *problem.filters[:-1])
    shapes = [(f, c, problem.kernel, problem.kernel) for c, f in zip(ins, problem.filters, strict=True)]
    ins = (problem.flat_features(), *problem.dense[:-1])
    shapes += [(n_in, n_out) for n_in, n_out in zip(ins, problem.dense, strict=True)]
    params = []
    for shape in shapes:
        n_out = shape[0] if len(shape) == 4 else shape[1]
        if deterministic:
            bias = torch.zeros(n_out, device=device, dtype=torch.float32, requires_grad=True)
            params.append({"w": normal(0.0, 0.1, *shape), "bias": bias})
        else:
            loc, u = normal(0.0, 0.1, *shape), normal(-3.0, 0.1, *shape)
            params.append({"loc": loc, "u": u, "bias": normal(0.0, 0.1, n_out)})
    return params


def draw_conv_noise(params: list[dict[str, Any]], batch: int, gen, device) -> list[tuple]:
    """One Flipout step's noise per layer ``(E, s_in, s_out)``; a convolution's signs are ``(batch, C, 1, 1)``."""
    import torch

    noise = []
    for p in params:
        shape = p["loc"].shape
        eps = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        if len(shape) == 4:  # (out, in, h, w): one sign per example and channel
            s_in, s_out = rademacher(gen, batch, shape[1], shape[0], device)
            noise.append((eps, s_in[:, :, None, None], s_out[:, :, None, None]))
        else:
            noise.append((eps, *rademacher(gen, batch, shape[0], shape[1], device)))
    return noise


def conv_flipout_layer(noise: tuple, x: Any, p: dict[str, Any]) -> Any:
    """Flipout convolution: ``conv(x, mu) + b + conv(x * s_in, sigma * E) * s_out`` (stride 1, "same")."""
    import torch.nn.functional as F

    eps, s_in, s_out = noise
    mean = F.conv2d(x, p["loc"], p["bias"], padding="same")
    return mean + F.conv2d(x * s_in, eps * sigma(p["u"]), padding="same") * s_out


def make_conv_loss(problem, deterministic: bool):
    """``(params, noise, x, y) -> loss`` of the CNN (x channels first): Flipout's negative ELBO, or the NLL."""
    import torch
    import torch.nn.functional as F

    n_conv = len(problem.filters)

    def conv_layer(noise, h, p):
        if deterministic:
            return F.conv2d(h, p["w"], p["bias"], padding="same")
        return conv_flipout_layer(noise, h, p)

    def dense_layer(noise, h, p):
        return torch.addmm(p["bias"], h, p["w"]) if deterministic else layer("flipout", noise, h, p)

    def loss(params, noise, x, y):
        noise = noise or [None] * len(params)
        h = x
        for i in range(n_conv):
            h = F.max_pool2d(torch.relu(conv_layer(noise[i], h, params[i])), 2)
        h = h.flatten(1)
        for i in range(n_conv, len(params)):
            h = dense_layer(noise[i], h, params[i])
            if i < len(params) - 1:
                h = torch.relu(h)
        if deterministic:
            return -log_likelihood(problem.n, h, y)
        return -(log_likelihood(problem.n, h, y) - kl(params))

    return loss


def torch_conv_step(
    problem,
    x,
    y,
    lr: float,
    *,
    deterministic: bool = False,
    device: str | None = None,
    compile: bool = False,
    seed: int = 0,
    threads: int | None = None,
) -> Variant:
    """A Variant whose step is one PyTorch step of the Flipout CNN (or the deterministic one).

    As :func:`torch_step`, for ``conv_steps.ConvProblem``: ``x`` is channels last (JAX's
    layout) and is transposed to PyTorch's channels first once, outside the step.
    """
    import numpy as np
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(_device(device))
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    params = _init_conv_params(problem, gen, dev, deterministic)
    optimizer = torch.optim.Adam([t for p in params for t in p.values()], lr=lr)
    xs = torch.tensor(np.asarray(x), dtype=torch.float32, device=dev).permute(0, 3, 1, 2).contiguous()
    ys = torch.tensor(np.asarray(y), dtype=torch.int64, device=dev)
    loss_fn = make_conv_loss(problem, deterministic)
    if compile:
        loss_fn = torch.compile(loss_fn)
    label = ("deterministic CNN (PyTorch)" if deterministic else "PyTorch Flipout") + (" compiled" if compile else "")

    def advance(carry):
        noise = [] if deterministic else draw_conv_noise(params, xs.shape[0], gen, dev)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(params, noise, xs, ys)
        loss.backward()
        optimizer.step()
        return (_Loss(loss.detach()),)

    variant = Variant(label, advance, (_Loss(torch.zeros((), device=dev)),), sync=_sync_for(dev))
    variant.params = params
    return variant
