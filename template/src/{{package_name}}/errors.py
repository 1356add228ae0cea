"""One JSON error body for every error: HTTP errors, validation errors, unhandled exceptions.

``{"detail": str, "request_id": str, "errors": [{"loc": [...], "msg": str}]}``, with
``errors`` only on 422. Unhandled exceptions answer 500 without a stack trace; the full
trace goes to the log, with the request id.
"""

import logging
from collections.abc import Mapping

from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .logs import REQUEST_ID_HEADER
from .schemas import ErrorBody, FieldError

logger = logging.getLogger(__name__)


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


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


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


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unhandled_error)
