"""The README's Python examples run, in order, in one namespace, and print what the README says."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run_and_print_what_they_claim(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 5
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its 1.0 refactor on import
        warnings.simplefilter("ignore", UserWarning)  # az.loo's Pareto-k diagnostics
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    claimed = re.search(r"print\(sorted\(result.params\)\)\n((?:# .*\n)+)", README.read_text())
    expected = " ".join(line[2:].strip() for line in claimed[1].splitlines())
    assert printed.splitlines()[0] == expected
    assert namespace["mean"].shape == namespace["std"].shape == (200,)
    # the fit is good: the predictive mean follows sin(2x) to within the noise
    residual = namespace["mean"] - namespace["jnp"].sin(2.0 * namespace["x"][:, 0])
    assert float(abs(residual).mean()) < 0.1
