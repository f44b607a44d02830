"""The optional C accelerator, ``epws._speedups``: one place decides whether it is used.

Each accelerated function has a pure-Python twin beside its use (masking in frames.py,
splitting a head in http11.py) that the tests hold it to. The accelerator is used when
it was built, unless ``EPWS_NO_EXTENSION`` is set: the test suite's second pass sets it,
so the twins run every test too.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["pick"]

_T = TypeVar("_T")


def _load() -> ModuleType | None:
    if os.environ.get("EPWS_NO_EXTENSION"):
        return None
    try:
        from .. import _speedups
    except ImportError:
        return None
    return _speedups


_ACCELERATOR = _load()


def pick(name: str, twin: _T) -> _T:
    """The accelerator's function ``name`` when it is in use, else its pure-Python twin."""
    if _ACCELERATOR is None:
        return twin
    fast: _T = getattr(_ACCELERATOR, name)
    return fast
