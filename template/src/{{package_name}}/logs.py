"""Structured logging: one JSON object per line, each carrying the request id (and the
fields of ``log_context``). One setup for every process that runs the app's code: the
server (``__main__``), migrations (``migrations/env.py``) and any other entry point call
``configure_logging``.
"""

import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from asgi_correlation_id import CorrelationIdFilter

from .settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
ACCESS_LOGGER = "access"
# Fields never written to a log line, whatever a caller passes in ``extra``.
REDACTED_FIELDS = ("secret_key", "password", "authorization", "cookie")
# Console-only fields other libraries attach (uvicorn's ANSI-coloured copy of its message).
CONSOLE_FIELDS = ("color_message",)
# Fields every line logged in this context carries (``log_context``).
_context_fields: ContextVar[dict[str, str] | None] = ContextVar("log_fields", default=None)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Lines logged inside carry these fields, e.g. ``log_context(job_id=job.id)``."""
    merged = dict(_context_fields.get() or {})
    merged.update((name, str(value)) for name, value in fields.items())
    token = _context_fields.set(merged)
    try:
        yield
    finally:
        _context_fields.reset(token)


class ContextFieldsFilter(logging.Filter):
    """Add the ``log_context`` fields to each record (JSON lines show them as fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context_fields.get() or {}).items():
            record.__dict__.setdefault(name, value)
        return True


class RedactFilter(logging.Filter):
    """Blank well-known secret fields a caller might pass in ``extra``; drop console-only ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in REDACTED_FIELDS:
            if hasattr(record, name):
                setattr(record, name, "[redacted]")
        for name in CONSOLE_FIELDS:
            record.__dict__.pop(name, None)
        return True


def logging_config(settings: Settings) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` mapping, also handed to uvicorn for its workers."""
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s",
            "rename_fields": {
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "correlation_id": "request_id",
            },
        }
        if settings.log_json
        else {"format": "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"}
    )
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": CorrelationIdFilter, "default_value": "-"},
            "context": {"()": ContextFieldsFilter},
            "redact": {"()": RedactFilter},
        },
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id", "context", "redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            # Our access log replaces uvicorn's (it knows the request id and duration).
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def configure_logging(settings: Settings) -> None:
    """Apply ``logging_config`` to this process (uvicorn applies it to its own workers)."""
    logging.config.dictConfig(logging_config(settings))
