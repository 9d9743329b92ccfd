"""Run the ```python blocks of every docs page, each page top to bottom as one script.

``make docs-examples`` runs this (about ten minutes on a 2-core CPU: the pages train
networks). Pass page names (``layers.md``) to run only those. Exits non-zero if a page fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def run_page(page: Path) -> subprocess.CompletedProcess:
    """Run a page's blocks as one script in a fresh interpreter, in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "page.py"
        script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + "\n".join(python_blocks(page)))
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
        return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp)


def main(names: list[str]) -> int:
    pages = [DOCS / n for n in names] if names else sorted(p for p in DOCS.glob("*.md") if python_blocks(p))
    failed = []
    for page in pages:
        run = run_page(page)
        print(f"{page.name}: {'ok' if run.returncode == 0 else 'FAILED'}", flush=True)
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-6000:], sep="\n", file=sys.stderr)
            failed.append(page.name)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
