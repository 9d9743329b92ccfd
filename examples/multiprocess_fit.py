"""Data-parallel ``npvi.fit`` over several processes, each holding its share of the data.

Launch one process per host (here: per terminal, on one machine, CPU devices)::

    python examples/multiprocess_fit.py 0 2 127.0.0.1:12355 &
    python examples/multiprocess_fit.py 1 2 127.0.0.1:12355

The arguments are this process's id, the number of processes and the coordinator's
address (process 0 serves it; every process passes the same address). Each process
sees ``--local-devices`` CPU devices (4 unless told), so two processes make one mesh of
8 devices. Process 0 prints the losses and, with ``--out FILE``, saves them with the
params to ``FILE`` (``.npz``). With 1 as the number of processes it is the same fit in
one process over its local devices, with no coordinator (pass any address).

What happens, and why the losses equal one process's on the whole data:

1. ``jax.distributed.initialize`` joins the processes; CPU collectives go over gloo
   (``jax_cpu_collectives_implementation``, a public JAX option);
2. the mesh is every device of every process, on one axis ``"data"``;
3. each process loads only its rows, ``npvi.sharding.process_indices(mesh, N)`` (here
   cut from one generated array; a real job reads just those rows from its files), and
   ``npvi.sharding.global_data`` assembles the global arrays from the shares
   (``jax.make_array_from_process_local_data``): one array of ``N`` examples, sharded;
4. ``npvi.fit(..., mesh=mesh)`` draws the same permutation of the ``N`` examples in every
   process (from the same key), so the minibatches, the keys and the losses are those
   of one process on the concatenated data. Every process must run the same program with
   the same key and settings.
"""

from __future__ import annotations

import argparse
import sys

N, D, BATCH_SIZE = 64, 3, 16


def model(x, y=None, num_data=None):
    """One of each estimator: reparameterization, LRT and Flipout layers, Normal likelihood."""
    import jax
    import numpyro
    import numpyro.distributions as dist

    import npvi

    h = jax.nn.tanh(npvi.DenseReparameterization(4, name="l1")(x))
    h = jax.nn.tanh(npvi.DenseLocalReparameterization(4, name="l2")(h))
    mu = npvi.DenseFlipout(1, name="l3")(h)[..., 0]
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


def make_data():
    """The whole data set (every process can make it; each keeps only its rows)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (np.tanh(x @ np.array([1.0, -2.0, 0.5])) + 0.1 * rng.normal(size=N)).astype(np.float32)
    return x, y


def train(x, y, *, mesh=None, num_epochs: int = 2, progress_bar: bool = False):
    """``npvi.fit`` of :func:`model` with a fixed key: the same call in every process."""
    import jax
    import optax
    from numpyro.infer import SVI

    import npvi

    svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    return npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=num_epochs, batch_size=BATCH_SIZE,
                    mesh=mesh, progress_bar=progress_bar)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("process_id", type=int)
    parser.add_argument("num_processes", type=int)
    parser.add_argument("coordinator", help="host:port of process 0, the same in every process")
    parser.add_argument("--local-devices", type=int, default=4, help="CPU devices of this process")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", help="process 0 saves the losses and params here (.npz)")
    args = parser.parse_args(argv)

    import jax

    # Before the first use of JAX: CPU devices of this process, and CPU collectives across processes.
    jax.config.update("jax_num_cpu_devices", args.local_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes > 1:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)

    import numpy as np
    from jax.sharding import Mesh

    import npvi.sharding

    mesh = Mesh(np.array(jax.devices()), ("data",))  # every device of every process
    x, y = make_data()
    rows = npvi.sharding.process_indices(mesh, N)  # this process's share
    x, y = npvi.sharding.global_data(mesh, x[rows], y[rows])
    result = train(x, y, mesh=mesh, num_epochs=args.epochs, progress_bar=args.process_id == 0)
    losses = np.asarray(result.losses)
    params = {name: np.asarray(value) for name, value in result.params.items()}  # replicated: every process has them
    if args.process_id == 0:
        print(f"{jax.process_count()} processes, {jax.device_count()} devices; rows of process 0: "
              f"{rows[0]}..{rows[-1]}; losses: {np.array2string(losses, precision=4)}")  # fmt: skip
        if args.out:
            np.savez(args.out, losses=losses, **params)
    if args.num_processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
