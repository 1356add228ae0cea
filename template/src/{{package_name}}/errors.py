"""One JSON error body for every error: HTTP errors, validation errors, unhandled exceptions.

``{"detail": str, "request_id": str, "errors": [{"loc": [...], "msg": str}]}``, with
``errors`` only on 422. Unhandled exceptions answer 500 without a stack trace; the full
trace goes to the log, with the request id. A 405 lists in ``Allow`` every method the path
has (the framework names only the one route it tried), and the framework's own plain-text
error answers (413 from the body size limit) get the same JSON body.
"""

import logging
from collections.abc import Mapping

from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .idempotency import Replay, replay
from .logs import REQUEST_ID_HEADER
from .schemas import ErrorBody, FieldError

logger = logging.getLogger(__name__)

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def error_response(
    status_code: int,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(detail=detail, request_id=correlation_id.get(), errors=errors)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status_code,
        headers=dict(headers or {}),
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this request's path, found by the app's router."""
    routes = request.app.router.routes

    def answers(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in routes)

    return [method for method in METHODS if answers(method)]


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    headers = dict(exc.headers or {})
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(exc.status_code, str(exc.detail), headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # registered for it only
        raise exc
    errors = [FieldError(loc=list(error["loc"]), msg=error["msg"]) for error in exc.errors()]
    summary = "; ".join(".".join(map(str, e.loc)) + ": " + e.msg for e in errors)
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid request: {summary}", errors=errors
    )


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error(
        "unhandled %s in %s %s",
        type(exc).__name__,
        request.method,
        request.url.path,
        exc_info=exc,
    )
    # This response is sent from outside the middleware stack: add the request id header here.
    request_id = correlation_id.get()
    return error_response(
        status.HTTP_500_INTERNAL_SERVER_ERROR,
        "internal server error",
        headers={REQUEST_ID_HEADER: request_id} if request_id else None,
    )


class PlainErrorBodyMiddleware:
    """Give the error body to error answers the framework writes as plain text.

    Starlette's request body limit answers 413 with ``Content Too Large`` in ``text/plain``
    from outside the exception handlers; clients get ``ErrorBody`` for it like for any error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        plain_error: Message | None = None
        plain_body: list[bytes] = []

        async def send_error_body(message: Message) -> None:
            nonlocal plain_error
            if message["type"] == "http.response.start" and message["status"] >= 400:
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if content_type.startswith(b"text/plain"):
                    plain_error = message
                    return
            if plain_error is None:
                await send(message)
                return
            plain_body.append(message.get("body", b""))
            if not message.get("more_body"):
                detail = b"".join(plain_body).decode("utf-8", "replace")
                body = error_response(plain_error["status"], detail).body
                # Keep the headers set so far (the request id among them), not the type/length.
                headers = [
                    (name, value)
                    for name, value in plain_error.get("headers", [])
                    if name not in (b"content-type", b"content-length")
                ]
                headers += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({**plain_error, "headers": headers})
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_error_body)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    # Not an error: a retry's answer is the first one (idempotency keys).
    app.add_exception_handler(Replay, replay)
    app.add_exception_handler(Exception, unhandled_error)
    app.add_middleware(PlainErrorBodyMiddleware)
