"""Builds the optional C accelerator; everything else is in pyproject.toml.

EPWS_BUILD_EXTENSION=no skips it, =yes makes a failed build an error; by default a
machine without a compiler gets the pure-Python fallback and a working install.
"""

import os

from setuptools import Extension, setup

mode = os.environ.get("EPWS_BUILD_EXTENSION", "auto")
ext_modules = []
if mode != "no":
    ext_modules.append(
        Extension("epws._speedups", ["src/epws/_speedups.c"], optional=(mode != "yes"))
    )

setup(ext_modules=ext_modules)
