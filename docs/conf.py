"""Sphinx configuration of the npvi documentation.

Build with ``make docs`` (warnings are errors). Everything here works offline:
no intersphinx, no remote images or themes; MathJax is loaded by the reader's
browser, not at build time.
"""

from __future__ import annotations

import inspect
import os
import sys

# npvi is installed in editable mode by `make docs`; this also lets a bare checkout build.
sys.path.insert(0, os.path.abspath(".."))
# autodoc imports npvi and therefore JAX; keep JAX off any accelerator while building.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import npvi  # noqa: E402

project = "npvi"
author = "the npvi developers"
copyright = "the npvi developers"
release = npvi.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

root_doc = "index"
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints", "README.md"]

# MyST: $...$ and $$...$$ maths, and anchors for ## and ### headings so that
# [text](page.md#a-heading) links resolve.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
autosummary_generate = False

nitpicky = False

html_theme = "alabaster"
html_title = f"npvi {release}"
html_static_path: list[str] = []


def _resolve_public_name(app, env, node, contnode):
    """Resolve ``npvi.X`` (the public name) to ``npvi.<module>.X``, where the API page documents it.

    Each object is documented once, in its defining module; this lets docstrings and pages
    refer to it by the name users type, e.g. :class:`npvi.DenseFlipout`.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("npvi."):
        return None
    head, _, rest = target[len("npvi.") :].partition(".")
    obj = getattr(npvi, head, None)
    module = getattr(obj, "__module__", None)
    if obj is None or inspect.ismodule(obj) or not module or module == "npvi":
        return None
    canonical = ".".join(part for part in (module, getattr(obj, "__qualname__", head), rest) if part)
    if canonical == target:
        return None
    domain = env.domains["py"] if hasattr(env, "domains") else env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode)


def setup(app):
    app.connect("missing-reference", _resolve_public_name)
