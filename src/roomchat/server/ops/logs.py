"""``--log-format text|json``: how ``roomchat serve`` writes its log lines to stderr.

- ``text`` (the default): ``TIME LEVEL LOGGER: MESSAGE``, for people.
- ``json``: one JSON object per line, for log pipelines: ``time`` (ISO 8601, UTC, ms),
  ``level``, ``logger``, ``event`` (the message), then every field the call passed with
  ``extra=`` (sessions pass ``session``, ``user``, ``peer`` and, on the way out,
  ``reason``), and ``exc`` with the traceback when there is one.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

_encode = msgspec.json.Encoder(enc_hook=repr).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (``fixed``: fields every line carries)."""

    def __init__(self, fixed: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._fixed = fixed or {}

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **self._fixed,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _encode(out).decode()


def configure_logging(level: str, log_format: str = "text", *, worker: int | None = None) -> None:
    """Send every log record at ``level`` or above to stderr in ``log_format``; a
    ``--workers`` worker marks its lines with its number ("[worker K]", or a field)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(None if worker is None else {"worker": worker}))
    elif log_format == "text":
        prefix = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(
            logging.Formatter(TEXT_FORMAT.replace("%(name)s", prefix + "%(name)s"))
        )
    else:
        raise ValueError(f"unknown log format {log_format!r}: use text or json")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
