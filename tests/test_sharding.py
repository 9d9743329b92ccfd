"""Data-parallel fit and Predictive over a mesh (issue 16): the same numbers on 1, 2, 4 and 8 devices and
across two processes, parameters replicated, minibatches sharded, and bad input refused.

This pytest process has one CPU device, and the device count is fixed when JAX starts, so the
multi-device runs happen in fresh interpreters: ``tests/sharding_worker.py`` with 8 forced host
devices, and ``examples/multiprocess_fit.py`` as two processes of 4 devices each. Both compile
with JAX's ``jax_disable_most_optimizations`` (``JAX_DISABLE_MOST_OPTIMIZATIONS=1``): their time
is compiling, and the numbers are the same up to float rounding.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, Mesh
from numpyro.infer import SVI

import npvi
from npvi.sharding import resolve_mesh

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import multiprocess_fit as example  # noqa: E402
from conftest import without_compilation_cache  # noqa: E402

RTOL = 1e-5  # the order of the sums over the minibatch changes with the number of devices


def quick_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in without_compilation_cache(os.environ).items() if k != "XLA_FLAGS"}
    return {**env, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", **extra}


def assert_same_fit(result: dict, reference: dict) -> None:
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=RTOL)
    assert result["params"].keys() == reference["params"].keys()
    for name in reference["params"]:
        np.testing.assert_allclose(result["params"][name], reference["params"][name], rtol=RTOL, atol=1e-6)


def test_fit_and_predictive_give_the_same_numbers_on_1_2_4_and_8_devices():
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sharding_worker.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=quick_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["device_count"] == 8
    assert report["threefry_partitionable"]  # JAX's default; npvi reads it, never sets it

    fits = report["fits"]
    reference = fits.pop("None")
    assert len(reference["losses"]) == 2 * (example.N // example.BATCH_SIZE)
    assert reference["params_placement"] == [[1, True]]
    for n, result in fits.items():
        assert_same_fit(result, reference)
        # every parameter ends up replicated over the n devices of the mesh
        assert result["params_placement"] == [[int(n), True]], n
        # the model saw each minibatch of 16 rows split over the n devices: 16 / n rows on each
        assert result["batch_specs"], n
        assert {(rows[0], devices) for rows, devices in result["batch_specs"]} == {(16 // int(n), int(n))}, n
    assert not np.allclose(fits["8"]["losses"][:4], fits["8"]["losses"][4:])  # two epochs, other minibatches

    # IVON (issue 23) over the mesh: the same numbers as on one device, and its state replicated with the params
    ivon = report["ivon"]
    assert_same_fit(ivon["8"], ivon["None"])
    assert not np.allclose(ivon["None"]["params"]["l1.kernel.loc"], reference["params"]["l1.kernel.loc"])  # not Adam
    assert ivon["None"]["state_placement"] == [[1, True]]
    assert ivon["8"]["state_placement"] == [[8, True]]

    # host data placed once: sharded over the examples where 8 divides their number, else replicated
    assert report["placement"] == {"48": "P('data',)", "50": "P()"}
    assert report["placement_kept"]
    assert report["placement_from_explicit"] == ["P('data',)", ["Auto"]]

    draws = report["predictive"]
    for shard in ("draws", "inputs"):
        for site in ("out", "y"):
            np.testing.assert_allclose(draws[shard][site], draws["None"][site], rtol=1e-5, atol=1e-6)
            assert np.shape(draws[shard][site]) == (20, 16, 3)
    assert draws["draws shard shape"] == [20, 16, 3]  # gathered at the end: every device holds every draw
    assert draws["inputs shard shape"] == [20, 2, 3]  # each device holds its 2 of the 16 inputs
    assert draws["inputs_error"] == (
        "Predictive: shard='inputs' splits the 10 examples of argument 0 over the 8 devices of mesh axis 'data', "
        "but 10 is not a multiple of 8; pad the inputs to 16 examples, or use shard='draws'"
    )

    errors = report["errors"]
    assert errors["batch"] == (
        "fit: batch_size 30 does not divide over the 4 devices of mesh axis 'data'; use a multiple of 4, e.g. 28 or 32"
    )
    assert errors["axis"].startswith("fit: the mesh has no axis named 'data' to shard the data over; its axes are "
                                     "('a', 'b') (sizes {'a': 2, 'b': 4})")  # fmt: skip
    assert errors["lengths"] == "fit: every data array must have the same length on axis 0, got lengths [64, 60]"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_of_four_devices_train_as_one_process(tmp_path, quick_xla):
    """jax.distributed on a loopback address, CPU collectives over gloo, each process holding half the data."""
    out = tmp_path / "losses.npz"
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, str(ROOT / "examples" / "multiprocess_fit.py")]
    processes = [
        subprocess.Popen(
            [*command, str(rank), "2", address, "--local-devices", "4", *(["--out", str(out)] if rank == 0 else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=quick_env(),
        )
        for rank in (0, 1)
    ]
    deadline = time.monotonic() + 180
    try:
        reference = example.train(*example.make_data())  # one process, one device, while they run
        outputs = [process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for process in processes]
    finally:  # on a timeout (or any error) kill them: nothing is left running
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert [process.poll() for process in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "2 processes, 8 devices; rows of process 0: 0..31" in outputs[0]
    saved = np.load(out)
    np.testing.assert_allclose(saved["losses"], reference.losses, rtol=RTOL)
    for name, value in reference.params.items():
        np.testing.assert_allclose(saved[name], value, rtol=RTOL, atol=1e-6)


def test_a_mesh_is_checked_and_an_explicit_mesh_runs_with_auto_axes():
    x, y = example.make_data()
    svi = SVI(example.model, npvi.MeanFieldGuide(example.model), optax.adam(1e-2), npvi.ELBO())
    with pytest.raises(ValueError, match=r"the mesh has no axis named 'data' to shard the data over; its axes are "
                                         r"\('batch',\)"):  # fmt: skip
        npvi.fit(svi, jax.random.PRNGKey(0), x, y, num_epochs=1, batch_size=16, mesh=Mesh(jax.devices(), ("batch",)))
    with pytest.raises(ValueError, match=r"every data array must have the same length on axis 0, got lengths \[64, 63"):
        npvi.fit(svi, jax.random.PRNGKey(0), x, y[:-1], num_epochs=1, batch_size=16, mesh="all")
    with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh, 'all' or None, got 'gpu'"):
        npvi.Trainer(svi, batch_size=16, mesh="gpu")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh, 'all' or None, got list"):
        npvi.Trainer(svi, batch_size=16, mesh=jax.devices())
    with pytest.raises(ValueError, match=r"shard must be one of \('draws', 'inputs'\), got 'params'"):
        npvi.Predictive(example.model, svi.guide, {}, 4, mesh="all", shard="params")
    explicit = jax.make_mesh((1,), ("data",))  # JAX 0.10 makes Explicit axes by default
    assert explicit.axis_types == (AxisType.Explicit,)
    resolved = resolve_mesh("fit", explicit, "data")
    assert resolved.axis_types == (AxisType.Auto,) and resolved.devices.tolist() == explicit.devices.tolist()
    assert npvi.Trainer(svi, batch_size=16, mesh="all").mesh.shape == {"data": jax.device_count()}
