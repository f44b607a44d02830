"""The public API is what ``__all__`` says, and every name in it is documented.

``epws/__init__.py`` only re-exports (issue 9, "Fix the mechanism"): every name in
``epws.__all__`` and in the ``__all__`` of the protocol core's modules must be
importable and carry a docstring of its own (a constant: a ``#:`` comment, as Sphinx
reads it), and no class or function of epws reachable from ``epws`` may be left out.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import epws
import epws.protocol

#: Modules whose ``__all__`` is checked: the top level, the sans-I/O core (all its
#: modules), and the library-wide modules beside it.
MODULES = [
    "epws",
    "epws.exceptions",
    "epws.prepared",
    *sorted(m.name for m in pkgutil.iter_modules(epws.protocol.__path__, "epws.protocol.")),
]


def own_docstring(obj: object) -> str | None:
    """The docstring written for ``obj`` itself: not inherited, not generated."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
        if not isinstance(doc, str):
            return None
        # dataclasses write "Name(field, ...)" when the class has no docstring.
        if doc.startswith(f"{obj.__name__}(") and "__dataclass_fields__" in vars(obj):
            return None
        return doc.strip() or None
    doc = getattr(obj, "__doc__", None)
    return doc.strip() if isinstance(doc, str) and doc.strip() else None


def documented_constant(module: ModuleType, name: str) -> bool:
    """True if ``name = ...`` in ``module``'s source has a ``#:`` comment right above."""
    lines = Path(inspect.getfile(module)).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith((f"{name} =", f"{name}: ")) and i and lines[i - 1].startswith("#:"):
            return True
    return False


def defining_module(module: ModuleType, name: str, obj: object) -> ModuleType:
    origin = getattr(obj, "__module__", None)
    if isinstance(origin, str) and origin.startswith("epws"):
        return importlib.import_module(origin)
    return module


def exported(module_name: str) -> list[tuple[str, str]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        return []
    return [(module_name, name) for name in names]


EXPORTS = [pair for module_name in MODULES for pair in exported(module_name)]


def test_the_checked_modules_define_all() -> None:
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if module_name in ("epws.protocol",):
            continue  # a namespace of modules, nothing of its own
        assert isinstance(getattr(module, "__all__", None), list), module_name


@pytest.mark.parametrize(("module_name", "name"), EXPORTS)
def test_every_exported_name_is_importable_and_documented(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    assert hasattr(module, name), f"{module_name}.__all__ names {name}, which is missing"
    obj = getattr(module, name)
    if name == "__version__":
        assert isinstance(obj, str) and obj
        return
    if inspect.isclass(obj) or callable(obj):
        assert own_docstring(obj), f"{module_name}.{name} has no docstring"
    else:
        home = defining_module(module, name, obj)
        assert documented_constant(home, name), f"{name} has no #: comment in {home.__name__}"


@pytest.mark.parametrize("module_name", MODULES)
def test_all_has_no_duplicates(module_name: str) -> None:
    names = getattr(importlib.import_module(module_name), "__all__", [])
    assert len(names) == len(set(names)), module_name


def test_nothing_public_is_left_out_of_the_top_level_all() -> None:
    """Every class or function of epws in the ``epws`` namespace is in ``__all__``."""
    missing = []
    for name, obj in vars(epws).items():
        if name.startswith("_") or isinstance(obj, ModuleType):
            continue
        origin = getattr(obj, "__module__", "") or ""
        is_code = inspect.isclass(obj) or inspect.isfunction(obj)
        if is_code and origin.startswith("epws") and name not in epws.__all__:
            missing.append(name)
    assert not missing, f"public names missing from epws.__all__: {missing}"


def test_top_level_names_are_the_submodules_objects() -> None:
    """A re-export is the very object its module defines, not a copy or a wrapper."""
    for name in epws.__all__:
        obj = getattr(epws, name)
        origin = getattr(obj, "__module__", None)
        if name == "__version__" or origin is None or isinstance(obj, enum.Enum):
            continue
        assert getattr(importlib.import_module(origin), name, None) is obj, name


def test_the_package_init_only_re_exports() -> None:
    """``epws/__init__.py`` holds imports, ``__all__`` and ``__version__``, nothing else."""
    source = Path(inspect.getfile(epws)).read_text(encoding="utf-8")
    tree = ast.parse(source)
    body = tree.body
    assert ast.get_docstring(tree), "the package needs a docstring"
    for node in body[1:]:
        if isinstance(node, ast.ImportFrom):
            assert node.module == "__future__" or node.level == 1, ast.dump(node)
            continue
        assert isinstance(node, ast.Assign), f"line {node.lineno}: not an import"
        targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        assert targets in (["__all__"], ["__version__"]), f"line {node.lineno}: {targets}"
        assert isinstance(node.value, ast.List | ast.Constant), f"line {node.lineno}"


def test_importing_epws_and_its_asgi_class_leaves_uvicorn_unimported() -> None:
    """``import epws`` and ``--ws epws.asgi:WebSocketProtocol`` never import uvicorn.

    Checked in a fresh interpreter, since this one may have imported uvicorn for
    other tests; the ``epws.asgi`` package reads uvicorn's objects only through the
    protocols in :mod:`epws.asgi.interface`.
    """
    code = (
        "import sys, epws, epws.asgi\n"
        "from epws.asgi import WebSocketProtocol\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'uvicorn'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
