"""Metrics (Prometheus) and traces (OpenTelemetry) of the app.

Metrics, served at ``/metrics`` (``routes.py``), in prometheus-client's default
registry (a metric you define yourself appears there too):

- ``http_request_duration_seconds{method, route, status}``: a histogram per route template
  (``/items/{item_id}``, never the raw path; ``unmatched`` for a path no route takes); its
  ``_count`` is the request count.
- ``http_requests_in_flight``: requests being served now.
- ``db_pool_size`` and ``db_pool_checked_out``: the SQLAlchemy pool's connections, kept
  current by the pool's checkout and checkin events.

With several uvicorn workers each process counts its own requests: set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the server starts and every
worker's figures are served together (docs/observability.md).

Traces are on when ``OTLP_ENDPOINT`` is set: FastAPI's own telemetry makes a server span per
request (named by its route) and spans for dependencies, the endpoint and serialization;
``trace_sql`` adds a span per SQL statement, and the app's HTTP client, if it has one, a
client span per outbound call. Every span carries the request id of
the access log (``request_id``). Spans go to the collector in batches, from a thread of
their own. Unset, no provider is installed: nothing is recorded, no thread runs, nothing is
sent, and the exporter is not even imported.
"""

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgi_correlation_id import correlation_id
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Gauge, Histogram
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...settings import Settings
from ...state import AppResource

REQUEST_ID_ATTRIBUTE = "request_id"  # the access log's field name, on every span
UNMATCHED = "unmatched"  # the route label of a path no route takes (no label per raw path)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to serve a request, by route template and status.",
    ["method", "route", "status"],
)
IN_FLIGHT = Gauge(
    "http_requests_in_flight", "Requests being served now.", multiprocess_mode="livesum"
)
POOL_SIZE = Gauge(
    "db_pool_size", "Connections the database pool keeps.", multiprocess_mode="livesum"
)
POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out",
    "Database connections in use (checked out of the pool).",
    multiprocess_mode="livesum",
)

TRACER_PROVIDER = AppResource("tracer_provider", TracerProvider)

# What a feature refreshes before each scrape (e.g. job counts read from the database):
# the features that add figures append theirs when they are installed.
ScrapeHook = Callable[[AsyncSession], Awaitable[None]]
SCRAPE_HOOKS: AppResource[list[ScrapeHook]] = AppResource("scrape_hooks", list)


class MetricsMiddleware:
    """Time each request by its route template and status; count those in flight.

    Installed inside the request id middleware, so it also puts the request id on the
    server span (FastAPI starts that span before any middleware runs).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(REQUEST_ID_ATTRIBUTE, correlation_id.get() or "-")
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            IN_FLIGHT.dec()
            # The router leaves the route it matched in the scope: its path is the template.
            route = getattr(scope.get("route"), "path", UNMATCHED)
            REQUEST_DURATION.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started
            )


def watch_pool(engine: AsyncEngine) -> None:
    """Keep the pool gauges current (the pool's own figures, at each checkout and checkin)."""
    pool: Any = engine.sync_engine.pool
    POOL_SIZE.set(pool.size())

    def _checked_out(*_args: object) -> None:
        POOL_CHECKED_OUT.set(pool.checkedout())

    def _checked_in(*_args: object) -> None:
        # The pool fires "checkin" before it takes the connection back: one fewer than now.
        POOL_CHECKED_OUT.set(pool.checkedout() - 1)

    event.listen(engine.sync_engine, "checkout", _checked_out)
    event.listen(engine.sync_engine, "checkin", _checked_in)


def multiprocess_dir() -> str | None:
    """Where worker processes share their metrics, if the server runs several."""
    return os.environ.get(MULTIPROCESS_DIR) or None


class RequestIdSpanProcessor(SpanProcessor):
    """Put the request id on every span started while a request is served."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        request_id = correlation_id.get()
        if request_id is not None:
            span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)

    def on_end(self, span: ReadableSpan) -> None:
        pass


def create_tracer_provider(settings: Settings) -> TracerProvider | None:
    """The app's tracer provider, exporting to ``OTLP_ENDPOINT``; None when it is unset."""
    if settings.otlp_endpoint is None:
        return None
    # Imported only when traces are on: the exporter brings protobuf, a third of the app's
    # import time.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
    provider.add_span_processor(RequestIdSpanProcessor())
    endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def trace_sql(engine: AsyncEngine, tracer: trace.Tracer) -> None:
    """A client span per SQL statement, child of whatever span runs it (the statement's
    text, never its parameters)."""
    sync_engine = engine.sync_engine
    system = sync_engine.dialect.name

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _start(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        context._span = tracer.start_span(
            operation or system,
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": system, "db.query.text": statement},
        )

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _end(
        _conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        span = getattr(context, "_span", None)
        if span is not None:
            span.end()

    @event.listens_for(sync_engine, "handle_error")
    def _fail(exception_context: ExceptionContext) -> None:
        span = getattr(exception_context.execution_context, "_span", None)
        if span is not None:
            error = exception_context.original_exception
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.set_attribute("error.type", type(error).__qualname__)
            span.end()
