"""Run the ```python blocks of every docs page, each page top to bottom as one script, and check what they print.

A page's ``print(...)`` followed by a comment, on its line or on the comment lines right below it, claims its
output: the comment starts with exactly what the call printed (whitespace runs count as one space, so a long
output may wrap onto several comment lines, and ``...`` stands for any text), and may go on with an explanation
after a space or a punctuation mark, e.g. ``print(result.losses.shape)   # (300,): 50 epochs of 6 steps``.

``make test`` runs every page this way (``tests/test_docs.py``), and so does ``make docs-examples``
(``python docs/run_examples.py [PAGE.md ...]``), which exits non-zero if a page fails or prints something
other than it claims.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
_MARK = "@@npvi-docs-claim@@"


@dataclass(frozen=True)
class Claim:
    """What a ``print`` on line ``line`` of a page's script says it prints."""

    line: int
    text: str


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def page_script(page: Path) -> str:
    """A page's blocks as one script."""
    return "\n".join(python_blocks(page))


def _comments(source: str) -> dict[int, str]:
    """``{line: comment text}`` for every comment (without its ``#``)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string[1:].strip()
    return found


def _print_statements(tree: ast.AST) -> list[ast.Expr]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "print"
    ]


def claims(source: str) -> list[Claim]:
    """The claimed outputs of a script's ``print`` statements, in order."""
    lines = source.splitlines()
    comments = _comments(source)
    found = []
    for statement in _print_statements(ast.parse(source)):
        parts = [comments[statement.end_lineno]] if statement.end_lineno in comments else []
        line = statement.end_lineno + 1
        while line <= len(lines) and lines[line - 1].strip().startswith("#"):
            parts.append(comments[line])
            line += 1
        if parts:
            found.append(Claim(statement.lineno, " ".join(parts)))
    return sorted(found, key=lambda claim: claim.line)


def instrumented(source: str) -> str:
    """The script with markers printed around every claiming ``print``, so its output can be told apart."""
    lines = source.splitlines()
    claimed = {claim.line for claim in claims(source)}
    statements = sorted(
        (s for s in _print_statements(ast.parse(source)) if s.lineno in claimed), key=lambda s: -s.lineno
    )
    for statement in statements:
        indent = " " * statement.col_offset
        lines.insert(statement.end_lineno, f'{indent}print("{_MARK} end", flush=True)')
        lines.insert(statement.lineno - 1, f'{indent}print("{_MARK} {statement.lineno}", flush=True)')
    return "\n".join(lines) + "\n"


def _normal(text: str) -> str:
    return " ".join(text.split())


def printed(stdout: str) -> dict[int, str]:
    """``{line of the print: its output}`` from an instrumented script's standard output.

    A ``print`` in a loop claims the outputs of all its runs, one after another.
    """
    outputs: dict[int, str] = {}
    current: int | None = None
    collected: list[str] = []
    for row in stdout.splitlines():
        if row.startswith(_MARK):
            tag = row[len(_MARK) + 1 :]
            if tag == "end":
                if current is not None:
                    outputs[current] = "\n".join([*([outputs[current]] if current in outputs else []), *collected])
                current = None
            else:
                current, collected = int(tag), []
        elif current is not None:
            collected.append(row)
    return outputs


def matches(claim: str, output: str) -> bool:
    """Whether a claim starts with the output (``...`` matching anything), then ends or goes on after a non-word."""
    claim, output = _normal(claim), _normal(output)
    pattern = ".*?".join(re.escape(piece) for piece in claim.split("..."))
    if re.fullmatch(pattern, output, flags=re.S):
        return True
    if not claim.startswith(output):
        return False
    rest = claim[len(output) :]
    return not rest or not (rest[0].isalnum() or rest[0] in "._")


def mismatches(source: str, stdout: str) -> list[str]:
    """One line for each claim that the run's output does not bear out."""
    outputs = printed(stdout)
    wrong = []
    for claim in claims(source):
        if claim.line not in outputs:
            wrong.append(f"line {claim.line}: the print never ran (claims {claim.text!r})")
        elif not matches(claim.text, outputs[claim.line]):
            wrong.append(f"line {claim.line}: claims {claim.text!r} but printed {outputs[claim.line]!r}")
    return wrong


def run_page(page: Path, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a page's blocks as one script (with claim markers) in a fresh interpreter, in a temporary directory.

    As a user runs it: XLA's full optimiser (with most optimisations off, a convolution page's training
    runs three times slower than it compiles faster).
    """
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "page.py"
        script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + instrumented(page_script(page)))
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
        return subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp, timeout=timeout
        )


def check_page(page: Path, timeout: float | None = None) -> list[str]:
    """Run a page; the problems found (an error, or claims its output does not bear out), empty if none."""
    run = run_page(page, timeout)
    if run.returncode != 0:
        return [f"exit status {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"]
    return mismatches(page_script(page), run.stdout)


def pages() -> list[Path]:
    """The docs pages that have Python examples."""
    return sorted(page for page in DOCS.glob("*.md") if python_blocks(page))


def main(names: list[str]) -> int:
    chosen = [DOCS / name for name in names] if names else pages()
    failed = []
    for page in chosen:
        problems = check_page(page)
        print(f"{page.name}: {'ok' if not problems else 'FAILED'}", flush=True)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if problems:
            failed.append(page.name)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
