"""``python -m epws_chat``: the same as the ``epws-chat`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
