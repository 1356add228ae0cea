"""Structured logging: one JSON object per line, each carrying the request id."""

import logging
from typing import Any

from asgi_correlation_id import CorrelationIdFilter

from .settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
ACCESS_LOGGER = "access"
# Fields never written to a log line, whatever a caller passes in ``extra``.
REDACTED_FIELDS = ("secret_key", "password", "authorization", "cookie")
# Console-only fields other libraries attach (uvicorn's ANSI-coloured copy of its message).
CONSOLE_FIELDS = ("color_message",)


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
            "redact": {"()": RedactFilter},
        },
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id", "redact"],
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
