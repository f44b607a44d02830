"""Sphinx configuration: the existing pages as chapters, the API reference from docstrings.

The build runs in the test command with warnings as errors (``-W -n``), so a public name
without a docstring or a cross-reference that does not resolve fails the build. The
Python inventory comes from Debian's ``python3.X-doc`` (X: this Python's minor version) (no network here or in CI);
without it, references into the standard library are not checked.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.abspath("../src"))

project = "epws"
author = "the epws authors"
copyright = "2026, the epws authors"  # noqa: A001 (Sphinx's name)

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "epws"
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

_PY_INV = f"/usr/share/doc/python{sys.version_info[0]}.{sys.version_info[1]}/html/objects.inv"
intersphinx_mapping = (
    {"python": ("https://docs.python.org/3", _PY_INV)} if os.path.exists(_PY_INV) else {}
)
intersphinx_disabled_reftypes: list[str] = []

nitpicky = True
# Names that no inventory here can resolve: private aliases in annotations, and
# third-party types that the optional modules mention.
nitpick_ignore_regex = [
    (r"py:.*", r"(epws|epws_chat)\..*\._.*"),
    (r"py:.*", r"_.*"),
    (r"py:class", r"(uvicorn|starlette|redis|socket\.socket|zlib)\..*"),
    (r"py:class", r"(Handler|ProcessRequest|ProcessResponse|Event|Deliver|OnError)"),
    # Where autodoc finds asyncio.Protocol, a base class; the inventory names it asyncio.Protocol.
    (r"py:class", r"asyncio\.protocols\.Protocol"),
]
if not intersphinx_mapping:
    nitpick_ignore_regex.append((r"py:.*", r"(asyncio|ssl|collections|typing|socket|enum)\..*"))


def _require_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """A public name documented with no docstring is a warning, so ``-W`` fails on it."""
    if not lines and what in {"module", "class", "function", "method", "exception"}:
        from sphinx.util import logging

        logging.getLogger(__name__).warning("%s %s has no docstring", what, name)


def _public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    """Show the public class behind private base classes (Conn's parts, see
    epws/asyncio/base.py): a reader learns that a Conn is an ``asyncio.Protocol``."""
    if bases and all(base.__name__.startswith("_") for base in bases):
        public = [c for c in obj.__mro__[1:] if not c.__name__.startswith("_")]
        bases[:] = public[:1]


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _require_docstring)
    app.connect("autodoc-process-bases", _public_bases)
