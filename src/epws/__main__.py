"""``python -m epws URL``: the command-line client (see :mod:`epws.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
