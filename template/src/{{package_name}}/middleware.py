"""Middleware: request ids, the access log, trusted hosts and CORS, configured from settings."""

import logging
import re
import time

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import ACCESS_LOGGER, REQUEST_ID_HEADER
from .settings import Settings

access_logger = logging.getLogger(ACCESS_LOGGER)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Set in a request's scope, it keeps that request out of the access log (``skip_access_log``).
SKIP_ACCESS_LOG = "skip_access_log"


async def skip_access_log(request: Request) -> None:
    """A dependency: the route's requests write no access line (e.g. a frequent probe).
    ``async def``: FastAPI would run a plain ``def`` in a worker thread, for every probe."""
    request.scope[SKIP_ACCESS_LOG] = True


def is_valid_request_id(value: str) -> bool:
    """Accept a caller's id only if it is a short token (no log injection)."""
    return _REQUEST_ID.fullmatch(value) is not None


class AccessLogMiddleware:
    """One log line per request: method, path, status and duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if not scope.get(SKIP_ACCESS_LOG):
                _log_access(scope, status, time.perf_counter() - started)


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    duration_ms = round(seconds * 1000, 2)
    access_logger.info(
        "%s %s %s %.2fms",
        scope["method"],
        scope["path"],
        status,
        duration_ms,
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": duration_ms,
        },
    )


def add_middleware(app: FastAPI, settings: Settings) -> None:
    """Install the middleware stack; the request id is outermost, so every line has it."""
    app.add_middleware(AccessLogMiddleware)
    if settings.trusted_hosts != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER],
        )
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name=REQUEST_ID_HEADER,
        validator=is_valid_request_id,
    )
