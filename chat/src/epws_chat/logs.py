"""``--log-format json``: one JSON object per log line, with the connection's id.

Every log line about a connection passes its :class:`~epws_chat.client.Client` as an
argument (``logger.info("%s connected", client)``), so the formatter finds the id
there: no call site has to remember an ``extra=``, and a line cannot lose it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["JsonFormatter"]


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "conn"?, "peer"?, "worker"?, "exc"?}``.

    Args:
        worker: the worker index (``--workers``), put on every line when given.
    """

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        from .client import Client  # the client module logs through this formatter

        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, Client):
                out["conn"] = arg.cid
                out["peer"] = arg.label
                break
        if self.worker is not None:
            out["worker"] = self.worker
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)
