"""Structured logging: one JSON object per line, each carrying the request id (and the
fields of ``log_context``). One setup for every process that runs the app's code: the
server (``__main__``), migrations (``migrations/env.py``) and any other entry point call
``configure_logging``.
"""

import logging
import logging.config
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from asgi_correlation_id import CorrelationIdFilter
from sqlalchemy.exc import DBAPIError

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


class DatabaseErrorFilter(logging.Filter):
    """Log a database error's trace without the database's messages.

    The engine hides the values bound to a statement (``db.create_engine``), but the server's
    message may repeat them: PostgreSQL's ``DETAIL: Key (email)=(...) already exists``,
    MySQL's ``Duplicate entry '...'``. A logged error raised by the driver (and the driver's
    own exceptions it chains to) shows its class, error code and SQL statement instead; an
    error the app raised while handling it keeps its message. ``show_values`` (with
    ``DATABASE_ECHO``, which logs the values anyway) leaves the messages in.
    """

    def __init__(self, show_values: bool = False) -> None:
        super().__init__()
        self.show_values = show_values

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and not self.show_values and _chain_has_database_error(error):
            record.exc_text = _trace_without_database_messages(error)
            record.exc_info = None  # formatters use exc_text then
        return True


def _chain(error: BaseException) -> list[BaseException]:
    """The error and those it was raised from or during, the earliest first (as printed)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return chain[::-1]


def _chain_has_database_error(error: BaseException) -> bool:
    return any(isinstance(each, DBAPIError) for each in _chain(error))


def _trace_without_database_messages(error: BaseException) -> str:
    chain = _chain(error)
    last_database_error = max(i for i, each in enumerate(chain) if isinstance(each, DBAPIError))
    parts: list[str] = []
    for position, each in enumerate(chain):
        if position:
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if each.__cause__ is chain[position - 1]
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(each.__traceback__))
        if position > last_database_error:  # raised by the app while handling it
            parts.append("".join(traceback.format_exception_only(each)))
            continue
        line = f"{type(each).__module__}.{type(each).__qualname__}"
        if isinstance(each, DBAPIError):
            line += f": [SQL: {each.statement}]"
        line += "".join(f" [{label}: {value}]" for label, value in _error_codes(each))
        parts.append(line + " (the database's message is not logged)\n")
    return "".join(parts).rstrip("\n")


def _error_codes(error: BaseException) -> list[tuple[str, object]]:
    """What names a driver's error without repeating data: PostgreSQL's SQLSTATE and
    constraint, MySQL's error number."""
    codes: list[tuple[str, object]] = []
    for label in ("sqlstate", "constraint_name"):
        value = getattr(error, label, None)
        if isinstance(value, str):
            codes.append((label, value))
    if error.args and isinstance(error.args[0], int):
        codes.append(("code", error.args[0]))
    return codes


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
            "database_errors": {"()": DatabaseErrorFilter, "show_values": settings.database_echo},
        },
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id", "context", "redact", "database_errors"],
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
