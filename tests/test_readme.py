"""The README's Python examples run, in order, in one namespace, and print what the README says."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run_and_print_what_they_claim(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the first example keeps its checkpoints in ./npvi-run
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
    assert sorted(p.name for p in (tmp_path / "npvi-run").iterdir())[-1] == f"epoch-{namespace['result'].epoch:06d}.npz"
    assert namespace["result"].best_epoch is not None and "val_log_likelihood" in namespace["result"].history
    summary = namespace["summary"]  # npvi.predict: at least the likelihood's noise, 0.1, everywhere
    assert summary.mean.shape == (200,) and float(summary.std.min()) >= 0.1
    # the fit is good: the predictive mean follows sin(2x) to within the noise
    residual = namespace["mean"] - namespace["jnp"].sin(2.0 * namespace["x"][:, 0])
    assert float(abs(residual).mean()) < 0.1
    # the ArviZ example prints the share of unreliable LOO points it then explains
    assert re.search(r"^elpd_loo [-\d.]+; Pareto k > 0.7 for \d+% of the points$", printed, flags=re.MULTILINE)
    assert "PSIS-LOO's own diagnostic" in README.read_text()
    # the Flax example trains the converted network's posteriors
    assert "['mlp/layers.0.bias.loc', 'mlp/layers.0.bias.untransformed_scale']" in printed.splitlines()


MAKE_TEST = (
    "`make test` runs ruff, then pytest: the unit tests, the doctests, the README's examples, the Sphinx "
    "docs build and every notebook with small settings."
)


def test_make_test_is_described_the_same_way_everywhere():
    root = README.parent
    for page in (README, root / "docs" / "getting_started.md", root / "DEVELOPERS.md", root / "Makefile"):
        text = " ".join(line.lstrip("# -").strip() for line in page.read_text().splitlines())
        assert MAKE_TEST in text, page.name


def test_the_package_metadata_installs_without_a_setuptools_warning():
    """An SPDX license string (a TOML table is deprecated) and the package dir at the top (a .pth editable install)."""
    text = (README.parent / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"$', text, flags=re.MULTILINE)
    assert re.search(r'^package-dir = \{ "" = "\." \}$', text, flags=re.MULTILINE)
    assert re.search(r'^requires = \["setuptools>=77"\]$', text, flags=re.MULTILINE)  # SPDX strings need 77
