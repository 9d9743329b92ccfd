"""The example notebooks run top to bottom (small settings) and show their plots.

Each notebook executes in a fresh kernel of this interpreter with ``NPVI_NOTEBOOK_SMOKE=1``, through
``notebooks/run.py`` (the code behind ``make notebooks``); nothing is written back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "notebooks" / "run.py"
spec = importlib.util.spec_from_file_location("notebook_runner", RUN_PY)
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)

NOTEBOOKS = runner.notebooks()


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5, [path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_and_plots(path):
    nb = runner.execute(path, smoke=True, timeout=300)  # a failing cell raises CellExecutionError
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert runner.image_count(nb) >= 1, f"{path.name} produced no image output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_has_outputs(path):
    """Readers on the web see the stored outputs: every notebook is committed executed, with its plots."""
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code), f"{path.name} has unexecuted cells"
    assert runner.image_count(nb) >= 1, f"{path.name} is stored without image outputs"
    assert not any(o.output_type == "error" for cell in code for o in cell.outputs), f"{path.name} stores an error"
