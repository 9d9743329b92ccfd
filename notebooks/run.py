"""Execute the example notebooks.

    python notebooks/run.py [--full] [NOTEBOOK ...]

Without ``--full`` each notebook runs with ``NPVI_NOTEBOOK_SMOKE=1`` (small settings) on an in-memory
copy, in a temporary working directory, so the committed files are never touched; any cell error raises
``nbclient.exceptions.CellExecutionError`` (a non-zero exit). A smoke run is mostly XLA compiling
small programs, so it also sets ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (unless the environment sets it):
compilation takes a fraction of the time, and the programs compute the same values up to float
rounding. With ``--full``
the notebooks run with their real settings and their outputs are written in place (``make notebooks``).
NOTEBOOK names a notebook (``01_regression_uncertainty.ipynb``, or a prefix such as ``01``); the
default is all of them.

The kernel is always the Python running this script (and its venv), whatever kernels are registered
on the machine: a kernelspec for ``sys.executable`` is written to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SMOKE_ENV = "NPVI_NOTEBOOK_SMOKE"
#: Set for smoke runs: JAX's flag that skips most XLA optimisation passes (quicker compiles).
QUICK_COMPILE_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"
KERNEL = "python3"


def notebooks(selection: list[str] | None = None) -> list[Path]:
    """The notebooks in this directory, in order; ``selection`` keeps those whose name starts with one of its items."""
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return found
    chosen = [path for path in found if any(path.name.startswith(item) for item in selection)]
    unknown = [item for item in selection if not any(path.name.startswith(item) for path in found)]
    if unknown:
        raise SystemExit(f"no notebook matches {unknown}; have {[path.name for path in found]}")
    return chosen


def execute(path: Path, *, smoke: bool, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel of this interpreter and return the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first cell that fails.
    """
    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, SMOKE_ENV: "1" if smoke else "0"}
    if smoke:
        env.setdefault(QUICK_COMPILE_ENV, "1")
    with tempfile.TemporaryDirectory() as kernels:
        write_kernel_spec(os.path.join(kernels, KERNEL))  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
        km = KernelManager(
            kernel_name=KERNEL,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]),
            transport="ipc",  # Unix sockets in the temporary directory: no TCP ports to race for
            ip=os.path.join(kernels, "ipc"),
        )
        cwd = kernels if smoke else str(HERE)  # a smoke run leaves no files in the tree
        # record_timing=False: no execution timestamps in the stored notebooks, so a re-run changes only outputs.
        client = NotebookClient(
            nb, km=km, timeout=timeout, record_timing=False, resources={"metadata": {"path": cwd}}
        )
        try:
            client.execute(env=env)
        finally:
            # The client leaves a kernel it was handed running (1+ GB each with JAX loaded).
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return nb


def image_count(nb: nbformat.NotebookNode) -> int:
    """How many image outputs (PNG or SVG) the notebook's code cells hold."""
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if {"image/png", "image/svg+xml"} & set(output.get("data", {}))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full settings; write outputs in place")
    parser.add_argument("names", nargs="*", metavar="NOTEBOOK", help="notebook names or prefixes (default: all)")
    args = parser.parse_args(argv)
    for path in notebooks(args.names):
        start = time.perf_counter()
        nb = execute(path, smoke=not args.full)
        if args.full:
            nbformat.write(nb, path)
        where = path.name if args.full else f"{path.name} (smoke, not saved)"
        print(f"{where}: {time.perf_counter() - start:.0f} s, {image_count(nb)} images", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
